package mariadbtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Source is a MariaDB server started by a test as production runs one: with a binary log
// (log-bin, server id 1), which the adapter's own servers never have. Backups are taken from it
// with the real mariabackup.
type Source struct {
	// DataDir is the server's data directory (its binary logs are there too), Socket its socket.
	DataDir, Socket string
	cmd             *exec.Cmd
	exited          chan struct{}
}

// Tool returns the path of the named tool (the first of names found), or makes the test skip
// (fail under CI=true) naming the package that has it.
func Tool(t testing.TB, pkg string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
			if p := filepath.Join(dir, n); isExec(p) {
				return p
			}
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("no %s, and CI=true: hack/install-deps.sh should have installed %s", names[0], pkg)
	}
	t.Skipf("no %s: skipping (apt-get install %s, or make deps)", names[0], pkg)
	return ""
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// StartSource makes an instance with e.Init and runs mariadbd on it with a binary log, until the
// test ends. It needs mariabackup (mariadb-backup) as well: tests of backups skip without it.
func StartSource(t testing.TB, e engine.Engine) *Source {
	t.Helper()
	Tool(t, "mariadb-backup", "mariabackup", "mariadb-backup")
	server := Tool(t, "mariadb-server", "mariadbd")
	root := Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := e.Init(ctx, root, engine.InitOptions{}); err != nil {
		t.Fatalf("init the source: %v", err)
	}
	u, err := e.User("")
	if err != nil {
		t.Fatal(err)
	}
	run := RuntimeDir(t)
	if os.Geteuid() == 0 {
		if err := os.Chown(run, u.UID, u.GID); err != nil {
			t.Fatal(err)
		}
	}
	s := &Source{DataDir: engine.DataDir(root), Socket: filepath.Join(run, "src.sock"), exited: make(chan struct{})}
	args := []string{"--no-defaults", "--basedir=/usr", "--datadir=" + s.DataDir, "--socket=" + s.Socket,
		"--pid-file=" + filepath.Join(run, "src.pid"), "--log-error=" + filepath.Join(run, "src.log"),
		"--skip-networking", "--log-bin=binlog", "--server-id=1", "--binlog-format=MIXED",
		"--tmpdir=" + run, "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"}
	s.cmd = u.Command(context.Background(), "", server, args)
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start the source: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(Timeout):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	})
	deadline := time.Now().Add(Timeout)
	for {
		if _, err := s.query("SELECT 1"); err == nil {
			return s
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(run, "src.log"))
			t.Fatalf("the source server exited:\n%s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the source server does not answer")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// account is the MariaDB account the tools log in with through the socket: root as OS root,
// else the account of the OS user (mariadb-install-db makes both, by unix_socket).
func account() string {
	if os.Geteuid() != 0 {
		if u, err := engine.ResolveUser("", ""); err == nil {
			return u.Name
		}
	}
	return "root"
}

func (s *Source) client(args ...string) *exec.Cmd {
	return exec.Command("mariadb", append([]string{"--no-defaults", "--socket=" + s.Socket, "--user=" + account(),
		"--default-character-set=utf8mb4", "-N", "-B"}, args...)...)
}

func (s *Source) query(sql string) (string, error) {
	cmd := s.client("-e", sql)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", &exec.ExitError{ProcessState: cmd.ProcessState, Stderr: errb.Bytes()}
	}
	return strings.TrimRight(out.String(), "\n"), nil
}

// Exec runs sql (several statements) on the source.
func (s *Source) Exec(t testing.TB, sql string) {
	t.Helper()
	cmd := s.client()
	cmd.Stdin = strings.NewReader(sql)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("source: %v\n%s", err, out)
	}
}

// Query runs one statement on the source and returns its output (tab-separated, no headers).
func (s *Source) Query(t testing.TB, sql string) string {
	t.Helper()
	out, err := s.query(sql)
	if err != nil {
		t.Fatalf("source: %s: %v: %s", sql, err, err.(*exec.ExitError).Stderr)
	}
	return out
}

// Position returns the source's binlog position as the adapter records it:
// "GTID <gtid_binlog_pos>, binlog <file>:<position>".
func (s *Source) Position(t testing.TB) string {
	t.Helper()
	st := strings.Split(s.Query(t, "SHOW MASTER STATUS"), "\t")
	return "GTID " + s.Query(t, "SELECT @@gtid_binlog_pos") + ", binlog " + st[0] + ":" + st[1]
}

// Backup runs mariabackup --backup on the source with args (--target-dir=..., or
// --stream=xbstream) and returns its standard output.
func (s *Source) backup(t testing.TB, args ...string) []byte {
	t.Helper()
	tool := Tool(t, "mariadb-backup", "mariabackup", "mariadb-backup")
	cmd := exec.Command(tool, append([]string{"--no-defaults", "--backup", "--socket=" + s.Socket, "--user=" + account()}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("mariabackup --backup %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes()
}

// DirBackup takes a backup into a new directory (mariabackup --backup --target-dir) and
// returns it.
func (s *Source) DirBackup(t testing.TB, args ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "backup")
	s.backup(t, append([]string{"--target-dir=" + dir}, args...)...)
	return dir
}

// StreamBackup takes a backup as a stream (mariabackup --backup --stream=xbstream), compressed
// with compress ("", "gzip" or "zstd": the stream piped through gzip or zstd), into a file and
// returns it.
func (s *Source) StreamBackup(t testing.TB, compress string) string {
	t.Helper()
	data := s.backup(t, "--stream=xbstream", "--target-dir="+t.TempDir())
	path := filepath.Join(t.TempDir(), "backup.xb")
	switch compress {
	case "":
	case "gzip":
		cmd := exec.Command(Tool(t, "gzip", "gzip"), "-c")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		data, path = out, path+".gz"
	case "zstd":
		// The zstd command is not installed everywhere; its format is the format.
		zw, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		data, path = zw.EncodeAll(data, nil), path+".zst"
		zw.Close()
	default:
		t.Fatalf("StreamBackup: unknown compression %q", compress)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Binlogs rotates the source's binary log (FLUSH BINARY LOGS) and copies every closed binary
// log into a new directory, returning their paths in sequence order.
func (s *Source) Binlogs(t testing.TB) []string {
	t.Helper()
	s.Exec(t, "FLUSH BINARY LOGS;")
	current := strings.Split(s.Query(t, "SHOW MASTER STATUS"), "\t")[0]
	names, err := filepath.Glob(filepath.Join(s.DataDir, "binlog.[0-9]*"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	dir := t.TempDir()
	var out []string
	for _, n := range names {
		if filepath.Base(n) == current {
			continue
		}
		data, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(n))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// Checksums returns CHECKSUM TABLE ... EXTENDED of every base table outside the system
// databases, one "db.table<TAB>checksum" line each, in order, through query (the source's
// Query, or an instance's).
func Checksums(t testing.TB, query func(sql string) string) string {
	t.Helper()
	tables := query("SELECT CONCAT('`', REPLACE(TABLE_SCHEMA, '`', '``'), '`.`', REPLACE(TABLE_NAME, '`', '``'), '`') FROM information_schema.TABLES " +
		"WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY TABLE_SCHEMA, TABLE_NAME")
	if tables == "" {
		t.Fatal("Checksums: no tables")
	}
	var b strings.Builder
	for _, tbl := range strings.Split(tables, "\n") {
		b.WriteString(query("CHECKSUM TABLE " + tbl + " EXTENDED"))
		b.WriteByte('\n')
	}
	return b.String()
}

// Dump runs the real mariadb-dump against the source with args and returns the dump's path.
func (s *Source) Dump(t testing.TB, args ...string) string {
	t.Helper()
	tool := Tool(t, "mariadb-client", "mariadb-dump", "mysqldump")
	path := filepath.Join(t.TempDir(), "dump.sql")
	cmd := exec.Command(tool, append([]string{"--no-defaults", "--socket=" + s.Socket, "--user=" + account()}, args...)...)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v", tool, strings.Join(args, " "), err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
