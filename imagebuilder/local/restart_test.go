package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
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
