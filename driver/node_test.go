package driver

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// nodeEnv is a Node service on a real pool and this node's export (FUSE + loop devices), through
// the pool's data plane served on a socket, with a Controller service on the same data plane to
// make volumes.
type nodeEnv struct {
	n        *nodeServer
	c        *controllerServer
	store    dataplane.Store
	pool     *blockstore.Pool
	dir      string // staging and target paths go here
	stateDir string // the export's state directory
}

// needKernel skips unless the test can attach loop devices, mount FUSE and make ext4.
func needKernel(t *testing.T) {
	t.Helper()
	nodetest.Need(t, "mkfs.ext4", "blkid", "resize2fs")
}

// newNodeEnv makes a nodeEnv; cleanup (after the unpublish and unstage cleanups that stage and
// publish register) checks that no loop device, mount or export directory is left.
func newNodeEnv(t *testing.T) *nodeEnv {
	t.Helper()
	needKernel(t)
	pool := mustOpenPool(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "export")
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	cfg := testConfig(testNode)
	cfg.MaxVolumes = 5
	t.Cleanup(func() { nodetest.RequireNothingLeft(t, dir, stateDir) })
	store := storeOf(t, pool, exp)
	n, err := newNodeServer(context.Background(), cfg, store, pool.BlockSize(), NodeConfig{})
	require.NoError(t, err)
	return &nodeEnv{n: n, c: newControllerServer(cfg, store, pool.BlockSize()), store: store, pool: pool, dir: dir, stateDir: stateDir}
}

func (e *nodeEnv) createVolume(t *testing.T, name string, size int64) string {
	t.Helper()
	return mustCreateVolume(t, e.c, name, size).GetVolumeId()
}

// stage stages a volume and registers its unstaging for cleanup.
func (e *nodeEnv) stage(t *testing.T, volID, staging string, c *csi.VolumeCapability) {
	t.Helper()
	_, err := e.n.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: c})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := e.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging})
		require.NoError(t, err, "cleanup: unstage %s", volID)
	})
}

// publish publishes a staged volume and registers its unpublishing for cleanup.
func (e *nodeEnv) publish(t *testing.T, volID, staging, target string, c *csi.VolumeCapability) {
	t.Helper()
	_, err := e.n.NodePublishVolume(context.Background(), publishReq(volID, staging, target, c))
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := e.n.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
		require.NoError(t, err, "cleanup: unpublish %s", volID)
	})
}

func publishReq(volID, staging, target string, c *csi.VolumeCapability) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

func TestNodeGetInfoAndCapabilities(t *testing.T) {
	ctx := context.Background()
	n, err := newNodeServer(ctx, testConfig(testNode), storeOf(t, mustOpenPool(t), fakeExporter{}), 4096, NodeConfig{})
	require.NoError(t, err)
	info, err := n.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	require.NoError(t, err)
	require.Equal(t, testNode, info.GetNodeId())
	require.Zero(t, info.GetMaxVolumesPerNode())
	require.Equal(t, map[string]string{DefaultTopologyKey: testNode}, info.GetAccessibleTopology().GetSegments())

	caps, err := n.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	require.NoError(t, err)
	var got []csi.NodeServiceCapability_RPC_Type
	for _, c := range caps.GetCapabilities() {
		got = append(got, c.GetRpc().GetType())
	}
	require.ElementsMatch(t, []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	}, got)

	cfg := testConfig(testNode)
	cfg.MaxVolumes = 7
	n, err = newNodeServer(ctx, cfg, storeOf(t, mustOpenPool(t), fakeExporter{}), 4096, NodeConfig{DefaultFSType: "xfs"})
	require.NoError(t, err)
	require.Equal(t, "xfs", n.fsType)
	info, err = n.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	require.NoError(t, err)
	require.Equal(t, int64(7), info.GetMaxVolumesPerNode())

	_, err = newNodeServer(ctx, cfg, storeOf(t, mustOpenPool(t), fakeExporter{}), 4096, NodeConfig{DefaultFSType: "btrfs"})
	require.Error(t, err)
}

// fakeExporter is an Exporter with nothing left and nothing to export: for tests that never
// stage.
type fakeExporter struct{}

func (fakeExporter) Name() string { return "fake" }
func (fakeExporter) Export(string, export.Disk) (export.Device, error) {
	return nil, export.ErrUnsupported
}
func (fakeExporter) Adopt(string, export.Disk) (export.Device, error) {
	return nil, export.ErrNotFound
}
func (fakeExporter) Leftovers() ([]export.Leftover, error) { return nil, nil }
func (fakeExporter) Cleanup(string) error                  { return nil }

// TestNodeValidationCodes asserts the gRPC code of every Node request the service refuses.
func TestNodeValidationCodes(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()
	snsw := csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	ext4 := mountCap(rwo, "ext4")

	staged := e.createVolume(t, "staged", 16*mib) // staged and published with SINGLE_NODE_SINGLE_WRITER
	stagedAt := filepath.Join(e.dir, "staged-staging")
	e.stage(t, staged, stagedAt, mountCap(snsw, "ext4"))
	published := filepath.Join(e.dir, "staged-target")
	e.publish(t, staged, stagedAt, published, mountCap(snsw, "ext4"))
	cold := e.createVolume(t, "cold", 16*mib) // never staged

	malformed := "fake-vol-id"
	foreign := ids{tag: nodeTag(otherNode)}.volumeID(1)
	unknown := e.n.ids.volumeID(999)
	staging, target := filepath.Join(e.dir, "staging"), filepath.Join(e.dir, "target")
	aFile := filepath.Join(e.dir, "a-file")
	require.NoError(t, os.WriteFile(aFile, nil, 0o600))
	noMode := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}
	noType := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo}}
	multiNode := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "ext4")
	readerMany := blockCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
	unknownMode := mountCap(csi.VolumeCapability_AccessMode_UNKNOWN, "")
	btrfs := mountCap(rwo, "btrfs")

	stage := func(id, path string, c *csi.VolumeCapability) func() error {
		return func() error {
			_, err := e.n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: path, VolumeCapability: c})
			return err
		}
	}
	unstage := func(id, path string) func() error {
		return func() error {
			_, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path})
			return err
		}
	}
	publish := func(id, staging, target string, c *csi.VolumeCapability) func() error {
		return func() error {
			_, err := e.n.NodePublishVolume(ctx, publishReq(id, staging, target, c))
			return err
		}
	}
	unpublish := func(id, target string) func() error {
		return func() error {
			_, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			return err
		}
	}
	stats := func(id, path string) func() error {
		return func() error {
			_, err := e.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
			return err
		}
	}
	expand := func(id, path string, r *csi.CapacityRange, c *csi.VolumeCapability) func() error {
		return func() error {
			_, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path, CapacityRange: r, VolumeCapability: c})
			return err
		}
	}
	health := func(id string) func() error {
		return func() error {
			_, err := e.n.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
			return err
		}
	}

	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"stage: no volume_id", stage("", staging, ext4), codes.InvalidArgument},
		{"stage: no staging path", stage(cold, "", ext4), codes.InvalidArgument},
		{"stage: no capability", stage(cold, staging, nil), codes.InvalidArgument},
		{"stage: no access mode", stage(cold, staging, noMode), codes.InvalidArgument},
		{"stage: no access type", stage(cold, staging, noType), codes.InvalidArgument},
		{"stage: malformed ID", stage(malformed, staging, ext4), codes.NotFound},
		{"stage: foreign ID", stage(foreign, staging, ext4), codes.NotFound},
		{"stage: unknown ID", stage(unknown, staging, ext4), codes.NotFound},
		{"stage: multi-node mode", stage(cold, staging, multiNode), codes.InvalidArgument},
		{"stage: multi-node block mode", stage(cold, staging, readerMany), codes.InvalidArgument},
		{"stage: unknown mode", stage(cold, staging, unknownMode), codes.InvalidArgument},
		{"stage: btrfs", stage(cold, staging, btrfs), codes.InvalidArgument},
		{"stage: staged at another path", stage(staged, staging, mountCap(snsw, "ext4")), codes.AlreadyExists},
		{"stage: staged for mount, now block", stage(staged, stagedAt, blockCap(snsw)), codes.AlreadyExists},

		{"publish: no volume_id", publish("", staging, target, ext4), codes.InvalidArgument},
		{"publish: no target path", publish(cold, staging, "", ext4), codes.InvalidArgument},
		{"publish: no staging path", publish(cold, "", target, ext4), codes.InvalidArgument},
		{"publish: no capability", publish(cold, staging, target, nil), codes.InvalidArgument},
		{"publish: no access mode", publish(cold, staging, target, noMode), codes.InvalidArgument},
		{"publish: malformed ID", publish(malformed, staging, target, ext4), codes.NotFound},
		{"publish: foreign ID", publish(foreign, staging, target, ext4), codes.NotFound},
		{"publish: unknown ID", publish(unknown, staging, target, ext4), codes.NotFound},
		{"publish: multi-node mode", publish(cold, staging, target, multiNode), codes.InvalidArgument},
		{"publish: btrfs", publish(cold, staging, target, btrfs), codes.InvalidArgument},
		{"publish: mount before stage", publish(cold, staging, target, ext4), codes.FailedPrecondition},
		{"publish: block before stage", publish(cold, staging, target+"-block", blockCap(rwo)), codes.FailedPrecondition},
		{"publish: single writer, second target", publish(staged, stagedAt, target, mountCap(snsw, "ext4")), codes.FailedPrecondition},

		{"unpublish: no volume_id", unpublish("", target), codes.InvalidArgument},
		{"unpublish: no target path", unpublish(cold, ""), codes.InvalidArgument},
		{"unpublish: malformed ID", unpublish(malformed, target), codes.NotFound},
		{"unpublish: foreign ID", unpublish(foreign, target), codes.NotFound},

		{"unstage: no volume_id", unstage("", staging), codes.InvalidArgument},
		{"unstage: no staging path", unstage(cold, ""), codes.InvalidArgument},
		{"unstage: malformed ID", unstage(malformed, staging), codes.NotFound},
		{"unstage: foreign ID", unstage(foreign, staging), codes.NotFound},

		{"stats: no volume_id", stats("", published), codes.InvalidArgument},
		{"stats: no volume path", stats(staged, ""), codes.InvalidArgument},
		{"stats: malformed ID", stats(malformed, published), codes.NotFound},
		{"stats: foreign ID", stats(foreign, published), codes.NotFound},
		{"stats: unknown ID", stats(unknown, published), codes.NotFound},
		{"stats: no such path", stats(staged, filepath.Join(e.dir, "nowhere")), codes.NotFound},

		{"expand: no volume_id", expand("", published, nil, nil), codes.InvalidArgument},
		{"expand: no volume path", expand(staged, "", nil, nil), codes.InvalidArgument},
		{"expand: malformed ID", expand(malformed, published, nil, nil), codes.NotFound},
		{"expand: foreign ID", expand(foreign, published, nil, nil), codes.NotFound},
		{"expand: unknown ID", expand(unknown, published, nil, nil), codes.NotFound},
		{"expand: past the over-provisioning bound", expand(staged, published, &csi.CapacityRange{RequiredBytes: 64 << 30}, nil), codes.ResourceExhausted},
		{"expand: past the largest volume", expand(staged, published, &csi.CapacityRange{RequiredBytes: 1 << 62}, nil), codes.OutOfRange},
		{"expand: limit below the size", expand(staged, published, &csi.CapacityRange{RequiredBytes: mib, LimitBytes: 2 * mib}, nil), codes.OutOfRange},
		{"expand: negative bytes", expand(staged, published, &csi.CapacityRange{RequiredBytes: -1}, nil), codes.InvalidArgument},
		{"expand: limit below required", expand(staged, published, &csi.CapacityRange{RequiredBytes: 2 * mib, LimitBytes: mib}, nil), codes.InvalidArgument},
		{"expand: unsupported capability", expand(staged, published, nil, multiNode), codes.InvalidArgument},
		{"expand: no such path", expand(staged, filepath.Join(e.dir, "nowhere"), nil, nil), codes.NotFound},
		{"expand: mount volume at a file", expand(staged, aFile, nil, ext4), codes.InvalidArgument},
		{"expand: not staged", expand(cold, e.dir, nil, nil), codes.FailedPrecondition},

		{"health: no volume_id", health(""), codes.InvalidArgument},
		{"health: malformed ID", health(malformed), codes.NotFound},
		{"health: foreign ID", health(foreign), codes.NotFound},
		{"health: unknown ID", health(unknown), codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) { requireCode(t, tc.want, tc.call()) })
	}
	// Nothing the refused calls touched is mounted or exported.
	require.False(t, isMounted(t, staging))
	require.False(t, isMounted(t, target))
	require.Equal(t, 1, e.n.vols.Len(), "only the staged volume is exported")

	// A single-writer volume moves to another target once unpublished from the first.
	require.NoError(t, publish(staged, stagedAt, published, mountCap(snsw, "ext4"))(), "again at the same target")
	require.NoError(t, unpublish(staged, published)())
	require.NoError(t, publish(staged, stagedAt, target, mountCap(snsw, "ext4"))())
	require.NoError(t, unpublish(staged, target)())
	// Other modes publish at several targets.
	e.publish(t, staged, stagedAt, published, ext4)
	e.publish(t, staged, stagedAt, target, ext4)
	require.Zero(t, e.n.locks.Held())
}

// TestNodeIdempotent stages, publishes, unpublishes and unstages a mount and a block volume
// twice each: the repeated calls succeed and change nothing.
func TestNodeIdempotent(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cap  *csi.VolumeCapability
	}{
		{"mount", mountCap(rwo, "")}, // the node's default file system (ext4)
		{"block", blockCap(rwo)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vol := e.createVolume(t, tc.name, 16*mib)
			staging := filepath.Join(e.dir, tc.name+"-staging")
			target := filepath.Join(e.dir, tc.name+"-target")
			for range 2 {
				_, err := e.n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: tc.cap})
				require.NoError(t, err)
			}
			require.Equal(t, tc.cap.GetMount() != nil, isMounted(t, staging))
			for range 2 {
				_, err := e.n.NodePublishVolume(ctx, publishReq(vol, staging, target, tc.cap))
				require.NoError(t, err)
			}
			require.True(t, isMounted(t, target))
			require.Equal(t, 1, strings.Count(mountinfo(t), " "+target+" "), "published once")
			fi, err := os.Stat(target)
			require.NoError(t, err)
			if tc.cap.GetBlock() != nil {
				require.NotZero(t, fi.Mode()&os.ModeDevice, "the target is the block device")
			} else {
				require.True(t, fi.IsDir())
				_, err := os.Stat(filepath.Join(target, "lost+found")) // ext4 made it
				require.NoError(t, err)
			}
			for range 2 {
				_, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
				require.NoError(t, err)
				require.False(t, isMounted(t, target))
				_, err = os.Stat(target)
				require.ErrorIs(t, err, os.ErrNotExist, "the target is removed")
			}
			for range 2 {
				_, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
				require.NoError(t, err)
				require.False(t, isMounted(t, staging))
			}
			require.Zero(t, e.n.vols.Len())
			e.n.mu.Lock()
			require.Empty(t, e.n.published)
			e.n.mu.Unlock()
		})
	}
	// Unstaging and unpublishing a volume of this pool that was never staged succeeds.
	_, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: e.n.ids.volumeID(999), StagingTargetPath: filepath.Join(e.dir, "never")})
	require.NoError(t, err)
	_, err = e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.n.ids.volumeID(999), TargetPath: filepath.Join(e.dir, "never")})
	require.NoError(t, err)
	require.Zero(t, e.n.locks.Held())
}

func mountinfo(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	return string(b)
}

// TestNodeGetVolumeStats reads bytes and inodes of a mounted ext4 volume (as statfs sees them,
// and changing with what is written), bytes of a block volume, then grows the ext4 volume
// online.
func TestNodeGetVolumeStats(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()

	const size = 64 * mib
	vol := e.createVolume(t, "fs", size)
	staging, target := filepath.Join(e.dir, "fs-staging"), filepath.Join(e.dir, "fs-target")
	e.stage(t, vol, staging, mountCap(rwo, "ext4"))
	e.publish(t, vol, staging, target, mountCap(rwo, "ext4"))

	usage := func(path string) (bytes, inodes *csi.VolumeUsage) {
		t.Helper()
		resp, err := e.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: path})
		require.NoError(t, err)
		require.Len(t, resp.GetUsage(), 2)
		bytes, inodes = resp.GetUsage()[0], resp.GetUsage()[1]
		require.Equal(t, csi.VolumeUsage_BYTES, bytes.GetUnit())
		require.Equal(t, csi.VolumeUsage_INODES, inodes.GetUnit())
		var st unix.Statfs_t
		require.NoError(t, unix.Statfs(path, &st))
		bs := int64(st.Bsize)
		require.Equal(t, int64(st.Blocks)*bs, bytes.GetTotal())
		require.Equal(t, int64(st.Files), inodes.GetTotal())
		require.Greater(t, bytes.GetTotal(), size*3/4, "most of the volume")
		require.LessOrEqual(t, bytes.GetTotal(), size)
		require.Positive(t, bytes.GetUsed())
		require.Positive(t, bytes.GetAvailable())
		require.LessOrEqual(t, bytes.GetUsed()+bytes.GetAvailable(), bytes.GetTotal()) // reserved blocks
		require.Equal(t, inodes.GetTotal(), inodes.GetUsed()+inodes.GetAvailable())
		require.GreaterOrEqual(t, inodes.GetUsed(), int64(11), "ext4 reserves 11 inodes")
		return bytes, inodes
	}
	b0, i0 := usage(target)
	bs, is := usage(staging) // the staging path is the same file system
	require.Equal(t, b0.GetTotal(), bs.GetTotal())
	require.Equal(t, i0.GetUsed(), is.GetUsed())

	data := make([]byte, 4*mib)
	for i := range data {
		data[i] = byte(i * 31)
	}
	for i := range 10 {
		f, err := os.Create(filepath.Join(target, "f"+string(rune('0'+i))))
		require.NoError(t, err)
		if i == 0 {
			_, err = f.Write(data)
			require.NoError(t, err)
		}
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
	}
	b1, i1 := usage(target)
	require.Equal(t, i0.GetUsed()+10, i1.GetUsed())
	require.GreaterOrEqual(t, b1.GetUsed()-b0.GetUsed(), 4*mib)
	require.Equal(t, b0.GetTotal(), b1.GetTotal())

	// Online expansion: the controller grows the volume, the node the file system. Growing a
	// mounted ext4 needs CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS); without it resize2fs says
	// "Permission denied to resize filesystem".
	if hasCapability(t, unix.CAP_SYS_RESOURCE) {
		expandOnline(t, e, vol, target, size, b1.GetTotal(), data)
	} else {
		t.Log("no CAP_SYS_RESOURCE: online ext4 expansion not tested")
	}

	// A block volume: its size in bytes, nothing else.
	blk := e.createVolume(t, "blk", 16*mib)
	bstaging, btarget := filepath.Join(e.dir, "blk-staging"), filepath.Join(e.dir, "blk-target")
	e.stage(t, blk, bstaging, blockCap(rwo))
	e.publish(t, blk, bstaging, btarget, blockCap(rwo))
	bst, err := e.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: blk, VolumePath: btarget})
	require.NoError(t, err)
	require.Len(t, bst.GetUsage(), 1)
	require.Equal(t, csi.VolumeUsage_BYTES, bst.GetUsage()[0].GetUnit())
	require.Equal(t, 16*mib, bst.GetUsage()[0].GetTotal())

	// Health of published volumes: nothing inaccessible.
	for _, v := range []struct{ id, path string }{{vol, target}, {blk, btarget}} {
		h, err := e.n.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.id, VolumePublishPath: v.path})
		require.NoError(t, err)
		for _, s := range h.GetVolumeHealth().GetHealthStatuses() {
			require.NotEqual(t, csi.VolumeHealthErrorType_INACCESSIBLE, s.GetStatus(), "%v", s)
		}
	}
}

// expandOnline grows a published ext4 (or fsType) volume of size bytes (total bytes in its file
// system) by 32 MiB with NodeExpandVolume alone (expansion is node-only): the volume grows in
// the pool, then the file system; data stays. Repeating the call, or asking for less, changes
// nothing.
func expandOnline(t *testing.T, e *nodeEnv, vol, target string, size, total int64, data []byte, fsType ...string) {
	t.Helper()
	ctx := context.Background()
	fs := "ext4"
	if len(fsType) > 0 {
		fs = fsType[0]
	}
	grown := size + 32*mib
	expand := func(required int64) {
		t.Helper()
		resp, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol, VolumePath: target,
			CapacityRange: &csi.CapacityRange{RequiredBytes: required}, VolumeCapability: mountCap(rwo, fs)})
		require.NoError(t, err)
		require.Equal(t, grown, resp.GetCapacityBytes())
		got, err := e.c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vol})
		require.NoError(t, err)
		require.Equal(t, grown, got.GetVolume().GetCapacityBytes(), "the volume grew in the pool")
		st, err := e.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: target})
		require.NoError(t, err)
		require.Greater(t, st.GetUsage()[0].GetTotal(), total+24*mib, "the file system grew")
		require.LessOrEqual(t, st.GetUsage()[0].GetTotal(), grown)
		b, err := os.ReadFile(filepath.Join(target, "f0"))
		require.NoError(t, err)
		require.Equal(t, data, b)
	}
	expand(grown)
	expand(grown) // again: nothing to do
	expand(size)  // less: the volume keeps its size
}

// hasCapability reports whether the process has capability c in its effective set.
func hasCapability(t *testing.T, c int) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			require.NoError(t, err)
			return eff&(1<<c) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

// Online expansion of a mounted xfs volume (xfs_growfs needs no capability beyond root's here).
func TestNodeExpandXFSOnline(t *testing.T) {
	e := newNodeEnv(t)
	const size = 320 * mib // xfs needs 300 MiB
	vol := e.createVolume(t, "xfs", size)
	staging, target := filepath.Join(e.dir, "xfs-staging"), filepath.Join(e.dir, "xfs-target")
	e.stage(t, vol, staging, mountCap(rwo, "xfs"))
	e.publish(t, vol, staging, target, mountCap(rwo, "xfs"))
	data := make([]byte, mib)
	for i := range data {
		data[i] = byte(i * 7)
	}
	require.NoError(t, os.WriteFile(filepath.Join(target, "f0"), data, 0o600))
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(target, &st))
	expandOnline(t, e, vol, target, size, int64(st.Blocks)*int64(st.Bsize), data, "xfs")
}
