package fusedev_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
)

const mib = 1 << 20

// memDisk is a Disk in memory that counts the calls that must reach it. Its errors, when set,
// fail the calls.
type memDisk struct {
	mu       sync.RWMutex
	data     []byte
	flushes  atomic.Int64
	discards atomic.Int64
	zeroes   atomic.Int64
	writeErr atomic.Pointer[error]
}

func newMemDisk(size int) *memDisk { return &memDisk{data: make([]byte, size)} }

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if e := m.writeErr.Load(); e != nil {
		return 0, *e
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("write past the end: %w", unix.EFBIG)
	}
	return copy(m.data[off:], p), nil
}

// at returns a copy of the bytes [from, to).
func (m *memDisk) at(from, to int) []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data[from:to]...)
}

func (m *memDisk) Flush() error { m.flushes.Add(1); return nil }

func (m *memDisk) Discard(off, n int64) error {
	m.discards.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

func (m *memDisk) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data))
}

func (m *memDisk) grow(size int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data = append(m.data, make([]byte, size-len(m.data))...)
}

// zeroingDisk is a memDisk that zeroes through WriteZeroes.
type zeroingDisk struct{ *memDisk }

func (z zeroingDisk) WriteZeroes(off, n int64) error {
	z.zeroes.Add(1)
	z.mu.Lock()
	defer z.mu.Unlock()
	clear(z.data[off : off+n])
	return nil
}

// mounted is a FUSE connection made by the test, served by srv, unmounted at cleanup.
type mounted struct {
	dir    string
	fd     int
	params fusedev.Params
	srv    *fusedev.Server
}

func (m *mounted) file() string { return filepath.Join(m.dir, fusedev.FileName) }

// mountDisk mounts a new connection in a temporary directory and serves d on it.
func mountDisk(t testing.TB, d fusedev.Disk, cfg fusedev.Config) *mounted {
	t.Helper()
	m := mountOnly(t)
	srv, err := fusedev.Serve([]int{m.fd}, m.params, d, cfg)
	require.NoError(t, err)
	m.srv = srv
	return m
}

// mountOnly mounts and initialises a new connection; nothing serves it yet. At cleanup it is
// unmounted, its server (if any) waited for and its descriptor closed.
func mountOnly(t testing.TB) *mounted {
	t.Helper()
	dir := t.TempDir()
	fd, err := fusedev.Mount(dir, "fusedev-test", fusedev.DefaultMaxWrite)
	require.NoError(t, err)
	m := &mounted{dir: dir, fd: fd}
	t.Cleanup(func() {
		unmount(t, dir)
		if m.srv != nil {
			require.NoError(t, m.srv.Wait())
		}
		unix.Close(fd)
	})
	m.params, err = fusedev.Init(fd, fusedev.InitOptions{})
	require.NoError(t, err)
	return m
}

func unmount(t testing.TB, dir string) {
	t.Helper()
	for i := 0; ; i++ {
		err := unix.Unmount(dir, 0)
		if err == nil || err == unix.EINVAL {
			return
		}
		if i == 50 {
			require.NoError(t, unix.Unmount(dir, unix.MNT_DETACH), "lazy unmount after %v", err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openFile opens path without registering it with the Go runtime's poller (os.OpenFile would
// epoll it, a FUSE_POLL the server answers; here the test keeps out of the server's way).
func openFile(t testing.TB, path string, flag int) *os.File {
	t.Helper()
	fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	f := os.NewFile(uintptr(fd), path)
	t.Cleanup(func() { f.Close() })
	return f
}

func pattern(seed byte, n int) []byte {
	b := alignedBuf(n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b, err := unix.Mmap(-1, 0, max(n, 1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(err)
	}
	return b[:n]
}
