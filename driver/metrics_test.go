package driver

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// scrape GETs /metrics from h as Prometheus would and parses the text format.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	require.NoError(t, err)
	return fams
}

// sample returns the value of the metric name whose labels include labels (name, value
// pairs): a counter's or gauge's value, a histogram's sample count; 0 when there is none.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}

// TestMetrics serves the plugin on a unix socket, makes real CSI calls and real I/O through a
// staged block volume, and checks that the scraped metrics follow: RPC counts by method and
// code, latencies, pool figures, export I/O.
func TestMetrics(t *testing.T) {
	needKernel(t)
	pool := mustOpenPool(t)
	dir, err := os.MkdirTemp("", "csi") // short: socket paths are limited to 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	stateDir := filepath.Join(dir, "export")
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	srv, err := NewServer(context.Background(), Config{NodeID: testNode, Version: "v9.9.9"}, storeOf(t, pool, exp))
	require.NoError(t, err)
	require.NoError(t, srv.RegisterNode(context.Background(), NodeConfig{}))
	sock := filepath.Join(dir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-served)
		nodetest.RequireNothingLeft(t, dir, stateDir)
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	cc, nc := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	h := srv.MetricsHandler()

	m := scrape(t, h)
	require.Equal(t, 1.0, sample(m, "dataimage_csi_info", "driver", DefaultDriverName, "version", "v9.9.9", "node", testNode))
	st := pool.Stats()
	require.Equal(t, float64(st.PhysicalBytes), sample(m, "dataimage_pool_capacity_bytes"))
	require.Positive(t, sample(m, "dataimage_pool_capacity_bytes"))
	require.Equal(t, float64(st.FreeBytes), sample(m, "dataimage_pool_free_bytes"))
	require.Equal(t, float64(st.ProvisionLimit), sample(m, "dataimage_pool_provision_limit_bytes"))
	require.Equal(t, 1.0, sample(m, "dataimage_pool_healthy"))
	require.Zero(t, sample(m, "dataimage_pool_volumes"))
	require.Zero(t, sample(m, "dataimage_pool_provisioned_bytes"))
	require.Zero(t, sample(m, "dataimage_export_volumes"))
	require.NotNil(t, m["go_goroutines"], "the Go collector")
	require.NotNil(t, m["process_open_fds"], "the process collector")

	const create = "/csi.v1.Controller/CreateVolume"
	vol, err := cc.CreateVolume(cctx, &csi.CreateVolumeRequest{Name: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mib},
		VolumeCapabilities: []*csi.VolumeCapability{blockCap(rwo)}}, grpc.WaitForReady(true))
	require.NoError(t, err)
	volID := vol.GetVolume().GetVolumeId()
	_, err = cc.CreateVolume(cctx, &csi.CreateVolumeRequest{}) // no name
	requireCode(t, codes.InvalidArgument, err)
	_, err = cc.CreateSnapshot(cctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: volID})
	require.NoError(t, err)

	m = scrape(t, h)
	require.Equal(t, 1.0, sample(m, "dataimage_csi_operations_total", "method", create, "code", "OK"))
	require.Equal(t, 1.0, sample(m, "dataimage_csi_operations_total", "method", create, "code", "InvalidArgument"))
	require.Equal(t, 1.0, sample(m, "dataimage_csi_operations_total", "method", "/csi.v1.Controller/CreateSnapshot", "code", "OK"))
	require.Equal(t, 2.0, sample(m, "dataimage_csi_operation_duration_seconds", "method", create), "both calls timed")
	require.Equal(t, 1.0, sample(m, "dataimage_pool_volumes"))
	require.Equal(t, 1.0, sample(m, "dataimage_pool_snapshots"))
	require.Equal(t, float64(16*mib), sample(m, "dataimage_pool_provisioned_bytes"))
	used0 := sample(m, "dataimage_pool_used_bytes")

	// Stage and publish as a block device; write and read through the kernel.
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	_, err = nc.NodeStageVolume(cctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: blockCap(rwo)})
	require.NoError(t, err)
	_, err = nc.NodePublishVolume(cctx, publishReq(volID, staging, target, blockCap(rwo)))
	require.NoError(t, err)
	m = scrape(t, h)
	require.Equal(t, 1.0, sample(m, "dataimage_export_volumes"))
	writes0 := sample(m, "dataimage_export_io_bytes_total", "op", "write")
	flushes0 := sample(m, "dataimage_export_io_operations_total", "op", "flush")
	reads0 := sample(m, "dataimage_export_io_bytes_total", "op", "read")

	f, err := os.OpenFile(target, os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	buf := nodetest.AlignedBuf(4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	for i := range int64(256) { // 1 MiB
		_, err = f.WriteAt(buf, i*4096)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	for i := range int64(64) {
		_, err = f.ReadAt(buf, i*4096)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())

	m = scrape(t, h)
	require.Equal(t, float64(mib), sample(m, "dataimage_export_io_bytes_total", "op", "write")-writes0, "every byte written once")
	require.GreaterOrEqual(t, sample(m, "dataimage_export_io_operations_total", "op", "write"), 1.0)
	require.Greater(t, sample(m, "dataimage_export_io_operations_total", "op", "flush"), flushes0, "fsync reached the volume")
	require.GreaterOrEqual(t, sample(m, "dataimage_export_io_bytes_total", "op", "read")-reads0, float64(64*4096))
	require.Zero(t, sample(m, "dataimage_export_io_errors_total", "op", "write"))
	require.GreaterOrEqual(t, sample(m, "dataimage_pool_used_bytes")-used0, float64(mib), "the pool holds the data")

	// Node expansion shows in the provisioned bytes; unstaging in the exported volumes.
	_, err = nc.NodeExpandVolume(cctx, &csi.NodeExpandVolumeRequest{VolumeId: volID, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mib}, VolumeCapability: blockCap(rwo)})
	require.NoError(t, err)
	_, err = nc.NodeUnpublishVolume(cctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
	require.NoError(t, err)
	_, err = nc.NodeUnstageVolume(cctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging})
	require.NoError(t, err)
	m = scrape(t, h)
	require.Equal(t, float64(32*mib), sample(m, "dataimage_pool_provisioned_bytes"))
	require.Equal(t, 1.0, sample(m, "dataimage_csi_operations_total", "method", "/csi.v1.Node/NodeExpandVolume", "code", "OK"))
	require.Equal(t, 1.0, sample(m, "dataimage_csi_operation_duration_seconds", "method", "/csi.v1.Node/NodeStageVolume"))
	require.Zero(t, sample(m, "dataimage_export_volumes"))

	// A pool that closed is unhealthy (the server is still up).
	require.NoError(t, pool.Close())
	require.Zero(t, sample(scrape(t, h), "dataimage_pool_healthy"))
}
