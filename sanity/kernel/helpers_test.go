package kernel

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/nodetest"
)

const mib = int64(1 << 20)

var rwo = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

// needKernel skips unless the test can attach loop devices, mount FUSE and make ext4 and xfs.
func needKernel(t *testing.T) {
	t.Helper()
	nodetest.Need(t, "mkfs.ext4", "mkfs.xfs", "blkid")
}

func mountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// client talks to a plugin over its socket. Paths for staging and publishing volumes are made
// under dir, one directory per label.
type client struct {
	ident csi.IdentityClient
	ctrl  csi.ControllerClient
	node  csi.NodeClient
	dir   string
	// cleanup makes stage and publish register their undoing with t.Cleanup (over RPC).
	cleanup bool
}

// dial connects to a plugin at endpoint and waits until it answers Probe.
func dial(t *testing.T, endpoint, dir string, cleanup bool) *client {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	c := &client{ident: csi.NewIdentityClient(conn), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), dir: dir, cleanup: cleanup}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	probe, err := c.ident.Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	require.True(t, probe.GetReady().GetValue())
	return c
}

func rpcContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (c *client) createVolume(t *testing.T, name string, size int64, vc *csi.VolumeCapability, src *csi.VolumeContentSource) string {
	t.Helper()
	resp, err := c.ctrl.CreateVolume(rpcContext(t), &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities:  []*csi.VolumeCapability{vc},
		VolumeContentSource: src,
	})
	require.NoError(t, err)
	require.Equal(t, size, resp.GetVolume().GetCapacityBytes())
	return resp.GetVolume().GetVolumeId()
}

func (c *client) deleteVolume(t *testing.T, id string) {
	t.Helper()
	_, err := c.ctrl.DeleteVolume(rpcContext(t), &csi.DeleteVolumeRequest{VolumeId: id})
	require.NoError(t, err)
}

func (c *client) createSnapshot(t *testing.T, name, vol string) string {
	t.Helper()
	resp, err := c.ctrl.CreateSnapshot(rpcContext(t), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: vol})
	require.NoError(t, err)
	require.True(t, resp.GetSnapshot().GetReadyToUse())
	return resp.GetSnapshot().GetSnapshotId()
}

func (c *client) stagingPath(label string) string { return filepath.Join(c.dir, label, "staging") }
func (c *client) targetPath(label string) string  { return filepath.Join(c.dir, label, "target") }

// stage stages a volume at the label's staging path. Like a CO, it creates the staging
// directory and the target's parent directory first.
func (c *client) stage(t *testing.T, label, vol string, vc *csi.VolumeCapability) {
	t.Helper()
	require.NoError(t, os.MkdirAll(c.stagingPath(label), 0o750))
	_, err := c.node.NodeStageVolume(rpcContext(t), &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: c.stagingPath(label), VolumeCapability: vc})
	require.NoError(t, err)
	if c.cleanup {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: c.stagingPath(label)})
			if err != nil {
				t.Errorf("cleanup: unstage %s: %v", label, err)
			}
		})
	}
}

// publish publishes a staged volume at the label's target path and returns that path.
func (c *client) publish(t *testing.T, label, vol string, vc *csi.VolumeCapability) string {
	t.Helper()
	target := c.targetPath(label)
	_, err := c.node.NodePublishVolume(rpcContext(t), &csi.NodePublishVolumeRequest{
		VolumeId: vol, StagingTargetPath: c.stagingPath(label), TargetPath: target, VolumeCapability: vc})
	require.NoError(t, err)
	if c.cleanup {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
			if err != nil {
				t.Errorf("cleanup: unpublish %s: %v", label, err)
			}
		})
	}
	return target
}

// stagePublish stages and publishes a volume under label and returns the target path.
func (c *client) stagePublish(t *testing.T, label, vol string, vc *csi.VolumeCapability) string {
	t.Helper()
	c.stage(t, label, vol, vc)
	return c.publish(t, label, vol, vc)
}

// unpublishUnstage undoes stagePublish.
func (c *client) unpublishUnstage(t *testing.T, label, vol string) {
	t.Helper()
	_, err := c.node.NodeUnpublishVolume(rpcContext(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: c.targetPath(label)})
	require.NoError(t, err)
	_, err = c.node.NodeUnstageVolume(rpcContext(t), &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: c.stagingPath(label)})
	require.NoError(t, err)
	require.False(t, mountedUnder(t, filepath.Join(c.dir, label)), "%s is still mounted", label)
}

func mountedUnder(t *testing.T, dir string) bool { return len(nodetest.Mounts(t, dir)) > 0 }

// forceTeardown unmounts everything under dir and tears down every export under stateDir:
// the cleanup of a test whose plugin may be dead.
func forceTeardown(t *testing.T, dir, stateDir string) {
	t.Helper()
	for _, m := range nodetest.Mounts(t, dir) {
		if err := unix.Unmount(m, 0); err != nil {
			t.Logf("teardown: unmount %s: %v; detaching", m, err)
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
				t.Errorf("teardown: detach %s: %v", m, err)
			}
		}
	}
	if _, err := os.Stat(stateDir); err != nil {
		return
	}
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	if err != nil {
		t.Errorf("teardown: %v", err)
		return
	}
	left, err := exp.Leftovers()
	if err != nil {
		t.Errorf("teardown: leftovers: %v", err)
	}
	for _, l := range left {
		if err := exp.Cleanup(l.ID); err != nil {
			t.Errorf("teardown: cleanup %s: %v", l.ID, err)
		}
	}
}

// writeFiles writes n files named prefix0, prefix1, ... of random content (whole 4 KiB blocks,
// 64 KiB to about 1 MiB) into dir, fsyncs each, and returns their sha256 sums by name.
func writeFiles(t *testing.T, dir, prefix string, n int) map[string]string {
	t.Helper()
	sums := map[string]string{}
	for i := range n {
		name := prefix + string(rune('0'+i))
		data := make([]byte, 64<<10+i*(240<<10))
		_, _ = rand.Read(data)
		nodetest.WriteSynced(t, filepath.Join(dir, name), data)
		sums[name] = sum(data)
	}
	return sums
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// readSums returns the sha256 sums of the regular files in dir by name, read with O_DIRECT so
// that they come from the block device, not from the page cache.
func readSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	sums := map[string]string{}
	buf := nodetest.AlignedBuf(1 << 20)
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, e.Name()), os.O_RDONLY|unix.O_DIRECT, 0)
		require.NoError(t, err)
		h := sha256.New()
		for {
			n, err := f.Read(buf)
			h.Write(buf[:n])
			if err == io.EOF {
				break
			}
			require.NoError(t, err, e.Name())
		}
		f.Close()
		sums[e.Name()] = hex.EncodeToString(h.Sum(nil))
	}
	return sums
}

// merge returns a copy of a with b's entries added.
func merge(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}
