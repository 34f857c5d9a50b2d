package local

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/internal/conncount"
)

// These tests build images from backups of servers wired to the outside world (a PostgreSQL
// that archives WAL, waits for a synchronous standby and subscribes to a publisher; a MariaDB
// replica of a primary, dumped to make another replica), run clones of them under load through
// the daemon, and check that nothing ever leaves them: no archived WAL, no connection to the
// publisher or the primary (they are reached through counting listeners), and over TCP no login
// but each clone's own.

// startFor runs eng.Start for a test's own server and stops it at cleanup (unless stopped).
func startFor(t *testing.T, eng engine.Engine, root, run string, settings map[string]string) engine.Instance {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, os.MkdirAll(run, 0o755))
	inst, err := eng.Start(ctx, root, engine.StartOptions{RuntimeDir: run, Settings: settings})
	require.NoError(t, err)
	t.Cleanup(func() {
		select {
		case <-inst.Done():
		default:
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = inst.Stop(sctx)
		}
	})
	return inst
}

// initFor makes an empty instance of eng in a new directory under dir with database db.
func initFor(t *testing.T, eng engine.Engine, dir, name, db string) string {
	t.Helper()
	root := filepath.Join(dir, name)
	require.NoError(t, os.Mkdir(root, 0o755))
	require.NoError(t, eng.Init(context.Background(), root, engine.InitOptions{Database: db}))
	return root
}

// pgRun runs a psql script as the server's OS user on the server whose socket is in dir, and
// returns its output (unaligned, no headers).
func pgRun(t *testing.T, eng engine.Engine, dir, db, script string) string {
	t.Helper()
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := u.Command(ctx, "", pgTool(t, eng, "psql"), []string{"-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", dir, "-U", "postgres", "-d", db, "-f", "-"})
	cmd.Stdin = strings.NewReader(script)
	var out strings.Builder
	cmd.Stdout = &out
	_, err = engine.Run(cmd)
	require.NoError(t, err, script)
	return strings.TrimSpace(out.String())
}

// withPassword returns c's connection with another password.
func withPassword(c *Clone, password string) *Clone {
	x := *c
	x.Password = password
	x.Connection = connection(c.Engine, c.User, password, c.Host, c.Port, c.Database)
	return &x
}

// withLogin returns c's connection as another user with another password.
func withLogin(c *Clone, user, password string) *Clone {
	x := withPassword(c, password)
	x.User = user
	x.Connection = connection(c.Engine, user, password, c.Host, c.Port, c.Database)
	return x
}

// requireRefused checks that c's login is refused over TCP with a message containing want.
func requireRefused(t *testing.T, c *Clone, want, what string) {
	t.Helper()
	out, err := trySQL(c, "SELECT 1")
	require.Error(t, err, "%s logged in: %s", what, out)
	require.ErrorContains(t, err, want, what)
}

// requireMarkersStay fails the test if a marker file is in dir now or appears within wait.
func requireMarkersStay(t *testing.T, dir string, wait time.Duration) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		require.Empty(t, names, "marker files: the clone ran a command of its source's configuration")
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireSocketPrivate checks that a clone's runtime directory, which holds the server's Unix
// socket, is its server user's only, and that another OS user cannot connect through it.
func requireSocketPrivate(t *testing.T, d *Daemon, c *Clone, client []string) {
	t.Helper()
	run := d.cfg.cloneRun(c.Name)
	st, err := os.Stat(run)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm(), "mode of %s", run)
	u := serverUser(t, c.Engine)
	require.Equal(t, uint32(u.UID), st.Sys().(*syscall.Stat_t).Uid, "owner of %s", run)
	nobody, err := engine.ResolveUser("nobody", "")
	require.NoError(t, err)
	cmd := nobody.Command(context.Background(), "", client[0], client[1:])
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "OS user nobody through the socket: %s", out)
	require.Regexp(t, `Permission denied|\(13\)`, string(out))
}

// TestPostgresCloneSafety: an image built from a base backup of a PostgreSQL that archives WAL
// (archive_command writing marker files), restores from an archive, waits for a synchronous
// standby, subscribes to a publisher (a real PostgreSQL behind a counting listener) and whose
// roles have passwords, taken with -R (standby.signal, primary_conninfo). Neither the build nor
// clones under load archive anything or connect to the publisher; clones admit over TCP their
// own administrative login only.
func TestPostgresCloneSafety(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	d, _ := newTestDaemon(t)
	ctx := context.Background()
	root := backupDir(t)
	dir := testDir(t)
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	markers := filepath.Join(dir, "markers")
	require.NoError(t, u.MkdirAll(markers, 0o755))

	// The publisher, reached through a counting listener.
	pubRun := filepath.Join(dir, "pubrun")
	startFor(t, eng, initFor(t, eng, dir, "pub", "app"), pubRun, map[string]string{"wal_level": "logical"})
	pgRun(t, eng, pubRun, "app", "CREATE TABLE items (id int PRIMARY KEY, v text);\nINSERT INTO items VALUES (1, 'a');\nCREATE PUBLICATION pub FOR TABLE items;\n")
	publisher := conncount.New(t, "unix", filepath.Join(pubRun, ".s.PGSQL.5432"))

	// The source: subscribed, archiving, restoring, with a synchronous standby and passwords.
	srcRoot, srcRun := initFor(t, eng, dir, "src", "app"), filepath.Join(dir, "srcrun")
	src := startFor(t, eng, srcRoot, srcRun, nil)
	pgRun(t, eng, srcRun, "app", fmt.Sprintf("CREATE TABLE items (id int PRIMARY KEY, v text);\n"+
		"CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port=%d user=postgres dbname=app' PUBLICATION pub WITH (copy_data = false);\n"+
		"CREATE ROLE app LOGIN PASSWORD 'app-secret';\nALTER ROLE postgres PASSWORD 'prod-secret';\n"+
		"ALTER SYSTEM SET synchronous_standby_names = 'standby1';\n", publisher.Port()))
	conf, err := os.OpenFile(filepath.Join(engine.DataDir(srcRoot), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fmt.Fprintf(conf, "\n# The source's archive.\narchive_mode = on\narchive_command = 'touch %[1]s/archived-%%f'\n"+
		"restore_command = 'touch %[1]s/restored-%%f; false'\n", markers)
	require.NoError(t, err)
	require.NoError(t, conf.Close())
	base := filepath.Join(root, "safe")
	require.NoError(t, u.MkdirAll(base, 0o755))
	serverUserCommand(t, imagebuilder.EnginePostgres, nil, pgTool(t, eng, "pg_basebackup"),
		"-h", srcRun, "-U", "postgres", "-D", base, "-Ft", "-Xs", "-R", "--checkpoint=fast", "--no-sync")
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	require.NoError(t, src.Stop(sctx))
	require.Equal(t, "1", pgRun(t, eng, pubRun, "app", "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sub'"), "the source's slot on the publisher")
	before := publisher.Count()
	t.Logf("connections to the publisher while the source was set up: %d", before)

	build(t, d, pgDefinition(eng, "pg-safe", "sourceType: backup\nbackups:\n  - path: safe/base.tar\n  - path: safe/pg_wal.tar\n"), root)
	require.Equal(t, before, publisher.Count(), "the build connected to the publisher")
	a := createClone(t, d, CloneRequest{Image: "pg-safe", Name: "safe-a"})

	t.Run("never archives or replicates", func(t *testing.T) {
		require.Equal(t, "f|off|(disabled)|||||0", sql(t, a, `SELECT concat_ws('|', pg_is_in_recovery(), current_setting('archive_mode'),
			current_setting('archive_command'), current_setting('restore_command'), current_setting('primary_conninfo'),
			current_setting('primary_slot_name'), current_setting('synchronous_standby_names'), current_setting('max_logical_replication_workers'))`))
		// The image's own configuration says so too (postgresql.auto.conf, read last).
		require.Equal(t, "off|0|", sql(t, a, `SELECT concat_ws('|',
			(SELECT setting FROM pg_file_settings WHERE name = 'archive_mode' ORDER BY seqno DESC LIMIT 1),
			(SELECT setting FROM pg_file_settings WHERE name = 'max_logical_replication_workers' ORDER BY seqno DESC LIMIT 1),
			(SELECT setting FROM pg_file_settings WHERE name = 'synchronous_standby_names' ORDER BY seqno DESC LIMIT 1))`))
		require.NoFileExists(t, filepath.Join(engine.DataDir(d.cfg.cloneMount(a.Name)), "standby.signal"))
		require.Equal(t, "sub|f|", sql(t, a, "SELECT format('%s|%s|%s', subname, subenabled, subslotname) FROM pg_subscription"),
			"the subscription is kept, disabled, without its slot")

		// Load: pgbench, and WAL segments switched while it runs.
		lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(lctx, pgTool(t, eng, "pgbench"), "-i", "-s", "2", "-q", a.Connection).CombinedOutput()
		require.NoError(t, err, "pgbench -i: %s", out)
		bench := exec.CommandContext(lctx, pgTool(t, eng, "pgbench"), "-n", "-T", "4", "-c", "2", a.Connection)
		var benchOut strings.Builder
		bench.Stdout, bench.Stderr = &benchOut, &benchOut
		require.NoError(t, bench.Start())
		for range 3 {
			time.Sleep(time.Second)
			sql(t, a, "SELECT pg_switch_wal()")
		}
		require.NoError(t, bench.Wait(), "pgbench: %s", benchOut.String())
		require.Contains(t, benchOut.String(), "number of transactions actually processed")
		sql(t, a, "CHECKPOINT")
		requireMarkersStay(t, markers, 3*time.Second)
		require.Equal(t, "0|0", sql(t, a, "SELECT archived_count || '|' || failed_count FROM pg_stat_archiver"))
		require.Equal(t, before, publisher.Count(), "the clone connected to the publisher")
		require.Equal(t, "0|false", pgRun(t, eng, pubRun, "app", "SELECT (SELECT count(*) FROM pg_stat_replication) || '|' || (SELECT active FROM pg_replication_slots WHERE slot_name = 'sub')"))

		// Dropping the subscription in the clone does not drop the source's slot.
		sql(t, a, "DROP SUBSCRIPTION sub")
		require.Equal(t, before, publisher.Count(), "DROP SUBSCRIPTION connected to the publisher")
		require.Equal(t, "1", pgRun(t, eng, pubRun, "app", "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sub'"))

		// A restart enforces it again.
		_, err = d.StopClone(ctx, a.Name)
		require.NoError(t, err)
		a, err = d.StartClone(ctx, a.Name)
		require.NoError(t, err)
		sql(t, a, "SELECT pg_switch_wal()")
		requireMarkersStay(t, markers, time.Second)
	})

	t.Run("own credentials only", func(t *testing.T) {
		b := createClone(t, d, CloneRequest{Image: "pg-safe", Name: "safe-b"})
		require.NotEqual(t, a.Password, b.Password)
		require.Equal(t, "postgres", sql(t, a, "SELECT current_user"))
		require.Equal(t, "postgres", sql(t, b, "SELECT current_user"))
		requireRefused(t, withPassword(b, a.Password), "password authentication failed", "clone A's password on clone B")
		// What the image carries from its source logs in nowhere over TCP.
		requireRefused(t, withPassword(a, "prod-secret"), "password authentication failed", "the source's password of postgres")
		requireRefused(t, withLogin(a, "app", "app-secret"), `no pg_hba.conf entry for host "127.0.0.1", user "app"`, "a role of the image")
		// No replication connection over TCP.
		cmd := exec.Command(pgTool(t, eng, "psql"), "-X", "-c", "IDENTIFY_SYSTEM", a.Connection+"&replication=true")
		b2, err := cmd.CombinedOutput()
		require.Error(t, err, "replication over TCP: %s", b2)
		require.Contains(t, string(b2), "no pg_hba.conf entry for replication connection")
		requireSocketPrivate(t, d, a, []string{pgTool(t, eng, "psql"), "-X", "-h", d.cfg.cloneRun(a.Name), "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"})

		// An image made from clone A carries A's password: a clone of it does not take it.
		_, err = d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "pg-safe-a", Clone: a.Name})
		require.NoError(t, err)
		c := createClone(t, d, CloneRequest{Image: "pg-safe-a", Name: "safe-c"})
		requireRefused(t, withPassword(c, a.Password), "password authentication failed", "clone A's password on a clone of an image made from A")
		require.Equal(t, "postgres", sql(t, c, "SELECT current_user"))
		require.NoError(t, d.DeleteClone(ctx, c.Name))
		require.NoError(t, d.DeleteImage(ctx, "pg-safe-a"))
	})
}

// mariadbClient runs sql through the MariaDB client as OS root on the socket at sock.
func mariadbClient(t *testing.T, sock, sql string) string {
	t.Helper()
	out, err := exec.Command("mariadb", "--no-defaults", "--protocol=socket", "--socket="+sock, "-u", "root", "-N", "-B", "-e", sql).CombinedOutput()
	require.NoError(t, err, "%s: %s", sql, out)
	return strings.TrimSpace(string(out))
}

// mariadbPrimary runs a MariaDB server with a binary log (a primary: Start runs none) on a new
// instance under dir, on its Unix socket only, and returns the socket's path.
func mariadbPrimary(t *testing.T, eng engine.Engine, dir string) string {
	t.Helper()
	root := initFor(t, eng, dir, "primary", "shop")
	u, err := engine.ResolveUser("", "mysql")
	require.NoError(t, err)
	run := filepath.Join(dir, "prun")
	require.NoError(t, u.MkdirAll(run, 0o700))
	bin, err := exec.LookPath("mariadbd")
	require.NoError(t, err)
	sock := filepath.Join(run, "p.sock")
	cmd := u.Command(context.Background(), "", bin, []string{"--no-defaults", "--datadir=" + engine.DataDir(root), "--socket=" + sock,
		"--pid-file=" + filepath.Join(run, "p.pid"), "--log-error=" + filepath.Join(run, "error.log"), "--tmpdir=" + run,
		"--skip-networking", "--skip-name-resolve", "--log-bin=primary-bin", "--server-id=1"})
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	require.Eventually(t, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, time.Minute, 100*time.Millisecond, "the primary's socket")
	return sock
}

// TestMariaDBCloneSafety: an image built from an --all-databases dump of a MariaDB replica,
// taken to make another replica (--dump-slave --include-master-host-port
// --apply-slave-statements: the dump configures its primary and starts replicating), whose
// accounts include one for TCP clients with a known password; and an image made from a clone
// configured as a replica with credentials. Neither the build nor clones under load connect to
// the primary (a real one, behind a counting listener); clones keep no replica configuration,
// write no binary log, and admit over TCP their own root login only.
func TestMariaDBCloneSafety(t *testing.T) {
	eng := needEngine(t, imagebuilder.EngineMariaDB)
	d, _ := newTestDaemon(t)
	ctx := context.Background()
	root := backupDir(t)
	dir := testDir(t)

	primarySock := mariadbPrimary(t, eng, dir)
	mariadbClient(t, primarySock, "CREATE USER repl@localhost IDENTIFIED BY 'repl-secret'; GRANT REPLICATION SLAVE ON *.* TO repl@localhost")
	primary := conncount.New(t, "unix", primarySock)

	srcRoot := initFor(t, eng, dir, "src", "shop")
	src := startFor(t, eng, srcRoot, filepath.Join(dir, "srcrun"), map[string]string{"server-id": "2"})
	srcSock := src.Conn().Socket
	mariadbClient(t, srcSock, fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='repl', MASTER_PASSWORD='repl-secret', "+
		"MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE", primary.Port()))
	mariadbClient(t, primarySock, "CREATE TABLE shop.items (id int PRIMARY KEY, v varchar(20)); INSERT INTO shop.items VALUES (1, 'a'), (2, 'b'), (3, 'c');"+
		"CREATE USER app@'%' IDENTIFIED BY 'app-secret'; GRANT ALL ON shop.* TO app@'%'")
	require.Eventually(t, func() bool {
		out, err := exec.Command("mariadb", "--no-defaults", "--socket="+srcSock, "-u", "root", "-N", "-B", "-e", "SELECT COUNT(*) FROM shop.items").CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "3"
	}, time.Minute, 200*time.Millisecond, "the replica catches up: %s", src.LogTail(20))

	dumpPath := filepath.Join(root, "replica.sql")
	f, err := os.Create(dumpPath)
	require.NoError(t, err)
	cmd := exec.Command("mariadb-dump", "--no-defaults", "--socket="+srcSock, "-u", "root", "--all-databases", "--single-transaction",
		"--dump-slave=1", "--include-master-host-port", "--apply-slave-statements")
	cmd.Stdout = f
	_, err = engine.Run(cmd)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Chmod(dumpPath, 0o644))
	dump, err := os.ReadFile(dumpPath)
	require.NoError(t, err)
	var replication []string // the dump's replication statements
	for _, line := range strings.Split(string(dump), "\n") {
		if len(line) < 300 && regexp.MustCompile(`^(CHANGE MASTER|START|STOP|SET GLOBAL gtid_slave_pos)`).MatchString(line) {
			replication = append(replication, line)
		}
	}
	lines := strings.Join(replication, "\n")
	require.Regexp(t, `(?m)^CHANGE MASTER ('' )?TO MASTER_HOST='127\.0\.0\.1', MASTER_PORT=`+strconv.Itoa(primary.Port()), lines)
	require.Regexp(t, `(?m)^START (ALL )?SLAVES?;$`, lines)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	require.NoError(t, src.Stop(sctx))
	before := primary.Count()
	t.Logf("connections to the primary while the replica was set up: %d", before)

	build(t, d, mariadbDefinition(eng, "my-safe", "sourceType: backup\nbackups:\n  - path: replica.sql\n"), root)
	require.Equal(t, before, primary.Count(), "the build connected to the primary")
	a := createClone(t, d, CloneRequest{Image: "my-safe", Name: "msafe-a"})

	t.Run("never replicates", func(t *testing.T) {
		require.Equal(t, "3", sql(t, a, "SELECT COUNT(*) FROM shop.items"))
		require.Equal(t, "", sql(t, a, "SHOW ALL SLAVES STATUS"))
		require.Equal(t, "0", sql(t, a, "SELECT @@log_bin"))
		require.NotEmpty(t, sql(t, a, "SELECT @@gtid_slave_pos"), "the data's GTID position stays")
		for i := range 20 {
			sql(t, a, fmt.Sprintf("INSERT INTO shop.items VALUES (%d, 'load'); FLUSH LOGS", 100+i))
		}
		time.Sleep(2 * time.Second) // a replica thread connects at once
		require.Equal(t, before, primary.Count(), "the clone connected to the primary")
		_, err := trySQL(a, "START SLAVE")
		require.ErrorContains(t, err, "ERROR 1200", "START SLAVE in the clone: nothing to start")
		require.Equal(t, before, primary.Count(), "the clone connected to the primary")

		// A dump carries no replication credentials; a clone's own configuration may. Clone A's
		// user configures the primary with them (without starting it) and makes an image of
		// the clone: a clone of that image does not connect either.
		sql(t, a, fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='repl', MASTER_PASSWORD='repl-secret', MASTER_CONNECT_RETRY=1", primary.Port()))
		_, err = d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "my-safe-replica", Clone: a.Name})
		require.NoError(t, err)
		r := createClone(t, d, CloneRequest{Image: "my-safe-replica", Name: "msafe-r"})
		require.Equal(t, "", sql(t, r, "SHOW ALL SLAVES STATUS"))
		time.Sleep(2 * time.Second)
		require.Equal(t, before, primary.Count(), "a clone of an image made from a configured replica connected to the primary")
		require.NoError(t, d.DeleteClone(ctx, r.Name))
		require.NoError(t, d.DeleteImage(ctx, "my-safe-replica"))
	})

	t.Run("own credentials only", func(t *testing.T) {
		b := createClone(t, d, CloneRequest{Image: "my-safe", Name: "msafe-b"})
		require.Equal(t, "root@%", sql(t, a, "SELECT CURRENT_USER()"))
		require.Equal(t, "root@%", sql(t, b, "SELECT CURRENT_USER()"))
		requireRefused(t, withPassword(b, a.Password), "Access denied", "clone A's password on clone B")
		requireRefused(t, withLogin(a, "app", "app-secret"), "account is locked", "an account of the image")
		requireSocketPrivate(t, d, a, []string{"mariadb", "--no-defaults", "--socket=" + filepath.Join(d.cfg.cloneRun(a.Name), "mysqld.sock"), "-u", "nobody", "-e", "SELECT 1"})

		_, err = d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "my-safe-a", Clone: a.Name})
		require.NoError(t, err)
		c := createClone(t, d, CloneRequest{Image: "my-safe-a", Name: "msafe-c"})
		requireRefused(t, withPassword(c, a.Password), "Access denied", "clone A's password on a clone of an image made from A")
		require.Equal(t, "root@%", sql(t, c, "SELECT CURRENT_USER()"))
		require.NoError(t, d.DeleteClone(ctx, c.Name))
		require.NoError(t, d.DeleteImage(ctx, "my-safe-a"))
	})
}
