package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/engine/postgres"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Cleanup()
	os.Exit(code)
}

// env is what the tests' definitions are validated against and built with.
type env struct {
	engines engine.Set
	eng     engine.Engine
	backups *pgtest.Backups
	root    string // the backup root: the fixtures' backups and the test's scripts
}

// newEnv returns the PostgreSQL engine and a backup root holding the shared backups (hard
// links: the builder follows no symbolic link out of the root) and the given scripts.
func newEnv(t *testing.T, scripts map[string]string) *env {
	t.Helper()
	bin := pgtest.Require(t)
	engines, err := postgres.Discover(postgres.Options{BinDirs: []string{bin}})
	require.NoError(t, err)
	b := pgtest.Fixtures(t)
	root := pgtest.Dir(t)
	for name, p := range map[string]string{"app.dump": b.Custom, "app.sql": b.Plain, "all.sql": b.DumpAll} {
		require.NoError(t, os.Link(p, filepath.Join(root, name)))
	}
	for name, dir := range map[string]string{"base-tar": b.BaseTar, "base-tgz": b.BaseTarGz} {
		require.NoError(t, os.Mkdir(filepath.Join(root, name), 0o755))
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, ent := range ents {
			require.NoError(t, os.Link(filepath.Join(dir, ent.Name()), filepath.Join(root, name, ent.Name())))
		}
	}
	for name, body := range scripts {
		p := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600)) // readable by root only: the builder reads it
	}
	return &env{engines: engine.Set(engines), eng: engines[0], backups: b, root: root}
}

// defaultLifetime is the lifetime of the tests' images whose definition names none.
var defaultLifetime = imagebuilder.Lifetime{Duration: 72 * time.Hour}

// validationEnv is the environment definitions are validated against.
func (e *env) validationEnv() imagebuilder.ValidationEnv {
	return imagebuilder.ValidationEnv{Versions: e.engines.Versions(), BackupRoot: e.root, DefaultLifetime: defaultLifetime, CheckPaths: true}
}

// recorder records a build's events.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) record(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

// steps returns the steps of the events that are not log lines, without repeats.
func (r *recorder) steps() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events {
		if ev.Log == "" && (len(out) == 0 || out[len(out)-1] != ev.Step) {
			out = append(out, ev.Step)
		}
	}
	return out
}

func (r *recorder) logText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, ev := range r.events {
		if ev.Log != "" {
			b.WriteString(ev.Step + ": " + ev.Log + "\n")
		}
	}
	return b.String()
}

// build parses and validates def, builds it, and returns the result and the request's root.
func (e *env) build(t *testing.T, def string, rec *recorder) (*Result, string, string, error) {
	t.Helper()
	d, err := imagebuilder.ParseDefinition([]byte(def))
	require.NoError(t, err)
	venv := e.validationEnv()
	require.NoError(t, d.Validate(venv))
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, os.Mkdir(root, 0o755))
	run := filepath.Join(pgtest.RunDir(t), "build")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Build(ctx, Request{
		Definition: d,
		Env:        venv,
		Engines:    e.engines,
		Root:       root,
		RuntimeDir: run,
		Progress:   rec.record,
	})
	return res, root, run, err
}

// restart starts the built instance again, as a clone would, and stops it at the end of the
// test.
func (e *env) restart(t *testing.T, root string) engine.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := e.eng.Start(ctx, root, engine.StartOptions{RuntimeDir: pgtest.RunDir(t)})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = inst.Stop(ctx)
	})
	return inst
}

func query(t *testing.T, inst engine.Instance, db, sql string) string {
	t.Helper()
	out, err := inst.Query(context.Background(), db, sql)
	require.NoError(t, err, sql)
	return out
}

func stepNames(res *Result) []string {
	var out []string
	for _, s := range res.Steps {
		out = append(out, s.Step)
	}
	return out
}

// checkResult checks what every successful build returns.
func checkResult(t *testing.T, e *env, res *Result, steps []string) {
	t.Helper()
	require.Equal(t, imagebuilder.EnginePostgres, res.Engine)
	require.Equal(t, e.eng.Version(), res.Version)
	require.Greater(t, res.DataBytes, int64(10<<20), "a PostgreSQL data directory takes more than 10 MiB")
	t.Logf("steps: %v", res.Steps)
	require.Equal(t, steps, stepNames(res))
	for _, s := range res.Steps {
		require.Positive(t, s.Duration, s.Step)
	}
}

func TestBuildEmpty(t *testing.T) {
	e := newEnv(t, nil)
	rec := &recorder{}
	res, root, run, err := e.build(t, "name: scratch\nengine: PostgreSQL\nversion: \""+e.eng.Version()+"\"\nsourceType: Empty\ninitialDatabaseName: app_dev\n", rec)
	require.NoError(t, err)
	checkResult(t, e, res, []string{StepInit, StepStart, StepCheckpoint, StepStop})
	require.Equal(t, []string{StepInit, StepStart, StepCheckpoint, StepStop}, rec.steps())
	require.True(t, res.DataState.Time.IsZero())
	require.Equal(t, defaultLifetime, res.Lifetime)
	require.Contains(t, rec.logText(), "start: ", "the server's log lines come as events of the start step")
	require.Contains(t, rec.logText(), "database system is shut down")
	require.Empty(t, enginetest.ServersUsing(t, run))

	inst := e.restart(t, root)
	require.Equal(t, "app_dev", query(t, inst, "app_dev", "SELECT current_database()"))
}

func TestBuildBaseBackup(t *testing.T) {
	e := newEnv(t, map[string]string{
		"scripts/pre.sql": "CREATE TABLE pre_marker AS SELECT current_database() AS db, pg_is_in_recovery() AS recovering,\n" +
			"  current_setting('archive_mode') AS archive_mode, current_setting('synchronous_commit') AS synchronous_commit;\n",
		"scripts/post.sql": "UPDATE items SET name = 'masked';\nCREATE TABLE post_marker AS SELECT count(*) AS pre FROM pre_marker;\n",
	})
	rec := &recorder{}
	// Two files, the WAL first and with its format detected.
	res, root, run, err := e.build(t, `name: sales
engine: postgres
version: "`+strings.Split(e.eng.Version(), ".")[0]+`"
sourceType: backup
backups:
  - path: base-tgz/pg_wal.tar.gz
  - path: base-tgz/base.tar.gz
    format: basebackup-tar
initialDatabaseName: app
preScript: scripts/pre.sql
postScript: scripts/post.sql
lifetime: 72h
`, rec)
	require.NoError(t, err, rec.logText())
	steps := []string{StepRestore, StepStart, StepPreScript, StepPostScript, StepCheckpoint, StepStop}
	checkResult(t, e, res, steps)
	require.Equal(t, steps, rec.steps())
	require.Equal(t, "backup_label START TIME", res.DataState.Source)
	require.False(t, res.DataState.Time.Before(e.backups.Made))
	require.Contains(t, rec.logText(), "start: ", "recovery's log lines")
	require.Contains(t, rec.logText(), "redo done at")

	// Restore progress: bytes of the two files, ending with all of them.
	var total, last int64
	for _, name := range []string{"base.tar.gz", "pg_wal.tar.gz"} {
		st, err := os.Stat(filepath.Join(e.backups.BaseTarGz, name))
		require.NoError(t, err)
		total += st.Size()
	}
	for _, ev := range rec.events {
		if ev.Step == StepRestore && ev.Total > 0 {
			require.Equal(t, total, ev.Total)
			require.GreaterOrEqual(t, ev.Done, last)
			last = ev.Done
		}
	}
	require.Equal(t, total, last)
	require.Empty(t, enginetest.ServersUsing(t, run))

	inst := e.restart(t, root)
	require.Equal(t, "app|f|off|off", query(t, inst, "app", "SELECT * FROM pre_marker"),
		"the preScript ran in the initial database once the server was up, with the build's settings")
	require.Equal(t, "1", query(t, inst, "app", "SELECT pre FROM post_marker"), "the postScript ran after the preScript")
	require.Equal(t, "1000|1", query(t, inst, "app", "SELECT count(*), count(DISTINCT name) FROM items"))
	min := strconv.FormatInt(e.backups.TarGzMinRows, 10)
	require.Equal(t, min, query(t, inst, "app", "SELECT count(*) FROM w WHERE id <= "+min))
	require.Equal(t, "on", query(t, inst, "", "SHOW synchronous_commit"), "the build's settings are not the image's")
}

func TestBuildPgDumpCustom(t *testing.T) {
	e := newEnv(t, map[string]string{
		"pre.sql":  "CREATE EXTENSION IF NOT EXISTS plpgsql;\nCREATE TABLE pre_marker AS SELECT current_database() AS db;\n",
		"post.sql": "UPDATE items SET name = 'item ' || (id * 2) WHERE id <= 10;\n",
	})
	rec := &recorder{}
	res, root, _, err := e.build(t, `name: shop
engine: postgres
version: "`+e.eng.Version()+`"
sourceType: backup
backups:
  - path: app.dump
initialDatabaseName: shop
preScript: pre.sql
postScript: post.sql
lifetime: 0
`, rec)
	require.NoError(t, err)
	require.Equal(t, imagebuilder.Lifetime{Never: true}, res.Lifetime)
	steps := []string{StepInit, StepStart, StepPreScript, StepRestore, StepPostScript, StepCheckpoint, StepStop}
	checkResult(t, e, res, steps)
	require.Equal(t, steps, rec.steps())
	require.Contains(t, res.DataState.Source, "pg_dump archive header")
	require.False(t, res.DataState.Time.IsZero())

	inst := e.restart(t, root)
	require.Equal(t, "1000|item 20", query(t, inst, "shop", "SELECT count(*), max(name) FILTER (WHERE id = 10) FROM items"))
	require.Equal(t, "alice|f|bob|f", query(t, inst, "shop", `SELECT tableowner, (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'alice'),
		(SELECT rolname FROM pg_roles WHERE rolname = 'bob'), (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'bob')
		FROM pg_tables WHERE tablename = 'items'`), "alice and bob were made for the dump (NOLOGIN): scripts cannot make roles")
	require.Equal(t, "shop|dataimage_script", query(t, inst, "shop", "SELECT db, (SELECT tableowner FROM pg_tables WHERE tablename = 'pre_marker') FROM pre_marker"),
		"the preScript ran in the initial database; what it made belongs to the scripts' owner role")
}

func TestBuildPlainSQLAndDumpAll(t *testing.T) {
	e := newEnv(t, nil)
	t.Run("plain", func(t *testing.T) {
		rec := &recorder{}
		res, root, _, err := e.build(t, "name: plain\nengine: postgres\nversion: \""+e.eng.Version()+"\"\nsourceType: backup\nbackups:\n  - path: app.sql\n", rec)
		require.NoError(t, err)
		checkResult(t, e, res, []string{StepInit, StepStart, StepRestore, StepCheckpoint, StepStop})
		require.Equal(t, `dump's "-- Started on" comment`, res.DataState.Source)
		inst := e.restart(t, root)
		require.Equal(t, "1000", query(t, inst, "", "SELECT count(*) FROM items"), "no initial database: the default one")
	})
	t.Run("dumpall", func(t *testing.T) {
		// The initial database is one the dump makes: made after the restore only if missing.
		rec := &recorder{}
		res, root, _, err := e.build(t, "name: all\nengine: postgres\nversion: \""+e.eng.Version()+"\"\nsourceType: backup\nbackups:\n  - path: all.sql\ninitialDatabaseName: app\n", rec)
		require.NoError(t, err, rec.logText())
		checkResult(t, e, res, []string{StepInit, StepStart, StepRestore, StepCheckpoint, StepStop})
		inst := e.restart(t, root)
		require.Equal(t, "1000|alice", query(t, inst, "app", "SELECT count(*), (SELECT tableowner FROM pg_tables WHERE tablename = 'items') FROM items"))
	})
}

func TestBuildFailures(t *testing.T) {
	e := newEnv(t, map[string]string{
		"garbage.bin": "\x00\x01\x02 not a backup",
		"bad.sql":     "SELECT 1;\nSELECT 1/0;\n",
	})
	version := e.eng.Version()
	for _, tc := range []struct {
		name, def string
		step      string
		is        error
		msg       string
		logTail   string // "" = none expected
	}{
		{
			name: "undetectable backup",
			def:  "backups:\n  - path: garbage.bin\n",
			step: StepRestore, is: engine.ErrFormat, msg: "backups[0] garbage.bin: engine: unrecognized backup format",
		},
		{
			name: "not the format it says",
			def:  "backups:\n  - path: garbage.bin\n    format: pg_dump-custom\n",
			step: StepRestore, is: engine.ErrFormat, msg: "pg_restore cannot read it as a pg_dump custom archive",
			logTail: "database system is ready to accept connections",
		},
		{
			name: "not a base backup",
			def:  "backups:\n  - path: garbage.bin\n    format: basebackup-tar\n",
			step: StepRestore, is: engine.ErrFormat, msg: "is not a tar archive",
		},
		{
			name: "mixed kinds",
			def:  "backups:\n  - path: app.dump\n  - path: base-tar\n",
			step: StepRestore, is: engine.ErrFormat, msg: "an image is built from one kind",
		},
		{
			name: "recovery target with a dump",
			def:  "backups:\n  - path: app.dump\nrecoveryTarget: {lsn: 0/3000060}\n",
			step: StepRestore, is: engine.ErrFormat, msg: `recoveryTarget (lsn "0/3000060") needs a physical backup to replay a log from; backups[0] is a logical backup (pg_dump-custom)`,
		},
		{
			name: "failing postScript",
			def:  "backups:\n  - path: app.dump\npostScript: bad.sql\n",
			step: StepPostScript, is: engine.ErrScript, msg: "postScript bad.sql line 2: SELECT 1/0: ERROR: division by zero (SQLSTATE 22012)",
			logTail: "ERROR:  division by zero",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			_, root, run, err := e.build(t, "name: failing\nengine: postgres\nversion: \""+version+"\"\nsourceType: backup\n"+tc.def, rec)
			require.Error(t, err)
			var se *StepError
			require.ErrorAs(t, err, &se)
			require.ErrorIs(t, err, ErrBuild)
			require.ErrorIs(t, err, tc.is)
			require.Equal(t, tc.step, se.Step)
			require.Contains(t, err.Error(), "builder: step "+tc.step+" failed: ")
			require.Contains(t, err.Error(), tc.msg)
			if tc.logTail != "" {
				require.Contains(t, se.LogTail, tc.logTail)
				require.Contains(t, err.Error(), tc.logTail)
			} else {
				require.Empty(t, se.LogTail)
			}
			require.Empty(t, enginetest.ServersUsing(t, run), "no server is left running")
			_, err = os.Stat(filepath.Join(engine.DataDir(root), "postmaster.pid"))
			require.ErrorIs(t, err, os.ErrNotExist, "the server was stopped")
		})
	}
}

func TestBuildRefusesPathsOutOfTheRoot(t *testing.T) {
	e := newEnv(t, nil)
	outside := filepath.Join(pgtest.Dir(t), "secret.sql")
	require.NoError(t, os.WriteFile(outside, []byte("SELECT 1;\n"), 0o644))
	require.NoError(t, os.Symlink(outside, filepath.Join(e.root, "escape.sql")))
	d := &imagebuilder.Definition{Name: "x", Engine: "postgres", Version: e.eng.Version(), SourceType: "backup",
		Backups: []imagebuilder.Backup{{Path: "app.sql"}}, PostScript: "escape.sql"}
	venv := e.validationEnv()
	run := pgtest.RunDir(t)
	_, err := Build(context.Background(), Request{Definition: d, Env: venv, Engines: e.engines,
		Root: filepath.Join(pgtest.Dir(t), "vol"), RuntimeDir: run})
	var se *StepError
	require.ErrorAs(t, err, &se)
	require.Equal(t, StepPostScript, se.Step)
	require.ErrorContains(t, err, "postScript escape.sql: openat escape.sql: path escapes from parent")
	require.Empty(t, enginetest.ServersUsing(t, run))

	// A backup behind a link out of the root.
	require.NoError(t, os.Symlink(e.backups.Custom, filepath.Join(e.root, "linked.dump")))
	d.Backups, d.PostScript = []imagebuilder.Backup{{Path: "linked.dump"}}, ""
	_, err = Build(context.Background(), Request{Definition: d, Env: venv, Engines: e.engines, Root: filepath.Join(pgtest.Dir(t), "vol"), RuntimeDir: pgtest.RunDir(t)})
	require.ErrorAs(t, err, &se)
	require.Equal(t, StepRestore, se.Step)
	require.ErrorContains(t, err, "backups[0] linked.dump: openat linked.dump: path escapes from parent")
}

func TestBadRequests(t *testing.T) {
	set := engine.Set{}
	def := &imagebuilder.Definition{Name: "x", Engine: "postgres", Version: "15", SourceType: "empty"}
	for _, tc := range []struct {
		req Request
		msg string
	}{
		{Request{Root: "/r", RuntimeDir: "/run"}, "no image definition"},
		{Request{Definition: def, Root: "relative", RuntimeDir: "/run"}, "the root must be an absolute path"},
		{Request{Definition: def, Root: "/r", RuntimeDir: ""}, "the runtime directory must be an absolute path"},
		{Request{Definition: def, Root: "/r", RuntimeDir: "/run", Engines: set, Env: imagebuilder.ValidationEnv{Versions: imagebuilder.Versions{imagebuilder.EnginePostgres: {"15.18"}}}}, "engine: not installed"},
	} {
		_, err := Build(context.Background(), tc.req)
		require.ErrorIs(t, err, ErrBuild)
		require.ErrorContains(t, err, tc.msg)
		var se *StepError
		require.False(t, errors.As(err, &se), "a bad request is no step's failure")
	}
}

func TestLineWriter(t *testing.T) {
	var lines []string
	w := &lineWriter{emit: func(s string) { lines = append(lines, s) }}
	for _, chunk := range []string{"one\ntw", "o\r\n", "", "three\nfour", strings.Repeat("x", maxLogLine+10), "y\nfive\n", "tail"} {
		n, err := w.Write([]byte(chunk))
		require.NoError(t, err)
		require.Equal(t, len(chunk), n)
	}
	w.flush()
	w.flush()
	require.Equal(t, []string{"one", "two", "three", "four" + strings.Repeat("x", maxLogLine-4), "five", "tail"}, lines)
}

func TestStepError(t *testing.T) {
	cause := &engine.ServerError{Op: "exec", Err: errors.New("psql: exit status 3"), LogTail: "ERROR: boom"}
	err := error(&StepError{Step: StepPostScript, Err: cause, LogTail: cause.LogTail})
	require.ErrorIs(t, err, ErrBuild)
	require.ErrorIs(t, err, engine.ErrServer)
	require.Equal(t, 1, strings.Count(err.Error(), "ERROR: boom"), "the tail is printed once: %s", err)
	require.True(t, strings.HasPrefix(err.Error(), "builder: step postscript failed: exec: psql: exit status 3"))

	err = &StepError{Step: StepStart, Err: errors.New("no answer"), LogTail: "FATAL: x"}
	require.Equal(t, "builder: step start failed: no answer\nserver log (last lines):\nFATAL: x", err.Error())
}
