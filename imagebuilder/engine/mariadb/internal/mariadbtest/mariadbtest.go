// Package mariadbtest has the helpers of the mariadb adapter's tests: the installed MariaDB
// (skipping, or failing under CI=true, when there is none), instances in directories the server's
// OS user can reach, stopped when the test ends, and dumps made by the real mariadb-dump.
//
// It must not know the adapter's internals beyond what its tests share.
package mariadbtest

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb"
)

// Timeout bounds each step of a test's server (init, start, stop).
const Timeout = 2 * time.Minute

// Engine returns the installed MariaDB. Without one the test is skipped, or fails when the
// environment variable CI is "true" (CI installs the engines; a skip would hide a broken
// install).
func Engine(t testing.TB) engine.Engine {
	t.Helper()
	engines, err := mariadb.Discover(mariadb.Options{})
	if err != nil {
		t.Fatalf("mariadb.Discover: %v", err)
	}
	for _, e := range engines {
		if e.Kind() == imagebuilder.EngineMariaDB {
			if os.Geteuid() == 0 {
				if _, err := engine.ResolveUser("", "mysql"); err != nil {
					missing(t, "OS user mysql: "+err.Error())
				}
			}
			return e
		}
	}
	missing(t, "no MariaDB server (mariadbd) installed")
	return nil
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s, and CI=true: hack/install-deps.sh should have installed mariadb-server and mariadb-client", why)
	}
	t.Skipf("%s: skipping (apt-get install mariadb-server mariadb-client, or make deps)", why)
}

// Root returns an empty directory for an instance that the server's OS user can reach (see
// enginetest.Root).
func Root(t testing.TB) string {
	t.Helper()
	return enginetest.Root(t)
}

// RuntimeDir returns a new runtime directory with a short path, removed when the test ends (see
// enginetest.RuntimeDir).
func RuntimeDir(t testing.TB) string {
	t.Helper()
	return enginetest.RuntimeDir(t)
}

// Start starts a server on the instance under root (RuntimeDir filled in when empty) and stops it
// when the test ends, failing the test if that stop fails.
func Start(t testing.TB, e engine.Engine, root string, opts engine.StartOptions) engine.Instance {
	t.Helper()
	if opts.RuntimeDir == "" {
		opts.RuntimeDir = RuntimeDir(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	in, err := e.Start(ctx, root, opts)
	if err != nil {
		t.Fatalf("start %s: %v", root, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		if err := in.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", root, err)
		}
	})
	return in
}

// Instance makes a fresh instance with Init and starts it (see Start); it returns the running
// instance and its root.
func Instance(t testing.TB, e engine.Engine, init engine.InitOptions, start engine.StartOptions) (engine.Instance, string) {
	t.Helper()
	root := Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := e.Init(ctx, root, init); err != nil {
		t.Fatalf("init %s: %v", root, err)
	}
	return Start(t, e, root, start), root
}

// Exec runs sql in database db, failing the test on an error.
func Exec(t testing.TB, in engine.Instance, db, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := in.Exec(ctx, db, strings.NewReader(sql)); err != nil {
		t.Fatalf("exec in %q: %v", db, err)
	}
}

// Query runs one statement in database db and returns its output, failing the test on an error.
func Query(t testing.TB, in engine.Instance, db, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	out, err := in.Query(ctx, db, sql)
	if err != nil {
		t.Fatalf("query %q in %q: %v", sql, db, err)
	}
	return out
}

// Dump runs the real mariadb-dump against in with args (e.g. "shop", or "--databases", "shop")
// and returns the dump's path, in a directory of the test.
func Dump(t testing.TB, in engine.Instance, args ...string) string {
	t.Helper()
	tool, err := exec.LookPath("mariadb-dump")
	if err != nil {
		if tool, err = exec.LookPath("mysqldump"); err != nil {
			missing(t, "no mariadb-dump: "+err.Error())
		}
	}
	user := "root"
	if os.Geteuid() != 0 {
		u, err := engine.ResolveUser("", "")
		if err != nil {
			t.Fatal(err)
		}
		user = u.Name
	}
	path := filepath.Join(t.TempDir(), "dump.sql")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, append([]string{"--no-defaults", "--socket=" + in.Conn().Socket, "--user=" + user,
		"--routines", "--events"}, args...)...)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	cmd.Stdout, cmd.Stderr = f, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, stderr.String())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// Gzip writes path gzip'd to path.gz and returns that.
func Gzip(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".gz", b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path + ".gz"
}

// Lines is an io.Writer, safe for concurrent use, that keeps what is written to it (a server's
// log lines).
type Lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *Lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
