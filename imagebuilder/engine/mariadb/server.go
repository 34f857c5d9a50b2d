// Package mariadb is the engine adapter for MariaDB and Oracle MySQL (and its derivatives): it
// makes instances with mariadb-install-db (mysqld --initialize-insecure for MySQL), runs
// mariadbd (mysqld) on them, and talks to the running server with the mariadb (mysql) client
// over the server's Unix socket. MariaDB 10.11 is what the project tests; the MySQL paths are
// written to the same contract but not tested here.
//
// # Servers
//
// The server runs with --no-defaults, so that no option file of the machine (/etc/mysql)
// changes an image, on the instance's data directory, with its socket, pid file, log and
// temporary files (tmp/: a server deletes the temporary tables it finds in its tmpdir when it
// starts, so servers cannot share one) in the runtime directory given to Start, without a TCP listener unless a port is given, and with
// --skip-name-resolve: a TCP client from 127.0.0.1 is matched against accounts by address (so
// root@'%' serves it), never by a host name looked up in DNS. MariaDB gets the character set
// Debian configures (utf8mb4, utf8mb4_general_ci) and a 1 GiB max_allowed_packet, so that dumps
// with long extended INSERTs restore; StartOptions.Settings override these. The server process
// runs as the server's OS user from the start (the adapter switches to it; the server's own
// --user works only as root).
//
// # Accounts
//
// mariadb-install-db makes root@localhost reachable through the Unix socket by the OS user root
// (unix_socket authentication, no password), and the same for the OS user the server runs as
// (mysql@localhost). The adapter's client therefore runs as OS root with MariaDB user root when
// the process is root, and as the current OS user with the MariaDB user of the same name
// otherwise (a container that runs everything as mysql). MySQL's --initialize-insecure makes
// root@localhost with an empty password instead. SetPassword adds root@'%' with the password
// for TCP clients and lets root@localhost log in with it too, keeping socket logins. Every other
// account TCP clients could log in with (any host but localhost) is locked: by the init file of
// a server with a TCP listener, before its first connection, by SetPassword, and in the image by
// PrepareImage; over TCP a server admits root@'%' with the password SetPassword gave, and
// nobody before.
//
// # Isolation
//
// Every server runs without a binary log (--skip-log-bin) and without starting its replica
// threads (--skip-slave-start); a replica configuration found in the data directory is removed
// once the server is up (RESET SLAVE ... ALL for every connection), as PrepareImage does for the
// image. A dump's replica start statements are not run (see RestoreLogical). read_only is left
// alone.
//
// A dump of the mysql schema (mariadb-dump --all-databases) replaces these accounts with the
// source's when the restored server next starts; its root@localhost must then still let the OS
// root (or the server's OS user) in through the socket.
//
// # Dumps and scripts
//
// Detect takes mariadb-dump and mysqldump output, and any text that starts with an SQL
// statement, plain or gzip'd, as FormatSQL. RestoreLogical feeds the dump to the client: a dump
// that selects its databases itself (--databases, --all-databases) restores into them; a dump of
// one database (no USE or CREATE DATABASE before its first table) restores into
// RestoreOptions.Database, created if need be, and fails with ErrNoDatabase when that is empty,
// for MariaDB has no default database. The data's time is the dump's "-- Dump completed on"
// trailer, read as UTC. Dumps (and Exec's scripts) run in the client's binary mode and without
// LOAD DATA LOCAL: the client's own commands (source, system, \!) are refused, so that what a
// dump holds reaches the server only, never the builder's files or shell. A definition's
// scripts do not use the client at all: RunScript (script.go) sends them through the driver as
// an account without FILE or any other global privilege; with no database name they run with
// none selected, and name their tables' databases or USE one.
//
// # Physical backups and binary logs
//
// MariaDB's physical backups are mariabackup's (physical.go): its target directory, or its
// --stream=xbstream output, plain, gzip'd or zstd-compressed. RestorePhysical places one into
// the data directory (a stream checked chunk by chunk before mbstream -x extracts it, within
// engine.RestoreOptions' limits; a directory copied), refuses an incremental backup, one of
// another major version and one made with --compress, runs mariabackup --prepare as the
// server's user and removes mariabackup's own files. The data state is xtrabackup_info's
// end_time (read as UTC) and the GTID and binlog position of xtrabackup_binlog_info. Binary logs
// given after the backup (binlog.go, replay.go) are replayed in sequence from that position to
// the recovery target by mariadb-binlog through the client, into a server RestorePhysical
// starts and stops itself; the data state is then the last transaction replayed. A failed
// restore leaves no data directory. A dump's --master-data and --gtid comments give its log
// position too. The tools come from Debian's mariadb-backup (mariabackup, mbstream) and
// mariadb-client (mariadb-binlog) packages; Discover finds them next to the server.
//
// # Images
//
// Checkpoint flushes every table (MyISAM and Aria write their buffers) and sets
// innodb_fast_shutdown=0, so that the Stop that follows is a slow shutdown: InnoDB purges
// every deleted row and merges its change buffer before it stops, and the image holds data
// files that need no background work in any clone. That makes the build's last stop slower and
// every clone's start faster; a server that is stopped without a Checkpoint (a clone) stops at
// the default speed.
//
// It must not know the store, CSI, Kubernetes or the other adapters: callers reach it through the
// engine interfaces, and only engine/registry names it.
package mariadb

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// server is one installed MariaDB or MySQL server binary with its tools: an engine.Engine.
type server struct {
	kind    imagebuilder.Engine
	version string
	// bin is the server binary (mariadbd, mysqld).
	bin string
	// client is the command-line client (mariadb, mysql).
	client string
	// installDB is mariadb-install-db; empty for MySQL, which initializes with mysqld itself.
	installDB string
	// backupTool, mbstream and binlogTool are mariabackup, mbstream and mariadb-binlog, which
	// restore physical backups and replay binary logs (MariaDB only); empty when not installed
	// (Debian's mariadb-backup package has the first two).
	backupTool, mbstream, binlogTool string
	// runAs is Options.RunAs: the OS user when an operation's options name none.
	runAs string
}

var _ engine.Engine = (*server)(nil)

func (s *server) Kind() imagebuilder.Engine { return s.kind }
func (s *server) Version() string           { return s.version }

// String names the server in messages: "mariadb 10.11.19 (/usr/sbin/mariadbd)".
func (s *server) String() string { return fmt.Sprintf("%s %s (%s)", s.kind, s.version, s.bin) }

func (s *server) mariaDB() bool { return s.kind == imagebuilder.EngineMariaDB }

// User resolves the OS user the server runs as ("" = Options.RunAs, else mysql).
func (s *server) User(runAs string) (*engine.User, error) {
	if runAs == "" {
		runAs = s.runAs
	}
	return engine.ResolveUser(runAs, defaultUser)
}

// basedir is the installation prefix of the server binary (/usr for /usr/sbin/mariadbd), where
// the server and mariadb-install-db find their shared files.
func (s *server) basedir() string { return filepath.Dir(filepath.Dir(s.bin)) }

// Init makes an empty instance: mariadb-install-db (or mysqld --initialize-insecure) on a new
// DataDir(root), owned by the server's OS user. InitOptions.Database is created during the
// initialization, without a server start.
func (s *server) Init(ctx context.Context, root string, opts engine.InitOptions) error {
	u, err := s.User(opts.RunAs)
	if err != nil {
		return err
	}
	if opts.Database != "" {
		if err := checkDatabaseName(opts.Database); err != nil {
			return fmt.Errorf("%s: init %s: %w", s.kind, root, err)
		}
	}
	if st, err := os.Stat(root); err != nil {
		return fmt.Errorf("%s: init: instance root: %w", s.kind, err)
	} else if !st.IsDir() {
		return fmt.Errorf("%s: init: instance root %s is not a directory", s.kind, root)
	}
	dataDir := engine.DataDir(root)
	if err := checkTraversable(u, root); err != nil {
		return fmt.Errorf("%s: init: %w", s.kind, err)
	}
	if err := os.Mkdir(dataDir, 0o750); err != nil {
		return fmt.Errorf("%s: init: data directory: %w", s.kind, err)
	}
	if err := s.initDataDir(ctx, u, dataDir, opts.Database); err != nil {
		// The data directory is ours and half made: leave none, so that Init can run again.
		if rmErr := os.RemoveAll(dataDir); rmErr != nil {
			return fmt.Errorf("%s: init %s: %w (and removing it: %v)", s.kind, dataDir, err, rmErr)
		}
		return fmt.Errorf("%s: init %s: %w", s.kind, dataDir, err)
	}
	return nil
}

func (s *server) initDataDir(ctx context.Context, u *engine.User, dataDir, database string) error {
	if err := u.Chown(dataDir); err != nil {
		return err
	}
	// The SQL run once the system tables are in: the initial database, and (MariaDB) no
	// proxy grant for this machine's host name, which mariadb-install-db adds for the server's
	// OS user and which would travel with the image to every other machine.
	var sql strings.Builder
	if s.mariaDB() {
		sql.WriteString("DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';\n")
	}
	if database != "" {
		fmt.Fprintf(&sql, "CREATE DATABASE IF NOT EXISTS %s;\n", quoteIdent(database))
	}
	tmp, err := os.MkdirTemp("", "dataimage-mariadb-init-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// mysqld --initialize reads the file as the server's user.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return err
	}
	sqlFile := filepath.Join(tmp, "init.sql")
	if err := os.WriteFile(sqlFile, []byte(sql.String()), 0o644); err != nil {
		return err
	}
	// A server removes every temporary table file it finds in its tmpdir when it starts, other
	// servers' too: each gets its own.
	tmpDir := filepath.Join(tmp, "tmp")
	if err := u.MkdirAll(tmpDir, 0o700); err != nil {
		return err
	}

	var cmd []string
	if s.mariaDB() {
		cmd = []string{s.installDB, "--no-defaults", "--basedir=" + s.basedir(), "--datadir=" + dataDir,
			"--user=" + u.Name, "--auth-root-authentication-method=socket", "--skip-test-db",
			"--skip-name-resolve", "--extra-file=" + sqlFile, "--tmpdir=" + tmpDir}
		cmd = append(cmd, defaultCharset...)
	} else {
		cmd = []string{s.bin, "--no-defaults", "--initialize-insecure", "--basedir=" + s.basedir(),
			"--datadir=" + dataDir, "--init-file=" + sqlFile, "--tmpdir=" + tmpDir}
		if os.Geteuid() == 0 {
			cmd = append(cmd, "--user="+u.Name)
		}
	}
	// mariadb-install-db runs as root (when we are) and hands the data directory to --user
	// itself; mysqld --initialize switches to --user.
	as := u
	if os.Geteuid() == 0 {
		if as, err = engine.ResolveUser("root", ""); err != nil {
			return err
		}
	}
	var out bytes.Buffer
	c := as.Command(ctx, "", cmd[0], cmd[1:])
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		// mariadb-install-db prints its error first and twenty lines of advice after it.
		return fmt.Errorf("%s: %w\n%s", filepath.Base(cmd[0]), err, errorLines(out.String(), 20))
	}
	// mariadb-install-db leaves files of its own (mysql_upgrade_info) owned by root.
	return u.Chown(dataDir)
}

// defaultCharset is the character set Debian's packages configure for MariaDB, whose compiled
// default is still latin1.
var defaultCharset = []string{"--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"}

// checkTraversable reports whether u can reach dir: as root, every directory from / to dir must
// let u through, or the server (which runs as u) fails with a less helpful message.
func checkTraversable(u *engine.User, dir string) error {
	if os.Geteuid() != 0 || u.UID == 0 {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !canTraverse(st, u) {
			return fmt.Errorf("%s (mode %v) does not let OS user %s through, and the server runs as that user: make it (and its parents) 0711 or 0755",
				p, st.Mode().Perm(), u.Name)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// errorLines returns the lines of a tool's output that report errors (at most n), or its last n
// lines when none says "error".
func errorLines(out string, n int) string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var errs []string
	for _, l := range lines {
		if strings.Contains(strings.ToLower(l), "error") && len(errs) < n {
			errs = append(errs, l)
		}
	}
	if len(errs) > 0 {
		return strings.Join(errs, "\n")
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
