package driver

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	testNode   = "node-a"
	otherNode  = "node-b"
	testPoolSz = 64 << 20
	mib        = int64(1 << 20)
)

// failFile is a pool file that starts failing writes and syncs when fail is set, and whose
// next Sync can be made to stall (stallSync).
type failFile struct {
	*os.File
	fail atomic.Bool

	mu    sync.Mutex
	stall *stall // the next Sync's, if armed; guarded by mu
}

// stall holds one Sync: entered is closed when it begins, release lets it go on.
type stall struct {
	entered, release chan struct{}
	once             sync.Once
}

func (s *stall) let() { s.once.Do(func() { close(s.release) }) }

// stallSync makes the next Sync wait until release is called (the test's cleanup calls it
// too); entered is closed once that Sync has begun: a flush or checkpoint stuck in fdatasync.
func (f *failFile) stallSync(t *testing.T) (entered <-chan struct{}, release func()) {
	s := &stall{entered: make(chan struct{}), release: make(chan struct{})}
	f.mu.Lock()
	f.stall = s
	f.mu.Unlock()
	t.Cleanup(s.let)
	return s.entered, s.let
}

func (f *failFile) WriteAt(b []byte, off int64) (int, error) {
	if f.fail.Load() {
		return 0, syscall.EIO
	}
	return f.File.WriteAt(b, off)
}

func (f *failFile) Sync() error {
	f.mu.Lock()
	s := f.stall
	f.stall = nil
	f.mu.Unlock()
	if s != nil {
		close(s.entered)
		<-s.release
	}
	if f.fail.Load() {
		return syscall.EIO
	}
	return f.File.Sync()
}

func (f *failFile) PunchHole(off, length int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (f *failFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// mustOpenPool creates a pool of testPoolSz bytes in a temporary directory; cleanup checks it
// (fsck) and closes it unless the test closed or failed it.
func mustOpenPool(t *testing.T) *blockstore.Pool {
	t.Helper()
	return nodetest.Pool(t, filepath.Join(t.TempDir(), "pool"), testPoolSz)
}

// mustOpenFailablePool is mustOpenPool on a file that the test can make fail.
func mustOpenFailablePool(t *testing.T) (*blockstore.Pool, *failFile) {
	t.Helper()
	osf, err := os.OpenFile(filepath.Join(t.TempDir(), "pool"), os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	require.NoError(t, osf.Truncate(testPoolSz))
	f := &failFile{File: osf}
	p, err := blockstore.CreateOn(f, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p, f
}

func testConfig(node string) *Config {
	cfg, err := Config{NodeID: node, Version: "test"}.complete()
	if err != nil {
		panic(err)
	}
	return &cfg
}

func newTestController(t *testing.T) (*controllerServer, *blockstore.Pool) {
	t.Helper()
	p := mustOpenPool(t)
	return newControllerServer(testConfig(testNode), p), p
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
}

var rwo = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

func createReq(name string, size int64) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "ext4")},
	}
}

func mustCreateVolume(t *testing.T, c *controllerServer, name string, size int64) *csi.Volume {
	t.Helper()
	resp, err := c.CreateVolume(context.Background(), createReq(name, size))
	require.NoError(t, err)
	return resp.GetVolume()
}

func mustCreateSnapshot(t *testing.T, c *controllerServer, name, vol string) *csi.Snapshot {
	t.Helper()
	resp, err := c.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: vol})
	require.NoError(t, err)
	return resp.GetSnapshot()
}

// requireCode asserts the gRPC code of err.
func requireCode(t *testing.T, want codes.Code, err error) {
	t.Helper()
	require.Equal(t, want, status.Code(err), "err: %v", err)
}
