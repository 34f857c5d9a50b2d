package nodevolume

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// controlPlaneEnv, set, makes TestControlPlaneHelper the control plane of TestAdoptAfterKill:
// its value is the test's directory, where the data plane's socket is.
const controlPlaneEnv = "NODEVOLUME_CONTROL_PLANE"

// TestControlPlaneHelper is the control plane TestAdoptAfterKill kills: an Attacher on the data
// plane's socket; it attaches "fs" (ext4 at cp-fs) and "blk" (its node bound at cp-blk), says
// "ready" on stdout and waits to be killed.
func TestControlPlaneHelper(t *testing.T) {
	dir := os.Getenv(controlPlaneEnv)
	if dir == "" {
		t.Skip("the control plane of TestAdoptAfterKill")
	}
	ctx := context.Background()
	devs := dataplane.NewClient(filepath.Join(dir, "dp.sock"))
	a := newAttacher(t, devs)
	ids := strings.Fields(os.Getenv(controlPlaneEnv + "_VOLUMES")) // fs blk
	var vols [2]uint64
	for i, v := range ids {
		_, err := fmt.Sscan(v, &vols[i])
		require.NoError(t, err)
	}
	_, err := a.Attach(ctx, Spec{ID: "fs", Volume: blockstore.VolumeID(vols[0]), MountPoint: filepath.Join(dir, "cp-fs"), FSType: "ext4", Format: true})
	require.NoError(t, err)
	blk, err := a.Attach(ctx, Spec{ID: "blk", Volume: blockstore.VolumeID(vols[1])})
	require.NoError(t, err)
	require.NoError(t, a.BindMount(blk.DevicePath(), filepath.Join(dir, "cp-blk"), false))
	os.Stdout.WriteString("ready\n")
	select {}
}

// TestAdoptAfterKill: the control plane (a process of its own, on the data plane's socket)
// attaches a file system and a block device and is killed (SIGKILL). The data plane serves
// on: a writer on the file system, running across the kill, sees no error. A new Attacher
// adopts both attachments with their mount points, attaches them again as asked without
// mounting twice, refuses another mount point (ErrConflict), and detaches them.
func TestAdoptAfterKill(t *testing.T) {
	needKernel(t)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		require.NoError(t, os.Chmod(d, 0o711))
	}
	sockDir, err := os.MkdirTemp("", "nv") // a short path for the socket
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	stateDir := filepath.Join(dir, "export")
	pool := nodetest.Pool(t, filepath.Join(dir, "pool"), 2<<30)
	t.Cleanup(func() { nodetest.RequireNothingLeft(t, dir, stateDir) })
	fsVol, err := pool.CreateVolume("fs", 64*mib)
	require.NoError(t, err)
	blkVol, err := pool.CreateVolume("blk", 16*mib)
	require.NoError(t, err)
	sock := filepath.Join(sockDir, "dp.sock")
	lis, err := dataplane.Listen(sock)
	require.NoError(t, err)
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- dataplane.NewServer(newDataPlane(t, pool, stateDir), "test", nil).Serve(sctx, lis) }()
	t.Cleanup(func() { stop(); require.NoError(t, <-served) })

	cmd := exec.Command(os.Args[0], "-test.run=^TestControlPlaneHelper$", "-test.v")
	cmd.Env = append(os.Environ(), controlPlaneEnv+"="+sockDir, fmt.Sprintf("%s_VOLUMES=%d %d", controlPlaneEnv, fsVol.ID, blkVol.ID))
	cmd.Dir = dir
	kill := startReady(t, cmd, "the control plane")
	fsMount, blkTarget := filepath.Join(sockDir, "cp-fs"), filepath.Join(sockDir, "cp-blk")
	t.Cleanup(func() { // the mounts are under sockDir: unmount whatever a failure left there
		for _, m := range nodetest.Mounts(t, sockDir) {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	})

	// A writer on the file system across the kill: every write and fsync succeeds.
	var wg sync.WaitGroup
	stopWriter := make(chan struct{})
	var writes int
	var werr error
	wg.Go(func() {
		f, err := os.OpenFile(filepath.Join(fsMount, "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o644)
		if err != nil {
			werr = err
			return
		}
		defer f.Close()
		for {
			select {
			case <-stopWriter:
				return
			default:
			}
			if _, err := fmt.Fprintf(f, "line %d\n", writes); err != nil {
				werr = err
				return
			}
			if err := f.Sync(); err != nil {
				werr = err
				return
			}
			writes++
		}
	})
	time.Sleep(200 * time.Millisecond)
	kill()
	time.Sleep(500 * time.Millisecond)

	a := newAttacher(t, dataplane.NewClient(sock))
	require.Equal(t, 2, a.Len())
	require.Empty(t, a.Leftovers())
	fs, ok := a.Get("fs")
	require.True(t, ok)
	require.True(t, fs.Adopted())
	require.Equal(t, fsMount, fs.MountPoint())
	require.Equal(t, fsVol.ID, fs.Volume())
	ctx := context.Background()
	again, err := a.Attach(ctx, Spec{ID: "fs", Volume: fsVol.ID, MountPoint: fsMount, FSType: "ext4", Format: true})
	require.NoError(t, err)
	require.Same(t, fs, again)
	require.Equal(t, 1, mountCount(t, fsMount), "attached again as asked: not mounted twice")
	_, err = a.Attach(ctx, Spec{ID: "fs", Volume: fsVol.ID, MountPoint: fsMount + "-2", FSType: "ext4"})
	require.ErrorIs(t, err, ErrConflict)
	_, err = a.Attach(ctx, Spec{ID: "fs", Volume: blkVol.ID, MountPoint: fsMount, FSType: "ext4"})
	require.ErrorIs(t, err, ErrConflict, "another volume")

	close(stopWriter)
	wg.Wait()
	require.NoError(t, werr, "a write on the file system across the control plane's kill")
	require.Positive(t, writes)
	t.Logf("%d writes and fsyncs across the control plane's kill", writes)

	err = a.Detach(ctx, "blk", "")
	require.ErrorIs(t, err, export.ErrBusy, "the adopted block device is still bound")
	require.NoError(t, a.Unmount(blkTarget))
	require.NoError(t, a.Detach(ctx, "blk", ""))
	require.NoError(t, a.Detach(ctx, "fs", ""), "the adopted attachment's own mount point is unmounted")
	require.False(t, isMounted(t, fsMount))
	require.Zero(t, a.Len())
}
