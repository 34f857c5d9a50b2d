// Package enginetest is the conformance test of the engine adapters: what the callers of
// engine.Adapter, engine.Engine and engine.Instance (the builder, the local daemon, the
// Kubernetes builder command) rely on, whatever the engine. Every adapter's tests call Run with
// a real server of its engine; the adapter's own tests cover what is particular to it.
//
// It must not know any engine: it uses the interfaces and SQL that every engine takes.
package enginetest

import (
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
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

// timeout bounds each step of a test's servers (init, start, stop).
const timeout = 3 * time.Minute

// Run runs the conformance tests of adapter a with eng, one of the engines a finds.
func Run(t *testing.T, a engine.Adapter, eng engine.Engine) {
	t.Run("Kind", func(t *testing.T) { testKind(t, a, eng) })
	t.Run("URL", func(t *testing.T) { testURL(t, a) })
	t.Run("User", func(t *testing.T) { testUser(t, eng) })
	t.Run("Lifecycle", func(t *testing.T) { testLifecycle(t, eng) })
	t.Run("Clone", func(t *testing.T) { testClone(t, a, eng) })
	t.Run("Adopt", func(t *testing.T) { testAdopt(t, eng) })
}

// The adapter serves kinds of the definition format, and its engines are of those kinds.
func testKind(t *testing.T, a engine.Adapter, eng engine.Engine) {
	require.NotEmpty(t, a.Kinds())
	for _, k := range a.Kinds() {
		require.Contains(t, imagebuilder.Engines(), k, "the definition format does not list kind %s (imagebuilder/engines.go)", k)
		require.NotEmpty(t, k.Formats(), "kind %s restores no backup format", k)
	}
	require.Contains(t, a.Kinds(), eng.Kind())
	require.NotEmpty(t, eng.Version())
	v, ok := (engine.Set{eng}).Versions().Match(eng.Kind(), eng.Version())
	require.True(t, ok)
	require.Equal(t, eng.Version(), v)
}

// URL takes every part of the connection from the ConnInfo, escaped: a client given the URL
// reaches the same server, as the same user, in the same database.
func testURL(t *testing.T, a engine.Adapter) {
	for _, k := range a.Kinds() {
		for _, c := range []engine.ConnInfo{
			{Engine: k, Host: "127.0.0.1", Port: 5433, User: "admin", Password: "secret", Database: "app"},
			{Engine: k, Host: "::1", Port: 3307, User: "r@ot", Password: "p@ss:/?#[]% w", Database: "shop"},
			{Engine: k, Host: "db.example", Port: 1, User: "u", Password: "", Database: "d"},
		} {
			raw := a.URL(c)
			u, err := url.Parse(raw)
			require.NoError(t, err, raw)
			require.NotEmpty(t, u.Scheme, raw)
			require.Equal(t, c.Host, u.Hostname(), raw)
			require.Equal(t, strconv.Itoa(c.Port), u.Port(), raw)
			require.Equal(t, c.User, u.User.Username(), raw)
			pw, _ := u.User.Password()
			require.Equal(t, c.Password, pw, raw)
			require.Equal(t, "/"+c.Database, u.Path, raw)
		}
	}
}

// User names the OS user servers run as: never root (servers refuse it) when the caller is
// root; the caller itself otherwise.
func testUser(t *testing.T, eng engine.Engine) {
	u, err := eng.User("")
	require.NoError(t, err)
	if os.Geteuid() != 0 {
		require.Equal(t, os.Getuid(), u.UID, "not root: the servers run as the caller")
		return
	}
	require.NotZero(t, u.UID, "as root, the servers run as another user")
	_, err = eng.User("dataimage-no-such-user")
	require.Error(t, err, "as root, a RunAs that names nobody")
}

// An instance lives through Init, a Volatile start, writes, Checkpoint and a clean Stop, and
// starts again with its data; Start gives the runtime directory to the server's user.
func testLifecycle(t *testing.T, eng engine.Engine) {
	root := Root(t)
	require.NoError(t, eng.Init(ctx(t), root, engine.InitOptions{}))
	run := RuntimeDir(t)
	inst := start(t, eng, root, engine.StartOptions{RuntimeDir: run, Volatile: true})
	u, err := eng.User("")
	require.NoError(t, err)
	st, err := os.Stat(run)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm(), "the runtime directory holds the socket")
	require.Equal(t, uint32(u.UID), st.Sys().(*syscall.Stat_t).Uid, "the runtime directory is the server user's")
	fill(t, inst)
	require.NoError(t, inst.Checkpoint(ctx(t)))
	require.NoError(t, inst.Stop(ctx(t)))
	select {
	case <-inst.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after Stop")
	}

	again := start(t, eng, root, engine.StartOptions{RuntimeDir: run})
	requireFilled(t, again)
}

// A copy of a running server's data (what a snapshot of a clone holds) starts once
// PrepareClone has run, while the original server still runs, and serves its data over TCP
// with the password SetPassword gave, at the URL the adapter makes.
func testClone(t *testing.T, a engine.Adapter, eng engine.Engine) {
	root := Root(t)
	require.NoError(t, eng.Init(ctx(t), root, engine.InitOptions{}))
	orig := start(t, eng, root, engine.StartOptions{})
	fill(t, orig)
	require.NoError(t, orig.Checkpoint(ctx(t)))

	clone := Root(t)
	copyFrozen(t, orig, engine.DataDir(root), engine.DataDir(clone))
	require.NoError(t, eng.PrepareClone(clone))
	require.NoError(t, eng.PrepareClone(clone), "PrepareClone twice")

	port, err := engine.FreePort("127.0.0.1")
	require.NoError(t, err)
	inst := start(t, eng, clone, engine.StartOptions{ListenAddress: "127.0.0.1", Port: port})
	requireFilled(t, inst)
	require.NoError(t, inst.SetPassword(ctx(t), "conformance"))
	c := inst.Conn()
	require.Equal(t, eng.Kind(), c.Engine)
	require.Equal(t, port, c.Port)
	c.Password, c.Database = "conformance", database
	u, err := url.Parse(a.URL(c))
	require.NoError(t, err)
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	require.NoError(t, err, "the clone's URL names its listener")
	conn.Close()

	requireFilled(t, orig) // the original ran on all along
}

// A server that a Start left running is adopted with the same options (what a restarted local
// daemon does with its clones' servers): the same process, its data, its socket and port; the
// adopted Instance checkpoints and stops it, and sees it gone (Done). Once it is gone, or for an
// instance on which nothing runs, Adopt fails with ErrNotRunning.
func testAdopt(t *testing.T, eng engine.Engine) {
	root := Root(t)
	_, err := eng.Adopt(ctx(t), root, engine.StartOptions{RuntimeDir: RuntimeDir(t)})
	require.ErrorIs(t, err, engine.ErrNotRunning, "nothing runs on an empty instance")
	require.NoError(t, eng.Init(ctx(t), root, engine.InitOptions{}))
	port, err := engine.FreePort("127.0.0.1")
	require.NoError(t, err)
	opts := engine.StartOptions{RuntimeDir: RuntimeDir(t), ListenAddress: "127.0.0.1", Port: port}
	_, err = eng.Adopt(ctx(t), root, opts)
	require.ErrorIs(t, err, engine.ErrNotRunning, "an instance that never ran")
	inst := start(t, eng, root, opts)
	fill(t, inst)

	adopted, err := eng.Adopt(ctx(t), root, opts)
	require.NoError(t, err)
	require.Equal(t, inst.PID(), adopted.PID())
	got, want := adopted.Conn(), inst.Conn()
	require.Equal(t, want.Port, got.Port)
	require.Equal(t, want.Host, got.Host)
	require.Equal(t, want.Socket, got.Socket)
	require.Equal(t, want.User, got.User)
	requireFilled(t, adopted)
	require.NoError(t, adopted.Checkpoint(ctx(t)))
	require.NoError(t, adopted.Stop(ctx(t)), "the adopted server stops cleanly")
	for _, i := range []engine.Instance{adopted, inst} {
		select {
		case <-i.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("Done not closed after the adopted server's Stop")
		}
	}
	_, err = eng.Adopt(ctx(t), root, opts)
	require.ErrorIs(t, err, engine.ErrNotRunning, "the server stopped")

	again := start(t, eng, root, opts)
	requireFilled(t, again)
}

// database is the database fill makes.
const database = "conformance"

// fill makes database conformance with a table of three rows.
func fill(t *testing.T, inst engine.Instance) {
	t.Helper()
	require.NoError(t, inst.CreateDatabase(ctx(t), database))
	require.NoError(t, inst.Exec(ctx(t), database, strings.NewReader(
		"CREATE TABLE items (id integer PRIMARY KEY, name varchar(20));\n"+
			"INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');\n")))
	requireFilled(t, inst)
}

// requireFilled checks the rows fill made.
func requireFilled(t *testing.T, inst engine.Instance) {
	t.Helper()
	out, err := inst.Query(ctx(t), database, "SELECT count(*), sum(id) FROM items")
	require.NoError(t, err)
	require.Equal(t, []string{"3", "6"}, strings.FieldsFunc(out, func(r rune) bool { return r == '|' || r == '\t' || r == '\n' }))
}

// copyFrozen copies the data directory src of the running server inst to dst while the
// server's processes are stopped (SIGSTOP to its process group): a point-in-time copy, as a
// snapshot of the volume would hold, whose lock files name a server that still runs.
func copyFrozen(t *testing.T, inst engine.Instance, src, dst string) {
	t.Helper()
	pid := inst.PID()
	group := -pid
	if err := syscall.Kill(group, syscall.SIGSTOP); err != nil {
		group = pid // not a process group leader
		require.NoError(t, syscall.Kill(group, syscall.SIGSTOP))
	}
	out, err := exec.Command("cp", "-a", src, dst).CombinedOutput()
	require.NoError(t, syscall.Kill(group, syscall.SIGCONT))
	require.NoError(t, err, "cp: %s", out)
}

// Root returns an empty directory for an instance that the server's OS user can reach:
// t.TempDir and its parent are 0700, so both become 0711.
func Root(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		require.NoError(t, os.Chmod(d, 0o711))
	}
	return dir
}

// RuntimeDir returns a new runtime directory with a short path (a Unix socket's path must fit
// 107 bytes) that the server's OS user can reach, removed when the test ends.
func RuntimeDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rt-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o711))
	return dir
}

// start starts a server on the instance under root (in a new runtime directory unless opts
// names one) and stops it when the test ends, unless the test did.
func start(t *testing.T, eng engine.Engine, root string, opts engine.StartOptions) engine.Instance {
	t.Helper()
	if opts.RuntimeDir == "" {
		opts.RuntimeDir = RuntimeDir(t)
	}
	inst, err := eng.Start(ctx(t), root, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		select {
		case <-inst.Done():
			return
		default:
		}
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := inst.Stop(sctx); err != nil {
			t.Errorf("stop %s: %v", root, err)
		}
	})
	return inst
}

// ctx is a context bounded for one step of the test.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return c
}

// ServersUsing returns the PIDs of the processes whose command line mentions dir: the servers
// (and their tools) working on an instance or runtime directory under dir, which a test
// expects gone once a build or a restore has ended.
func ServersUsing(t testing.TB, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}
