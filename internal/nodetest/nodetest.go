// Package nodetest holds what the tests of the node's data path share (packages nodevolume,
// driver, local, sanity/kernel, blockstore/export): Need skips a test that cannot attach loop
// devices, mount FUSE or run the file system tools; Pool makes a pool that is checked (fsck) and
// closed at cleanup; Mounts, LoopDevicesOn and RequireNothingLeft find what a test left in the
// kernel; WriteSynced writes a file durably; StartFIOVerify and OpenKmsg (fio.go), MountSource
// and PgbenchBalanced (load.go) check a load across restarts. It is for tests only.
//
// It must not know the layers above the store: it helps tests find and clean up what the kernel
// holds.
package nodetest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
)

// Need skips the test unless it runs as root with /dev/fuse and /dev/loop-control, and finds
// each of tools (e.g. "mkfs.ext4") on the PATH.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (make deps)", tool)
		}
	}
}

// Pool creates a pool of size bytes (sparse) at path. Cleanup checks it (fsck) and closes it,
// unless the test closed it.
func Pool(t testing.TB, path string, size int64) *blockstore.Pool {
	t.Helper()
	return PoolWith(t, path, blockstore.Options{Size: size})
}

// PoolWith is Pool with options (opts.Size the size).
func PoolWith(t testing.TB, path string, opts blockstore.Options) *blockstore.Pool {
	t.Helper()
	p, err := blockstore.Create(path, opts)
	require.NoError(t, err)
	t.Cleanup(func() { CloseChecked(t, p) })
	return p
}

// CloseChecked checks the pool (fsck) and closes it; a pool closed already is left alone.
func CloseChecked(t testing.TB, p *blockstore.Pool) {
	t.Helper()
	rep, err := p.Check(false)
	if err != nil {
		require.ErrorIs(t, err, blockstore.ErrClosed)
		return
	}
	require.True(t, rep.OK(), "fsck: %s", rep)
	require.NoError(t, p.Close())
}

// Mounts returns the mount points at dir and under it, deepest first.
func Mounts(t testing.TB, dir string) []string {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	var out []string
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// LoopDevicesOn returns the loop devices (e.g. "/dev/loop3") whose backing file is under dir.
func LoopDevicesOn(t testing.TB, dir string) []string {
	t.Helper()
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	require.NoError(t, err)
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		if strings.HasPrefix(strings.TrimSpace(string(b)), dir+"/") {
			out = append(out, "/dev/"+strings.Split(f, "/")[3])
		}
	}
	return out
}

// RequireNothingLeft checks that nothing of an export is left: no mount under dir (FUSE mounts
// under stateDir included, when dir holds it), no loop device backed by a file under stateDir,
// and nothing in stateDir (which may be missing). That is all an Exporter on stateDir could
// find as leftovers.
func RequireNothingLeft(t testing.TB, dir, stateDir string) {
	t.Helper()
	require.Empty(t, Mounts(t, dir), "mounts left")
	require.Empty(t, LoopDevicesOn(t, stateDir), "loop devices left")
	ents, err := os.ReadDir(stateDir)
	if !errors.Is(err, os.ErrNotExist) {
		require.NoError(t, err)
		require.Empty(t, ents, "entries left in the export state directory")
	}
}

// WriteSynced writes a file and fsyncs it.
func WriteSynced(t testing.TB, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	require.NoError(t, err)
	_, err = f.Write(data)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

// AlignedBuf returns an n-byte buffer aligned for O_DIRECT (4 KiB).
func AlignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(4096-uintptr(unsafe.Pointer(&b[0]))%4096) % 4096
	return b[off : off+n]
}

// Run runs a command to completion, failing the test with its output if it fails, and returns
// its output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
	return string(out)
}

// LoopDevice attaches a loop device to a new sparse file of size bytes and returns both; the
// device is detached at cleanup.
func LoopDevice(t testing.TB, size int64) (dev, backing string) {
	t.Helper()
	backing = filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.WriteFile(backing, nil, 0o600))
	require.NoError(t, os.Truncate(backing, size))
	dev = strings.TrimSpace(Run(t, "losetup", "--find", "--show", backing))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev, backing
}
