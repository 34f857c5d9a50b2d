package driver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// kubeletEndpoint is the CSI socket as the kubelet sees it (on the host).
const kubeletEndpoint = "/var/lib/kubelet/plugins/csi.dataimage.io/csi.sock"

// startRegistration serves the registration API in a short temporary directory over a stale
// socket, and returns the directory, a client as the kubelet's plugin watcher has, and the
// channel ServeRegistration's result arrives on.
func startRegistration(t *testing.T, ctx context.Context, logs *syncBuffer) (string, registerapi.RegistrationClient, <-chan error) {
	t.Helper()
	srv := newTestServer(t, Config{NodeID: testNode, Version: "test", Logger: slog.New(slog.NewTextHandler(logs, nil))}, mustOpenPool(t))
	dir, err := os.MkdirTemp("", "reg") // short: socket paths are limited to 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.dataimage.io-reg.sock")
	stale, err := net.Listen("unix", sock)
	require.NoError(t, err)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, stale.Close())

	served := make(chan error, 1)
	go func() { served <- srv.ServeRegistration(ctx, dir, kubeletEndpoint) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return dir, registerapi.NewRegistrationClient(conn), served
}

// TestRegistration talks to the plugin's registration socket as the kubelet does: GetInfo
// names the driver, its endpoint and CSI version; an accepted registration keeps the server
// up; a refused one ends it with ErrRegistrationRefused. The socket goes when it stops.
func TestRegistration(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	dir, client, served := startRegistration(t, ctx, logs)
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()

	info, err := client.GetInfo(cctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	require.Equal(t, registerapi.CSIPlugin, info.GetType())
	require.Equal(t, DefaultDriverName, info.GetName())
	require.Equal(t, kubeletEndpoint, info.GetEndpoint())
	require.Equal(t, []string{"1.0.0"}, info.GetSupportedVersions())

	_, err = client.NotifyRegistrationStatus(cctx, &registerapi.RegistrationStatus{PluginRegistered: true})
	require.NoError(t, err)
	select {
	case err := <-served:
		t.Fatalf("the registration server stopped after an accepted registration: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	require.Contains(t, logs.String(), "registered with the kubelet")

	_, err = client.NotifyRegistrationStatus(cctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "plugin csi.dataimage.io: version 0.9 unsupported"})
	require.NoError(t, err)
	select {
	case err := <-served:
		require.ErrorIs(t, err, ErrRegistrationRefused)
		require.ErrorContains(t, err, "version 0.9 unsupported")
	case <-time.After(10 * time.Second):
		t.Fatal("a refused registration did not stop the registration server")
	}
	require.Contains(t, logs.String(), "the kubelet refused the plugin's registration")
	_, err = os.Stat(filepath.Join(dir, "csi.dataimage.io-reg.sock"))
	require.ErrorIs(t, err, os.ErrNotExist, "the socket is removed")
}

// TestRegistrationStop: the server stops without error when its context ends, and removes its
// socket so that the kubelet unregisters the plugin.
func TestRegistrationStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dir, client, served := startRegistration(t, ctx, &syncBuffer{})
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	_, err := client.GetInfo(cctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	cancel()
	select {
	case err := <-served:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("ServeRegistration did not return after its context ended")
	}
	_, err = os.Stat(filepath.Join(dir, "csi.dataimage.io-reg.sock"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestRegistrationErrors: missing paths and a directory that cannot hold the socket are errors
// that name what is wrong.
func TestRegistrationErrors(t *testing.T) {
	srv := newTestServer(t, Config{NodeID: testNode, Version: "test"}, mustOpenPool(t))
	ctx := context.Background()
	require.ErrorContains(t, srv.ServeRegistration(ctx, "", kubeletEndpoint), "registration directory")
	require.ErrorContains(t, srv.ServeRegistration(ctx, t.TempDir(), ""), "kubelet's CSI endpoint")
	missing := filepath.Join(t.TempDir(), "nowhere")
	err := srv.ServeRegistration(ctx, missing, kubeletEndpoint)
	require.ErrorContains(t, err, missing)
	require.False(t, errors.Is(err, ErrRegistrationRefused))
}
