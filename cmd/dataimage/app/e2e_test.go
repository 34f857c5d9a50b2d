package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dataimage/dataimage/local"
)

// execEnv makes the test binary the dataimage command: the daemon that the end-to-end test's
// commands start (os.Executable, with "daemon --home ...") is this binary with this variable set.
const execEnv = "DATAIMAGE_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execEnv) == "1" {
		os.Exit(Execute(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// need skips the test when something it needs is missing, or fails it when CI is "true": CI
// installs everything, and a skip there would hide a broken install.
func need(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: failing instead of skipping)", what)
	}
	t.Skipf("skipping: %s", what)
}

// postgresMajor returns the newest PostgreSQL server's major version installed under
// /usr/lib/postgresql ("" if none).
func postgresMajor() string {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	best, bestN := "", -1
	for _, b := range bins {
		v := filepath.Base(filepath.Dir(filepath.Dir(b)))
		if n, err := strconv.Atoi(v); err == nil && n > bestN {
			best, bestN = v, n
		}
	}
	return best
}

// e2e runs dataimage command lines as the dataimage binary would (Execute's path, with the real
// daemon connection), against one data home.
type e2e struct {
	t    *testing.T
	home string
}

// run runs a command line and returns its exit status, stdout and stderr.
func (e *e2e) run(args ...string) (int, string, string) {
	e.t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	code := execute(ctx, append([]string{"--home", e.home}, args...), newEnv(&stdout, &stderr))
	e.t.Logf("dataimage %s: exit %d in %v", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond))
	return code, stdout.String(), stderr.String()
}

// ok runs a command line that must succeed and returns its stdout.
func (e *e2e) ok(args ...string) string {
	e.t.Helper()
	code, stdout, stderr := e.run(args...)
	if code != 0 {
		e.t.Fatalf("dataimage %s: exit %d\nstdout:\n%s\nstderr:\n%s\ndaemon log:\n%s", strings.Join(args, " "), code, stdout, stderr, e.daemonLog())
	}
	return stdout
}

// okJSON runs a command line with -o json that must succeed, and decodes its output into v.
func (e *e2e) okJSON(v any, args ...string) {
	e.t.Helper()
	out := e.ok(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		e.t.Fatalf("dataimage %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (e *e2e) daemonLog() string {
	b, err := os.ReadFile(local.LogPath(e.home))
	if err != nil {
		return err.Error()
	}
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// psql runs one SQL command on the clone at conn and returns its unaligned output.
func psql(t *testing.T, conn, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "psql", conn, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("psql -c %q: %w: %s", sql, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// TestEndToEnd runs the dataimage command against a real daemon (this test binary, started by
// the first command as the dataimage binary would start itself) and a real PostgreSQL: build an
// empty image, make a clone, query it with psql through its connection string, save, reset,
// delete, stop the daemon.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the end-to-end test in -short mode")
	}
	need(t, os.Geteuid() == 0, "the daemon needs root (it mounts volumes, and runs servers as postgres)")
	major := postgresMajor()
	need(t, major != "", "no PostgreSQL server under /usr/lib/postgresql (hack/install-deps.sh installs it)")
	_, err := exec.LookPath("psql")
	need(t, err == nil, "no psql on PATH")
	_, err = os.Stat("/dev/fuse")
	need(t, err == nil, "no /dev/fuse: volumes cannot reach the kernel")

	// The servers run as postgres, and must traverse the home's parents: the test's temporary
	// directory and the one t.TempDir makes it in.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	e := &e2e{t: t, home: filepath.Join(dir, "home")}
	t.Setenv(execEnv, "1")
	t.Cleanup(func() {
		// Whatever happened, no daemon stays behind (it stops the clones' servers and releases
		// their volumes).
		if code, _, stderr := e.run("daemon", "stop"); code != 0 && !strings.Contains(stderr, "not running") {
			t.Errorf("daemon stop at cleanup: exit %d: %s", code, stderr)
		}
	})

	if code, _, stderr := e.run("daemon", "status"); code != 1 || !strings.Contains(stderr, "daemon is not running") {
		t.Fatalf("daemon status before any daemon: exit %d, stderr %q; want 1 and \"not running\"", code, stderr)
	}

	def := filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(def, fmt.Appendf(nil, "name: e2e-empty\nengine: postgres\nversion: %q\nsourceType: empty\ntags: [e2e]\nlifetime: \"0\"\n", major), 0o644); err != nil {
		t.Fatal(err)
	}
	// The first command starts the daemon with the daemon flags it was given.
	out := e.ok("image", "build", "-f", def, "--pool-size", "4Gi", "--volume-size", "1Gi", "--clone-lifetime", "1h")
	if !strings.Contains(out, "Image e2e-empty built in ") || !strings.Contains(out, "Engine:       postgres "+major+".") {
		t.Errorf("build summary:\n%s", out)
	}

	var st daemonStatus
	e.okJSON(&st, "daemon", "status")
	if !st.Running || st.PID <= 0 || st.PID == os.Getpid() || st.Pool == nil || st.Pool.Capacity <= 3<<30 || st.Pool.Capacity > 4<<30 {
		t.Errorf("daemon status %+v (pool %+v): want a running daemon in another process with a 4 GiB pool", st, st.Pool)
	}

	var images []local.Image
	e.okJSON(&images, "image", "list")
	if len(images) != 1 || images[0].Name != "e2e-empty" || images[0].Size != 1<<30 || images[0].Clones != 0 {
		t.Fatalf("image list: %+v", images)
	}

	conn := strings.TrimSpace(e.ok("clone", "create", "--image", "e2e-empty", "--name", "c1"))
	if !strings.HasPrefix(conn, "postgresql://") {
		t.Fatalf("clone create printed %q, want a connection string", conn)
	}
	var cl local.Clone
	e.okJSON(&cl, "clone", "get", "c1")
	if cl.State != local.CloneRunning || cl.Connection != conn || cl.Lifetime != "1h" || cl.Expires.IsZero() {
		t.Errorf("clone get c1: %+v; want running, with the daemon's 1h clone lifetime", cl)
	}
	if got, err := psql(t, conn, "CREATE TABLE t (x int); INSERT INTO t VALUES (42); SELECT sum(x) FROM t"); err != nil || !strings.HasSuffix(got, "42") {
		t.Fatalf("write into the clone: %q, %v", got, err)
	}

	rev := e.ok("clone", "save", "c1", "--revision", "r1")
	if !strings.Contains(rev, "saved as revision r1") {
		t.Errorf("clone save: %q", rev)
	}
	if _, err := psql(t, conn, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	e.ok("clone", "reset", "c1", "--to", "r1")
	if got, err := psql(t, conn, "SELECT sum(x) FROM t"); err != nil || got != "42" {
		t.Errorf("after reset to r1: %q, %v; want 42", got, err)
	}
	e.ok("clone", "reset", "c1", "--to", "image")
	if got, err := psql(t, conn, "SELECT count(*) FROM t"); err == nil || !strings.Contains(got, `relation "t" does not exist`) {
		t.Errorf("after reset to the image, table t is still there: %q, %v", got, err)
	}

	table := e.ok("clone", "list")
	if !strings.Contains(table, "NAME") || !strings.Contains(table, "c1 ") || !strings.Contains(table, "running") {
		t.Errorf("clone list:\n%s", table)
	}
	var pool local.PoolStatus
	e.okJSON(&pool, "pool", "status")
	if pool.Images != 1 || pool.Clones != 1 || pool.Used <= 0 || pool.ImageBytes <= 0 {
		t.Errorf("pool status: %+v", pool)
	}
	e.ok("pool", "check")

	// An image with a clone is not deleted.
	if code, _, stderr := e.run("image", "delete", "e2e-empty"); code != 1 || !strings.Contains(stderr, "dataimage: ") {
		t.Errorf("delete an image with a clone: exit %d, %q", code, stderr)
	}
	e.ok("clone", "delete", "c1")
	if code, _, stderr := e.run("clone", "get", "c1"); code != 1 || stderr != "dataimage: clone c1 does not exist\n" {
		t.Errorf("clone get after delete: exit %d, %q", code, stderr)
	}
	e.ok("image", "delete", "e2e-empty")
	e.okJSON(&images, "image", "list")
	if len(images) != 0 {
		t.Errorf("images after delete: %+v", images)
	}

	e.ok("daemon", "stop")
	if code, _, _ := e.run("daemon", "status"); code != 1 {
		t.Errorf("daemon status after stop: exit %d, want 1", code)
	}
}
