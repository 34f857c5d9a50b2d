package driver

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServer serves on a unix socket (over a stale socket file), answers through a real gRPC
// client, logs every call without secrets, and stops gracefully when its context ends.
func TestServer(t *testing.T) {
	pool := mustOpenPool(t)
	var logs syncBuffer
	srv := newTestServer(t, Config{NodeID: testNode, Version: "v0.1.0",
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, pool)
	require.Equal(t, DefaultDriverName, srv.Config().DriverName)

	dir, err := os.MkdirTemp("", "csi") // short: socket paths are limited to 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	stale, err := net.Listen("unix", sock)
	require.NoError(t, err)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, stale.Close())

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, "unix://"+sock) }()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	idc, cc := csi.NewIdentityClient(conn), csi.NewControllerClient(conn)
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()

	info, err := idc.GetPluginInfo(cctx, &csi.GetPluginInfoRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	require.Equal(t, "csi.dataimage.io", info.GetName())
	require.Equal(t, "v0.1.0", info.GetVendorVersion())

	pc, err := idc.GetPluginCapabilities(cctx, &csi.GetPluginCapabilitiesRequest{})
	require.NoError(t, err)
	var services []csi.PluginCapability_Service_Type
	var expansion []csi.PluginCapability_VolumeExpansion_Type
	for _, c := range pc.GetCapabilities() {
		if s := c.GetService(); s != nil {
			services = append(services, s.GetType())
		} else {
			expansion = append(expansion, c.GetVolumeExpansion().GetType())
		}
	}
	require.ElementsMatch(t, []csi.PluginCapability_Service_Type{
		csi.PluginCapability_Service_CONTROLLER_SERVICE,
		csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS,
		csi.PluginCapability_Service_SNAPSHOT_ACCESSIBILITY_CONSTRAINTS,
	}, services)
	require.Equal(t, []csi.PluginCapability_VolumeExpansion_Type{csi.PluginCapability_VolumeExpansion_ONLINE}, expansion)

	probe, err := idc.Probe(cctx, &csi.ProbeRequest{})
	require.NoError(t, err)
	require.True(t, probe.GetReady().GetValue())

	caps, err := cc.ControllerGetCapabilities(cctx, &csi.ControllerGetCapabilitiesRequest{})
	require.NoError(t, err)
	var got []csi.ControllerServiceCapability_RPC_Type
	for _, c := range caps.GetCapabilities() {
		got = append(got, c.GetRpc().GetType())
	}
	require.ElementsMatch(t, controllerCapabilities, got)

	req := createReq("pvc-1", mib)
	req.Secrets = map[string]string{"password": "hunter2-secret"}
	vol, err := cc.CreateVolume(cctx, req)
	require.NoError(t, err)
	_, err = cc.DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), Secrets: req.Secrets})
	require.NoError(t, err)
	_, err = cc.CreateVolume(cctx, &csi.CreateVolumeRequest{Secrets: req.Secrets})
	requireCode(t, codes.InvalidArgument, err)

	cancel()
	select {
	case err := <-served:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}

	out := logs.String()
	require.NotContains(t, out, "hunter2")
	require.Contains(t, out, "***stripped***")
	for _, want := range []string{"/csi.v1.Controller/CreateVolume", "code=OK", "code=InvalidArgument", "latency=", "/csi.v1.Identity/Probe"} {
		require.Contains(t, out, want)
	}
	require.Equal(t, 1, strings.Count(out, "level=WARN"), out) // the refused CreateVolume
}

func TestServeEndpoint(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"unix:///csi/csi.sock", "/csi/csi.sock"},
		{"/csi/csi.sock", "/csi/csi.sock"},
		{"csi.sock", "csi.sock"},
	} {
		got, err := socketPath(tc.in)
		require.NoError(t, err)
		require.Equal(t, tc.want, got)
	}
	for _, bad := range []string{"", "unix://", "tcp://127.0.0.1:10000"} {
		_, err := socketPath(bad)
		require.Error(t, err, bad)
	}
	srv := newTestServer(t, Config{NodeID: testNode, Version: "v"}, mustOpenPool(t))
	require.Error(t, srv.Serve(context.Background(), "tcp://127.0.0.1:0"))
	require.Error(t, srv.Serve(context.Background(), filepath.Join(t.TempDir(), "no", "such", "dir", "csi.sock")))
}

func TestConfig(t *testing.T) {
	cfg, err := Config{NodeID: "n", Version: "v"}.complete()
	require.NoError(t, err)
	require.Equal(t, DefaultDriverName, cfg.DriverName)
	require.Equal(t, DefaultTopologyKey, cfg.TopologyKey)
	require.Equal(t, DefaultVolumeSize, cfg.DefaultVolumeSize)
	require.NotNil(t, cfg.Logger)
	for _, bad := range []Config{
		{Version: "v"},
		{NodeID: "n"},
		{NodeID: strings.Repeat("n", 129), Version: "v"},
		{NodeID: "n", Version: "v", DriverName: "-bad.name"},
		{NodeID: "n", Version: "v", DriverName: strings.Repeat("a", 64)},
		{NodeID: "n", Version: "v", MaxVolumes: -1},
		{NodeID: "n", Version: "v", DefaultVolumeSize: -1},
	} {
		_, err := bad.complete()
		require.Error(t, err, "%+v", bad)
	}
	_, err = NewServer(context.Background(), Config{NodeID: "n", Version: "v"}, nil)
	require.Error(t, err)
	_, err = NewServer(context.Background(), Config{NodeID: "n", Version: "v"}, dataplane.NewClient(filepath.Join(dataplanetest.SocketDir(t), "gone.sock")))
	require.ErrorIs(t, err, dataplane.ErrUnavailable, "the data plane must answer")
}
