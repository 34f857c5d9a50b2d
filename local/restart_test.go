package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	mount "k8s.io/mount-utils"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export/holder"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestRestart: a daemon closed cleanly stops its clones' servers and leaves nothing mounted or
// exported; the next daemon of the home starts the clones that were running (same password, same
// port, their data and revisions) and leaves stopped ones stopped.
func TestRestart(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	dir := testDir(t)
	cfg := testConfig(filepath.Join(dir, "home"), testLog(t, dir))
	ctx := context.Background()
	d, err := NewDaemon(cfg)
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			d.Close()
		}
	})
	build(t, d, pgDefinition(eng, "pg", "sourceType: empty\n"), "")
	run, err := d.CreateClone(ctx, CloneRequest{Image: "pg", Name: "run-1"})
	require.NoError(t, err)
	sql(t, run, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
	_, err = d.SaveClone(ctx, run.Name, "r1")
	require.NoError(t, err)
	sql(t, run, "INSERT INTO t VALUES (2)")
	stopped, err := d.CreateClone(ctx, CloneRequest{Image: "pg", Name: "stop-1"})
	require.NoError(t, err)
	_, err = d.StopClone(ctx, stopped.Name)
	require.NoError(t, err)

	require.NoError(t, d.Close())
	closed = true
	requireNothingLeft(t, cfg.Home)
	_, err = trySQL(run, "SELECT 1")
	require.Error(t, err, "the daemon stopped the clone's server")
	_, err = d.Images(ctx)
	require.ErrorIs(t, err, ErrUnavailable, "a closed daemon")

	d, err = NewDaemon(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAndCheck(t, d, cfg) })
	got, err := d.Clone(ctx, run.Name)
	require.NoError(t, err)
	require.Equal(t, CloneRunning, got.State, got.Message)
	require.Equal(t, run.Connection, got.Connection, "same password and port")
	require.Equal(t, "1,2", sql(t, got, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t"))
	require.Equal(t, []string{"r1"}, revisionNames(got))
	got, err = d.ResetClone(ctx, run.Name, "")
	require.NoError(t, err)
	require.Equal(t, "1", sql(t, got, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t"))
	st, err := d.Clone(ctx, stopped.Name)
	require.NoError(t, err)
	require.Equal(t, CloneStopped, st.State)

	require.NoError(t, d.DeleteClone(ctx, run.Name))
	require.NoError(t, d.DeleteClone(ctx, stopped.Name))
	require.NoError(t, d.DeleteImage(ctx, "pg"))
}

func revisionNames(c *Clone) []string {
	var names []string
	for _, r := range c.Revisions {
		names = append(names, r.Name)
	}
	return names
}

// TestDaemonKilled: the daemon runs as a process of its own, started by Connect, and its data
// plane as another (the daemon starts it); the daemon is killed (SIGKILL) while a clone's
// PostgreSQL serves a pgbench run and a writer appends lines to a file on the clone's file
// system, fsyncing each. Neither notices: pgbench finishes without a failed transaction and the
// balances agree, and every write and fsync succeeds. The next daemon, started by the next
// Connect, adopts the clone as it runs: the same server process, the same connection, the data
// plane never stopped; the clone then works as any other (revision, reset) and is deleted.
func TestDaemonKilled(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	pgbench := pgTool(t, eng, "pgbench")
	dir := testDir(t)
	home := filepath.Join(dir, "home")
	t.Setenv(daemonChildEnv, home) // the daemons Connect starts inherit it
	ctx := context.Background()
	connect := func() *Client {
		t.Helper()
		c, err := Connect(ctx, home, ConnectOptions{Start: true, Executable: os.Args[0], DaemonArgs: []string{"-test.run=^$"}, Timeout: 2 * time.Minute})
		require.NoError(t, err)
		return c
	}
	t.Cleanup(func() {
		stopChildDaemon(t, home)
		if t.Failed() {
			t.Logf("daemon.log (last lines):\n%s", engine.TailFile(LogPath(home), 80))
			t.Logf("dataplane.log (last lines):\n%s", engine.TailFile(DataPlaneLogPath(home), 40))
			cleanHome(t, home)
		}
		requireNothingLeft(t, home)
	})

	c := connect()
	defer c.Close()
	build(t, c, pgDefinition(eng, "pg", "sourceType: empty\n"), "")
	cl, err := c.CreateClone(ctx, CloneRequest{Image: "pg", Name: "survivor"})
	require.NoError(t, err)
	out, err := exec.Command(pgbench, "-i", "-s", "2", "-q", cl.Connection).CombinedOutput()
	require.NoError(t, err, "pgbench -i: %s", out)

	daemonPID := lockPID(t, home)
	dpPID, held, err := dataplane.LockHolder(DataPlaneSocketPath(home))
	require.NoError(t, err)
	require.True(t, held, "a data plane serves the home")
	require.NotEqual(t, daemonPID, dpPID, "the data plane is a process of its own")
	cat, err := loadCatalog(filepath.Join(home, "catalog.json"))
	require.NoError(t, err)
	serverPID := cat.Clones[cl.Name].PID
	dataDir := filepath.Join(home, "mnt", cl.Name, "data")
	require.Contains(t, cmdline(serverPID), dataDir, "the recorded pid is the clone's server")

	// The load: pgbench (4 clients, 12 s) and a writer on the clone's file system.
	var bench bytes.Buffer
	pb := exec.Command(pgbench, "-n", "-c", "4", "-j", "2", "-T", "12", cl.Connection)
	pb.Stdout, pb.Stderr = &bench, &bench
	require.NoError(t, pb.Start())
	benched := make(chan error, 1)
	go func() { benched <- pb.Wait() }()
	t.Cleanup(func() {
		_ = pb.Process.Kill()
	})
	w := startFileWriter(t, filepath.Join(home, "mnt", cl.Name, "writer.log"))

	time.Sleep(3 * time.Second)
	killed := time.Now()
	require.NoError(t, syscall.Kill(daemonPID, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !lockHeld(home) }, 30*time.Second, 20*time.Millisecond, "the killed daemon releases its lock")
	_, err = c.Images(ctx)
	require.ErrorIs(t, err, ErrUnavailable)
	time.Sleep(time.Second)

	c2 := connect()
	defer c2.Close()
	t.Logf("a new daemon answers %v after the kill", time.Since(killed).Round(time.Millisecond))
	require.NotEqual(t, daemonPID, lockPID(t, home))
	pid, held, err := dataplane.LockHolder(DataPlaneSocketPath(home))
	require.NoError(t, err)
	require.True(t, held)
	require.Equal(t, dpPID, pid, "the data plane never stopped")
	got, err := c2.Clone(ctx, cl.Name)
	require.NoError(t, err)
	require.Equal(t, CloneRunning, got.State, got.Message)
	require.Equal(t, cl.Connection, got.Connection, "the same server, the same connection")
	require.Contains(t, cmdline(serverPID), dataDir, "the server the first daemon started still runs")
	require.Contains(t, string(must(os.ReadFile(LogPath(home)))), "clone adopted")

	select {
	case err = <-benched:
	case <-time.After(2 * time.Minute):
		t.Fatal("pgbench did not finish")
	}
	require.NoError(t, err, "pgbench across the daemon's kill:\n%s", bench.String())
	require.Contains(t, bench.String(), "number of failed transactions: 0 ", "pgbench:\n%s", bench.String())
	t.Logf("pgbench across the daemon's kill:\n%s", bench.String())
	lines := w.stop(t)
	t.Logf("%d lines written and fsynced across the daemon's kill", lines)
	require.Equal(t, "t", sql(t, got, "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history) "+
		"AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history) "+
		"AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(delta) FROM pgbench_history)"), "pgbench's balances agree")

	// The adopted clone works as any other: a revision, a reset, a clean stop.
	_, err = c2.SaveClone(ctx, cl.Name, "after")
	require.NoError(t, err)
	sql(t, got, "DROP TABLE pgbench_history")
	got, err = c2.ResetClone(ctx, cl.Name, "after")
	require.NoError(t, err)
	require.Equal(t, "t", sql(t, got, "SELECT count(*) > 0 FROM pgbench_history"))
	rep, err := c2.CheckPool(ctx, false)
	require.NoError(t, err)
	require.True(t, rep.OK, "%+v", rep)
	require.NoError(t, c2.DeleteClone(ctx, cl.Name))
	require.NoError(t, c2.DeleteImage(ctx, "pg"))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// fileWriter appends numbered lines to a file, fsyncing each, until stopped or an error.
type fileWriter struct {
	path  string
	quit  chan struct{}
	done  chan struct{}
	lines int
	err   error
}

// startFileWriter starts a fileWriter on path; cleanup stops it.
func startFileWriter(t *testing.T, path string) *fileWriter {
	t.Helper()
	w := &fileWriter{path: path, quit: make(chan struct{}), done: make(chan struct{})}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC, 0o644)
	require.NoError(t, err)
	go func() {
		defer close(w.done)
		defer f.Close()
		for {
			select {
			case <-w.quit:
				return
			default:
			}
			if _, w.err = fmt.Fprintf(f, "line %d\n", w.lines); w.err != nil {
				return
			}
			if w.err = f.Sync(); w.err != nil {
				return
			}
			w.lines++
		}
	}()
	t.Cleanup(func() {
		select {
		case <-w.quit:
		default:
			close(w.quit)
		}
		<-w.done
	})
	return w
}

// stop stops the writer and checks that every write and fsync succeeded and that the file
// holds every line, in order; it returns the number of lines.
func (w *fileWriter) stop(t *testing.T) int {
	t.Helper()
	close(w.quit)
	<-w.done
	require.NoError(t, w.err, "a write or fsync on the clone's file system")
	require.Positive(t, w.lines)
	b, err := os.ReadFile(w.path)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	require.Len(t, lines, w.lines)
	for i, l := range lines {
		require.Equal(t, fmt.Sprintf("line %d", i), l)
	}
	return w.lines
}

// TestDataPlaneKilledFailsCloneIO: while a clone runs, the data plane (a process of its own,
// started by the daemon, which Connect started) and the FUSE holder (likewise) are the only
// processes that hold /dev/fuse: neither the daemon nor the clone's server nor any process under
// it. So when the data plane and then the holder are killed (SIGKILL), the kernel aborts the
// FUSE connections, and I/O on the clone, through its file system and through its block device,
// fails at once instead of blocking in D state forever (the data plane's death alone is
// TestRestartsUnderLoad's). The daemon is killed too; the next one starts a new data
// plane, cleans up (kills the server, unmounts, detaches the loop device) and starts the clone
// again with its committed data, and the home can be removed. The reads run in processes of
// their own with a deadline, so that a regression fails the test (and its cleanup aborts the
// connections) instead of hanging it.
func TestDataPlaneKilledFailsCloneIO(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	dir := testDir(t)
	home := filepath.Join(dir, "home")
	t.Setenv(daemonChildEnv, home)
	ctx := context.Background()
	connect := func() *Client {
		t.Helper()
		c, err := Connect(ctx, home, ConnectOptions{Start: true, Executable: os.Args[0], DaemonArgs: []string{"-test.run=^$"}, Timeout: 2 * time.Minute})
		require.NoError(t, err)
		return c
	}
	cleanupChildHome(t, home)

	c := connect()
	defer c.Close()
	build(t, c, pgDefinition(eng, "pg", "sourceType: empty\n"), "")
	cl, err := c.CreateClone(ctx, CloneRequest{Image: "pg", Name: "io"})
	require.NoError(t, err)
	sql(t, cl, "CREATE TABLE t (v int); INSERT INTO t VALUES (1); CHECKPOINT")

	daemonPID := lockPID(t, home)
	dpPID, held, err := dataplane.LockHolder(DataPlaneSocketPath(home))
	require.NoError(t, err)
	require.True(t, held)
	cat, err := loadCatalog(filepath.Join(home, "catalog.json"))
	require.NoError(t, err)
	serverPID := cat.Clones[cl.Name].PID
	require.Positive(t, serverPID)
	mnt := filepath.Join(home, "mnt", cl.Name)
	require.Contains(t, cmdline(serverPID), mnt, "the recorded pid is the clone's server")

	// (i) Only the data plane and the FUSE holder hold /dev/fuse.
	hpid := holderPID(t, home)
	tree := descendants(daemonPID, serverPID, dpPID)
	require.Greater(t, len(tree), 3, "the daemon, the data plane, the clone's server and its processes: %v", tree)
	var holders []string
	for _, pid := range tree {
		if pid != dpPID && pid != hpid && holdsDevFUSE(pid) {
			holders = append(holders, fmt.Sprintf("%d (%s)", pid, cmdline(pid)))
		}
	}
	require.Empty(t, holders, "processes that hold /dev/fuse (only the data plane %d and the holder %d may)", dpPID, hpid)
	require.True(t, holdsDevFUSE(dpPID), "the data plane serves the clone's export")
	require.True(t, holdsDevFUSE(hpid), "the holder keeps the clone's export")

	// (ii) Killing the data plane and the holder makes the clone's I/O fail promptly.
	loops := nodetest.LoopDevicesOn(t, filepath.Join(home, "export"))
	require.NotEmpty(t, loops, "the clone's loop device")
	require.NoError(t, syscall.Kill(dpPID, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !dataPlaneRunning(home) }, 30*time.Second, 20*time.Millisecond, "the killed data plane exits")
	require.NoError(t, syscall.Kill(hpid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !holderRunning(HolderSocketPath(home)) }, 30*time.Second, 20*time.Millisecond, "the killed holder exits")
	start := time.Now()
	for _, path := range append([]string{filepath.Join(mnt, "data", "global", "pg_control")}, loops...) {
		out, err := nodetest.DirectReadWithin(path, 10*time.Second)
		require.Error(t, err, "an O_DIRECT read of %s after the data plane's death", path)
		require.NotErrorIs(t, err, nodetest.ErrDeadline, "an O_DIRECT read of %s after the data plane's death", path)
		t.Logf("O_DIRECT read of %s after the data plane's death: %v: %s", path, err, strings.TrimSpace(out))
	}
	t.Logf("the reads failed %v after the data plane's exit", time.Since(start).Round(time.Millisecond))

	// The next daemon (and data plane) cleans up and serves again; then everything goes and
	// the home is removed.
	require.NoError(t, syscall.Kill(daemonPID, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !lockHeld(home) }, 30*time.Second, 20*time.Millisecond, "the killed daemon exits")
	c2 := connect()
	defer c2.Close()
	got, err := c2.Clone(ctx, cl.Name)
	require.NoError(t, err)
	require.Equal(t, CloneRunning, got.State, got.Message)
	require.NotContains(t, cmdline(serverPID), mnt, "the server on the dead file system was killed")
	require.Equal(t, "1", sql(t, got, "SELECT v FROM t"), "committed data survives the kill")
	require.NoError(t, c2.DeleteClone(ctx, cl.Name))
	require.NoError(t, c2.DeleteImage(ctx, "pg"))
	stopChildDaemon(t, home)
	requireNothingLeft(t, home)
	removed := make(chan error, 1)
	go func() { removed <- os.RemoveAll(home) }()
	select {
	case err := <-removed:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatalf("rm -rf %s did not finish within a minute", home)
	}
}

// holderPID returns the pid of the FUSE holder of home.
func holderPID(t testing.TB, home string) int {
	t.Helper()
	pid, err := holderPIDOf(home)
	require.NoError(t, err, "a FUSE holder serves the home")
	return pid
}

// Restarts of TestRestartsUnderLoad: the daemon and the data plane are each killed this many
// times, alternately, then the data plane is upgraded once (SIGTERM: it hands over).
const underLoadKills = 10

// TestRestartsUnderLoad: a PostgreSQL clone runs pgbench, and fio writes and verifies a file on
// the clone's file system, while the home's daemon is killed (SIGKILL) underLoadKills times and
// its data plane underLoadKills times, alternately, each started again as the product does (the
// next Connect starts a daemon; the daemon sees its data plane gone and starts a new one), and
// the data plane is upgraded
// once (SIGTERM: it hands the exports over to the FUSE holder). The FUSE holder and the clone's
// server run on. Nothing fails: fio exits 0 with its verification passed, pgbench reports no
// failed transaction and exits 0, its balance invariant holds, the clone's server never
// restarted, each new data plane served the clone's export again, the kernel logged no I/O or
// EXT4 error on the clone's device, and once stopped the clone's file system checks clean
// (e2fsck -fn) and so does the pool. On a tree whose data plane does not adopt, the first kill
// fails the clone's I/O and PostgreSQL PANICs.
func TestRestartsUnderLoad(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	for _, tool := range []string{"fio", "e2fsck", "dmesg"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "needs %s (make deps)", tool)
		}
	}
	dir := testDir(t)
	home := filepath.Join(dir, "home")
	t.Setenv(daemonChildEnv, home)
	ctx := context.Background()
	cleanupChildHome(t, home)
	connect := func() *Client {
		t.Helper()
		c, err := Connect(ctx, home, ConnectOptions{Start: true, Executable: os.Args[0], DaemonArgs: []string{"-test.run=^$"}, Timeout: 2 * time.Minute})
		require.NoError(t, err)
		return c
	}
	c := connect()
	defer func() { c.Close() }()
	build(t, c, pgDefinition(eng, "pg", "sourceType: empty\n"), "")
	cl, err := c.CreateClone(ctx, CloneRequest{Image: "pg", Name: "bench"})
	require.NoError(t, err)
	cat, err := loadCatalog(filepath.Join(home, "catalog.json"))
	require.NoError(t, err)
	serverPID := cat.Clones[cl.Name].PID
	require.Positive(t, serverPID)
	mnt := filepath.Join(home, "mnt", cl.Name)
	device := nodetest.MountSource(t, mnt)
	kmsg := nodetest.OpenKmsg(t)

	pgbench := pgTool(t, eng, "pgbench")
	out, err := exec.Command(pgbench, "-i", "-s", "2", "-q", cl.Connection).CombinedOutput()
	require.NoError(t, err, "pgbench -i: %s", out)
	// The restarts come every interval; each takes a second or two more (more under load):
	// the load is given 5 s for each, so that it runs past them all.
	const interval = 2 * time.Second
	events := 2*underLoadKills + 1
	runtime := time.Duration(events)*5*time.Second + 10*time.Second
	fioDir := filepath.Join(mnt, "fio")
	require.NoError(t, os.Mkdir(fioDir, 0o700))
	fio := nodetest.StartFIOVerify(t, filepath.Join(fioDir, "fio.dat"), 32<<20, runtime)
	bench := exec.Command(pgbench, "-n", "-T", strconv.Itoa(int(runtime.Seconds())), "-c", "4", cl.Connection)
	var benchOut strings.Builder
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	require.NoError(t, bench.Start())
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-benchDone:
			benchDone <- err
		default:
			_ = bench.Process.Kill()
		}
	})

	start := time.Now()
	// The daemon notices that its data plane is gone and starts a new one (superviseDataPlane).
	newDataPlane := func(old int) {
		t.Helper()
		require.Eventually(t, func() bool {
			pid, held, err := dataplane.LockHolder(DataPlaneSocketPath(home))
			return err == nil && held && pid != old
		}, time.Minute, 20*time.Millisecond, "the daemon starts a new data plane")
		c := dataplane.NewClient(DataPlaneSocketPath(home))
		defer c.Close()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		require.NoError(t, c.WaitReady(wctx, nil))
	}
	for i := range events {
		time.Sleep(interval)
		select {
		case err := <-benchDone:
			t.Fatalf("pgbench ended early, before restart %d: %v\n%s", i+1, err, benchOut.String())
		default:
		}
		switch {
		case i == events-1:
			dpPID, held, err := dataplane.LockHolder(DataPlaneSocketPath(home))
			require.NoError(t, err)
			require.True(t, held, "a data plane serves the home before its upgrade")
			require.NoError(t, syscall.Kill(dpPID, syscall.SIGTERM))
			newDataPlane(dpPID)
		case i%2 == 0:
			pid := lockPID(t, home)
			require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
			require.Eventually(t, func() bool { return !lockHeld(home) }, 30*time.Second, 20*time.Millisecond, "the killed daemon releases its lock")
			c.Close()
			c = connect()
		default:
			dpPID, held, err := dataplane.LockHolder(DataPlaneSocketPath(home))
			require.NoError(t, err)
			require.True(t, held, "a data plane serves the home before kill %d", i+1)
			require.NoError(t, syscall.Kill(dpPID, syscall.SIGKILL))
			newDataPlane(dpPID)
		}
		got, err := c.Clone(ctx, cl.Name)
		require.NoError(t, err)
		require.Equal(t, CloneRunning, got.State, "after restart %d: %s", i+1, got.Message)
	}
	elapsed := time.Since(start)
	require.Less(t, elapsed, runtime, "the restarts happened while the load ran")

	res := fio.Wait(t)
	require.Positive(t, res.Reads, "fio verified what it wrote")
	select {
	case err = <-benchDone:
	case <-time.After(runtime + 2*time.Minute):
		t.Fatal("pgbench did not finish")
	}
	require.NoError(t, err, "pgbench: %s", benchOut.String())
	t.Logf("across %d restarts in %v: fio wrote %d blocks and verified %d, longest fio request %v; pgbench:\n%s", events, elapsed.Round(time.Second),
		res.Writes, res.Reads, res.MaxStall().Round(time.Millisecond), benchOut.String())
	require.Contains(t, benchOut.String(), "number of failed transactions: 0 ")
	require.Equal(t, "t", sql(t, cl, nodetest.PgbenchBalanced), "pgbench's balance invariant")
	cat, err = loadCatalog(filepath.Join(home, "catalog.json"))
	require.NoError(t, err)
	require.Equal(t, serverPID, cat.Clones[cl.Name].PID, "the clone's server never restarted")
	require.Contains(t, cmdline(serverPID), filepath.Join(mnt, "data"), "the clone's first server still runs")
	logs, err := os.ReadFile(DataPlaneLogPath(home))
	require.NoError(t, err)
	require.Equal(t, underLoadKills+1, strings.Count(string(logs), "export of an earlier data plane served again"), "each new data plane serves the clone's export again")
	kmsg.RequireNoErrorsAbout(t, device)

	// Stopped, the clone's file system checks clean, read from the pool; so does the pool.
	_, err = c.StopClone(ctx, cl.Name)
	require.NoError(t, err)
	stopChildDaemon(t, home)
	requireVolumeFSClean(t, filepath.Join(home, "pool.img"), "clone/"+cl.Name)
	c.Close()
	c = connect()
	require.NoError(t, c.DeleteClone(ctx, cl.Name))
	require.NoError(t, c.DeleteImage(ctx, "pg"))
	stopChildDaemon(t, home)
	requireNothingLeft(t, home)
}

// requireVolumeFSClean copies the volume named vol of the pool at path (closed: no process
// holds it) into a sparse file and requires e2fsck -fn to find it clean, and the pool to check
// clean.
func requireVolumeFSClean(t *testing.T, path, vol string) {
	t.Helper()
	p, err := blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	defer p.Close()
	rep, err := p.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "fsck of the pool: %s", rep)
	info, err := p.LookupVolume(vol)
	require.NoError(t, err)
	v, err := p.Volume(info.ID)
	require.NoError(t, err)
	img := filepath.Join(t.TempDir(), "volume.img")
	f, err := os.Create(img)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Truncate(info.Size))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < info.Size; off += int64(len(buf)) {
		n := min(int64(len(buf)), info.Size-off)
		_, err := v.ReadAt(buf[:n], off)
		require.NoError(t, err)
		if !bytes.Equal(buf[:n], make([]byte, n)) {
			_, err = f.WriteAt(buf[:n], off)
			require.NoError(t, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // e2fsck stats the loop devices' files: a hung FUSE file elsewhere would hang it
	defer cancel()
	out, err := exec.CommandContext(ctx, "e2fsck", "-fn", img).CombinedOutput()
	require.NoError(t, err, "e2fsck -fn of %s: %s", vol, out)
}

// cleanupChildHome stops, at the test's end, the daemon started by Connect for home (and so its
// data plane and holder). After a failure it first kills the holder and aborts the FUSE
// connections under home (a connection nobody serves would hang everything below), logs the
// ends of the daemon's and the data plane's logs, and cleans the home up.
func cleanupChildHome(t *testing.T, home string) {
	t.Cleanup(func() {
		if t.Failed() {
			if pid, err := holderPIDOf(home); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			abortFUSEUnder(t, home)
		}
		stopChildDaemon(t, home)
		if t.Failed() {
			t.Logf("daemon.log (last lines):\n%s", engine.TailFile(LogPath(home), 80))
			t.Logf("dataplane.log (last lines):\n%s", engine.TailFile(DataPlaneLogPath(home), 40))
			cleanHome(t, home)
		}
	})
}

// holderPIDOf returns the pid of the FUSE holder of home, if one runs.
func holderPIDOf(home string) (int, error) {
	c, err := holder.Dial(HolderSocketPath(home))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.PID()
}

// descendants returns the processes under the given ones (by parent pid), them included.
func descendants(roots ...int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	seen := map[int]bool{}
	var out []int
	for queue := roots; len(queue) > 0; queue = queue[1:] {
		pid := queue[0]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		queue = append(queue, children[pid]...)
	}
	return out
}

// holdsDevFUSE reports whether process pid has /dev/fuse open.
func holdsDevFUSE(pid int) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if target, _ := os.Readlink(filepath.Join(dir, e.Name())); target == "/dev/fuse" {
			return true
		}
	}
	return false
}

// abortFUSEUnder aborts, through fusectl, the FUSE connections mounted under dir, so that what
// blocks on them fails (ENOTCONN) and can be cleaned up.
func abortFUSEUnder(t testing.TB, dir string) {
	t.Helper()
	const ctl = "/sys/fs/fuse/connections"
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("abort FUSE connections: %v", err)
		return
	}
	mounted := false
	for _, mi := range infos {
		mounted = mounted || mi.FsType == "fusectl"
	}
	if !mounted {
		if err := syscall.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil {
			t.Errorf("mount fusectl: %v", err)
			return
		}
		defer syscall.Unmount(ctl, 0)
	}
	for _, mi := range infos {
		if !strings.HasPrefix(mi.FsType, "fuse.") || !strings.HasPrefix(mi.MountPoint, dir+"/") {
			continue
		}
		abort := filepath.Join(ctl, strconv.Itoa(mi.Minor), "abort")
		if err := os.WriteFile(abort, []byte("1"), 0o200); err != nil {
			t.Errorf("abort the FUSE connection of %s: %v", mi.MountPoint, err)
			continue
		}
		t.Logf("aborted the FUSE connection of %s (%s)", mi.MountPoint, abort)
	}
}

// lockPID returns the pid of the daemon holding home's lock.
func lockPID(t testing.TB, home string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(home, "daemon.lock"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	return pid
}

// stopChildDaemon stops the daemon process serving home (SIGTERM: a clean close), if any.
func stopChildDaemon(t testing.TB, home string) {
	t.Helper()
	if !lockHeld(home) {
		return
	}
	pid := lockPID(t, home)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Errorf("stop daemon %d: %v", pid, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for lockHeld(home) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("daemon %d did not stop on SIGTERM", pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cleanHome runs a daemon in-process on home to tear down whatever a failed test left (servers,
// mounts, exports), deletes every clone and image, and closes it.
func cleanHome(t testing.TB, home string) {
	t.Helper()
	cfg := testConfig(home, testLog(t, filepath.Dir(home)))
	d, err := NewDaemon(cfg)
	if err != nil {
		t.Errorf("clean up %s: %v", home, err)
		return
	}
	defer d.Close()
	ctx := context.Background()
	clones, _ := d.Clones(ctx)
	for _, c := range clones {
		if err := d.DeleteClone(ctx, c.Name); err != nil {
			t.Errorf("clean up clone %s: %v", c.Name, err)
		}
	}
	imgs, _ := d.Images(ctx)
	for _, img := range imgs {
		if err := d.DeleteImage(ctx, img.Name); err != nil {
			t.Errorf("clean up image %s: %v", img.Name, err)
		}
	}
}
