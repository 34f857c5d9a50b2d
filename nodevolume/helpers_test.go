package nodevolume

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

const mib = int64(1) << 20

// needKernel skips unless the test can attach loop devices, mount FUSE and make ext4 and xfs.
func needKernel(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	for _, tool := range []string{"mkfs.ext4", "mkfs.xfs", "blkid", "resize2fs", "xfs_growfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
}

// env is an Attacher on a real pool and this node's exporter, all in a temporary directory.
type env struct {
	a        *Attacher
	pool     *blockstore.Pool
	poolPath string
	dir      string // mount points go here
	stateDir string // the exporter's state directory
}

// newEnv makes an env. Cleanup (after the test's own cleanups, which detach) checks that nothing
// is left: no export, no loop device on the state directory, no mount under dir; then checks
// the pool (fsck) and closes it.
func newEnv(t *testing.T) *env {
	t.Helper()
	needKernel(t)
	e := &env{dir: t.TempDir()}
	e.poolPath = filepath.Join(e.dir, "pool")
	e.stateDir = filepath.Join(e.dir, "export")
	e.pool = mustCreatePool(t, e.poolPath)
	e.a = newAttacher(t, e.stateDir)
	t.Cleanup(func() { requireNothingLeft(t, e.dir, e.stateDir) })
	return e
}

// mustCreatePool creates a 2 GiB (sparse) pool; cleanup checks and closes it unless the test
// closed it.
func mustCreatePool(t *testing.T, path string) *blockstore.Pool {
	t.Helper()
	p, err := blockstore.Create(path, blockstore.Options{Size: 2 << 30})
	require.NoError(t, err)
	t.Cleanup(func() { checkAndClose(t, p) })
	return p
}

func checkAndClose(t *testing.T, p *blockstore.Pool) {
	t.Helper()
	rep, err := p.Check(false)
	if err != nil {
		require.ErrorIs(t, err, blockstore.ErrClosed)
		return
	}
	require.True(t, rep.OK(), "fsck: %s", rep)
	require.NoError(t, p.Close())
}

// newAttacher detects this node's exporter on stateDir and makes an Attacher on it.
func newAttacher(t *testing.T, stateDir string) *Attacher {
	t.Helper()
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	a, err := New(exp, nil)
	require.NoError(t, err)
	return a
}

// requireNothingLeft checks that no export, loop device or mount is left under dir and stateDir.
func requireNothingLeft(t *testing.T, dir, stateDir string) {
	t.Helper()
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	left, err := exp.Leftovers()
	require.NoError(t, err)
	require.Empty(t, left, "exports left")
	for _, line := range strings.Split(mountinfo(t), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			require.False(t, strings.HasPrefix(f[4], dir+"/"), "mount left: %s", line)
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		require.False(t, strings.HasPrefix(string(b), stateDir+"/"), "%s backs onto %s", f, b)
	}
}

func mountinfo(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	return string(b)
}

// isMounted reports whether path is a mount point in the mount table.
func isMounted(t *testing.T, path string) bool {
	t.Helper()
	for _, line := range strings.Split(mountinfo(t), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// volume creates a pool volume and opens it.
func (e *env) volume(t *testing.T, name string, size int64) *blockstore.Volume {
	t.Helper()
	info, err := e.pool.CreateVolume(name, size)
	require.NoError(t, err)
	v, err := e.pool.Volume(info.ID)
	require.NoError(t, err)
	return v
}

// attach attaches and registers the detach for cleanup.
func (e *env) attach(t *testing.T, s Spec) *Attachment {
	t.Helper()
	at, err := e.a.Attach(context.Background(), s)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, e.a.Detach(context.Background(), s.ID, s.MountPoint), "cleanup: detach %s", s.ID)
	})
	return at
}

// pattern returns n bytes that differ per seed.
func pattern(n int, seed byte) []byte {
	b := bytes.Repeat([]byte{seed}, n)
	for i := range b {
		b[i] ^= byte(i * 31)
	}
	return b
}

// writeSynced writes a file and fsyncs it.
func writeSynced(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	require.NoError(t, err)
	_, err = f.Write(data)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}
