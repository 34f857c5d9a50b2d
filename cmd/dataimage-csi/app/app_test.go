package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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
	"github.com/dataimage/dataimage/driver"
	"github.com/dataimage/dataimage/internal/units"
)

// required are the flags every valid command line has.
var required = []string{"--node-id", "n1", "--pool", "/var/lib/dataimage/pool"}

func TestParseDefaults(t *testing.T) {
	var out bytes.Buffer
	c, err := parse(required, &out)
	require.NoError(t, err)
	require.Equal(t, Config{
		Endpoint:       "unix:///csi/csi.sock",
		NodeID:         "n1",
		Pool:           "/var/lib/dataimage/pool",
		ExportStateDir: "/run/dataimage/export",
		DefaultFSType:  "ext4",
		LogFormat:      "text",

		PoolCheckInterval: 12 * time.Hour,
	}, c)
	require.Empty(t, out.String())
}

func TestParseAll(t *testing.T) {
	c, err := parse([]string{
		"--endpoint", "unix:///tmp/x.sock", "--node-id", "worker-3", "--pool", "/dev/vdb",
		"--pool-size", "100Gi", "--pool-format-nonblank", "--preallocate", "--export", "fuse-loop", "--export-state-dir", "/run/x",
		"--default-fstype", "xfs", "--overprovision-ratio", "2.5", "--max-volumes", "7", "-v", "2",
		"--log-format", "json", "--plugin-registration-path", "/registration",
		"--kubelet-registration-path", "/var/lib/kubelet/plugins/csi.dataimage.io/csi.sock", "--metrics-address", ":9090",
		"--pool-check-interval", "30m",
	}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, Config{
		Endpoint: "unix:///tmp/x.sock", NodeID: "worker-3", Pool: "/dev/vdb", PoolSize: 100 << 30,
		PoolFormatNonBlank: true, Preallocate: true, Export: "fuse-loop", ExportStateDir: "/run/x", DefaultFSType: "xfs",
		OverProvisionRatio: 2.5, MaxVolumes: 7, Verbosity: 2, LogFormat: "json",
		PluginRegistrationPath:  "/registration",
		KubeletRegistrationPath: "/var/lib/kubelet/plugins/csi.dataimage.io/csi.sock",
		MetricsAddress:          ":9090",
		PoolCheckInterval:       30 * time.Minute,
	}, c)
}

// TestPoolSizeFlag runs --pool-size through units.Examples: a size means the same here as to
// every other command (the dataimage command's size flags run them too).
func TestPoolSizeFlag(t *testing.T) {
	for _, e := range units.Examples {
		c, err := parse(append([]string{"--pool-size", e.Text}, required...), io.Discard)
		if e.Rule == "" {
			require.NoError(t, err, e.Text)
			require.Equal(t, e.Bytes, c.PoolSize, e.Text)
			continue
		}
		require.ErrorContains(t, err, "--pool-size: invalid size "+strconv.Quote(e.Text)+": ", e.Text)
		require.ErrorContains(t, err, e.Rule, e.Text)
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
		{"no node id", []string{"--pool", "/p"}, []string{"--node-id is required"}},
		{"no pool", []string{"--node-id", "n1"}, []string{"--pool is required"}},
		{"empty node id", []string{"--node-id=", "--pool", "/p"}, []string{"--node-id is required"}},
		{"bad size", append([]string{"--pool-size", "12GB"}, required...), []string{"--pool-size", `"12GB"`}},
		{"zero size", append([]string{"--pool-size", "0"}, required...), []string{"--pool-size", `"0"`}},
		{"negative size", append([]string{"--pool-size", "-1Gi"}, required...), []string{"--pool-size", `"-1Gi"`}},
		{"huge size", append([]string{"--pool-size", "9999999999Ti"}, required...), []string{"--pool-size", "too large"}},
		{"format without size", append([]string{"--pool-format-nonblank"}, required...), []string{"--pool-format-nonblank needs --pool-size"}},
		{"log format", append([]string{"--log-format", "yaml"}, required...), []string{"--log-format", `"yaml"`}},
		{"fs type", append([]string{"--default-fstype", "btrfs"}, required...), []string{"--default-fstype", `"btrfs"`}},
		{"negative check interval", append([]string{"--pool-check-interval", "-1h"}, required...), []string{"--pool-check-interval -1h0m0s", "negative"}},
		{"unexpected args", append(required, "extra", "more"), []string{"unexpected arguments: extra more"}},
		{"unknown flag", append([]string{"--bogus"}, required...), []string{"flag provided but not defined: -bogus"}},
		{"bad int", append([]string{"--max-volumes", "many"}, required...), []string{"-max-volumes", "many"}},
		{"bad float", append([]string{"--overprovision-ratio", "x"}, required...), []string{"-overprovision-ratio"}},
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
		for _, w := range []string{"Usage: dataimage-csi", "-node-id", "-pool-size", "-pool-format-nonblank", "-log-format", "-default-fstype", "-export-state-dir",
			"-plugin-registration-path", "-kubelet-registration-path", "-metrics-address", "csi.dataimage.io-reg.sock", "/metrics"} {
			require.Contains(t, out.String(), w, help)
		}
	}
}

func TestLogger(t *testing.T) {
	var text, js bytes.Buffer
	logger(Config{LogFormat: "text"}, &text).Debug("hidden")
	logger(Config{LogFormat: "text"}, &text).Info("shown", "k", "v")
	require.NotContains(t, text.String(), "hidden")
	require.Contains(t, text.String(), "msg=shown k=v")
	logger(Config{LogFormat: "json", Verbosity: 1}, &js).Debug("debug", "k", "v")
	require.Contains(t, js.String(), `"msg":"debug","k":"v"`)
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

// TestRun runs the plugin in-process: it creates the pool file, serves Identity and Node on a
// unix socket, stops when its context ends, and leaves a pool that reopens clean.
func TestRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the export needs /dev/fuse and loop devices")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	require.Less(t, len(sock), 100, "socket path too long")
	reg := filepath.Join(dir, "registration")
	require.NoError(t, os.Mkdir(reg, 0o700))
	c := Config{
		Endpoint:                "unix://" + sock,
		NodeID:                  "n1",
		Pool:                    filepath.Join(dir, "pools", "pool"), // its directory is created too
		PoolSize:                512 << 20,
		ExportStateDir:          filepath.Join(dir, "export"),
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
	go func() { ran <- Run(ctx, c, logger(c, logs)) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-ran
		}
	})

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

	fi, err := os.Stat(c.Pool)
	require.NoError(t, err)
	require.Equal(t, c.PoolSize, fi.Size())

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
	out := logs.String()
	for _, w := range []string{"creating pool", "pool open", "serving", "stopped"} {
		require.Contains(t, out, w)
	}
	_, err = os.Stat(sock)
	require.ErrorIs(t, err, os.ErrNotExist, "the socket is removed when the server stops")
	_, err = os.Stat(regSock)
	require.ErrorIs(t, err, os.ErrNotExist, "the registration socket too")
	_, err = http.Get("http://" + addr[1] + "/metrics")
	require.Error(t, err, "the metrics endpoint is closed")

	p, err := blockstore.Open(c.Pool, blockstore.Options{})
	require.NoError(t, err)
	defer p.Close()
	rec := p.Recovery()
	require.Zero(t, rec.Records, "a clean stop leaves nothing to replay: %+v", rec)
	rep, err := p.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "fsck: %s", rep)
	require.NoError(t, p.Close())

	// A second run opens the existing pool (no --pool-size needed) and stops again.
	c.PoolSize, c.PluginRegistrationPath, c.KubeletRegistrationPath, c.MetricsAddress = 0, "", "", ""
	ctx2, cancel2 := context.WithCancel(context.Background())
	ran2 := make(chan error, 1)
	go func() { ran2 <- Run(ctx2, c, slog.New(slog.DiscardHandler)) }()
	_, err = idc.Probe(cctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	cancel2()
	require.NoError(t, <-ran2)
}

// TestRunErrors: Run refuses a missing pool without --pool-size, a file that is not a pool, and
// an unknown export method, and leaves the pool closed (a later Open works).
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	base := Config{Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), NodeID: "n1",
		ExportStateDir: filepath.Join(dir, "export"), DefaultFSType: "ext4", LogFormat: "text"}

	c := base
	c.Pool = filepath.Join(dir, "missing")
	err := Run(context.Background(), c, log)
	require.ErrorContains(t, err, "--pool-size")

	c.Pool = filepath.Join(dir, "junk")
	require.NoError(t, os.WriteFile(c.Pool, bytes.Repeat([]byte("x"), 1<<20), 0o600))
	err = Run(context.Background(), c, log)
	require.ErrorIs(t, err, blockstore.ErrNotPool)

	c.Pool, c.PoolSize, c.Export = filepath.Join(dir, "pool"), 64<<20, "nbd"
	err = Run(context.Background(), c, log)
	require.ErrorContains(t, err, `"nbd"`)
	p, err := blockstore.Open(c.Pool, blockstore.Options{}) // created, then closed
	require.NoError(t, err)
	require.NoError(t, p.Close())
}

// TestMainRegistrationRefused runs the command as the DaemonSet does and plays the kubelet:
// GetInfo on the registration socket, NodeGetInfo on the CSI endpoint, then a refusal. The
// plugin exits with code 1 and says why, so that the pod restarts and registers again.
func TestMainRegistrationRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the export needs /dev/fuse and loop devices")
	}
	dir, err := os.MkdirTemp("", "csi") // short: socket paths are limited to 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	reg := filepath.Join(dir, "registration")
	require.NoError(t, os.Mkdir(reg, 0o700))
	sock := filepath.Join(dir, "csi.sock")
	args := []string{"--node-id", "n1", "--pool", filepath.Join(dir, "pool"), "--pool-size", "64Mi",
		"--endpoint", "unix://" + sock, "--export-state-dir", filepath.Join(dir, "export"),
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
	p, err := blockstore.Open(filepath.Join(dir, "pool"), blockstore.Options{}) // closed cleanly
	require.NoError(t, err)
	require.Zero(t, p.Recovery().Records)
	require.NoError(t, p.Close())
}

// TestMainRefusesNonBlankDevices runs the command on devices that must never be made a pool,
// with --pool-size: one with a file system, one with a pool whose superblocks are both damaged,
// one that fails reads past 8 MiB (a loop device over a truncated file) and one mounted. It
// exits with code 1 at once, the message names the device and what it found, and the device is
// unchanged. A blank device without --pool-size is refused too (the size is the confirmation).
func TestMainRefusesNonBlankDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices")
	}
	for _, tool := range []string{"losetup", "blkid", "mkfs.ext4", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (make deps)", tool)
		}
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dev, backing string)
		args  []string
		want  []string
	}{
		{"ext4", func(t *testing.T, dev, _ string) { mustRun(t, "mkfs.ext4", "-q", dev) },
			[]string{"--pool-size", "64Mi"}, []string{"is not blank: it holds an ext4 file system", "--pool-format-nonblank"}},
		{"damaged pool", func(t *testing.T, dev, _ string) {
			p, err := blockstore.Create(dev, blockstore.Options{})
			require.NoError(t, err)
			require.NoError(t, p.Close())
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			require.NoError(t, err)
			for _, off := range []int64{20, 4096 + 20} {
				_, err = f.WriteAt([]byte{0xff}, off)
				require.NoError(t, err)
			}
			require.NoError(t, f.Close())
		}, []string{"--pool-size", "64Mi"}, []string{"corrupt", "superblock"}},
		{"read errors", func(t *testing.T, _, backing string) { require.NoError(t, os.Truncate(backing, 8<<20)) },
			[]string{"--pool-size", "64Mi"}, []string{"input/output error"}},
		{"mounted", func(t *testing.T, dev, _ string) {
			mustRun(t, "mkfs.ext4", "-q", dev)
			mnt := t.TempDir()
			mustRun(t, "mount", "-o", "ro", dev, mnt)
			t.Cleanup(func() { mustRun(t, "umount", mnt) })
		}, []string{"--pool-size", "64Mi"}, []string{"in use", "mounted at"}},
		{"blank, no size", func(t *testing.T, _, _ string) {}, nil, []string{"no pool at", "the device is blank", "--pool-size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, backing := loopDevice(t, 64<<20)
			tc.setup(t, dev, backing)
			before, err := os.ReadFile(backing)
			require.NoError(t, err)
			dir := t.TempDir()
			var out syncBuffer
			exited := make(chan int, 1)
			go func() {
				exited <- Main(append([]string{"--node-id", "n1", "--pool", dev, "--endpoint", "unix://" + filepath.Join(dir, "csi.sock"),
					"--export-state-dir", filepath.Join(dir, "export")}, tc.args...), &out)
			}()
			var code int
			select {
			case code = <-exited:
			case <-time.After(time.Minute):
				t.Fatalf("the plugin did not exit: it serves a pool it made on %s; output:\n%s", dev, out.String())
			}
			require.Equal(t, 1, code, "output: %s", out.String())
			t.Logf("%s", out.String())
			require.Contains(t, out.String(), "dataimage-csi: ")
			require.Contains(t, out.String(), dev)
			for _, w := range tc.want {
				require.Contains(t, out.String(), w)
			}
			after, err := os.ReadFile(backing)
			require.NoError(t, err)
			require.True(t, bytes.Equal(before, after), "the device is unchanged")
		})
	}
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v: %s", name, args, out)
	return string(out)
}

// loopDevice attaches a loop device to a new sparse file of size bytes; it is detached at
// cleanup.
func loopDevice(t testing.TB, size int64) (dev, backing string) {
	t.Helper()
	backing = filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.WriteFile(backing, nil, 0o600))
	require.NoError(t, os.Truncate(backing, size))
	dev = strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", backing))
	t.Cleanup(func() { mustRun(t, "losetup", "--detach", dev) })
	return dev, backing
}
