package postgres_test

import (
	"context"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
	"github.com/dataimage/dataimage/internal/conncount"
)

// isolationSQL reads the settings Start overrides, in a fixed order.
const isolationSQL = `SELECT concat_ws('|', pg_is_in_recovery(), current_setting('archive_mode'), current_setting('archive_command'),
  current_setting('restore_command'), current_setting('primary_conninfo'), current_setting('primary_slot_name'),
  current_setting('recovery_target_name'), current_setting('synchronous_standby_names'),
  current_setting('max_logical_replication_workers'))`

// isolated is isolationSQL's answer for an isolated primary (archive_command shows as
// "(disabled)" while archive_mode is off).
const isolated = "f|off|(disabled)||||||0"

// markerDir returns a directory the server's user may write marker files into.
func markerDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(pgtest.Dir(t), "markers")
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	require.NoError(t, u.MkdirAll(dir, 0o755))
	return dir
}

// requireNoFiles fails the test if dir holds a file now or within wait.
func requireNoFiles(t *testing.T, dir string, wait time.Duration) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		require.Empty(t, names, "files in %s", dir)
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestStartIsolates starts a server on a data directory set up as the replica of a primary that
// archives WAL, waits for a synchronous standby and subscribes to a publisher, without any
// preparation of the data (an image built before the adapter isolated servers, or a clone whose
// user changed the configuration): Start alone keeps the server from archiving, following,
// waiting, applying the subscription, or connecting anywhere.
func TestStartIsolates(t *testing.T) {
	e := pgEngine(t)
	ctx := testCtx(t)
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, e.Init(ctx, root, engine.InitOptions{}))
	rd := pgtest.RunDir(t)
	markers := markerDir(t)
	// The publisher: nothing but a counting listener (a connection attempt is what counts).
	publisher := conncount.New(t, "unix", filepath.Join(rd, "nothing-listens-here"))

	// A subscription that is enabled and owns a slot: made without connecting, then enabled.
	inst := startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd})
	exec(t, inst, "", fmt.Sprintf("CREATE TABLE items (id int);\n"+
		"CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=2' PUBLICATION pub WITH (connect = false);\n"+
		"ALTER SUBSCRIPTION sub SET (slot_name = 'sub');\n"+
		"ALTER SUBSCRIPTION sub ENABLE;\n", publisher.Port()))
	require.Equal(t, "t|sub", query(t, inst, "", "SELECT format('%s|%s', subenabled, subslotname) FROM pg_subscription"))
	require.NoError(t, inst.Stop(ctx))

	dataDir := engine.DataDir(root)
	conf, err := os.OpenFile(filepath.Join(dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fmt.Fprintf(conf, "\n# The source's.\narchive_mode = on\narchive_command = 'touch %[1]s/archived-%%f'\n"+
		"restore_command = 'touch %[1]s/restored-%%f; false'\nrecovery_target_name = 'somewhere'\n"+
		"synchronous_standby_names = 'standby1'\n", markers)
	require.NoError(t, err)
	require.NoError(t, conf.Close())
	autoConf := filepath.Join(dataDir, "postgresql.auto.conf")
	auto, err := os.ReadFile(autoConf)
	require.NoError(t, err)
	auto = append(auto, fmt.Sprintf("primary_conninfo = 'host=127.0.0.1 port=%d user=postgres'\nprimary_slot_name = 'standby1'\n", publisher.Port())...)
	require.NoError(t, os.WriteFile(autoConf, auto, 0o600))
	for _, name := range []string{"standby.signal", "recovery.signal"} {
		require.NoError(t, os.WriteFile(filepath.Join(dataDir, name), nil, 0o600))
	}

	inst = startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd})
	require.Equal(t, isolated, query(t, inst, "", isolationSQL))
	for _, name := range []string{"standby.signal", "recovery.signal"} {
		require.NoFileExists(t, filepath.Join(dataDir, name))
	}
	require.Contains(t, inst.LogTail(100), "dataimage: removed standby.signal, recovery.signal from the data directory")
	require.Equal(t, "f|", query(t, inst, "", "SELECT format('%s|%s', subenabled, subslotname) FROM pg_subscription"),
		"the subscription is kept, disabled and without its slot")
	// Writes commit (no synchronous standby is waited for) and switch WAL segments, which an
	// archiving server would archive at once.
	for range 3 {
		exec(t, inst, "", "SET statement_timeout = '30s';\nINSERT INTO items SELECT generate_series(1, 1000);\nSELECT pg_switch_wal();\n")
	}
	require.Equal(t, "3000", query(t, inst, "", "SELECT count(*) FROM items"))
	requireNoFiles(t, markers, 2*time.Second)
	require.Equal(t, "0|0", query(t, inst, "", "SELECT archived_count || '|' || failed_count FROM pg_stat_archiver"))
	// Dropping the subscription does not reach the publisher to drop its slot.
	exec(t, inst, "", "DROP SUBSCRIPTION sub;\n")
	require.Zero(t, publisher.Count(), "connections to the publisher")
}

// TestPrepareImage: the image's own configuration carries the isolation settings (a server
// started on it by other means, with nothing on its command line, is isolated too), its
// subscriptions are detached and the administrative role has no password.
func TestPrepareImage(t *testing.T) {
	e := pgEngine(t)
	ctx := testCtx(t)
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, e.Init(ctx, root, engine.InitOptions{}))
	rd := pgtest.RunDir(t)
	markers := markerDir(t)
	dataDir := engine.DataDir(root)
	conf, err := os.OpenFile(filepath.Join(dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fmt.Fprintf(conf, "\narchive_mode = on\narchive_command = 'touch %s/archived-%%f'\nsynchronous_standby_names = 'standby1'\n", markers)
	require.NoError(t, err)
	require.NoError(t, conf.Close())

	inst := startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd})
	exec(t, inst, "", "ALTER ROLE postgres PASSWORD 'known';\n"+
		"CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port=1 user=postgres' PUBLICATION pub WITH (connect = false, slot_name = 'sub');\n")
	require.NoError(t, inst.PrepareImage(ctx))
	require.Equal(t, "f||t", query(t, inst, "", "SELECT format('%s|%s|%s', subenabled, subslotname, (SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres')) FROM pg_subscription"))
	require.NoError(t, inst.Stop(ctx))

	// The server alone, as an entrypoint would run it: its configuration files only.
	bin := pgtest.Require(t)
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	cmd := u.Command(context.Background(), "", filepath.Join(bin, "postgres"), []string{"-D", dataDir, "-c", "listen_addresses=", "-k", rd,
		"-c", "hba_file=" + filepath.Join(rd, "pg_hba.conf"), "-c", "ident_file=" + filepath.Join(rd, "pg_ident.conf")})
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	require.NoError(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	psql := func(sql string) string {
		t.Helper()
		var out string
		require.Eventually(t, func() bool {
			c := u.Command(ctx, "", filepath.Join(bin, "psql"), []string{"-X", "-At", "-h", rd, "-U", "postgres", "-d", "postgres", "-c", sql})
			b, err := c.CombinedOutput()
			out = strings.TrimSpace(string(b))
			return err == nil
		}, time.Minute, 100*time.Millisecond, "psql: %s\nserver log:\n%s", out, &log)
		return out
	}
	require.Equal(t, isolated, psql(isolationSQL))
	psql("SET statement_timeout = '30s'; CREATE TABLE t AS SELECT 1 AS x; SELECT pg_switch_wal()")
	requireNoFiles(t, markers, time.Second)
}

// TestTCPAdmitsTheClonesCredentialsOnly: a server with a TCP listener admits nobody over TCP
// until SetPassword, whatever passwords its data holds, then the administrative role with that
// password only: not another role with a known password, not a replication connection.
func TestTCPAdmitsTheClonesCredentialsOnly(t *testing.T) {
	e := pgEngine(t)
	ctx := testCtx(t)
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, e.Init(ctx, root, engine.InitOptions{}))
	rd := pgtest.RunDir(t)
	inst := startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd})
	// The passwords an image may carry: its source's, or those of the clone it was made from.
	exec(t, inst, "", "ALTER ROLE postgres PASSWORD 'image-known';\nCREATE ROLE app LOGIN PASSWORD 'app-secret';\n")
	require.NoError(t, inst.Stop(ctx))

	port, err := engine.FreePort("127.0.0.1")
	require.NoError(t, err)
	inst = startInstance(t, e, root, engine.StartOptions{RuntimeDir: rd, ListenAddress: "127.0.0.1", Port: port})
	bin := pgtest.Require(t)
	login := func(user, pw string, extra ...string) (string, error) {
		conninfo := "host=127.0.0.1 port=" + strconv.Itoa(port) + " user=" + user + " dbname=postgres sslmode=disable connect_timeout=10"
		args := append([]string{"-X", "-At", "-c", "SELECT current_user"}, extra...)
		cmd := osexec.Command(filepath.Join(bin, "psql"), append(args, conninfo)...)
		cmd.Env = []string{"PGPASSWORD=" + pw}
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := login("postgres", "image-known")
	require.Error(t, err, "before SetPassword: %s", out)
	require.Contains(t, out, "no pg_hba.conf entry")

	require.NoError(t, inst.SetPassword(ctx, "clone-own"))
	out, err = login("postgres", "clone-own")
	require.NoError(t, err, out)
	require.Equal(t, "postgres", out)
	out, err = login("postgres", "image-known")
	require.Error(t, err)
	require.Contains(t, out, "password authentication failed")
	out, err = login("app", "app-secret")
	require.Error(t, err, "a role of the image over TCP: %s", out)
	require.Contains(t, out, `no pg_hba.conf entry for host "127.0.0.1", user "app"`)
	// No replication connection over TCP.
	cmd := osexec.Command(filepath.Join(bin, "psql"), "-X", "-At", "-c", "IDENTIFY_SYSTEM",
		"host=127.0.0.1 port="+strconv.Itoa(port)+" user=postgres dbname=postgres replication=true sslmode=disable")
	cmd.Env = []string{"PGPASSWORD=clone-own"}
	b, err := cmd.CombinedOutput()
	require.Error(t, err, "replication over TCP: %s", b)
	require.Contains(t, string(b), "no pg_hba.conf entry for replication connection")

	// The socket's directory: the server's user's only (the socket trusts whoever reaches it).
	st, err := os.Stat(rd)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	if os.Geteuid() == 0 {
		nobody, err := engine.ResolveUser("nobody", "")
		require.NoError(t, err)
		c := nobody.Command(ctx, "", filepath.Join(bin, "psql"), []string{"-X", "-At", "-h", rd, "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"})
		b, err := c.CombinedOutput()
		require.Error(t, err, "another OS user through the socket: %s", b)
		require.Contains(t, string(b), "Permission denied")
	}
}
