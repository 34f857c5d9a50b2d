package nodevolume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestAttachFileSystem: a blank volume gets a file system and is mounted; detached, nothing of
// it is left on the node; attached again without Format, it has the data written before.
func TestAttachFileSystem(t *testing.T) {
	for _, tc := range []struct {
		fsType string
		size   int64
	}{{"ext4", 64 * mib}, {"xfs", 320 * mib}} { // xfs needs 300 MiB
		t.Run(tc.fsType, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			vol := e.volume(t, "v", tc.size)
			mnt := filepath.Join(e.dir, "mnt", "v")
			spec := Spec{ID: "v", Volume: vol, MountPoint: mnt, FSType: tc.fsType, Format: true}
			at, err := e.a.Attach(ctx, spec)
			require.NoError(t, err)
			require.Equal(t, "v", at.ID())
			require.Equal(t, mnt, at.MountPoint())
			fi, err := os.Stat(at.DevicePath())
			require.NoError(t, err)
			require.NotZero(t, fi.Mode()&os.ModeDevice, "%s is a device", at.DevicePath())
			require.True(t, isMounted(t, mnt))
			var st unix.Statfs_t
			require.NoError(t, unix.Statfs(mnt, &st))
			want := map[string]int64{"ext4": unix.EXT4_SUPER_MAGIC, "xfs": unix.XFS_SUPER_MAGIC}[tc.fsType]
			require.Equal(t, want, int64(st.Type), "the file system is %s", tc.fsType)
			got, ok := e.a.Get("v")
			require.True(t, ok)
			require.Same(t, at, got)
			require.Equal(t, 1, e.a.Len())
			data := pattern(int(mib), 1)
			nodetest.WriteSynced(t, filepath.Join(mnt, "f"), data)

			require.NoError(t, e.a.Detach(ctx, "v", mnt))
			require.False(t, isMounted(t, mnt))
			_, err = os.Stat(mnt)
			require.ErrorIs(t, err, os.ErrNotExist, "the mount point is removed")
			require.Zero(t, e.a.Len())
			nodetest.RequireNothingLeft(t, e.dir, e.stateDir)
			require.NoError(t, e.a.Detach(ctx, "v", mnt), "detaching again changes nothing")

			spec.Format = false
			e.attach(t, spec)
			b, err := os.ReadFile(filepath.Join(mnt, "f"))
			require.NoError(t, err)
			require.Equal(t, data, b, "the data survives detach and attach")
		})
	}
}

// TestAttachXFSClones: clones of one xfs volume share the file system's UUID; attached side by
// side they mount (nouuid), each with its own data.
func TestAttachXFSClones(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	src := e.volume(t, "src", 320*mib)
	mnt := filepath.Join(e.dir, "src")
	_, err := e.a.Attach(ctx, Spec{ID: "src", Volume: src, MountPoint: mnt, FSType: "xfs", Format: true})
	require.NoError(t, err)
	nodetest.WriteSynced(t, filepath.Join(mnt, "f"), []byte("image"))
	require.NoError(t, e.a.Detach(ctx, "src", mnt))
	snap, err := e.pool.CreateSnapshot(src, "image")
	require.NoError(t, err)
	for i := range 2 {
		name := fmt.Sprintf("clone-%d", i)
		info, err := e.pool.Clone(snap.ID, name, 0)
		require.NoError(t, err)
		cm := filepath.Join(e.dir, name)
		e.attach(t, Spec{ID: name, Volume: info.ID, MountPoint: cm, FSType: "xfs"})
		b, err := os.ReadFile(filepath.Join(cm, "f"))
		require.NoError(t, err)
		require.Equal(t, "image", string(b))
		nodetest.WriteSynced(t, filepath.Join(cm, "own"), []byte(name))
	}
	for i := range 2 {
		b, err := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("clone-%d", i), "own"))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("clone-%d", i), string(b))
	}
}

// TestAttachBlock: a block attachment is the device only; a bind mount of its node (a
// published block volume) keeps Detach from tearing it down until it is unmounted.
func TestAttachBlock(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vol := e.volume(t, "b", 16*mib)
	at, err := e.a.Attach(ctx, Spec{ID: "b", Volume: vol})
	require.NoError(t, err)
	require.Empty(t, at.MountPoint())
	data := pattern(4096, 2)
	f, err := os.OpenFile(at.DevicePath(), os.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(data, 8192)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())

	target := filepath.Join(e.dir, "target")
	require.NoError(t, e.a.BindMount(at.DevicePath(), target, true))
	fi, err := os.Stat(target)
	require.NoError(t, err)
	require.NotZero(t, fi.Mode()&os.ModeDevice, "the target is the device")
	mounted, err := e.a.IsMountPoint(target)
	require.NoError(t, err)
	require.True(t, mounted)

	err = e.a.Detach(ctx, "b", "")
	require.ErrorIs(t, err, export.ErrBusy, "the device is bound at the target")
	require.Contains(t, err.Error(), target)
	_, ok := e.a.Get("b")
	require.True(t, ok, "still attached")

	require.NoError(t, e.a.Unmount(target))
	_, err = os.Stat(target)
	require.ErrorIs(t, err, os.ErrNotExist, "the target is removed")
	require.NoError(t, e.a.Unmount(target), "unmounting again changes nothing")
	require.NoError(t, e.a.Detach(ctx, "b", ""))
	got := make([]byte, len(data))
	v, err := e.pool.Volume(vol)
	require.NoError(t, err)
	_, err = v.ReadAt(got, 8192)
	require.NoError(t, err)
	require.Equal(t, data, got, "what was written to the device is in the volume")
}

// TestAttachAgain: attaching an id attached as asked returns its Attachment (mounting again a
// file system unmounted meanwhile); attached otherwise, ErrConflict. Bad specs are ErrInvalid.
func TestAttachAgain(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vol := e.volume(t, "v", 64*mib)
	mnt := filepath.Join(e.dir, "v")
	spec := Spec{ID: "v", Volume: vol, MountPoint: mnt, FSType: "ext4", Format: true}
	at := e.attach(t, spec)
	again, err := e.a.Attach(ctx, spec)
	require.NoError(t, err)
	require.Same(t, at, again)
	require.Equal(t, 1, mountCount(t, mnt), "mounted once")

	for _, other := range []Spec{
		{ID: "v", Volume: vol, MountPoint: mnt + "-2", FSType: "ext4", Format: true},
		{ID: "v", Volume: vol, MountPoint: mnt, FSType: "xfs", Format: true},
		{ID: "v", Volume: vol},
	} {
		_, err := e.a.Attach(ctx, other)
		require.ErrorIs(t, err, ErrConflict, "%+v", other)
	}
	_, err = os.Stat(mnt + "-2")
	require.ErrorIs(t, err, os.ErrNotExist)

	require.NoError(t, unix.Unmount(mnt, 0))
	again, err = e.a.Attach(ctx, spec)
	require.NoError(t, err)
	require.Same(t, at, again)
	require.True(t, isMounted(t, mnt), "mounted again")

	for _, bad := range []Spec{
		{ID: "", Volume: vol},
		{ID: ".hidden", Volume: vol},
		{ID: "a/b", Volume: vol},
		{ID: "x"},
		{ID: "x", Volume: vol, FSType: "ext4"},
		{ID: "x", Volume: vol, Format: true},
		{ID: "x", Volume: vol, MountOptions: []string{"ro"}},
		{ID: "x", Volume: vol, MountPoint: "relative", FSType: "ext4"},
		{ID: "x", Volume: vol, MountPoint: mnt + "-x"},
		{ID: "x", Volume: vol, MountPoint: mnt + "-x", FSType: "btrfs"},
	} {
		_, err := e.a.Attach(ctx, bad)
		require.ErrorIs(t, err, ErrInvalid, "%+v", bad)
	}
	require.ErrorIs(t, e.a.Detach(ctx, "../v", ""), ErrInvalid)
	require.ErrorIs(t, e.a.Resize(ctx, "x", ""), ErrNotAttached)
	require.Equal(t, 1, e.a.Len())
}

// TestAttachFailureLeavesNothing: an Attach that fails leaves no export, and removes the mount
// point it made (not one that was there).
func TestAttachFailureLeavesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vol := e.volume(t, "blank", 16*mib)
	mnt := filepath.Join(e.dir, "new", "blank")
	_, err := e.a.Attach(ctx, Spec{ID: "blank", Volume: vol, MountPoint: mnt, FSType: "ext4"}) // no Format
	require.Error(t, err, "a blank device has no file system to mount")
	require.Contains(t, err.Error(), "mount")
	require.Zero(t, e.a.Len())
	_, err = os.Stat(mnt)
	require.ErrorIs(t, err, os.ErrNotExist, "the mount point Attach made is removed")
	nodetest.RequireNothingLeft(t, e.dir, e.stateDir)

	kept := filepath.Join(e.dir, "kept")
	require.NoError(t, os.Mkdir(kept, 0o700))
	_, err = e.a.Attach(ctx, Spec{ID: "blank", Volume: vol, MountPoint: kept, FSType: "xfs"})
	require.Error(t, err)
	_, err = os.Stat(kept)
	require.NoError(t, err, "a mount point that was there stays")
	nodetest.RequireNothingLeft(t, e.dir, e.stateDir)

	// The id attaches fine afterwards.
	e.attach(t, Spec{ID: "blank", Volume: vol, MountPoint: mnt, FSType: "ext4", Format: true})
}

// TestConcurrentAttach attaches and detaches file systems and block devices in parallel, each
// id attached by several callers at once (run with -race: one mounter serves every call).
func TestConcurrentAttach(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const n, callers = 8, 3
	specs := make([]Spec, n)
	for i := range specs {
		id := fmt.Sprintf("v%d", i)
		specs[i] = Spec{ID: id, Volume: e.volume(t, id, 32*mib)}
		if i%2 == 0 {
			specs[i].MountPoint, specs[i].FSType, specs[i].Format = filepath.Join(e.dir, id), "ext4", true
		}
	}
	got := make([][callers]*Attachment, n)
	var wg sync.WaitGroup
	for i, s := range specs {
		for c := range callers {
			wg.Go(func() {
				at, err := e.a.Attach(ctx, s)
				if err != nil {
					t.Errorf("attach %s: %v", s.ID, err)
					return
				}
				got[i][c] = at
			})
		}
	}
	wg.Wait()
	require.False(t, t.Failed())
	require.Equal(t, n, e.a.Len())
	devices := map[string]bool{}
	for i, s := range specs {
		for c := range callers {
			require.Same(t, got[i][0], got[i][c], "one attachment per id")
		}
		devices[got[i][0].DevicePath()] = true
		if s.MountPoint != "" {
			require.Equal(t, 1, mountCount(t, s.MountPoint), "%s mounted once", s.ID)
			nodetest.WriteSynced(t, filepath.Join(s.MountPoint, "f"), []byte(s.ID))
		}
	}
	require.Len(t, devices, n, "one device per id")
	require.Len(t, e.a.All(), n)

	for _, s := range specs {
		for range callers {
			wg.Go(func() {
				if err := e.a.Detach(ctx, s.ID, s.MountPoint); err != nil {
					t.Errorf("detach %s: %v", s.ID, err)
				}
			})
		}
	}
	wg.Wait()
	require.Zero(t, e.a.Len())
	require.Zero(t, e.a.locks.Held(), "no lock left")
}

// TestResize: after the volume grew in the pool, Resize makes the device follow, then grows
// the file system mounted on it (xfs here: online ext4 growth needs CAP_SYS_RESOURCE, which
// tests may lack).
func TestResize(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vol := e.volume(t, "fs", 320*mib)
	mnt := filepath.Join(e.dir, "fs")
	at := e.attach(t, Spec{ID: "fs", Volume: vol, MountPoint: mnt, FSType: "xfs", Format: true})
	var before unix.Statfs_t
	require.NoError(t, unix.Statfs(mnt, &before))
	require.NoError(t, e.pool.GrowVolume(vol, 640*mib))
	require.NoError(t, e.a.Resize(ctx, "fs", mnt))
	require.Equal(t, 640*mib, deviceSize(t, at.DevicePath()))
	var after unix.Statfs_t
	require.NoError(t, unix.Statfs(mnt, &after))
	require.Greater(t, after.Blocks*uint64(after.Bsize), before.Blocks*uint64(before.Bsize)+256*uint64(mib), "the file system grew by the 320 MiB")
	require.NoError(t, e.a.Resize(ctx, "fs", mnt), "growing what has its size changes nothing")

	blk := e.volume(t, "blk", 16*mib)
	bat := e.attach(t, Spec{ID: "blk", Volume: blk})
	require.NoError(t, e.pool.GrowVolume(blk, 32*mib))
	require.NoError(t, e.a.Resize(ctx, "blk", ""))
	require.Equal(t, 32*mib, deviceSize(t, bat.DevicePath()))
}

func deviceSize(t *testing.T, dev string) int64 {
	t.Helper()
	f, err := os.Open(dev)
	require.NoError(t, err)
	defer f.Close()
	n, err := f.Seek(0, 2)
	require.NoError(t, err)
	return n
}

// TestFreeze: a write to a frozen file system waits until it is thawed; thawing what is not
// frozen fails.
func TestFreeze(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(t, "fs", 64*mib)
	mnt := filepath.Join(e.dir, "fs")
	e.attach(t, Spec{ID: "fs", Volume: vol, MountPoint: mnt, FSType: "ext4", Format: true})
	thaw, err := Freeze(mnt)
	require.NoError(t, err)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		f, err := os.Create(filepath.Join(mnt, "during"))
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if _, err := f.Write([]byte("x")); err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-wrote:
		t.Fatal("a write went through a frozen file system")
	case <-time.After(200 * time.Millisecond):
	}
	require.NoError(t, thaw())
	select {
	case <-wrote:
	case <-time.After(30 * time.Second):
		t.Fatal("the write did not go on after the thaw")
	}
	err = Thaw(mnt)
	require.ErrorIs(t, err, unix.EINVAL, "not frozen")
	_, err = Freeze(filepath.Join(e.dir, "nowhere"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
