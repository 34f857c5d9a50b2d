package postgres_test

import (
	"context"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/postgres"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

func TestDiscover(t *testing.T) {
	bin := pgtest.Require(t)
	out, err := osexec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	require.NoError(t, err)

	engines, err := postgres.Discover(postgres.Options{})
	require.NoError(t, err)
	var versions []string
	for _, e := range engines {
		require.Equal(t, imagebuilder.EnginePostgres, e.Kind())
		versions = append(versions, e.Version())
	}
	want := strings.Fields(strings.SplitN(string(out), "(PostgreSQL) ", 2)[1])[0]
	require.Contains(t, versions, want, "postgres --version says %q", out)

	// A directory named explicitly must hold an installation.
	_, err = postgres.Discover(postgres.Options{BinDirs: []string{t.TempDir()}})
	require.ErrorContains(t, err, "postgres: installation in")
}

func TestInitStartQueryStop(t *testing.T) {
	e := pgEngine(t)
	ctx := testCtx(t)
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, e.Init(ctx, root, engine.InitOptions{Database: "app_dev"}))
	require.ErrorContains(t, e.Init(ctx, root, engine.InitOptions{}), "already exists")

	dataDir := engine.DataDir(root)
	st, err := os.Stat(dataDir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	if os.Geteuid() == 0 {
		u, err := engine.ResolveUser("", "postgres")
		require.NoError(t, err)
		require.Equal(t, uint32(u.UID), st.Sys().(*syscall.Stat_t).Uid, "the data directory belongs to the server's user")
	}
	for _, name := range []string{"pg_hba.conf", "pg_ident.conf"} {
		_, err := os.Stat(filepath.Join(dataDir, name))
		require.NoError(t, err, "initdb writes %s (Start does not use it)", name)
	}

	var output syncBuffer
	rd := pgtest.RunDir(t)
	inst := startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd, Output: &output})
	require.Equal(t, engine.ConnInfo{Engine: imagebuilder.EnginePostgres, Socket: rd, User: "postgres", Database: "postgres"}, inst.Conn())
	require.NoError(t, syscall.Kill(inst.PID(), 0), "the server runs")

	require.Equal(t, "app_dev|UTF8|C.UTF-8", query(t, inst, "app_dev", "SELECT current_database(), pg_encoding_to_char(encoding), datcollate FROM pg_database WHERE datname = current_database()"))
	require.Equal(t, "f|t|"+rd, query(t, inst, "", "SELECT pg_is_in_recovery(), current_setting('listen_addresses') = '', current_setting('unix_socket_directories')"))
	require.Equal(t, filepath.Join(rd, "pg_hba.conf"), query(t, inst, "", "SHOW hba_file"))
	exec(t, inst, "app_dev", "CREATE TABLE t (i int);\nINSERT INTO t SELECT generate_series(1, 10);\n")
	require.Equal(t, "10", query(t, inst, "app_dev", "SELECT count(*) FROM t"))
	require.NoError(t, inst.CreateDatabase(ctx, "app_dev"), "CreateDatabase of an existing database")
	require.NoError(t, inst.CreateDatabase(ctx, `odd "name'`))
	require.Equal(t, "1", query(t, inst, "", `SELECT count(*) FROM pg_database WHERE datname = 'odd "name'''`))
	require.NoError(t, inst.Checkpoint(ctx))

	// A failing script names the line and the error, and carries the server's log tail.
	err = inst.Exec(ctx, "app_dev", strings.NewReader("SELECT 1;\nSELECT * FROM missing_table;\nSELECT 2;\n"))
	var se *engine.ServerError
	require.ErrorAs(t, err, &se)
	require.ErrorIs(t, err, engine.ErrServer)
	require.Contains(t, err.Error(), `<stdin>:2: ERROR:  relation "missing_table" does not exist`)
	require.Contains(t, se.LogTail, `relation "missing_table" does not exist`)

	require.NoError(t, inst.Stop(ctx))
	select {
	case <-inst.Done():
	default:
		t.Fatal("Done is not closed after Stop")
	}
	require.NoError(t, inst.Stop(ctx), "a second Stop")
	require.Contains(t, output.String(), "database system is ready to accept connections")
	require.Contains(t, output.String(), "database system is shut down", "every line reaches Output before Stop returns")
	require.Contains(t, inst.LogTail(5), "database system is shut down")
	_, err = os.Stat(filepath.Join(dataDir, "postmaster.pid"))
	require.ErrorIs(t, err, os.ErrNotExist, "a clean shutdown removes postmaster.pid")

	// The instance starts again: the log is appended to, Output gets only the new lines.
	var output2 syncBuffer
	inst = startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd, Output: &output2})
	require.Equal(t, "10", query(t, inst, "app_dev", "SELECT count(*) FROM t"))
	require.NoError(t, inst.Stop(ctx))
	require.Equal(t, 1, strings.Count(output2.String(), "database system is ready to accept connections"))
	require.Equal(t, 2, strings.Count(inst.LogTail(1000), "database system is ready to accept connections"))
}

func TestSetPassword(t *testing.T) {
	e := pgEngine(t)
	port, err := engine.FreePort("127.0.0.1")
	require.NoError(t, err)
	inst := newInstance(t, e, engine.StartOptions{ListenAddress: "127.0.0.1", Port: port})
	conn := inst.Conn()
	require.Equal(t, "127.0.0.1", conn.Host)
	require.Equal(t, port, conn.Port)

	password := `it's a "s3cret" \n`
	require.NoError(t, inst.SetPassword(testCtx(t), password))
	require.Equal(t, password, inst.Conn().Password)
	require.Equal(t, "SCRAM-SHA-256", query(t, inst, "", "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'postgres'"))

	psqlTCP := func(pw string) (string, error) {
		bin := pgtest.Require(t)
		cmd := osexec.Command(filepath.Join(bin, "psql"), "-X", "-At", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres", "-c", "SELECT 'over tcp'")
		cmd.Env = []string{"PGPASSWORD=" + pw, "PGCONNECT_TIMEOUT=10", "PGSSLMODE=disable"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := psqlTCP(password)
	require.NoError(t, err, out)
	require.Equal(t, "over tcp\n", out)
	out, err = psqlTCP("wrong")
	require.Error(t, err)
	require.Contains(t, out, `password authentication failed for user "postgres"`)
	require.NotContains(t, inst.LogTail(100), "s3cret", "the password stays out of the server's log")
}

func TestStartFailures(t *testing.T) {
	e := pgEngine(t)
	ctx := testCtx(t)
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, e.Init(ctx, root, engine.InitOptions{}))

	t.Run("bad setting", func(t *testing.T) {
		_, err := e.Start(ctx, root, engine.StartOptions{RuntimeDir: pgtest.RunDir(t), Settings: map[string]string{"shared_buffers": "lots"}})
		var se *engine.ServerError
		require.ErrorAs(t, err, &se)
		require.ErrorIs(t, err, engine.ErrServer)
		require.Equal(t, "start", se.Op)
		require.Contains(t, se.LogTail, `invalid value for parameter "shared_buffers": "lots"`)
		require.Contains(t, err.Error(), "postgres exited before accepting connections")
	})
	t.Run("Start's own setting", func(t *testing.T) {
		_, err := e.Start(ctx, root, engine.StartOptions{RuntimeDir: pgtest.RunDir(t), Settings: map[string]string{"Port": "1"}})
		require.ErrorContains(t, err, "setting Port is Start's own")
	})
	t.Run("long runtime directory", func(t *testing.T) {
		_, err := e.Start(ctx, root, engine.StartOptions{RuntimeDir: "/" + strings.Repeat("x", 100)})
		require.ErrorContains(t, err, "is longer than 107 bytes")
	})
	t.Run("not a data directory", func(t *testing.T) {
		_, err := e.Start(ctx, pgtest.Dir(t), engine.StartOptions{RuntimeDir: pgtest.RunDir(t)})
		require.ErrorContains(t, err, "no PostgreSQL data directory")
	})
	t.Run("corrupt data directory", func(t *testing.T) {
		// Last: it breaks the instance.
		require.NoError(t, os.Remove(filepath.Join(engine.DataDir(root), "global", "pg_control")))
		_, err := e.Start(ctx, root, engine.StartOptions{RuntimeDir: pgtest.RunDir(t)})
		var se *engine.ServerError
		require.ErrorAs(t, err, &se)
		require.Contains(t, se.LogTail, "pg_control")
	})
}

func TestStopPastDeadline(t *testing.T) {
	e := pgEngine(t)
	inst := newInstance(t, e, engine.StartOptions{})
	// A deadline that has passed already makes Stop kill the server at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := inst.Stop(ctx)
	var se *engine.ServerError
	require.ErrorAs(t, err, &se)
	require.ErrorIs(t, err, context.Canceled)
	require.Contains(t, err.Error(), "did not shut down before the deadline")
	require.Contains(t, err.Error(), "SIG")
	select {
	case <-inst.Done():
	case <-time.After(time.Second):
		t.Fatal("the server runs after Stop")
	}
	require.True(t, errors.Is(syscall.Kill(inst.PID(), 0), syscall.ESRCH), "the server's process is gone")
}

// TestStartCreatesAdminRole starts an instance whose bootstrap superuser is not called
// postgres, as a base backup of the official container image with POSTGRES_USER set is.
func TestStartCreatesAdminRole(t *testing.T) {
	e := pgEngine(t)
	ctx := testCtx(t)
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, e.Init(ctx, root, engine.InitOptions{}))
	rd := pgtest.RunDir(t)
	inst := startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd})
	exec(t, inst, "", "CREATE ROLE app SUPERUSER LOGIN;\nSET SESSION AUTHORIZATION app;\nALTER ROLE postgres RENAME TO bootstrap;\n")
	require.NoError(t, inst.Stop(ctx))

	var output syncBuffer
	inst = startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd, Output: &output})
	require.Equal(t, "postgres|t|t|bootstrap", query(t, inst, "", "SELECT current_user, rolsuper, rolcanlogin, (SELECT rolname FROM pg_roles WHERE oid = 10) FROM pg_roles WHERE rolname = current_user"))
	require.Contains(t, inst.LogTail(100), `dataimage: the instance has no role "postgres": stopping the server to create it`)
	require.Contains(t, output.String(), `dataimage: the instance has no role "postgres"`, "Output has the lines of both starts and the note")
	require.Equal(t, 2, strings.Count(output.String(), "database system is ready to accept connections"))
	require.NoError(t, inst.Stop(ctx))
}
