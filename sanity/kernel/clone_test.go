package kernel

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/dataimage/dataimage/sanity"
)

// inProcess is the plugin served from this process on a fresh pool: the test reaches the pool
// directly for what CSI has no call for (Revert).
type inProcess struct {
	*client
	pool     *blockstore.Pool
	stateDir string
}

// startInProcess serves the plugin on a sparse 2 GiB pool in a temp dir (sanity.StartPlugin).
func startInProcess(t *testing.T) *inProcess {
	t.Helper()
	p := sanity.StartPlugin(t, "kernel-node", 2<<30, "")
	return &inProcess{client: dial(t, p.Endpoint, filepath.Join(p.Dir, "paths"), true), pool: p.Pool, stateDir: p.StateDir}
}

// TestClonesThroughKernel writes files through mounted file systems and a block device, takes
// snapshots and clones over CSI, and reads the clones back through the kernel: clones hold the
// source's data, writes to one never reach the other, and deleting or reverting the source
// leaves the clones as they were.
func TestClonesThroughKernel(t *testing.T) {
	needKernel(t)
	p := startInProcess(t)
	t.Run("ext4", func(t *testing.T) { p.fileSystemClones(t, "ext4", 64*mib) })
	t.Run("xfs", func(t *testing.T) { p.fileSystemClones(t, "xfs", 320*mib) }) // mkfs.xfs wants 300 MiB
	t.Run("block", p.blockClones)

	nodetest.RequireNothingLeft(t, p.dir, p.stateDir)
	require.Empty(t, p.pool.Volumes(), "the subtests delete their volumes")
	rep, err := p.pool.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "fsck: %s", rep)
}

func (p *inProcess) fileSystemClones(t *testing.T, fsType string, size int64) {
	vc := mountCap(fsType)
	name := func(s string) string { return fsType + "-" + s }

	// The source: files written and fsynced, then a snapshot and a clone of it.
	src := p.createVolume(t, name("src"), size, vc, nil)
	srcPath := p.stagePublish(t, name("src"), src, vc)
	atSnap := writeFiles(t, srcPath, "a", 4)
	require.Equal(t, atSnap, readSums(t, srcPath))
	snap := p.createSnapshot(t, name("snap"), src)

	clone := p.createVolume(t, name("clone"), size, vc, fromSnapshot(snap))
	clonePath := p.stagePublish(t, name("clone"), clone, vc) // xfs: mounted beside its source (nouuid)
	require.Equal(t, atSnap, readSums(t, clonePath), "the clone holds the snapshot's files")

	// Writes to the clone stay in the clone.
	cloneWrites := writeFiles(t, clonePath, "c", 2)
	nodetest.WriteSynced(t, filepath.Join(clonePath, "a0"), []byte("changed in the clone\n"))
	cloneNow := merge(atSnap, cloneWrites)
	cloneNow["a0"] = sum([]byte("changed in the clone\n"))
	require.Equal(t, cloneNow, readSums(t, clonePath))
	require.Equal(t, atSnap, readSums(t, srcPath), "the source is unchanged by writes to its clone")

	// The source changes; a clone of the volume itself has its current content.
	srcWrites := writeFiles(t, srcPath, "b", 2)
	newA1 := make([]byte, 128<<10)
	_, _ = rand.Read(newA1)
	nodetest.WriteSynced(t, filepath.Join(srcPath, "a1"), newA1)
	srcNow := merge(atSnap, srcWrites)
	srcNow["a1"] = sum(newA1)
	require.Equal(t, srcNow, readSums(t, srcPath))
	require.Equal(t, cloneNow, readSums(t, clonePath), "the clone is unchanged by writes to its source")

	copied := p.createVolume(t, name("copy"), size, vc, fromVolume(src))
	copiedPath := p.stagePublish(t, name("copy"), copied, vc)
	require.Equal(t, srcNow, readSums(t, copiedPath), "the volume clone holds the source's current files")

	// Revert the unstaged source to the snapshot (in the pool: CSI has no revert call).
	p.unpublishUnstage(t, name("src"), src)
	srcInfo, err := p.pool.LookupVolume(name("src"))
	require.NoError(t, err)
	snapInfo, err := p.pool.LookupSnapshot(name("snap"))
	require.NoError(t, err)
	require.NoError(t, p.pool.Revert(srcInfo.ID, snapInfo.ID))
	srcPath = p.stagePublish(t, name("src"), src, vc)
	require.Equal(t, atSnap, readSums(t, srcPath), "the reverted source holds the snapshot's files")
	require.Equal(t, cloneNow, readSums(t, clonePath), "revert leaves the snapshot's clone alone")
	require.Equal(t, srcNow, readSums(t, copiedPath), "revert leaves the volume's clone alone")

	// Delete the source and its snapshot: the clones keep their files, also when staged anew.
	p.unpublishUnstage(t, name("src"), src)
	p.deleteVolume(t, src)
	_, err = p.ctrl.DeleteSnapshot(rpcContext(t), &csi.DeleteSnapshotRequest{SnapshotId: snap})
	require.NoError(t, err)
	require.Equal(t, cloneNow, readSums(t, clonePath))
	require.Equal(t, srcNow, readSums(t, copiedPath))
	p.unpublishUnstage(t, name("clone"), clone)
	p.unpublishUnstage(t, name("copy"), copied)
	clonePath = p.stagePublish(t, name("clone"), clone, vc)
	copiedPath = p.stagePublish(t, name("copy"), copied, vc)
	require.Equal(t, cloneNow, readSums(t, clonePath), "the clone after its source and snapshot were deleted")
	require.Equal(t, srcNow, readSums(t, copiedPath), "the volume clone after its source was deleted")

	p.unpublishUnstage(t, name("clone"), clone)
	p.unpublishUnstage(t, name("copy"), copied)
	p.deleteVolume(t, clone)
	p.deleteVolume(t, copied)
	nodetest.RequireNothingLeft(t, p.dir, p.stateDir)
}

// blockClones writes a pattern with O_DIRECT to a published block volume, snapshots and clones
// it, and reads the clone's device back.
func (p *inProcess) blockClones(t *testing.T) {
	vc := blockCap()
	const size = 32 * mib
	src := p.createVolume(t, "blk-src", size, vc, nil)
	srcDev := p.stagePublish(t, "blk-src", src, vc)

	type extent struct{ off, n int64 }
	extents := []extent{{0, 4096}, {mib + 8192, 3 * mib}, {size - 64<<10, 64 << 10}}
	data := make([][]byte, len(extents))
	f, err := os.OpenFile(srcDev, os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	for i, e := range extents {
		data[i] = nodetest.AlignedBuf(int(e.n))
		_, _ = rand.Read(data[i])
		n, err := f.WriteAt(data[i], e.off)
		require.NoError(t, err)
		require.Equal(t, int(e.n), n)
	}
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())

	snap := p.createSnapshot(t, "blk-snap", src)
	clone := p.createVolume(t, "blk-clone", size, vc, fromSnapshot(snap))
	cloneDev := p.stagePublish(t, "blk-clone", clone, vc)

	readDev := func(dev string) [][]byte {
		t.Helper()
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
		require.NoError(t, err)
		defer f.Close()
		var out [][]byte
		for _, e := range extents {
			b := nodetest.AlignedBuf(int(e.n))
			n, err := f.ReadAt(b, e.off)
			require.NoError(t, err)
			require.Equal(t, int(e.n), n)
			out = append(out, b)
		}
		hole := nodetest.AlignedBuf(64 << 10) // never written: zeros
		_, err = f.ReadAt(hole, 8*mib)
		require.NoError(t, err)
		require.Equal(t, make([]byte, len(hole)), hole)
		return out
	}
	require.Equal(t, data, readDev(cloneDev), "the clone's device holds the snapshot's bytes")

	// A write to the clone's device stays in the clone.
	f, err = os.OpenFile(cloneDev, os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	other := nodetest.AlignedBuf(int(extents[1].n))
	_, _ = rand.Read(other)
	_, err = f.WriteAt(other, extents[1].off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	require.Equal(t, data, readDev(srcDev), "the source's device is unchanged by writes to its clone")
	require.Equal(t, [][]byte{data[0], other, data[2]}, readDev(cloneDev))

	p.unpublishUnstage(t, "blk-clone", clone)
	p.unpublishUnstage(t, "blk-src", src)
	p.deleteVolume(t, src)
	p.deleteVolume(t, clone)
	_, err = p.ctrl.DeleteSnapshot(rpcContext(t), &csi.DeleteSnapshotRequest{SnapshotId: snap})
	require.NoError(t, err)
	nodetest.RequireNothingLeft(t, p.dir, p.stateDir)
}
