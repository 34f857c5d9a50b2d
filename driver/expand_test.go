package driver

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// deviceSize returns the size of the block device at path (a published block volume's target).
func deviceSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	require.NoError(t, err)
	return n
}

// volumeSize returns a volume's size in the pool.
func (e *nodeEnv) volumeSize(t *testing.T, vol string) int64 {
	t.Helper()
	got, err := e.c.ControllerGetVolume(context.Background(), &csi.ControllerGetVolumeRequest{VolumeId: vol})
	require.NoError(t, err)
	return got.GetVolume().GetCapacityBytes()
}

// TestNodeExpandBlock grows a published block volume with NodeExpandVolume alone: the volume
// grows in the pool (to whole blocks), the device shows the new size at once, what was written
// stays and the new end can be written; repeating the call changes nothing.
func TestNodeExpandBlock(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()
	const size = 16 * mib
	vol := e.createVolume(t, "blk", size)
	staging, target := filepath.Join(e.dir, "blk-staging"), filepath.Join(e.dir, "blk-target")
	e.stage(t, vol, staging, blockCap(rwo))
	e.publish(t, vol, staging, target, blockCap(rwo))
	require.Equal(t, size, deviceSize(t, target))

	head := bytes.Repeat([]byte("dataimage"), 4096/9+1)[:4096]
	f, err := os.OpenFile(target, os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	buf := nodetest.AlignedBuf(4096)
	copy(buf, head)
	_, err = f.WriteAt(buf, 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())

	want := size + 4*mib + 4096 // 4 MiB and one byte more, rounded up to the block size
	for range 2 {
		resp, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol, VolumePath: target,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size + 4*mib + 1}, VolumeCapability: blockCap(rwo)})
		require.NoError(t, err)
		require.Equal(t, want, resp.GetCapacityBytes())
		require.Equal(t, want, e.volumeSize(t, vol))
		require.Equal(t, want, deviceSize(t, target), "the loop device follows the volume")
	}
	// The new last block reads as zeros and takes writes; the first block kept its data.
	_, err = f.ReadAt(buf, want-4096)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 4096), buf)
	copy(buf, "the new end")
	_, err = f.WriteAt(buf, want-4096)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	_, err = f.ReadAt(buf, 0)
	require.NoError(t, err)
	require.Equal(t, head, buf)

	// Without a capacity range (csi-sanity sends none), the device is brought to the volume's
	// size and nothing grows.
	resp, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol, VolumePath: target})
	require.NoError(t, err)
	require.Equal(t, want, resp.GetCapacityBytes())
	require.Zero(t, e.n.locks.Held())
}

// TestNodeExpandOverBound: a size the pool's over-provisioning bound refuses is
// RESOURCE_EXHAUSTED, and the volume, its device and its file system keep their size.
func TestNodeExpandOverBound(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()
	const size = 16 * mib
	vol := e.createVolume(t, "fs", size)
	staging, target := filepath.Join(e.dir, "fs-staging"), filepath.Join(e.dir, "fs-target")
	e.stage(t, vol, staging, mountCap(rwo, "ext4"))
	e.publish(t, vol, staging, target, mountCap(rwo, "ext4"))
	var before unix.Statfs_t
	require.NoError(t, unix.Statfs(target, &before))

	st := e.pool.Stats()
	over := (st.ProvisionLimit - st.ProvisionedBytes + size + 4096) / 4096 * 4096 // one block past the bound
	_, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: over}, VolumeCapability: mountCap(rwo, "ext4")})
	requireCode(t, codes.ResourceExhausted, err)
	require.Contains(t, status.Convert(err).Message(), vol, "the message names the volume")
	require.Equal(t, size, e.volumeSize(t, vol))
	var after unix.Statfs_t
	require.NoError(t, unix.Statfs(target, &after))
	require.Equal(t, before.Blocks, after.Blocks)

	// Up to the bound is fine: the volume takes it. (The file system's growth is the ext4 online
	// resize, tested where CAP_SYS_RESOURCE allows it.)
	fits := over - 4096
	resp, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: fits}, VolumeCapability: mountCap(rwo, "ext4")})
	if hasCapability(t, unix.CAP_SYS_RESOURCE) {
		require.NoError(t, err)
		require.Equal(t, fits, resp.GetCapacityBytes())
	} else {
		// resize2fs of a mounted ext4 needs CAP_SYS_RESOURCE: the volume grew, the file system
		// could not, and the call says so (the kubelet retries it).
		requireCode(t, codes.Internal, err)
		require.Contains(t, status.Convert(err).Message(), "grow the file system")
		t.Log("no CAP_SYS_RESOURCE: online ext4 growth not tested")
	}
	require.Equal(t, fits, e.volumeSize(t, vol))
	require.Less(t, e.pool.Stats().ProvisionLimit-e.pool.Stats().ProvisionedBytes, int64(4096), "the bound is reached")
}
