package nodetest

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
)

// FailFile is a pool file that starts failing writes and syncs when Fail is set, reads when
// FailReads is set, and whose next Sync can be made to stall (StallSync): a pool whose disk
// fails, or whose flush hangs.
type FailFile struct {
	*os.File
	// Fail makes every later write and sync fail with EIO.
	Fail atomic.Bool
	// FailReads makes every read fail with EIO while set.
	FailReads atomic.Bool

	mu    sync.Mutex
	stall *stall // the next Sync's, if armed; guarded by mu
}

// stall holds one Sync: entered is closed when it begins, release lets it go on.
type stall struct {
	entered, release chan struct{}
	once             sync.Once
}

func (s *stall) let() { s.once.Do(func() { close(s.release) }) }

// StallSync makes the next Sync wait until release is called (the test's cleanup calls it
// too); entered is closed once that Sync has begun: a flush or checkpoint stuck in fdatasync.
func (f *FailFile) StallSync(t testing.TB) (entered <-chan struct{}, release func()) {
	s := &stall{entered: make(chan struct{}), release: make(chan struct{})}
	f.mu.Lock()
	f.stall = s
	f.mu.Unlock()
	t.Cleanup(s.let)
	return s.entered, s.let
}

func (f *FailFile) ReadAt(b []byte, off int64) (int, error) {
	if f.FailReads.Load() {
		return 0, syscall.EIO
	}
	return f.File.ReadAt(b, off)
}

func (f *FailFile) WriteAt(b []byte, off int64) (int, error) {
	if f.Fail.Load() {
		return 0, syscall.EIO
	}
	return f.File.WriteAt(b, off)
}

func (f *FailFile) Sync() error {
	f.mu.Lock()
	s := f.stall
	f.stall = nil
	f.mu.Unlock()
	if s != nil {
		close(s.entered)
		<-s.release
	}
	if f.Fail.Load() {
		return syscall.EIO
	}
	return f.File.Sync()
}

func (f *FailFile) PunchHole(off, length int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (f *FailFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// FailablePool creates a pool of size bytes on a FailFile in a temporary directory; cleanup
// closes it (without a check: the test may have failed it).
func FailablePool(t testing.TB, size int64) (*blockstore.Pool, *FailFile) {
	t.Helper()
	osf, err := os.OpenFile(filepath.Join(t.TempDir(), "pool"), os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	require.NoError(t, osf.Truncate(size))
	f := &FailFile{File: osf}
	p, err := blockstore.CreateOn(f, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p, f
}
