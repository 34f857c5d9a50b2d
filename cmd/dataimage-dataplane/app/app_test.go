package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/dataimage/dataimage/internal/cli"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/dataimage/dataimage/internal/units"
)

// required are the flags every valid command line has; --io-flusher=false keeps Main from
// executing the test binary again.
var required = []string{"--pool", "/var/lib/dataimage/pool", "--io-flusher=false"}

func TestParseDefaults(t *testing.T) {
	var out bytes.Buffer
	c, err := parse([]string{"--pool", "/var/lib/dataimage/pool"}, &out)
	require.NoError(t, err)
	require.Equal(t, Config{
		DataPlane: dataplane.Config{Socket: dataplane.DefaultSocket, Pool: "/var/lib/dataimage/pool", ExportStateDir: "/run/dataimage/export"},
		LogFormat: "text",
		IOFlusher: true,
	}, c)
	require.Empty(t, out.String())
}

func TestParseAll(t *testing.T) {
	c, err := parse([]string{
		"--socket", "/run/x/dp.sock", "--pool", "/dev/vdb", "--pool-size", "100Gi", "--pool-format-nonblank", "--preallocate",
		"--export", "fuse-loop", "--export-state-dir", "/run/x", "--overprovision-ratio", "2.5", "-v", "2",
		"--log-format", "json", "--io-flusher=false", "--holder", "/run/x/holder.sock",
	}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, Config{
		DataPlane: dataplane.Config{Socket: "/run/x/dp.sock", Pool: "/dev/vdb", PoolSize: 100 << 30, PoolFormatNonBlank: true, Preallocate: true,
			Export: "fuse-loop", ExportStateDir: "/run/x", OverProvisionRatio: 2.5, Holder: "/run/x/holder.sock"},
		Verbosity: 2, LogFormat: "json",
	}, c)
}

// TestPoolSizeFlag runs --pool-size through units.Examples: a size means the same here as to
// every other command.
func TestPoolSizeFlag(t *testing.T) {
	for _, e := range units.Examples {
		c, err := parse(append([]string{"--pool-size", e.Text}, required...), io.Discard)
		if e.Rule == "" {
			require.NoError(t, err, e.Text)
			require.Equal(t, e.Bytes, c.DataPlane.PoolSize, e.Text)
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
		{"no flags", nil, []string{"--pool is required"}},
		{"empty pool", []string{"--pool="}, []string{"--pool is required"}},
		{"bad size", append([]string{"--pool-size", "12GB"}, required...), []string{"--pool-size", `"12GB"`}},
		{"zero size", append([]string{"--pool-size", "0"}, required...), []string{"--pool-size", `"0"`}},
		{"huge size", append([]string{"--pool-size", "9999999999Ti"}, required...), []string{"--pool-size", "too large"}},
		{"format without size", append([]string{"--pool-format-nonblank"}, required...), []string{"--pool-format-nonblank needs --pool-size"}},
		{"negative ratio", append([]string{"--overprovision-ratio", "-1"}, required...), []string{"--overprovision-ratio -1", "negative"}},
		{"relative socket", append([]string{"--socket", "dp.sock"}, required...), []string{`--socket "dp.sock"`, "absolute"}},
		{"log format", append([]string{"--log-format", "yaml"}, required...), []string{"--log-format", `"yaml"`}},
		{"unexpected args", append(required, "extra"), []string{"unexpected arguments: extra"}},
		{"unknown flag", append([]string{"--bogus"}, required...), []string{"flag provided but not defined: -bogus"}},
		{"bad float", append([]string{"--overprovision-ratio", "x"}, required...), []string{"-overprovision-ratio"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			code := Main(tc.args, &out)
			require.Equal(t, 2, code, "output: %s", &out)
			for _, w := range tc.want {
				require.Contains(t, out.String(), w)
			}
			require.Contains(t, out.String(), "dataimage-dataplane: ")
			require.Contains(t, out.String(), "(see --help)")
		})
	}
	for _, help := range []string{"--help", "-h"} {
		var out bytes.Buffer
		require.Equal(t, 0, Main([]string{help}, &out), help)
		for _, w := range []string{"Usage: dataimage-dataplane", "-socket", "-pool-size", "-pool-format-nonblank", "-export-state-dir",
			"-io-flusher", "dataimage-csi --dataplane-socket", "SIGTERM"} {
			require.Contains(t, out.String(), w, help)
		}
	}
}

// TestRun runs the data plane in-process: it creates the pool file, serves its API on the
// socket (mode 0600), stops when its context ends, removes the socket, and leaves a pool that
// reopens clean; a second run opens the existing pool without --pool-size.
func TestRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the export needs /dev/fuse and loop devices")
	}
	dir := dataplanetest.SocketDir(t)
	c := Config{DataPlane: dataplane.Config{
		Socket:         filepath.Join(dir, "run", "dp.sock"), // its directory is made
		Pool:           filepath.Join(dir, "pools", "pool"),  // its directory is made too
		PoolSize:       512 << 20,
		ExportStateDir: filepath.Join(dir, "export"),
	}, LogFormat: "text"}
	logs := newLogFile(t)
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
	d := c.DataPlane
	cl := dataplane.NewClient(d.Socket)
	defer cl.Close()
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	require.NoError(t, cl.WaitReady(wctx, nil), "logs:\n%s", logs)
	api, version, err := cl.Version(wctx)
	require.NoError(t, err)
	require.Equal(t, dataplane.APIVersion, api)
	require.Equal(t, Version, version)
	require.NoError(t, cl.Health(wctx))
	st, err := cl.Stats(wctx)
	require.NoError(t, err)
	require.Positive(t, st.PhysicalBytes)
	fi, err := os.Stat(d.Socket)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the socket is root's alone")
	fi, err = os.Stat(d.Pool)
	require.NoError(t, err)
	require.Equal(t, d.PoolSize, fi.Size())
	pid, held, err := dataplane.LockHolder(d.Socket)
	require.NoError(t, err)
	require.True(t, held)
	require.Equal(t, os.Getpid(), pid)

	cancel()
	select {
	case err := <-ran:
		stopped = true
		require.NoError(t, err, "logs:\n%s", logs)
	case <-time.After(40 * time.Second):
		t.Fatalf("Run did not return after its context ended; logs:\n%s", logs)
	}
	for _, w := range []string{"creating pool", "pool open", "serving", "stopped"} {
		require.Contains(t, logs.String(), w)
	}
	_, err = os.Stat(d.Socket)
	require.ErrorIs(t, err, os.ErrNotExist, "the socket is removed when the data plane stops")
	_, held, err = dataplane.LockHolder(d.Socket)
	require.NoError(t, err)
	require.False(t, held)

	p, err := blockstore.Open(d.Pool, blockstore.Options{})
	require.NoError(t, err)
	require.Zero(t, p.Recovery().Records, "a clean stop leaves nothing to replay")
	rep, err := p.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "fsck: %s", rep)
	require.NoError(t, p.Close())

	// A second run opens the existing pool (no --pool-size needed) and stops again.
	c.DataPlane.PoolSize = 0
	ctx2, cancel2 := context.WithCancel(context.Background())
	ran2 := make(chan error, 1)
	go func() { ran2 <- Run(ctx2, c, slog.New(slog.DiscardHandler)) }()
	require.NoError(t, cl.WaitReady(wctx, nil))
	cancel2()
	require.NoError(t, <-ran2)
}

// TestRunErrors: Run refuses a missing pool without --pool-size, a file that is not a pool, and
// an unknown export method, and leaves the pool closed (a later Open works).
func TestRunErrors(t *testing.T) {
	dir := dataplanetest.SocketDir(t)
	log := slog.New(slog.DiscardHandler)
	c := Config{DataPlane: dataplane.Config{Socket: filepath.Join(dir, "dp.sock"), ExportStateDir: filepath.Join(dir, "export")}}
	d := &c.DataPlane

	d.Pool = filepath.Join(dir, "missing")
	err := Run(context.Background(), c, log)
	require.ErrorContains(t, err, "--pool-size")

	d.Pool = filepath.Join(dir, "junk")
	require.NoError(t, os.WriteFile(d.Pool, bytes.Repeat([]byte("x"), 1<<20), 0o600))
	err = Run(context.Background(), c, log)
	require.ErrorIs(t, err, blockstore.ErrNotPool)

	d.Pool, d.PoolSize, d.Export = filepath.Join(dir, "pool"), 64<<20, "nbd"
	err = Run(context.Background(), c, log)
	require.ErrorContains(t, err, `"nbd"`)
	p, err := blockstore.Open(d.Pool, blockstore.Options{}) // created, then closed
	require.NoError(t, err)
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
		{"ext4", func(t *testing.T, dev, _ string) { nodetest.Run(t, "mkfs.ext4", "-q", dev) },
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
			nodetest.Run(t, "mkfs.ext4", "-q", dev)
			mnt := t.TempDir()
			nodetest.Run(t, "mount", "-o", "ro", dev, mnt)
			t.Cleanup(func() { nodetest.Run(t, "umount", mnt) })
		}, []string{"--pool-size", "64Mi"}, []string{"in use", "mounted at"}},
		{"blank, no size", func(t *testing.T, _, _ string) {}, nil, []string{"no pool at", "the device is blank", "--pool-size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, backing := nodetest.LoopDevice(t, 64<<20)
			tc.setup(t, dev, backing)
			before, err := os.ReadFile(backing)
			require.NoError(t, err)
			dir := dataplanetest.SocketDir(t)
			out := newLogFile(t)
			exited := make(chan int, 1)
			go func() {
				exited <- Main(append([]string{"--pool", dev, "--socket", filepath.Join(dir, "dp.sock"), "--io-flusher=false",
					"--export-state-dir", filepath.Join(dir, "export")}, tc.args...), out)
			}()
			var code int
			select {
			case code = <-exited:
			case <-time.After(time.Minute):
				t.Fatalf("the data plane did not exit: it serves a pool it made on %s; output:\n%s", dev, out.String())
			}
			require.Equal(t, 1, code, "output: %s", out.String())
			t.Logf("%s", out.String())
			require.Contains(t, out.String(), "dataimage-dataplane: ")
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

// logFile is a log sink for the data plane's goroutines (a file: writes are safe for
// concurrent use), read back with String.
type logFile struct{ *os.File }

func (f logFile) String() string {
	b, _ := os.ReadFile(f.Name())
	return string(b)
}

// newLogFile returns a logFile in a temporary directory, closed at cleanup.
func newLogFile(t *testing.T) logFile {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return logFile{f}
}
