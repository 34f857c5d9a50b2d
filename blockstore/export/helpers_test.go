package export_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// needRoot skips unless the test runs as root with /dev/fuse, loop devices and the named tools.
func needRoot(t testing.TB, tools ...string) {
	t.Helper()
	nodetest.Need(t, tools...)
}

// newPool creates a sparse pool file of size bytes in a temp dir; it is checked and closed at
// cleanup.
func newPool(t testing.TB, size int64) (*blockstore.Pool, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pool")
	p, err := blockstore.Create(path, blockstore.Options{Size: size})
	require.NoError(t, err)
	t.Cleanup(func() {
		rep, err := p.Check(false)
		if errors.Is(err, blockstore.ErrClosed) {
			return
		}
		require.NoError(t, err)
		require.True(t, rep.OK(), "pool check: %v", rep)
		require.NoError(t, p.Close())
	})
	return p, path
}

func newVolume(t testing.TB, p *blockstore.Pool, name string, size int64) *blockstore.Volume {
	t.Helper()
	info, err := p.CreateVolume(name, size)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	return vol
}

// newExporter returns an Exporter with a state directory of its own, and checks at cleanup that
// nothing is left under it.
func newExporter(t testing.TB) (export.Exporter, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	e, err := export.Detect(export.Options{StateDir: dir})
	require.NoError(t, err)
	require.Equal(t, export.MethodFUSELoop, e.Name())
	t.Cleanup(func() { requireNothingLeft(t, e, dir) })
	return e, dir
}

// requireNothingLeft checks that no loop device, mount or directory is left under dir.
func requireNothingLeft(t testing.TB, e export.Exporter, dir string) {
	t.Helper()
	lo, err := e.Leftovers()
	require.NoError(t, err)
	require.Empty(t, lo, "leftovers")
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	require.NotContains(t, string(mi), dir+"/", "mounts under the state directory")
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		b, _ := os.ReadFile(l)
		require.False(t, strings.HasPrefix(string(b), dir+"/"), "%s backs onto %s", l, b)
	}
	ents, err := os.ReadDir(dir)
	if err == nil {
		require.Empty(t, ents, "entries in the state directory")
	}
}

// countingDisk counts the calls that must reach the Disk.
type countingDisk struct {
	export.Disk
	flushes  atomic.Int64
	discards atomic.Int64
	zeroes   atomic.Int64
}

func (c *countingDisk) Flush() error {
	c.flushes.Add(1)
	return c.Disk.Flush()
}

func (c *countingDisk) Discard(off, n int64) error {
	c.discards.Add(1)
	return c.Disk.Discard(off, n)
}

// zeroingDisk is a countingDisk that also zeroes through WriteZeroes.
type zeroingDisk struct {
	*countingDisk
	vol *blockstore.Volume
}

func (z zeroingDisk) WriteZeroes(off, n int64) error {
	z.zeroes.Add(1)
	return z.vol.WriteZeroes(off, n)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
	return string(out)
}

// alignedBuf returns an n-byte buffer aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(4096 - uintptr(unsafe.Pointer(&b[0]))%4096)
	return b[off%4096 : off%4096+n]
}

func pattern(seed byte, n int) []byte {
	b := alignedBuf(n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

func readVolume(t testing.TB, d export.Disk, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	got, err := d.ReadAt(b, off)
	require.NoError(t, err)
	require.Equal(t, n, got)
	return b
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
