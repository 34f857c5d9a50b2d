package mariadb_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb/internal/mariadbtest"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), mariadbtest.Timeout)
	t.Cleanup(cancel)
	return c
}

// The version Discover reports is the one the client tools were built with.
func TestDiscoverFindsMariaDB(t *testing.T) {
	e := mariadbtest.Engine(t)
	if e.Kind() != imagebuilder.EngineMariaDB {
		t.Fatalf("Kind = %q, want mariadb", e.Kind())
	}
	out, err := exec.Command("mariadb", "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb --version: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Distrib (\d+\.\d+\.\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no version in %q", out)
	}
	if e.Version() != string(m[1]) {
		t.Fatalf("Version = %q, the client says %q", e.Version(), m[1])
	}
	if v, ok := (engine.Set{e}).Versions().Match(imagebuilder.EngineMariaDB, strings.Join(strings.Split(e.Version(), ".")[:2], ".")); !ok || v != e.Version() {
		t.Fatalf("Set.Versions().Match(major.minor) = %q, %v", v, ok)
	}
}

func TestDiscoverBinDirs(t *testing.T) {
	mariadbtest.Engine(t)
	client, err := exec.LookPath("mariadb")
	if err != nil {
		t.Fatal(err)
	}
	fakeServer := func(t *testing.T, dir, version string) {
		script := "#!/bin/sh\necho '" + filepath.Join(dir, "mysqld") + "  Ver " + version + "'\n"
		if err := os.WriteFile(filepath.Join(dir, "mysqld"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("none", func(t *testing.T) {
		engines, err := mariadb.Discover(mariadb.Options{BinDirs: []string{t.TempDir()}})
		if err != nil || len(engines) != 0 {
			t.Fatalf("Discover(empty dir) = %v, %v; want none, nil", engines, err)
		}
	})
	t.Run("mysql", func(t *testing.T) {
		// An Oracle MySQL server binary (its --version output) with a client next to it.
		dir := t.TempDir()
		fakeServer(t, dir, "8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)")
		if err := os.Symlink(client, filepath.Join(dir, "mysql")); err != nil {
			t.Fatal(err)
		}
		engines, err := mariadb.Discover(mariadb.Options{BinDirs: []string{dir}})
		if err != nil || len(engines) != 1 {
			t.Fatalf("Discover = %v, %v; want one engine", engines, err)
		}
		if engines[0].Kind() != imagebuilder.EngineMySQL || engines[0].Version() != "8.0.36" {
			t.Fatalf("engine = %s %s, want mysql 8.0.36", engines[0].Kind(), engines[0].Version())
		}
	})
	t.Run("no client", func(t *testing.T) {
		dir := t.TempDir()
		fakeServer(t, dir, "8.4.0 for Linux on x86_64 (MySQL Community Server - GPL)")
		engines, err := mariadb.Discover(mariadb.Options{BinDirs: []string{dir}})
		if !errors.Is(err, mariadb.ErrTool) || len(engines) != 0 {
			t.Fatalf("Discover = %v, %v; want none and ErrTool", engines, err)
		}
		if !strings.Contains(err.Error(), "mysql (client)") {
			t.Fatalf("error does not name the missing client: %v", err)
		}
	})
	t.Run("real and fake", func(t *testing.T) {
		// The real server's directory and a broken binary: the real one is returned, with an
		// error about the other.
		real, err := exec.LookPath("mariadbd")
		if err != nil {
			real = "/usr/sbin/mariadbd"
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "mysqld"), []byte("#!/bin/sh\necho 'no version here'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		engines, err := mariadb.Discover(mariadb.Options{BinDirs: []string{filepath.Dir(real), dir}})
		if !errors.Is(err, mariadb.ErrTool) || !strings.Contains(err.Error(), "no version") {
			t.Fatalf("Discover error = %v, want ErrTool about the version", err)
		}
		if len(engines) != 1 || engines[0].Kind() != imagebuilder.EngineMariaDB {
			t.Fatalf("Discover = %v, want the real MariaDB", engines)
		}
	})
}

func TestInitStartQueryStop(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	root := mariadbtest.Root(t)
	if err := e.Init(ctx(t), root, engine.InitOptions{Database: "app"}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(engine.DataDir(root))
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; os.Geteuid() == 0 && uid == 0 {
		t.Fatalf("data directory owned by root, want the server's user")
	}
	if err := e.Init(ctx(t), root, engine.InitOptions{}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second Init = %v, want an error matching os.ErrExist", err)
	}

	var log mariadbtest.Lines
	// A runtime directory that only root may enter, as the builder makes it: Start gives it to
	// the server's user.
	rt := filepath.Join(mariadbtest.RuntimeDir(t), "run")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	in, err := e.Start(ctx(t), root, engine.StartOptions{RuntimeDir: rt, Output: &log})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = in.Stop(context.Background())
		}
	})
	if !strings.Contains(log.String(), "ready for connections") {
		t.Fatalf("Start returned before its log lines reached Output:\n%s", log.String())
	}
	conn := in.Conn()
	if conn.Engine != imagebuilder.EngineMariaDB || conn.Port != 0 || conn.Host != "" || conn.User != "root" ||
		conn.Socket != filepath.Join(rt, "mysqld.sock") {
		t.Fatalf("Conn = %+v", conn)
	}
	if got := mariadbtest.Query(t, in, "", "SELECT VERSION()"); !strings.HasPrefix(got, e.Version()+"-MariaDB") {
		t.Fatalf("VERSION() = %q, want %s-MariaDB...", got, e.Version())
	}
	if got := mariadbtest.Query(t, in, "", "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'app'"); got != "utf8mb4" {
		t.Fatalf("database app: character set %q, want utf8mb4 (the initial database exists after Init)", got)
	}
	if got := mariadbtest.Query(t, in, "", "SELECT COUNT(*) FROM mysql.proxies_priv WHERE Host <> 'localhost'"); got != "0" {
		t.Fatalf("%s proxy grants for this host name, want none in an image", got)
	}
	if got := mariadbtest.Query(t, in, "", "SELECT @@skip_networking, @@skip_name_resolve"); got != "1\t1" {
		t.Fatalf("skip_networking, skip_name_resolve = %q, want 1 1", got)
	}
	mariadbtest.Exec(t, in, "app", "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20));\nINSERT INTO t VALUES (1, 'één'), (2, NULL);\n")
	if got := mariadbtest.Query(t, in, "app", "SELECT id, name FROM t ORDER BY id"); got != "1\téén\n2\tNULL" {
		t.Fatalf("rows = %q", got)
	}
	if err := in.CreateDatabase(ctx(t), "second"); err != nil {
		t.Fatal(err)
	}
	if err := in.CreateDatabase(ctx(t), "second"); err != nil {
		t.Fatalf("CreateDatabase of an existing database: %v", err)
	}
	if in.Conn().Database != "second" {
		t.Fatalf("Conn().Database = %q, want the database just created", in.Conn().Database)
	}
	if err := in.Checkpoint(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if got := mariadbtest.Query(t, in, "", "SELECT @@innodb_fast_shutdown"); got != "0" {
		t.Fatalf("innodb_fast_shutdown after Checkpoint = %s, want 0", got)
	}

	pid := in.PID()
	if err := in.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	stopped = true
	select {
	case <-in.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("server pid %d still there after Stop (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(conn.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Stop: %v", err)
	}
	if !strings.Contains(log.String(), "ready for connections") || !strings.Contains(log.String(), "Shutdown complete") {
		t.Fatalf("Output got no start and shutdown lines:\n%s", log.String())
	}
	if tail := in.LogTail(3); !strings.Contains(tail, "Shutdown complete") || strings.Count(tail, "\n") != 2 {
		t.Fatalf("LogTail(3) = %q", tail)
	}
	if err := in.Stop(ctx(t)); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	// The data is in the data directory: a new server on it (and on the same runtime
	// directory, whose log it appends to) has it.
	again := mariadbtest.Start(t, e, root, engine.StartOptions{RuntimeDir: rt})
	if got := mariadbtest.Query(t, again, "app", "SELECT name FROM t WHERE id = 1"); got != "één" {
		t.Fatalf("after restart: %q", got)
	}
	if tail := again.LogTail(100); strings.Contains(tail, "Shutdown complete") {
		t.Fatalf("LogTail of the new server has the old one's lines:\n%s", tail)
	}
}

func TestInitRefusesUnreachableRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs the server as another user")
	}
	e := mariadbtest.Engine(t)
	root := t.TempDir() // 0700, root's
	err := e.Init(ctx(t), root, engine.InitOptions{})
	if err == nil || !strings.Contains(err.Error(), "does not let OS user mysql through") {
		t.Fatalf("Init under a 0700 root-owned directory = %v", err)
	}
	if _, err := os.Stat(engine.DataDir(root)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Init left a data directory: %v", err)
	}
}

func TestExecStopsAtFirstError(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	in, _ := mariadbtest.Instance(t, e, engine.InitOptions{Database: "app"}, engine.StartOptions{})
	script := "CREATE TABLE a (x INT);\nINSERT INTO nosuch VALUES (1);\nCREATE TABLE b (x INT);\n"
	err := in.Exec(ctx(t), "app", strings.NewReader(script))
	var se *engine.ServerError
	if !errors.As(err, &se) || !errors.Is(err, engine.ErrServer) {
		t.Fatalf("Exec = %v, want a *engine.ServerError", err)
	}
	if !strings.Contains(err.Error(), "at line 2") || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("error does not say where: %v", err)
	}
	if got := mariadbtest.Query(t, in, "app", "SHOW TABLES"); got != "a" {
		t.Fatalf("tables = %q, want only a (the script stops at its error)", got)
	}
	// Client commands are off: a script cannot run a shell command or read a file.
	marker := filepath.Join(t.TempDir(), "ran")
	err = in.Exec(ctx(t), "app", strings.NewReader("SELECT 1;\n\\! touch "+marker+"\n"))
	if err == nil {
		t.Fatal("a script with a shell command ran without error")
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the script's shell command ran: %v", err)
	}
	mariadbtest.Exec(t, in, "app", "CREATE TABLE loaded (line TEXT);\n")
	err = in.Exec(ctx(t), "app", strings.NewReader("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE loaded;\n"))
	if err == nil {
		t.Fatal("a script read a local file with LOAD DATA LOCAL")
	}
	if got := mariadbtest.Query(t, in, "app", "SELECT COUNT(*) FROM loaded"); got != "0" {
		t.Fatalf("LOAD DATA LOCAL loaded %s lines", got)
	}
	if _, err := in.Query(ctx(t), "nosuchdb", "SELECT 1"); !errors.Is(err, engine.ErrServer) || !strings.Contains(err.Error(), "nosuchdb") {
		t.Fatalf("Query in a missing database = %v", err)
	}
}

func TestSetPasswordTCP(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	port, err := engine.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	in, _ := mariadbtest.Instance(t, e, engine.InitOptions{}, engine.StartOptions{ListenAddress: "127.0.0.1", Port: port})
	const password = `s3cr'et\pw"`
	tcp := func(pw string) (string, error) {
		cmd := exec.CommandContext(ctx(t), "mariadb", "--no-defaults", "--protocol=tcp", "--host=127.0.0.1",
			"--port="+strconv.Itoa(port), "--user=root", "--batch", "--skip-column-names", "--execute=SELECT CURRENT_USER()")
		cmd.Env = append(os.Environ(), "MYSQL_PWD="+pw)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := tcp(password); err == nil {
		t.Fatalf("TCP login before SetPassword worked: %s", out)
	}
	if err := in.SetPassword(ctx(t), ""); err == nil {
		t.Fatal("SetPassword(\"\") worked")
	}
	if err := in.SetPassword(ctx(t), password); err != nil {
		t.Fatal(err)
	}
	if out, err := tcp(password); err != nil || out != "root@%" {
		t.Fatalf("TCP login with the password: %q, %v", out, err)
	}
	if out, err := tcp("wrong"); err == nil || !strings.Contains(out, "Access denied") {
		t.Fatalf("TCP login with a wrong password: %q, %v", out, err)
	}
	if got := mariadbtest.Query(t, in, "", "SELECT CURRENT_USER()"); !strings.HasSuffix(got, "@localhost") {
		t.Fatalf("socket login after SetPassword: %q", got)
	}
	c := in.Conn()
	if c.Host != "127.0.0.1" || c.Port != port || c.User != "root" || c.Password != password {
		t.Fatalf("Conn = %+v", c)
	}
	// Again, with another password: the old one stops working.
	if err := in.SetPassword(ctx(t), "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := tcp(password); err == nil {
		t.Fatal("the old password still works")
	}
	if out, err := tcp("other"); err != nil {
		t.Fatalf("TCP login with the new password: %q, %v", out, err)
	}
}

func TestStartFailure(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	root := mariadbtest.Root(t)
	if err := e.Init(ctx(t), root, engine.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Run("server refuses", func(t *testing.T) {
		in, err := e.Start(ctx(t), root, engine.StartOptions{RuntimeDir: mariadbtest.RuntimeDir(t),
			Settings: map[string]string{"no_such_option": "1"}})
		if err == nil {
			_ = in.Stop(context.Background())
			t.Fatal("Start with an unknown option worked")
		}
		var se *engine.ServerError
		if !errors.As(err, &se) || !errors.Is(err, engine.ErrServer) || se.Op != "start" {
			t.Fatalf("Start = %v, want a *engine.ServerError of start", err)
		}
		if !strings.Contains(se.LogTail, "unknown variable") || !strings.Contains(err.Error(), "exited before accepting connections") {
			t.Fatalf("error without the log's reason: %v", err)
		}
	})
	t.Run("settings refused", func(t *testing.T) {
		for _, name := range []string{"datadir", "loose_socket", "Port", "bad name", "skip-networking"} {
			_, err := e.Start(ctx(t), root, engine.StartOptions{RuntimeDir: mariadbtest.RuntimeDir(t),
				Settings: map[string]string{name: "x"}})
			if !errors.Is(err, mariadb.ErrSetting) {
				t.Errorf("setting %q: %v, want ErrSetting", name, err)
			}
		}
	})
	t.Run("no data directory", func(t *testing.T) {
		_, err := e.Start(ctx(t), mariadbtest.Root(t), engine.StartOptions{RuntimeDir: mariadbtest.RuntimeDir(t)})
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "data directory") {
			t.Fatalf("Start without a data directory = %v", err)
		}
	})
	t.Run("socket path too long", func(t *testing.T) {
		long := filepath.Join(mariadbtest.RuntimeDir(t), strings.Repeat("d", 100))
		if err := os.Mkdir(long, 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := e.Start(ctx(t), root, engine.StartOptions{RuntimeDir: long})
		if err == nil || !strings.Contains(err.Error(), "socket path") {
			t.Fatalf("Start with a long runtime directory = %v", err)
		}
	})
	t.Run("settings used", func(t *testing.T) {
		in := mariadbtest.Start(t, e, root, engine.StartOptions{Settings: map[string]string{
			"max_connections": "17", "character_set_server": "latin1", "collation-server": "latin1_swedish_ci",
		}})
		if got := mariadbtest.Query(t, in, "", "SELECT @@max_connections, @@character_set_server, @@max_allowed_packet"); got != "17\tlatin1\t1073741824" {
			t.Fatalf("settings = %q", got)
		}
		// A second server on the same instance is refused before it starts.
		_, err := e.Start(ctx(t), root, engine.StartOptions{RuntimeDir: filepath.Dir(in.Conn().Socket)})
		if err == nil || !strings.Contains(err.Error(), "already listens") {
			t.Fatalf("second Start = %v", err)
		}
	})
}

func TestStopKillsPastDeadline(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	root := mariadbtest.Root(t)
	if err := e.Init(ctx(t), root, engine.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	in, err := e.Start(ctx(t), root, engine.StartOptions{RuntimeDir: mariadbtest.RuntimeDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	pid := in.PID()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	err = in.Stop(done)
	if !errors.Is(err, engine.ErrServer) || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "SIGKILL") {
		t.Fatalf("Stop with an ended context = %v, want it killed and said so", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("server pid %d still there (kill 0: %v)", pid, err)
	}
	// The killed server recovers on the next start.
	in = mariadbtest.Start(t, e, root, engine.StartOptions{})
	mariadbtest.Query(t, in, "", "SELECT 1")
}
