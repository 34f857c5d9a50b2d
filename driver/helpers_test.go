package driver

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	testNode   = "node-a"
	otherNode  = "node-b"
	testPoolSz = 64 << 20
	mib        = int64(1 << 20)
)

// mustOpenPool creates a pool of testPoolSz bytes in a temporary directory; cleanup checks it
// (fsck) and closes it unless the test closed or failed it.
func mustOpenPool(t *testing.T) *blockstore.Pool {
	t.Helper()
	return nodetest.Pool(t, filepath.Join(t.TempDir(), "pool"), testPoolSz)
}

// mustOpenFailablePool is mustOpenPool on a file that the test can make fail.
func mustOpenFailablePool(t *testing.T) (*blockstore.Pool, *nodetest.FailFile) {
	t.Helper()
	return nodetest.FailablePool(t, testPoolSz)
}

func testConfig(node string) *Config {
	cfg, err := Config{NodeID: node, Version: "test"}.complete()
	if err != nil {
		panic(err)
	}
	return &cfg
}

// storeOf serves the data plane of pool (exporting through exp; nil: no exports) on a socket
// and returns a client of it: the driver's tests reach the pool as the plugin does, over the
// data plane's socket.
func storeOf(t *testing.T, pool *blockstore.Pool, exp export.Exporter) dataplane.Store {
	t.Helper()
	return dataplanetest.Serve(t, dataplane.NewLocal(pool, exp, nil))
}

func newTestController(t *testing.T) (*controllerServer, *blockstore.Pool) {
	t.Helper()
	p := mustOpenPool(t)
	return newControllerServer(testConfig(testNode), storeOf(t, p, nil), p.BlockSize()), p
}

// newTestServer makes a Server on the data plane of pool (no exports).
func newTestServer(t *testing.T, cfg Config, pool *blockstore.Pool) *Server {
	t.Helper()
	srv, err := NewServer(context.Background(), cfg, storeOf(t, pool, nil))
	require.NoError(t, err)
	return srv
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
