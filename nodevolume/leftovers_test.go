package nodevolume

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// earlierRunEnv, set, makes TestEarlierRunHelper the earlier run of TestLeftovers: its value is
// the test's directory.
const earlierRunEnv = "NODEVOLUME_EARLIER_RUN"

// The earlier run's work, in the test's directory: the pool's volume "fs" attached as ext4 at
// fs-mnt holding the file "before"; the volume "blk" attached as a block device, written, and its
// device node bound at blk-target (a published block volume).
const (
	fsMnt     = "fs-mnt"
	blkTarget = "blk-target"
)

// TestEarlierRunHelper is the process TestLeftovers kills: the data plane of the pool and an
// Attacher on it in one process; it attaches, says "ready" on stdout and waits to be killed.
func TestEarlierRunHelper(t *testing.T) {
	dir := os.Getenv(earlierRunEnv)
	if dir == "" {
		t.Skip("the earlier run of TestLeftovers")
	}
	ctx := context.Background()
	pool, err := blockstore.Open(filepath.Join(dir, "pool"), blockstore.Options{})
	require.NoError(t, err)
	a := newAttacher(t, newDataPlane(t, pool, filepath.Join(dir, "export")))
	open := func(name string) blockstore.VolumeID { return volumeID(t, pool, name) }
	mnt := filepath.Join(dir, fsMnt)
	_, err = a.Attach(ctx, Spec{ID: "fs", Volume: open("fs"), MountPoint: mnt, FSType: "ext4", Format: true})
	require.NoError(t, err)
	nodetest.WriteSynced(t, filepath.Join(mnt, "before"), []byte("written before the kill"))
	blk, err := a.Attach(ctx, Spec{ID: "blk", Volume: open("blk")})
	require.NoError(t, err)
	target := filepath.Join(dir, blkTarget)
	require.NoError(t, a.BindMount(blk.DevicePath(), target, false))
	f, err := os.OpenFile(target, os.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(pattern(4096, 7), 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	os.Stdout.WriteString("ready\n")
	select {}
}

// TestLeftovers: a process that is data plane and control plane at once attaches a file system
// and a block device (bound at a target, as the CSI node publishes it) and is killed (SIGKILL):
// its exports' server dies with it. A new Attacher, through a new data plane on the same state
// directory, finds both, with where they are still mounted. Attach
// refuses to tear a leftover down while its device is mounted or its node bound (the earlier
// run's target would reach whatever the device number serves next); Detach with the mount point
// tears it down; then the volumes attach again with what was written before the kill.
func TestLeftovers(t *testing.T) {
	needKernel(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "export")
	pool, err := blockstore.Create(filepath.Join(dir, "pool"), blockstore.Options{Size: 2 << 30})
	require.NoError(t, err)
	for _, name := range []string{"fs", "blk"} {
		_, err := pool.CreateVolume(name, 32*mib)
		require.NoError(t, err)
	}
	require.NoError(t, pool.Close())

	cmd := exec.Command(os.Args[0], "-test.run=^TestEarlierRunHelper$", "-test.v")
	cmd.Env = append(os.Environ(), earlierRunEnv+"="+dir)
	startReady(t, cmd, "the earlier run")()
	fsMount, target := filepath.Join(dir, fsMnt), filepath.Join(dir, blkTarget)
	require.True(t, isMounted(t, fsMount), "the killed run's mounts stay")
	require.True(t, isMounted(t, target))

	pool, err = blockstore.Open(filepath.Join(dir, "pool"), blockstore.Options{}) // recovers it
	require.NoError(t, err)
	t.Cleanup(func() { nodetest.CloseChecked(t, pool) })
	t.Cleanup(func() { nodetest.RequireNothingLeft(t, dir, stateDir) }) // before the pool's cleanup
	a := newAttacher(t, dataplanetest.Serve(t, newDataPlane(t, pool, stateDir)))
	left := a.Leftovers()
	require.Len(t, left, 2)
	require.Equal(t, "blk", left[0].ID)
	require.Len(t, left[0].Devices, 1)
	require.Equal(t, []string{target}, left[0].MountPoints, "the block device's node is bound at the target")
	require.Equal(t, "fs", left[1].ID)
	require.Len(t, left[1].Devices, 1)
	require.Equal(t, []string{fsMount}, left[1].MountPoints, "the file system is mounted")
	ctx := context.Background()
	l, ok, err := a.Leftover(ctx, "fs")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, left[1], l)

	open := func(name string) blockstore.VolumeID { return volumeID(t, pool, name) }
	// In use: Attach leaves the leftovers alone.
	_, err = a.Attach(ctx, Spec{ID: "blk", Volume: open("blk")})
	require.ErrorIs(t, err, export.ErrLeftovers)
	require.ErrorIs(t, err, export.ErrBusy)
	require.Contains(t, err.Error(), target)
	_, err = a.Attach(ctx, Spec{ID: "fs", Volume: open("fs"), MountPoint: filepath.Join(dir, "fs-2"), FSType: "ext4"})
	require.ErrorIs(t, err, export.ErrLeftovers)
	require.ErrorIs(t, err, export.ErrBusy)
	require.Zero(t, a.Len())
	require.Len(t, a.Leftovers(), 2, "still there")
	for _, l := range left {
		require.FileExists(t, filepath.Join("/sys/block", filepath.Base(l.Devices[0]), "loop", "backing_file"),
			"%s of %s is still attached", l.Devices[0], l.ID)
	}

	// Unbound, the block volume's leftover is torn down and the volume attaches afresh.
	require.NoError(t, a.Unmount(target))
	blk, err := a.Attach(ctx, Spec{ID: "blk", Volume: open("blk")})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Detach(ctx, "blk", "")) })
	got := make([]byte, 4096)
	f, err := os.Open(blk.DevicePath())
	require.NoError(t, err)
	_, err = f.ReadAt(got, 0)
	f.Close()
	require.NoError(t, err)
	require.Equal(t, pattern(4096, 7), got, "the block written and synced before the kill")
	_, ok, err = a.Leftover(ctx, "blk")
	require.NoError(t, err)
	require.False(t, ok)

	// Detach with the dead file system's mount point unmounts it and tears the leftover down.
	require.NoError(t, a.Detach(ctx, "fs", fsMount))
	require.False(t, isMounted(t, fsMount))
	require.Empty(t, a.Leftovers())
	mnt := filepath.Join(dir, "fs-3")
	_, err = a.Attach(ctx, Spec{ID: "fs", Volume: open("fs"), MountPoint: mnt, FSType: "ext4"})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Detach(ctx, "fs", mnt)) })
	b, err := os.ReadFile(filepath.Join(mnt, "before"))
	require.NoError(t, err)
	require.Equal(t, "written before the kill", string(b))
}

// volumeID returns the ID of the pool's volume name.
func volumeID(t *testing.T, pool *blockstore.Pool, name string) blockstore.VolumeID {
	t.Helper()
	info, err := pool.LookupVolume(name)
	require.NoError(t, err)
	return info.ID
}
