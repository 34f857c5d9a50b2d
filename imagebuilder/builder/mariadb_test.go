package builder

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb"
)

// End-to-end builds of MariaDB images: the real server, client and mariadb-dump. The helpers
// here are this file's own (prefixed maria) so that it stands apart from the PostgreSQL tests.

const mariaTimeout = 3 * time.Minute

// mariaEngine returns the installed MariaDB and the set holding it. Without one the test is
// skipped, or fails when CI is "true" (CI installs the engines).
func mariaEngine(t *testing.T) (engine.Engine, engine.Set) {
	t.Helper()
	engines, err := mariadb.Discover(mariadb.Options{})
	if err != nil {
		t.Fatalf("mariadb.Discover: %v", err)
	}
	for _, e := range engines {
		if e.Kind() == imagebuilder.EngineMariaDB {
			return e, engine.Set{e}
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no MariaDB server installed, and CI=true: hack/install-deps.sh should have installed mariadb-server and mariadb-client")
	}
	t.Skip("no MariaDB server installed: skipping (apt-get install mariadb-server mariadb-client, or make deps)")
	return nil, nil
}

// mariaDir returns an empty directory the server's OS user can reach (t.TempDir and its parent
// are 0700).
func mariaDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// mariaRunDir returns a directory for runtime directories, with a short path (for the socket),
// that the server's OS user can reach.
func mariaRunDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mdbrun")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mariaStart starts a server on the instance under root, stopped when the test ends.
func mariaStart(t *testing.T, e engine.Engine, root string) engine.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mariaTimeout)
	defer cancel()
	inst, err := e.Start(ctx, root, engine.StartOptions{RuntimeDir: mariaRunDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), mariaTimeout)
		defer cancel()
		if err := inst.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", root, err)
		}
	})
	return inst
}

func mariaQuery(t *testing.T, inst engine.Instance, db, sql string) string {
	t.Helper()
	out, err := inst.Query(context.Background(), db, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// mariaBackups are the source's dumps in a backup root.
type mariaBackups struct {
	root string
	// made is when the dumps were made, to the second.
	made time.Time
}

// mariaSourceSQL is the source's database shop.
const mariaSourceSQL = `
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, email VARCHAR(100)) ENGINE=InnoDB;
INSERT INTO customers VALUES (1, 'Zoë Martin', 'zoe@example.org'), (2, '李雷', 'li@example.org'), (3, 'Ann O''Neil', NULL);
CREATE TABLE orders (id INT PRIMARY KEY, customer INT NOT NULL, total DECIMAL(10,2), FOREIGN KEY (customer) REFERENCES customers(id)) ENGINE=InnoDB;
INSERT INTO orders VALUES (10, 1, 12.50), (11, 1, 7.25), (12, 2, 100.00);
`

// mariaSource makes a source MariaDB with database shop, dumps it with the real mariadb-dump
// (shop.sql: one database; all.sql.gz: --databases, gzip'd) into a new backup root with the
// given scripts, and stops it.
func mariaSource(t *testing.T, e engine.Engine, scripts map[string]string) *mariaBackups {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mariaTimeout)
	defer cancel()
	src := mariaDir(t)
	if err := e.Init(ctx, src, engine.InitOptions{Database: "shop"}); err != nil {
		t.Fatal(err)
	}
	inst := mariaStart(t, e, src)
	if err := inst.Exec(ctx, "shop", strings.NewReader(mariaSourceSQL)); err != nil {
		t.Fatal(err)
	}
	b := &mariaBackups{root: t.TempDir(), made: time.Now().UTC().Truncate(time.Second)}
	dump := func(args ...string) []byte {
		user := "root"
		if os.Geteuid() != 0 {
			u, err := engine.ResolveUser("", "")
			if err != nil {
				t.Fatal(err)
			}
			user = u.Name
		}
		var out, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "mariadb-dump", append([]string{"--no-defaults",
			"--socket=" + inst.Conn().Socket, "--user=" + user}, args...)...)
		cmd.Env = append(os.Environ(), "TZ=UTC")
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("mariadb-dump %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return out.Bytes()
	}
	write := func(name string, data []byte) {
		p := filepath.Join(b.root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil { // readable by root only: the builder reads it
			t.Fatal(err)
		}
	}
	write("shop.sql", dump("shop"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(dump("--databases", "shop")); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	write("all.sql.gz", gz.Bytes())
	for name, body := range scripts {
		write(name, []byte(body))
	}
	return b
}

// mariaBuild validates def against the set and backupRoot, and builds it into a new root.
func mariaBuild(t *testing.T, set engine.Set, backupRoot, def string, rec *recorder) (*Result, string, string, error) {
	t.Helper()
	d, err := imagebuilder.ParseDefinition([]byte(def))
	if err != nil {
		t.Fatal(err)
	}
	venv := imagebuilder.ValidationEnv{Versions: set.Versions(), BackupRoot: backupRoot,
		DefaultLifetime: imagebuilder.Lifetime{Duration: time.Hour}, CheckPaths: backupRoot != ""}
	if err := d.Validate(venv); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(mariaDir(t), "vol")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(mariaRunDir(t), "build")
	ctx, cancel := context.WithTimeout(context.Background(), mariaTimeout)
	defer cancel()
	res, err := Build(ctx, Request{Definition: d, Env: venv, Engines: set, Root: root, RuntimeDir: run, Progress: rec.record})
	return res, root, run, err
}

func mariaSteps(res *Result) []string {
	var out []string
	for _, s := range res.Steps {
		out = append(out, s.Step)
	}
	return out
}

// majorMinor is "10.11" of "10.11.19", as definitions name versions.
func majorMinor(v string) string {
	parts := strings.Split(v, ".")
	return strings.Join(parts[:min(2, len(parts))], ".")
}

func TestMariaDBBuildEmpty(t *testing.T) {
	t.Parallel()
	e, set := mariaEngine(t)
	rec := &recorder{}
	res, root, run, err := mariaBuild(t, set, "", "name: scratch\nengine: MariaDB\nversion: \""+majorMinor(e.Version())+
		"\"\nsourceType: empty\ninitialDatabaseName: app_dev\n", rec)
	if err != nil {
		t.Fatalf("%v\n%s", err, rec.logText())
	}
	want := []string{StepInit, StepStart, StepCheckpoint, StepStop}
	if got := mariaSteps(res); !slices.Equal(got, want) {
		t.Fatalf("steps = %v, want %v", got, want)
	}
	if got := rec.steps(); !slices.Equal(got, want) {
		t.Fatalf("events' steps = %v, want %v", got, want)
	}
	if res.Engine != imagebuilder.EngineMariaDB || res.Version != e.Version() || res.DataBytes < 10<<20 {
		t.Fatalf("result = %+v", res)
	}
	log := rec.logText()
	if !strings.Contains(log, "start: ") || !strings.Contains(log, "ready for connections") || !strings.Contains(log, "Shutdown complete") {
		t.Fatalf("the server's log lines are not in the events:\n%s", log)
	}
	if pids := enginetest.ServersUsing(t, run); len(pids) != 0 {
		t.Fatalf("servers left running: %v", pids)
	}

	// The image: a clone's server has the initial database, in utf8mb4.
	inst := mariaStart(t, e, root)
	if got := mariaQuery(t, inst, "app_dev", "SELECT DATABASE(), @@character_set_database"); got != "app_dev\tutf8mb4" {
		t.Fatalf("clone: %q", got)
	}
}

func TestMariaDBBuildDump(t *testing.T) {
	t.Parallel()
	e, set := mariaEngine(t)
	b := mariaSource(t, e, map[string]string{
		// Before the restore, in the initial database: a table the dump does not have.
		"scripts/pre.sql": "CREATE TABLE audit (seq INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(20), db VARCHAR(64));\n" +
			"INSERT INTO audit (what, db) VALUES ('pre', DATABASE());\n",
		// After it: mask the customers and say so.
		"scripts/post.sql": "UPDATE customers SET name = CONCAT('customer ', id), email = CONCAT('user', id, '@example.com');\n" +
			"INSERT INTO audit (what, db) VALUES (CONCAT('post ', (SELECT COUNT(*) FROM orders)), DATABASE());\n",
	})

	t.Run("one database", func(t *testing.T) {
		rec := &recorder{}
		res, root, run, err := mariaBuild(t, set, b.root, `name: shop-masked
engine: mariadb
version: "`+majorMinor(e.Version())+`"
sourceType: backup
backups:
  - path: shop.sql
initialDatabaseName: shop
preScript: scripts/pre.sql
postScript: scripts/post.sql
lifetime: 0
`, rec)
		if err != nil {
			t.Fatalf("%v\n%s", err, rec.logText())
		}
		want := []string{StepInit, StepStart, StepPreScript, StepRestore, StepPostScript, StepCheckpoint, StepStop}
		if got := mariaSteps(res); !slices.Equal(got, want) {
			t.Fatalf("steps = %v, want %v", got, want)
		}
		if res.DataState.Time.Before(b.made) || res.DataState.Time.After(time.Now()) || !strings.Contains(res.DataState.Source, "Dump completed on") {
			t.Fatalf("DataState = %+v, want the dump's time (made at %v)", res.DataState, b.made)
		}
		st, err := os.Stat(filepath.Join(b.root, "shop.sql"))
		if err != nil {
			t.Fatal(err)
		}
		var last int64
		for _, ev := range rec.events {
			if ev.Step == StepRestore && ev.Total > 0 {
				if ev.Total != st.Size() || ev.Done < last {
					t.Fatalf("restore progress %d/%d after %d, want up to %d", ev.Done, ev.Total, last, st.Size())
				}
				last = ev.Done
			}
		}
		if last != st.Size() {
			t.Fatalf("last restore progress %d, want %d", last, st.Size())
		}
		if pids := enginetest.ServersUsing(t, run); len(pids) != 0 {
			t.Fatalf("servers left running: %v", pids)
		}

		// The scripts' effects are in the image: a clone's server has them.
		inst := mariaStart(t, e, root)
		if got := mariaQuery(t, inst, "shop", "SELECT what, db FROM audit ORDER BY seq"); got != "pre\tshop\npost 3\tshop" {
			t.Fatalf("audit = %q: the preScript runs before the restore, the postScript after, both in shop", got)
		}
		if got := mariaQuery(t, inst, "shop", "SELECT GROUP_CONCAT(name ORDER BY id), COUNT(DISTINCT email) FROM customers"); got != "customer 1,customer 2,customer 3\t3" {
			t.Fatalf("customers = %q, want masked", got)
		}
		if got := mariaQuery(t, inst, "shop", "SELECT SUM(total) FROM orders"); got != "119.75" {
			t.Fatalf("orders total = %q", got)
		}
	})

	t.Run("databases gzip", func(t *testing.T) {
		// A gzip'd --databases dump makes its own database: no initial database needed.
		rec := &recorder{}
		res, root, _, err := mariaBuild(t, set, b.root, "name: shop-all\nengine: mariadb\nversion: \""+e.Version()+
			"\"\nsourceType: backup\nbackups:\n  - path: all.sql.gz\n", rec)
		if err != nil {
			t.Fatalf("%v\n%s", err, rec.logText())
		}
		if res.DataState.Time.IsZero() {
			t.Fatalf("no data state time: %+v", res.DataState)
		}
		inst := mariaStart(t, e, root)
		if got := mariaQuery(t, inst, "shop", "SELECT GROUP_CONCAT(name ORDER BY id SEPARATOR '|') FROM customers"); got != "Zoë Martin|李雷|Ann O'Neil" {
			t.Fatalf("customers = %q", got)
		}
	})
}

func TestMariaDBBuildFailures(t *testing.T) {
	t.Parallel()
	e, set := mariaEngine(t)
	b := mariaSource(t, e, map[string]string{
		"garbage.bin": "\x00\x01\x02 not a dump",
		"bad.sql":     "UPDATE customers SET name = 'x';\nSELECT * FROM nosuch;\n",
	})
	version := majorMinor(e.Version())
	for _, tc := range []struct {
		name, def string
		step      string
		is        error
		msg       string
	}{
		{
			name: "undetectable backup",
			def:  "backups:\n  - path: garbage.bin\ninitialDatabaseName: shop\n",
			step: StepRestore, is: engine.ErrFormat, msg: "backups[0] garbage.bin: engine: unrecognized backup format",
		},
		{
			name: "dump without a database to go to",
			def:  "backups:\n  - path: shop.sql\n",
			step: StepRestore, is: mariadb.ErrNoDatabase, msg: "shop.sql has no USE or CREATE DATABASE",
		},
		{
			name: "failing postScript",
			def:  "backups:\n  - path: shop.sql\ninitialDatabaseName: shop\npostScript: bad.sql\n",
			step: StepPostScript, is: engine.ErrScript, msg: "postScript bad.sql line 2: SELECT * FROM nosuch: Error 1146 (42S02): Table 'shop.nosuch' doesn't exist",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			_, _, run, err := mariaBuild(t, set, b.root, "name: failing\nengine: mariadb\nversion: \""+version+"\"\nsourceType: backup\n"+tc.def, rec)
			var se *StepError
			if !errors.As(err, &se) || !errors.Is(err, ErrBuild) || !errors.Is(err, tc.is) {
				t.Fatalf("Build = %v; want a *StepError matching ErrBuild and %v", err, tc.is)
			}
			if se.Step != tc.step || !strings.Contains(err.Error(), "builder: step "+tc.step+" failed: ") || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Build = %v; want step %s failing with %q", err, tc.step, tc.msg)
			}
			if pids := enginetest.ServersUsing(t, run); len(pids) != 0 {
				t.Fatalf("servers left running: %v", pids)
			}
			if _, err := os.Stat(filepath.Join(run, "mysqld.pid")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the server's pid file is left (%v): not stopped cleanly", err)
			}
		})
	}
}
