package export_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/blockstore/export/filedisk"
	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/blockstore/export/holder"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// The restart tests run what a data plane runs, each in a process of its own (this test binary,
// re-executed): a holder (runHolderChild), and a server (serveExportChild) that exports a file
// (filedisk: what it acknowledges is in the page cache and survives its death) with the holder,
// adopting the export when an earlier server left it. fio writes and verifies on the export's
// block device meanwhile, and the processes are killed under it.
const (
	serverChildEnv = "DATAIMAGE_EXPORT_SERVER" // JSON serverConfig
	holderChildEnv = "DATAIMAGE_EXPORT_HOLDER" // the holder's socket
)

type serverConfig struct {
	StateDir string `json:"stateDir"`
	Holder   string `json:"holder"`
	ID       string `json:"id"`
	Disk     string `json:"disk"`
}

// serveExportChild serves cfg.Disk as export cfg.ID: adopted when an earlier server left it and
// the holder kept it, exported anew otherwise. It prints readyMsg, how it started and the device
// once it serves; on SIGTERM it closes the export and exits, on SIGUSR1 it hands the export
// over (Device.Handover) and exits.
func serveExportChild(arg string) error {
	var cfg serverConfig
	if err := json.Unmarshal([]byte(arg), &cfg); err != nil {
		return err
	}
	if err := fusedev.SetIOFlusher(); err != nil && !errors.Is(err, fusedev.ErrUnsupported) {
		return err
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	disk, err := filedisk.Open(cfg.Disk, 0)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := export.Detect(export.Options{StateDir: cfg.StateDir, Holder: cfg.Holder, Logger: log})
	if err != nil {
		return err
	}
	left, err := e.Leftovers()
	if err != nil {
		return err
	}
	how, start := "exported", e.Export
	if i := slices.IndexFunc(left, func(l export.Leftover) bool { return l.ID == cfg.ID }); i >= 0 {
		if !left[i].Held {
			return fmt.Errorf("the earlier export is not held: %+v", left[i])
		}
		how, start = "adopted", e.Adopt
	}
	dev, err := start(cfg.ID, disk)
	if err != nil {
		return err
	}
	handover := make(chan os.Signal, 1)
	signal.Notify(handover, syscall.SIGUSR1)
	fmt.Println(readyMsg+how, dev.Path())
	select {
	case <-term:
		return dev.Close()
	case <-handover:
		return dev.Handover()
	}
}

// runHolderChild runs a holder on the socket until SIGTERM. It prints readyMsg once it listens.
func runHolderChild(sock string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	l, err := holder.Listen(sock)
	if err != nil {
		return err
	}
	fmt.Println(readyMsg + "holder")
	return holder.Run(ctx, l, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
}

// child is a process of this test binary, run with one environment variable set.
type child struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed once it exited and was reaped; err is then set
	err    error
	fields []string // what it printed after readyMsg
	took   time.Duration
}

// startChild starts a child and waits until it printed readyMsg. The caller stops it (or kills
// it); a child that fails to start is killed.
func startChild(t *testing.T, env, arg string) *child {
	t.Helper()
	return startChildIn(t, false, env, arg)
}

// startChildIn is startChild, the child in a mount namespace of its own when mntns is set (a
// copy of this one, propagation unchanged: as a container's with a Bidirectional hostPath,
// its mounts under a shared mount reach this namespace), which goes when the child exits.
func startChildIn(t *testing.T, mntns bool, env, arg string) *child {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if mntns {
		cmd = exec.Command("unshare", "--mount", "--propagation", "unchanged", "--", os.Args[0], "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), env+"="+arg)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, done: make(chan struct{})}
	line, err := bufio.NewReader(out).ReadString('\n')
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), strings.TrimSpace(readyMsg))
	if err != nil || !ok {
		c.kill()
		t.Fatalf("child did not start: said %q: %v", line, err)
	}
	c.fields = strings.Fields(rest)
	c.took = time.Since(start)
	return c
}

func (c *child) running() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// kill SIGKILLs the child, if it runs, and reaps it.
func (c *child) kill() {
	if c.running() {
		c.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-c.done
}

// stop SIGTERMs the child and waits a minute at most for it to exit, cleanly.
func (c *child) stop() error {
	if !c.running() {
		return fmt.Errorf("exited before it was stopped: %v", c.err)
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-c.done:
		return c.err
	case <-time.After(time.Minute):
		return errors.New("no exit within a minute of SIGTERM")
	}
}

// restartRig is a holder child, a server child exporting a file, and the export's device.
type restartRig struct {
	cfg      serverConfig
	mntns    bool // each server in a mount namespace of its own
	holder   *child
	server   *child
	children []*child // every child started, killed at cleanup
	device   string
	kmsg     *nodetest.Kmsg
}

func newRestartRig(t *testing.T) *restartRig {
	t.Helper()
	return newRestartRigIn(t, false)
}

// newRestartRigIn is newRestartRig, each server in a mount namespace of its own when mntns is
// set: the state directory is then a shared mount, so that the servers' FUSE mounts reach this
// namespace (and the next server's).
func newRestartRigIn(t *testing.T, mntns bool) *restartRig {
	t.Helper()
	tmp := t.TempDir()
	if mntns {
		nodetest.Need(t, "unshare")
		sd := filepath.Join(tmp, "state")
		require.NoError(t, os.Mkdir(sd, 0o700))
		require.NoError(t, syscall.Mount(sd, sd, "", syscall.MS_BIND, ""))
		t.Cleanup(func() { require.NoError(t, syscall.Unmount(sd, 0)) })
		require.NoError(t, syscall.Mount("", sd, "", syscall.MS_SHARED, ""))
	}
	r := &restartRig{mntns: mntns, cfg: serverConfig{
		StateDir: filepath.Join(tmp, "state"),
		Holder:   filepath.Join(tmp, "holder.sock"),
		ID:       "restart",
		Disk:     filepath.Join(tmp, "disk.img"),
	}}
	require.NoError(t, os.WriteFile(r.cfg.Disk, nil, 0o600))
	require.NoError(t, os.Truncate(r.cfg.Disk, 256*mib))
	r.kmsg = nodetest.OpenKmsg(t)
	t.Cleanup(func() {
		// The server closes its export (it has to run for that); then the holder goes, and
		// what a failed test left is torn down by an Exporter of this process.
		for _, c := range []*child{r.server, r.holder} {
			if c != nil && c.running() {
				if err := c.stop(); err != nil {
					t.Errorf("stop a child: %v", err)
				}
			}
		}
		for _, c := range r.children {
			c.kill()
		}
		e, err := export.Detect(export.Options{StateDir: r.cfg.StateDir})
		require.NoError(t, err)
		require.NoError(t, e.Cleanup(r.cfg.ID))
		requireNothingLeft(t, e, r.cfg.StateDir)
	})
	r.startHolder(t)
	r.startServer(t, "exported")
	r.device = r.server.fields[1]
	require.True(t, strings.HasPrefix(r.device, "/dev/loop"), r.device)
	return r
}

// startHolder starts a holder child and waits until it listens.
func (r *restartRig) startHolder(t *testing.T) {
	t.Helper()
	r.holder = startChild(t, holderChildEnv, r.cfg.Holder)
	r.children = append(r.children, r.holder)
}

// startServer starts a server child and requires that it started how ("exported", "adopted"),
// on the rig's device once it has one.
func (r *restartRig) startServer(t *testing.T, how string) {
	t.Helper()
	b, err := json.Marshal(r.cfg)
	require.NoError(t, err)
	r.server = startChildIn(t, r.mntns, serverChildEnv, string(b))
	r.children = append(r.children, r.server)
	require.Len(t, r.server.fields, 2)
	require.Equal(t, how, r.server.fields[0])
	if r.device != "" {
		require.Equal(t, r.device, r.server.fields[1], "the same block device")
	}
}

// held returns the keys the holder holds.
func (r *restartRig) held(t *testing.T) []string {
	t.Helper()
	c, err := holder.Dial(r.cfg.Holder)
	require.NoError(t, err)
	defer c.Close()
	keys, err := c.List()
	require.NoError(t, err)
	return keys
}

// TestAdoptAfterSIGKILL: fio writes and verifies (crc32c) at queue depth 32 on an export's
// device while its server is SIGKILLed at random moments; each time a new server adopts the
// export (Exporter.Adopt) from the holder. fio ends without an error (every block it wrote reads
// back as written, no request failed) and the kernel logs no error for the device. The longest
// stall fio saw is logged: the time a request waited across a restart.
func TestAdoptAfterSIGKILL(t *testing.T) {
	nodetest.Need(t, "fio")
	r := newRestartRig(t)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)

	const kills = 12
	f := nodetest.StartFIOVerify(t, r.device, 64*mib, 10*time.Second+kills*1500*time.Millisecond)
	var restarts []time.Duration
	for i := range kills {
		time.Sleep(time.Duration(50+rng.IntN(1200)) * time.Millisecond)
		require.True(t, f.Running(), "fio ended early")
		r.server.kill()
		r.startServer(t, "adopted")
		restarts = append(restarts, r.server.took.Round(time.Millisecond))
		t.Logf("kill %d: a new server adopted the export in %v", i, r.server.took.Round(time.Millisecond))
	}
	res := f.Wait(t)
	t.Logf("%d SIGKILLs of the server; restarts took %v; fio: %d writes, %d verifying reads, longest stall %v (write %v, read %v)",
		kills, restarts, res.Writes, res.Reads, res.MaxStall(), res.MaxWrite, res.MaxRead)
	r.kmsg.RequireNoErrorsAbout(t, r.device)
	require.Positive(t, res.Reads, "fio verified what it wrote")
}

// TestHandover: fio writes and verifies (crc32c) at queue depth 32 on an export's device while
// its server hands the export over (Device.Handover) and exits, a new server adopting it each
// time. fio ends without an error and the kernel logs no error for the device: a graceful
// upgrade. A Handover that finds the export not held (the holder gone) fails with ErrNoHolder and
// changes nothing: the server serves on.
func TestHandover(t *testing.T) {
	nodetest.Need(t, "fio")
	r := newRestartRig(t)
	const handovers = 6
	f := nodetest.StartFIOVerify(t, r.device, 64*mib, 4*time.Second+handovers*3*time.Second)
	for i := range handovers {
		time.Sleep(700 * time.Millisecond)
		require.True(t, f.Running(), "fio ended early")
		require.NoError(t, r.server.cmd.Process.Signal(syscall.SIGUSR1))
		<-r.server.done
		require.NoError(t, r.server.err, "the exit status of a server that handed over")
		r.startServer(t, "adopted")
		t.Logf("hand-over %d: a new server adopted the export in %v", i, r.server.took.Round(time.Millisecond))
	}
	res := f.Wait(t)
	t.Logf("%d hand-overs; fio: %d writes, %d verifying reads, longest stall %v", handovers, res.Writes, res.Reads, res.MaxStall())
	r.kmsg.RequireNoErrorsAbout(t, r.device)
	require.Positive(t, res.Reads, "fio verified what it wrote")

	r.holder.kill()
	require.NoError(t, r.server.cmd.Process.Signal(syscall.SIGUSR1))
	<-r.server.done
	require.ErrorContains(t, r.server.err, "exit status", "a hand-over without the holder fails")
	// The server exited (the child returns Handover's error): without a holder, that ended the
	// export. What is left is torn down by the rig's cleanup.
}

// TestHolderRestart: the holder is SIGKILLed while the server serves, under fio: nothing is
// lost (the server keeps its connection), and when a holder runs again the server puts its export
// there, so that the server's SIGKILL after that is survived too (a new server adopts). fio ends
// without an error. Then, with the holder gone for good, the server's death ends the export: I/O
// on the device fails at once (no process waits in D state), and an Exporter cleans it up.
func TestHolderRestart(t *testing.T) {
	nodetest.Need(t, "fio", "dd")
	r := newRestartRig(t)
	key := filepath.Join(r.cfg.StateDir, r.cfg.ID)
	require.Equal(t, []string{key}, r.held(t), "the export is held under its directory")

	f := nodetest.StartFIOVerify(t, r.device, 64*mib, 12*time.Second)
	time.Sleep(time.Second)
	r.holder.kill()
	time.Sleep(time.Second)
	require.True(t, f.Running(), "fio runs on while the holder is gone")
	start := time.Now()
	r.startHolder(t)
	require.Eventually(t, func() bool { return slices.Equal(r.held(t), []string{key}) },
		10*time.Second, 10*time.Millisecond, "the server puts its export into the new holder")
	t.Logf("the export was held again %v after the holder restarted", time.Since(start).Round(time.Millisecond))
	r.server.kill()
	r.startServer(t, "adopted")
	res := f.Wait(t)
	t.Logf("fio: %d writes, %d verifying reads, longest stall %v", res.Writes, res.Reads, res.MaxStall())
	r.kmsg.RequireNoErrorsAbout(t, r.device)

	// Nothing holds the connection once both are gone: the kernel ends it.
	r.holder.kill()
	r.server.kill()
	start = time.Now()
	out, err := nodetest.DirectReadWithin(r.device, 10*time.Second)
	require.Error(t, err, "a read of %s after the server and the holder died", r.device)
	require.NotErrorIs(t, err, nodetest.ErrDeadline, "a read of %s after the server and the holder died", r.device)
	t.Logf("a read of the device failed %v after both died: %v: %s", time.Since(start).Round(time.Millisecond), err, strings.TrimSpace(out))

	e, err := export.Detect(export.Options{StateDir: r.cfg.StateDir, Holder: r.cfg.Holder})
	require.NoError(t, err)
	left, err := e.Leftovers()
	require.NoError(t, err)
	require.Equal(t, []export.Leftover{{ID: r.cfg.ID, Devices: []string{r.device}, Mounted: true, Dir: key}}, left,
		"not held: the holder is gone")
	_, err = e.Adopt(r.cfg.ID, zeroDisk{size: 256 * mib})
	require.ErrorIs(t, err, export.ErrNoHolder)
	require.NoError(t, e.Cleanup(r.cfg.ID))
	requireNothingLeft(t, e, r.cfg.StateDir)
}

// TestAdoptAcrossMountNamespaces: each server runs in a mount namespace of its own that goes
// with it, as a data plane in a container that restarts. The loop device the first server
// attached then reports its backing file from a detached mount (not under the state
// directory), yet each new server adopts that same device (the export's loop record), under fio,
// and closing the export detaches it: no loop device is left over a FUSE file that is gone.
func TestAdoptAcrossMountNamespaces(t *testing.T) {
	nodetest.Need(t, "fio")
	r := newRestartRigIn(t, true)
	backing := "/sys/block/" + filepath.Base(r.device) + "/loop/backing_file"
	f := nodetest.StartFIOVerify(t, r.device, 64*mib, 8*time.Second)
	for i := range 3 {
		time.Sleep(1500 * time.Millisecond)
		require.True(t, f.Running(), "fio ended early")
		r.server.kill()
		b, err := os.ReadFile(backing)
		require.NoError(t, err)
		require.False(t, strings.HasPrefix(string(b), r.cfg.StateDir+"/"),
			"after its namespace went, %s reports %q: the test does not make the case it is for", r.device, b)
		r.startServer(t, "adopted") // requires the same device
		t.Logf("kill %d: a server in a new mount namespace adopted %s (backing file %q) in %v",
			i, r.device, strings.TrimSpace(string(b)), r.server.took.Round(time.Millisecond))
	}
	res := f.Wait(t)
	r.kmsg.RequireNoErrorsAbout(t, r.device)
	require.Positive(t, res.Reads, "fio verified what it wrote")

	require.NoError(t, r.server.stop(), "the server closes the export")
	_, err := os.Stat(backing)
	require.ErrorIs(t, err, os.ErrNotExist, "%s is still attached after the export closed", r.device)
}
