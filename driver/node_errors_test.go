package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/nodevolume"
)

// TestErrorCodes: every sentinel of the table in errors.go gets its code, under any wrapping,
// and keeps its chain and message.
func TestErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{blockstore.ErrNotFound, codes.NotFound},
		{blockstore.ErrExists, codes.AlreadyExists},
		{blockstore.ErrNoSpace, codes.ResourceExhausted},
		// The file system under the pool file is full: transient, like a full pool.
		{blockstore.ErrHostFull, codes.ResourceExhausted},
		{fmt.Errorf("%w: write block 7: %w", blockstore.ErrHostFull, &os.PathError{Op: "write", Path: "pool", Err: syscall.EDQUOT}), codes.ResourceExhausted},
		{blockstore.ErrOverProvisioned, codes.ResourceExhausted},
		{blockstore.ErrInvalidArgument, codes.InvalidArgument},
		{blockstore.ErrOutOfRange, codes.InvalidArgument},
		{blockstore.ErrCorrupt, codes.Internal},
		{&blockstore.CorruptionError{Block: 9, What: "tree node", Err: errors.New("bad crc")}, codes.Internal},
		{fmt.Errorf("%w: %w", blockstore.ErrFailed, blockstore.ErrNoSpace), codes.Internal},
		// A sync that failed for lack of space failed the pool: that is not transient.
		{fmt.Errorf("%w: sync data: %w", blockstore.ErrFailed, syscall.ENOSPC), codes.Internal},
		{blockstore.ErrClosed, codes.Unavailable},
		{export.ErrLeftovers, codes.FailedPrecondition},
		{fmt.Errorf("%w: %w", export.ErrLeftovers, export.ErrBusy), codes.FailedPrecondition},
		{&export.Error{Op: "detach loop device", ID: "dv-x", Device: "/dev/loop9", Err: export.ErrBusy}, codes.FailedPrecondition},
		{&os.PathError{Op: "unmount", Path: "/x", Err: syscall.EBUSY}, codes.FailedPrecondition},
		{&export.Error{Op: "detect fuse-loop", Err: export.ErrUnsupported}, codes.Unimplemented},
		{export.ErrExists, codes.Aborted},
		{nodevolume.ErrNotAttached, codes.FailedPrecondition},
		{nodevolume.ErrConflict, codes.AlreadyExists},
		{nodevolume.ErrInvalid, codes.InvalidArgument},
		{context.Canceled, codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{export.ErrInvalid, codes.Internal},
		{&os.PathError{Op: "mkdir", Path: "/x", Err: syscall.EACCES}, codes.Internal},
		{errors.New("other"), codes.Internal},
	} {
		err := mapError(fmt.Errorf("wrapped: %w", tc.err), "volume %s", "dv-x")
		requireCode(t, tc.want, err)
		require.ErrorIs(t, err, tc.err)
		require.Contains(t, status.Convert(err).Message(), "volume dv-x: wrapped: "+tc.err.Error())
	}
	require.NoError(t, mapError(nil, "nothing"))
}

// TestNodeExportErrors: export errors reach the Node service's callers with their own codes and
// their chain (errors.Is through the gRPC error): a node that cannot export is UNIMPLEMENTED, a
// device that something holds is FAILED_PRECONDITION (busy), and so is a volume whose export an
// earlier run left, still mounted there (gone).
func TestNodeExportErrors(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()

	// Unsupported: this node's exporter cannot export.
	vol := e.createVolume(t, "v", 16*mib)
	n, err := newNodeServer(ctx, testConfig(testNode), storeOf(t, e.pool, fakeExporter{}), 4096, NodeConfig{})
	require.NoError(t, err)
	_, err = n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: filepath.Join(e.dir, "unsupported"), VolumeCapability: blockCap(rwo)})
	requireCode(t, codes.Unimplemented, err)
	require.ErrorIs(t, err, export.ErrUnsupported)

	// Busy: unstaging a block volume whose device another opener holds exclusively.
	staging := filepath.Join(e.dir, "block-staging")
	e.stage(t, vol, staging, blockCap(rwo))
	at, ok := e.n.vols.Get(vol)
	require.True(t, ok)
	holder, err := os.OpenFile(at.DevicePath(), os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	_, err = e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
	requireCode(t, codes.FailedPrecondition, err)
	require.ErrorIs(t, err, export.ErrBusy)
	require.Contains(t, err.Error(), at.DevicePath())
	require.NoError(t, holder.Close())
	_, err = e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
	require.NoError(t, err, "once the holder let go")

	// Gone: the plugin on a second data plane (another exporter on the same state directory:
	// the data plane restarted) finds the first data plane's export, whose file system is
	// mounted at the staging path. Staging the volume there fails until that is unstaged.
	mounted := e.createVolume(t, "mounted", 16*mib)
	first := filepath.Join(e.dir, "first-staging")
	e.stage(t, mounted, first, mountCap(rwo, "ext4"))
	exp2, err := export.Detect(export.Options{StateDir: e.stateDir})
	require.NoError(t, err)
	second, err := newNodeServer(ctx, testConfig(testNode), storeOf(t, e.pool, exp2), 4096, NodeConfig{})
	require.NoError(t, err)
	_, left, err := second.vols.Leftover(ctx, mounted)
	require.NoError(t, err)
	require.True(t, left, "the second data plane sees the first one's export as left behind")
	_, err = second.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: mounted, StagingTargetPath: filepath.Join(e.dir, "second-staging"), VolumeCapability: mountCap(rwo, "ext4")})
	requireCode(t, codes.FailedPrecondition, err)
	require.ErrorIs(t, err, export.ErrLeftovers)
	require.ErrorIs(t, err, export.ErrBusy)
	require.Contains(t, status.Convert(err).Message(), "unpublish and unstage the volume first")
}

// TestNodeLeftoverPublishedBlock: after a restart of the data plane, staging a block volume
// whose device an earlier run published (its node bound at the target path, which a pod may still use) fails
// FAILED_PRECONDITION and leaves the device alone: a bind mount of a device node does not hold
// the device open, so tearing the export down would leave the pod's target pointing at a device
// number that the next export (of any volume) gets. Once the kubelet unpublishes and unstages,
// the volume stages afresh.
func TestNodeLeftoverPublishedBlock(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()
	vol := e.createVolume(t, "blk", 16*mib)
	staging, target := filepath.Join(e.dir, "blk-staging"), filepath.Join(e.dir, "blk-target")
	_, err := e.n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: blockCap(rwo)})
	require.NoError(t, err)
	_, err = e.n.NodePublishVolume(ctx, publishReq(vol, staging, target, blockCap(rwo)))
	require.NoError(t, err)
	var published unix.Stat_t
	require.NoError(t, unix.Stat(target, &published))

	// The second data plane (another exporter on the same state directory) finds the first's
	// export.
	exp2, err := export.Detect(export.Options{StateDir: e.stateDir})
	require.NoError(t, err)
	second, err := newNodeServer(ctx, testConfig(testNode), storeOf(t, e.pool, exp2), 4096, NodeConfig{})
	require.NoError(t, err)
	_, dead, err := second.vols.Leftover(ctx, vol)
	require.NoError(t, err)
	require.True(t, dead, "the second data plane sees the first one's export as left behind")
	_, err = second.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: blockCap(rwo)})
	requireCode(t, codes.FailedPrecondition, err)
	require.ErrorIs(t, err, export.ErrLeftovers)
	require.Contains(t, status.Convert(err).Message(), target, "the message names where the device is published")
	left, err := exp2.Leftovers()
	require.NoError(t, err)
	require.Len(t, left, 1)
	require.NotEmpty(t, left[0].Devices, "the first run's device is still attached")
	var now unix.Stat_t
	require.NoError(t, unix.Stat(target, &now))
	require.Equal(t, published.Rdev, now.Rdev)

	// The kubelet unpublishes and unstages through the second run; then the volume stages.
	_, err = second.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
	require.NoError(t, err)
	_, err = second.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
	require.NoError(t, err)
	_, dead, err = second.vols.Leftover(ctx, vol)
	require.NoError(t, err)
	require.False(t, dead)
	_, err = second.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: blockCap(rwo)})
	require.NoError(t, err)
	_, err = second.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
	require.NoError(t, err)
}
