package app

import (
	"bytes"
	"context"
	"github.com/dataimage/dataimage/exportset/remote"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/dataimage/dataimage/driver"
	"github.com/dataimage/dataimage/internal/cli"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// required are the flags every valid command line has.
var required = []string{"--node-id", "n1"}

func TestParseDefaults(t *testing.T) {
	var out bytes.Buffer
	c, err := parse(required, &out)
	require.NoError(t, err)
	require.Equal(t, Config{
		Endpoint:        "unix:///csi/csi.sock",
		NodeID:          "n1",
		DataPlaneSocket: dataplane.DefaultSocket,
		DefaultFSType:   "ext4",
		LogFormat:       "text",

		PoolCheckInterval: 12 * time.Hour,
		RegistrySync:      10 * time.Second,
	}, c)
	require.Empty(t, out.String())
}

func TestParseAll(t *testing.T) {
	c, err := parse([]string{
		"--endpoint", "unix:///tmp/x.sock", "--node-id", "worker-3", "--dataplane-socket", "/run/x/dp.sock",
		"--default-fstype", "xfs", "--max-volumes", "7", "-v", "2",
		"--log-format", "json", "--plugin-registration-path", "/registration",
		"--kubelet-registration-path", "/var/lib/kubelet/plugins/csi.dataimage.io/csi.sock", "--metrics-address", ":9090",
		"--pool-check-interval", "30m", "--registry", "s3://images/prod", "--registry-endpoint", "https://s3.example:9000",
		"--registry-region", "eu-1", "--registry-ca-file", "/etc/ca.pem", "--registry-path-style", "--registry-sync", "30s",
	}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, Config{
		Endpoint: "unix:///tmp/x.sock", NodeID: "worker-3", DataPlaneSocket: "/run/x/dp.sock", DefaultFSType: "xfs",
		MaxVolumes: 7, Verbosity: 2, LogFormat: "json",
		PluginRegistrationPath:  "/registration",
		KubeletRegistrationPath: "/var/lib/kubelet/plugins/csi.dataimage.io/csi.sock",
		MetricsAddress:          ":9090",
		PoolCheckInterval:       30 * time.Minute,
		Registry: remote.Flags{URL: "s3://images/prod", Endpoint: "https://s3.example:9000", Region: "eu-1", CAFile: "/etc/ca.pem",
			PathStyle: true},
		RegistrySync: 30 * time.Second,
	}, c)
}

// TestRegistryFlags: a registry that does not parse, or registry options without one, stop
// the plugin naming the flag; credentials come from the AWS environment.
func TestRegistryFlags(t *testing.T) {
	for _, tc := range []struct {
		f    remote.Flags
		want string
	}{
		{remote.Flags{URL: "http://images"}, "--registry"},
		{remote.Flags{Endpoint: "https://s3.example"}, "need --registry"},
		{remote.Flags{URL: "s3://images", Endpoint: "ftp://x"}, "endpoint"},
	} {
		_, err := tc.f.Open(func(string) string { return "" })
		require.ErrorContains(t, err, tc.want, "%+v", tc.f)
	}
	tg, err := remote.Flags{URL: "s3://images/prod", Endpoint: "http://127.0.0.1:1", PathStyle: true}.Open(func(k string) string {
		return map[string]string{"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}[k]
	})
	require.NoError(t, err)
	require.Equal(t, "s3://images/prod", tg.String()[:len("s3://images/prod")])
	tg, err = remote.Flags{}.Open(func(string) string { return "" })
	require.NoError(t, err)
	require.Nil(t, tg)
	_, err = parse(append(slices.Clone(required), "--registry-sync", "0s"), &bytes.Buffer{})
	require.ErrorContains(t, err, "--registry-sync")
}

// TestMovedFlags: the pool's and the exports' flags moved to dataimage-dataplane; the plugin
// refuses each (with or without a value), naming them all and the new place, with exit code 2.
func TestMovedFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--pool", "/var/lib/dataimage/pool"},
		{"--pool=/dev/vdb", "--pool-size", "100Gi", "--pool-format-nonblank"},
		{"--preallocate"},
		{"--preallocate=false"},
		{"--overprovision-ratio", "2"},
		{"--export", "fuse-loop", "--export-state-dir", "/run/x"},
	} {
		var out bytes.Buffer
		require.Equal(t, 2, Main(append(slices.Clone(required), args...), &out), "%q", args)
		for _, a := range args {
			if name, ok := strings.CutPrefix(a, "--"); ok {
				name, _, _ = strings.Cut(name, "=")
				require.Contains(t, out.String(), "--"+name, "%q", args)
			}
		}
		require.Contains(t, out.String(), "moved to dataimage-dataplane")
		require.Contains(t, out.String(), "--dataplane-socket")
	}
}

// TestMainExitCodes runs the command with bad command lines: exit code 2 and a message that
// names what is wrong; --help is exit code 0 with the usage.
func TestMainExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string // substrings of the output
	}{
		{"no flags", nil, []string{"--node-id is required"}},
		{"empty node id", []string{"--node-id="}, []string{"--node-id is required"}},
		{"relative data plane socket", append([]string{"--dataplane-socket", "dp.sock"}, required...), []string{`--dataplane-socket "dp.sock"`, "absolute"}},
		{"log format", append([]string{"--log-format", "yaml"}, required...), []string{"--log-format", `"yaml"`}},
		{"fs type", append([]string{"--default-fstype", "btrfs"}, required...), []string{"--default-fstype", `"btrfs"`}},
		{"negative check interval", append([]string{"--pool-check-interval", "-1h"}, required...), []string{"--pool-check-interval -1h0m0s", "negative"}},
		{"unexpected args", append(required, "extra", "more"), []string{"unexpected arguments: extra more"}},
		{"unknown flag", append([]string{"--bogus"}, required...), []string{"flag provided but not defined: -bogus"}},
		{"bad int", append([]string{"--max-volumes", "many"}, required...), []string{"-max-volumes", "many"}},
		{"missing value", append(required, "--endpoint"), []string{"flag needs an argument: -endpoint"}},
		{"registration without endpoint", append([]string{"--plugin-registration-path", "/registration"}, required...), []string{"--plugin-registration-path needs --kubelet-registration-path"}},
		{"endpoint without registration", append([]string{"--kubelet-registration-path", "/k/csi.sock"}, required...), []string{"--kubelet-registration-path is only used with --plugin-registration-path"}},
		{"relative kubelet path", append([]string{"--plugin-registration-path", "/r", "--kubelet-registration-path", "k/csi.sock"}, required...), []string{`--kubelet-registration-path "k/csi.sock"`, "absolute"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			code := Main(tc.args, &out)
			require.Equal(t, 2, code, "output: %s", &out)
			for _, w := range tc.want {
				require.Contains(t, out.String(), w)
			}
			require.Contains(t, out.String(), "dataimage-csi: ")
			require.Contains(t, out.String(), "(see --help)")
		})
	}
	for _, help := range []string{"--help", "-h", "-help"} {
		var out bytes.Buffer
		require.Equal(t, 0, Main([]string{help}, &out), help)
		for _, w := range []string{"Usage: dataimage-csi", "-node-id", "-dataplane-socket", "dataimage-dataplane", "-log-format", "-default-fstype",
			"-plugin-registration-path", "-kubelet-registration-path", "-metrics-address", "csi.dataimage.io-reg.sock", "/metrics",
			"-pool-size value\n    \tmoved to dataimage-dataplane"} {
			require.Contains(t, out.String(), w, help)
		}
	}
}

// syncBuffer is a log sink safe for the plugin's goroutines.
type syncBuffer struct {
	mu   sync.Mutex
	data bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.data.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.data.String()
}

// dataPlaneAt serves a data plane on a new pool at sock (exporting through this node's export
// method, its state under dir) until cleanup.
func dataPlaneAt(t *testing.T, dir, sock string) *blockstore.Pool {
	t.Helper()
	pool := nodetest.Pool(t, filepath.Join(dir, "pool"), 512<<20)
	exp, err := export.Detect(export.Options{StateDir: filepath.Join(dir, "export")})
	require.NoError(t, err)
	lis, err := dataplane.Listen(sock)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- dataplane.NewServer(dataplane.NewLocal(pool, exp, nil), "test", nil).Serve(ctx, lis) }()
	t.Cleanup(func() { // before the pool's cleanup
		cancel()
		require.NoError(t, <-served)
	})
	return pool
}

// TestRun runs the plugin in-process before its data plane is there: it waits for the data
// plane, then serves Identity and Node on a unix socket, registers with the kubelet, serves
// metrics (the pool's, from the data plane), and stops when its context ends, leaving the data
// plane serving.
func TestRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the export needs /dev/fuse and loop devices")
	}
	dir := dataplanetest.SocketDir(t)
	sock := filepath.Join(dir, "csi.sock")
	reg := filepath.Join(dir, "registration")
	require.NoError(t, os.Mkdir(reg, 0o700))
	c := Config{
		Endpoint:                "unix://" + sock,
		NodeID:                  "n1",
		DataPlaneSocket:         filepath.Join(dir, "dp", "dp.sock"),
		DefaultFSType:           "ext4",
		MaxVolumes:              3,
		LogFormat:               "text",
		PluginRegistrationPath:  reg,
		KubeletRegistrationPath: "/var/lib/kubelet/plugins/csi.dataimage.io/csi.sock",
		MetricsAddress:          "127.0.0.1:0",
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- Run(ctx, c, cli.NewLogger(logs, c.LogFormat, c.Verbosity)) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-ran
		}
	})
	time.Sleep(300 * time.Millisecond)
	_, err := os.Stat(sock)
	require.ErrorIs(t, err, os.ErrNotExist, "no CSI socket before the data plane answers")
	dataPlaneAt(t, dir, c.DataPlaneSocket)

	conn, err := grpc.NewClient(c.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	idc, nc := csi.NewIdentityClient(conn), csi.NewNodeClient(conn)

	info, err := idc.GetPluginInfo(cctx, &csi.GetPluginInfoRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	require.Equal(t, driver.DefaultDriverName, info.GetName())
	require.Equal(t, Version, info.GetVendorVersion())
	probe, err := idc.Probe(cctx, &csi.ProbeRequest{})
	require.NoError(t, err)
	require.True(t, probe.GetReady().GetValue())
	ni, err := nc.NodeGetInfo(cctx, &csi.NodeGetInfoRequest{})
	require.NoError(t, err)
	require.Equal(t, "n1", ni.GetNodeId())
	require.Equal(t, int64(3), ni.GetMaxVolumesPerNode())
	require.Equal(t, map[string]string{driver.DefaultTopologyKey: "n1"}, ni.GetAccessibleTopology().GetSegments())

	// The kubelet's registration: the plugin names its driver and the kubelet's endpoint.
	regSock := filepath.Join(reg, "csi.dataimage.io-reg.sock")
	rconn, err := grpc.NewClient("unix://"+regSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer rconn.Close()
	rc := registerapi.NewRegistrationClient(rconn)
	pi, err := rc.GetInfo(cctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	require.Equal(t, driver.DefaultDriverName, pi.GetName())
	require.Equal(t, c.KubeletRegistrationPath, pi.GetEndpoint())
	_, err = rc.NotifyRegistrationStatus(cctx, &registerapi.RegistrationStatus{PluginRegistered: true})
	require.NoError(t, err)

	// The metrics endpoint, on the port the log names: the pool and the calls made above.
	addr := regexp.MustCompile(`msg="serving metrics" address=(\S+)`).FindStringSubmatch(logs.String())
	require.NotNil(t, addr, "logs:\n%s", logs)
	resp, err := http.Get("http://" + addr[1] + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), `dataimage_pool_capacity_bytes `)
	require.Contains(t, string(body), `dataimage_csi_operations_total{code="OK",method="/csi.v1.Node/NodeGetInfo"} 1`)
	require.Contains(t, string(body), `dataimage_csi_info{driver="csi.dataimage.io",node="n1",version="`+Version+`"} 1`)

	cancel()
	select {
	case err := <-ran:
		stopped = true
		require.NoError(t, err, "logs:\n%s", logs)
	case <-time.After(40 * time.Second):
		t.Fatalf("Run did not return after its context ended; logs:\n%s", logs)
	}
	for _, w := range []string{"data plane answers", "serving", "stopped"} {
		require.Contains(t, logs.String(), w)
	}
	_, err = os.Stat(sock)
	require.ErrorIs(t, err, os.ErrNotExist, "the socket is removed when the server stops")
	_, err = os.Stat(regSock)
	require.ErrorIs(t, err, os.ErrNotExist, "the registration socket too")
	_, err = http.Get("http://" + addr[1] + "/metrics")
	require.Error(t, err, "the metrics endpoint is closed")
	dp := dataplane.NewClient(c.DataPlaneSocket)
	defer dp.Close()
	require.NoError(t, dp.Health(context.Background()), "the data plane serves on after the plugin stopped")
}

// TestRunNoDataPlane: a plugin whose data plane never answers waits, saying so, until its
// context ends, and then fails naming the socket.
func TestRunNoDataPlane(t *testing.T) {
	dir := dataplanetest.SocketDir(t)
	c := Config{Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), NodeID: "n1", DataPlaneSocket: filepath.Join(dir, "dp.sock"), DefaultFSType: "ext4"}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := Run(ctx, c, slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "wait for the data plane at "+c.DataPlaneSocket)
	_, err = os.Stat(filepath.Join(dir, "csi.sock"))
	require.ErrorIs(t, err, os.ErrNotExist, "no CSI socket without a data plane")
}

// TestMainRegistrationRefused runs the command as the DaemonSet does (its data plane serving) and plays the kubelet:
// GetInfo on the registration socket, NodeGetInfo on the CSI endpoint, then a refusal. The
// plugin exits with code 1 and says why, so that the pod restarts and registers again.
func TestMainRegistrationRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the export needs /dev/fuse and loop devices")
	}
	dir := dataplanetest.SocketDir(t)
	reg := filepath.Join(dir, "registration")
	require.NoError(t, os.Mkdir(reg, 0o700))
	sock, dpSock := filepath.Join(dir, "csi.sock"), filepath.Join(dir, "dp.sock")
	dataPlaneAt(t, dir, dpSock)
	args := []string{"--node-id", "n1", "--dataplane-socket", dpSock, "--endpoint", "unix://" + sock,
		"--plugin-registration-path", reg, "--kubelet-registration-path", sock}
	stderr := &syncBuffer{}
	code := make(chan int, 1)
	go func() { code <- Main(args, stderr) }()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rconn, err := grpc.NewClient("unix://"+filepath.Join(reg, "csi.dataimage.io-reg.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer rconn.Close()
	rc := registerapi.NewRegistrationClient(rconn)
	info, err := rc.GetInfo(ctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	conn, err := grpc.NewClient("unix://"+info.GetEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ni, err := csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	require.NoError(t, err, "the CSI endpoint listens before the registration socket appears")
	require.Equal(t, "n1", ni.GetNodeId())
	_, err = rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "RegisterPlugin error -- no handler registered for plugin type: CSIPlugin"})
	require.NoError(t, err)
	select {
	case c := <-code:
		require.Equal(t, 1, c, "stderr:\n%s", stderr)
	case <-time.After(40 * time.Second):
		t.Fatalf("the plugin did not exit after a refused registration; stderr:\n%s", stderr)
	}
	require.Contains(t, stderr.String(), "kubelet registration: driver: the kubelet refused the plugin's registration: RegisterPlugin error")
}
