package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	mount "k8s.io/mount-utils"

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

// TestDaemonKilled: the daemon runs as a process of its own, started by Connect; it is killed
// with SIGKILL while a clone runs (its server keeps running on a file system whose export is
// dead). The next daemon, started by the next Connect, kills that server, cleans up the dead
// mount and export, and starts the clone again with the data it had committed.
func TestDaemonKilled(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
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
			cleanHome(t, home)
		}
		requireNothingLeft(t, home)
	})

	c := connect()
	defer c.Close()
	build(t, c, pgDefinition(eng, "pg", "sourceType: empty\n"), "")
	cl, err := c.CreateClone(ctx, CloneRequest{Image: "pg", Name: "survivor"})
	require.NoError(t, err)
	sql(t, cl, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)")

	daemonPID := lockPID(t, home)
	cat, err := loadCatalog(filepath.Join(home, "catalog.json"))
	require.NoError(t, err)
	serverPID := cat.Clones[cl.Name].PID
	require.Positive(t, serverPID)
	dataDir := filepath.Join(home, "mnt", cl.Name, "data")
	require.Contains(t, cmdline(serverPID), dataDir, "the recorded pid is the clone's server")

	require.NoError(t, syscall.Kill(daemonPID, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !lockHeld(home) }, 30*time.Second, 20*time.Millisecond, "the killed daemon releases its lock")
	_, err = c.Images(ctx)
	require.ErrorIs(t, err, ErrUnavailable)
	// The server usually outlives the daemon (idle, it does no I/O on its dead file system).
	t.Logf("the clone's server runs on after the daemon's death: %v", strings.Contains(cmdline(serverPID), dataDir))

	c2 := connect()
	defer c2.Close()
	require.NotEqual(t, daemonPID, lockPID(t, home))
	require.NotContains(t, cmdline(serverPID), dataDir, "the new daemon killed the old server")
	got, err := c2.Clone(ctx, cl.Name)
	require.NoError(t, err)
	require.Equal(t, CloneRunning, got.State, got.Message)
	require.Equal(t, "42", sql(t, got, "SELECT v FROM t"), "committed data survives the kill")
	sql(t, got, "INSERT INTO t VALUES (43)")
	rep, err := c2.CheckPool(ctx, false)
	require.NoError(t, err)
	require.True(t, rep.OK, "%+v", rep)

	require.NoError(t, c2.DeleteClone(ctx, cl.Name))
	require.NoError(t, c2.DeleteImage(ctx, "pg"))
}

// TestDaemonKilledFailsCloneIO: while a clone runs, the daemon (a process of its own, started by
// Connect) is the only process of the clone's tree that holds /dev/fuse: neither the clone's
// server nor any process under it, nor any other process the daemon started. So when the daemon
// is killed (SIGKILL), the kernel aborts the FUSE connections it served, and I/O on the clone,
// through its file system and through its block device, fails at once instead of blocking in D
// state forever; the next daemon cleans up (kills the server, unmounts, detaches the loop device)
// and the home can be removed. The reads run in processes of their own with a deadline, so that
// a regression fails the test (and its cleanup aborts the connections) instead of hanging it.
func TestDaemonKilledFailsCloneIO(t *testing.T) {
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
	t.Cleanup(func() {
		if t.Failed() {
			abortFUSEUnder(t, home) // a connection nobody serves would hang everything below
		}
		stopChildDaemon(t, home)
		if t.Failed() {
			t.Logf("daemon.log (last lines):\n%s", engine.TailFile(LogPath(home), 80))
			cleanHome(t, home)
		}
	})

	c := connect()
	defer c.Close()
	build(t, c, pgDefinition(eng, "pg", "sourceType: empty\n"), "")
	cl, err := c.CreateClone(ctx, CloneRequest{Image: "pg", Name: "io"})
	require.NoError(t, err)
	sql(t, cl, "CREATE TABLE t (v int); INSERT INTO t VALUES (1); CHECKPOINT")

	daemonPID := lockPID(t, home)
	cat, err := loadCatalog(filepath.Join(home, "catalog.json"))
	require.NoError(t, err)
	serverPID := cat.Clones[cl.Name].PID
	require.Positive(t, serverPID)
	mnt := filepath.Join(home, "mnt", cl.Name)
	require.Contains(t, cmdline(serverPID), mnt, "the recorded pid is the clone's server")

	// (i) Only the daemon holds /dev/fuse.
	tree := descendants(daemonPID, serverPID)
	require.Greater(t, len(tree), 2, "the clone's server and its processes: %v", tree)
	var holders []string
	for _, pid := range tree {
		if pid != daemonPID && holdsDevFUSE(pid) {
			holders = append(holders, fmt.Sprintf("%d (%s)", pid, cmdline(pid)))
		}
	}
	require.Empty(t, holders, "processes of the clone's tree that hold /dev/fuse (only the daemon %d may)", daemonPID)
	require.True(t, holdsDevFUSE(daemonPID), "the daemon serves the clone's export")

	// (ii) Killing the daemon makes the clone's I/O fail promptly.
	loops := nodetest.LoopDevicesOn(t, filepath.Join(home, "export"))
	require.NotEmpty(t, loops, "the clone's loop device")
	require.NoError(t, syscall.Kill(daemonPID, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !lockHeld(home) }, 30*time.Second, 20*time.Millisecond, "the killed daemon exits")
	start := time.Now()
	for _, path := range append([]string{filepath.Join(mnt, "data", "global", "pg_control")}, loops...) {
		out, err := nodetest.DirectReadWithin(path, 10*time.Second)
		require.Error(t, err, "an O_DIRECT read of %s after the daemon's death", path)
		require.NotErrorIs(t, err, nodetest.ErrDeadline, "an O_DIRECT read of %s after the daemon's death", path)
		t.Logf("O_DIRECT read of %s after the daemon's death: %v: %s", path, err, strings.TrimSpace(out))
	}
	t.Logf("the reads failed %v after the daemon's exit", time.Since(start).Round(time.Millisecond))

	// The next daemon cleans up and serves again; then everything goes and the home is removed.
	c2 := connect()
	defer c2.Close()
	got, err := c2.Clone(ctx, cl.Name)
	require.NoError(t, err)
	require.Equal(t, CloneRunning, got.State, got.Message)
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
