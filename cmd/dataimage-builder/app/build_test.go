package app

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
)

// requirePostgres returns the installed PostgreSQL engine, or skips the test (fails it when CI
// is "true": CI installs PostgreSQL, and a skip would hide a broken install).
func requirePostgres(t *testing.T) engine.Engine {
	t.Helper()
	set, err := registry.Discover()
	var pg engine.Engine
	if err == nil {
		for _, e := range set {
			if e.Kind() == imagebuilder.EnginePostgres && (pg == nil || imagebuilder.CompareVersions(e.Version(), pg.Version()) > 0) {
				pg = e
			}
		}
		if pg == nil {
			err = engine.ErrNotFound
		}
	}
	if err == nil {
		_, err = engine.ResolveUser("", "postgres")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required when CI=true: %v", err)
		}
		t.Skipf("PostgreSQL is not available (install postgresql; CI=true makes this a failure): %v", err)
	}
	return pg
}

// workDir returns a temporary directory the postgres user can traverse (t.TempDir is 0700).
func workDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o711))
	require.NoError(t, os.Chmod(dir, 0o711))
	return dir
}

// runDir returns a directory with a short path for a server's socket, with mode perm.
func runDir(t *testing.T, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dibrun")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, perm))
	return dir
}

// build runs the command and returns its exit code, stdout, stderr and the outcome it wrote.
func build(t *testing.T, args ...string) (int, string, string, *builder.Outcome) {
	t.Helper()
	term := filepath.Join(t.TempDir(), "termination-log")
	var stdout, stderr bytes.Buffer
	code := Main(append(args, "--termination-log", term), &stdout, &stderr)
	b, err := os.ReadFile(term)
	require.NoError(t, err, "the outcome is written whatever happens; stderr:\n%s", &stderr)
	o, err := wire.ParseOutcome(b)
	require.NoError(t, err, "termination log: %s", b)
	return code, stdout.String(), stderr.String(), o
}

// events decodes stdout: every line is one build event of the current format.
func events(t *testing.T, stdout string) []builder.Event {
	t.Helper()
	var evs []builder.Event
	sc := bufio.NewScanner(strings.NewReader(stdout))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		require.True(t, strings.HasPrefix(sc.Text(), `{"buildEvent":"`+wire.EventVersion+`",`), "line %q", sc.Text())
		ev, err := wire.DecodeEvent(sc.Bytes())
		require.NoError(t, err, "line %q", sc.Text())
		evs = append(evs, ev)
	}
	require.NoError(t, sc.Err())
	return evs
}

// steps returns the steps the events announce (with a message), in order, without repeats.
func steps(evs []builder.Event) []string {
	var s []string
	for _, ev := range evs {
		if ev.Message != "" && (len(s) == 0 || s[len(s)-1] != ev.Step) {
			s = append(s, ev.Step)
		}
	}
	return s
}

// query starts a server on the instance under root and runs one SQL statement in db.
func query(t *testing.T, pg engine.Engine, root, db, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := pg.Start(ctx, root, engine.StartOptions{RuntimeDir: runDir(t, 0o700)})
	require.NoError(t, err)
	defer func() { require.NoError(t, inst.Stop(ctx)) }()
	out, err := inst.Query(ctx, db, sql)
	require.NoError(t, err)
	return strings.TrimSpace(out)
}

// runtimeLeftovers lists the default runtime directories under /run and the temporary
// directory.
func runtimeLeftovers(t *testing.T) []string {
	t.Helper()
	a, _ := filepath.Glob("/run/dataimage-build-*")
	b, _ := filepath.Glob(filepath.Join(os.TempDir(), "dataimage-build-*"))
	return append(a, b...)
}

// TestBuildEmpty builds an empty PostgreSQL image with the Job's flags: JSON events on stdout,
// a successful outcome with the engine version, an instance that starts and has the initial
// database; the default runtime directory is removed. Building into the same root again is
// refused.
func TestBuildEmpty(t *testing.T) {
	pg := requirePostgres(t)
	root := filepath.Join(workDir(t), "data")
	require.NoError(t, os.Mkdir(root, 0o700)) // a fresh file system's root may be 0700
	before := runtimeLeftovers(t)
	def := `{"name":"scratch","engine":"postgres","version":"` + strings.Split(pg.Version(), ".")[0] +
		`","sourceType":"empty","initialDatabaseName":"app","nodeName":"node-a","volumeSize":"1Gi"}`

	code, stdout, stderr, o := build(t, "--definition-json", def, "--root", root, "--output", "json")
	require.Equal(t, 0, code, "stderr:\n%s", stderr)
	require.True(t, o.OK, "%+v", o)
	require.Equal(t, imagebuilder.EnginePostgres, o.Engine)
	require.Equal(t, pg.Version(), o.EngineVersion)
	require.Positive(t, o.DataBytes)
	require.Equal(t, []string{StepValidate, builder.StepInit, builder.StepStart, builder.StepCheckpoint, builder.StepStop},
		steps(events(t, stdout)))
	require.Contains(t, stderr, "image built: postgres "+pg.Version())
	require.Equal(t, before, runtimeLeftovers(t), "the runtime directory is removed")

	fi, err := os.Stat(root)
	require.NoError(t, err)
	require.NotZero(t, fi.Mode().Perm()&0o001, "the root was made traversable for the server")
	require.Equal(t, "1", query(t, pg, root, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'app'"))

	code, stdout, stderr, o = build(t, "--definition-json", def, "--root", root)
	require.Equal(t, 1, code)
	require.False(t, o.OK)
	require.Equal(t, StepValidate, o.Step)
	require.Contains(t, o.Message, "already holds an instance")
	require.Empty(t, stdout, "nothing started")
	require.Contains(t, stderr, "build failed at step validate")
}

// TestBuildDump builds an image from a pg_dump of a throwaway source server, with a YAML
// definition and text output; then a build whose postScript fails, and builds refused by
// validation.
func TestBuildDump(t *testing.T) {
	pg := requirePostgres(t)
	dir := workDir(t)
	backups := filepath.Join(dir, "backups")
	dumpSource(t, pg, dir, backups)
	major := strings.Split(pg.Version(), ".")[0]
	writeDef := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
		return p
	}

	def := writeDef("shop.yaml", `name: shop
engine: postgres
version: "`+major+`"
sourceType: backup
backups:
  - path: shop.dump
initialDatabaseName: shop
postScript: post.sql
`)
	root := filepath.Join(dir, "vol")
	code, stdout, stderr, o := build(t, "--definition", def, "--root", root, "--backup-root", backups, "--output", "text",
		"--runtime-dir", filepath.Join(runDir(t, 0o711), "r"))
	require.Equal(t, 0, code, "stderr:\n%s", stderr)
	require.Empty(t, stdout, "text progress goes to stderr")
	require.True(t, o.OK, "%+v", o)
	require.Equal(t, pg.Version(), o.EngineVersion)
	require.False(t, o.DataStateTime.IsZero(), "a custom dump records its time")
	require.WithinDuration(t, time.Now(), o.DataStateTime, 10*time.Minute)
	for _, w := range []string{"validate   image shop", "restore", "postscript", "stop", "image built: postgres " + pg.Version()} {
		require.Contains(t, stderr, w)
	}
	require.Equal(t, "300|done", query(t, pg, root, "shop", "SELECT count(*) || '|' || max(note) FROM items, post"))

	// A postScript that fails: exit 1, the step and the engine's complaint in the outcome.
	bad := writeDef("bad.yaml", `name: shop-bad
engine: postgres
version: "`+major+`"
sourceType: backup
backups: [{path: shop.dump}]
initialDatabaseName: shop
postScript: bad.sql
`)
	code, stdout, stderr, o = build(t, "--definition", bad, "--root", filepath.Join(dir, "vol-bad"), "--backup-root", backups)
	require.Equal(t, 1, code, "stderr:\n%s", stderr)
	require.False(t, o.OK)
	require.Equal(t, builder.StepPostScript, o.Step)
	require.Contains(t, o.Message+o.LogTail, "no_such_table")
	evs := events(t, stdout)
	require.Equal(t, builder.StepPostScript, evs[len(evs)-1].Step, "the last event is the failed step's")
	require.Contains(t, stderr, "build failed at step postscript")

	// Refused before anything starts: a missing backup, an unknown version, no backup root.
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing backup", []string{"--definition-json", `{"name":"x","engine":"postgres","version":"` + major + `","sourceType":"backup","backups":[{"path":"gone.dump"}]}`, "--backup-root", backups},
			`backups[0].path: "gone.dump" does not exist`},
		{"unknown version", []string{"--definition-json", `{"name":"x","engine":"postgres","version":"7","sourceType":"empty"}`}, "version"},
		{"no backup root", []string{"--definition-json", `{"name":"x","engine":"postgres","version":"` + major + `","sourceType":"backup","backups":[{"path":"shop.dump"}]}`, "--backup-root", ""},
			"no backup root"},
		{"bad YAML file", []string{"--definition", writeDef("typo.yaml", "name: x\nengin: postgres\n")}, "typo.yaml"},
		{"unreachable runtime directory", []string{"--definition", def, "--backup-root", backups, "--runtime-dir", filepath.Join(runDir(t, 0o700), "r")},
			"not traversable by postgres"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(dir, "refused")
			code, stdout, _, o := build(t, append(tc.args, "--root", root)...)
			require.Equal(t, 1, code)
			require.Equal(t, StepValidate, o.Step)
			require.Contains(t, o.Message, tc.want)
			require.Empty(t, stdout)
			_, err := os.Stat(root)
			require.ErrorIs(t, err, os.ErrNotExist, "nothing was made")
		})
	}
}

// dumpSource runs a throwaway source server under dir, fills the database shop (300 items),
// dumps it with pg_dump --format=custom into backups/shop.dump and writes the scripts
// post.sql (good) and bad.sql (fails).
func dumpSource(t *testing.T, pg engine.Engine, dir, backups string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	require.NoError(t, u.MkdirAll(backups, 0o755))
	src := filepath.Join(dir, "source")
	require.NoError(t, pg.Init(ctx, src, engine.InitOptions{Database: "shop"}))
	run := runDir(t, 0o700)
	inst, err := pg.Start(ctx, src, engine.StartOptions{RuntimeDir: run})
	require.NoError(t, err)
	defer func() { require.NoError(t, inst.Stop(ctx)) }()
	require.NoError(t, inst.Exec(ctx, "shop", strings.NewReader(`
		CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
		INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 300) g;`)))

	socks, _ := filepath.Glob(filepath.Join(inst.Conn().Socket, ".s.PGSQL.[0-9]*[0-9]"))
	require.Len(t, socks, 1, "the source's socket")
	port := strings.TrimPrefix(filepath.Ext(socks[0]), ".")
	cmd := u.Command(ctx, "", pgTool(t, pg, "pg_dump"), []string{"--format=custom", "-h", inst.Conn().Socket, "-p", port,
		"-U", inst.Conn().User, "-d", "shop", "-f", filepath.Join(backups, "shop.dump")})
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "pg_dump: %s", out)
	require.NoError(t, os.WriteFile(filepath.Join(backups, "post.sql"), []byte("CREATE TABLE post AS SELECT 'done' AS note;\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(backups, "bad.sql"), []byte("SELECT * FROM no_such_table;\n"), 0o644))
}

// pgTool returns the path of a client tool of pg's installation.
func pgTool(t *testing.T, pg engine.Engine, tool string) string {
	t.Helper()
	p := filepath.Join("/usr/lib/postgresql", strings.Split(pg.Version(), ".")[0], "bin", tool)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	p, err := exec.LookPath(tool)
	require.NoError(t, err)
	return p
}
