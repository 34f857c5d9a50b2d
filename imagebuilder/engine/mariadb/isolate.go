package mariadb

// This file keeps every server the adapter runs, and every image built through it, from reaching
// anything outside the instance: no binary log (so nothing for a replica to stream, and no log
// growing until the pool is full), no replica thread started at startup, no replica
// configuration left in the data (RESET SLAVE ... ALL), no replica start statement of a dump
// run during a restore, and no TCP login but the administrative root@'%' with the password
// SetPassword gives. read_only is left as the server or the image has it.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// initFileName is the SQL file a server with a TCP listener runs before it accepts any
// connection (--init-file): it locks the accounts TCP clients could log in with.
const initFileName = "isolate.sql"

// isolationOptions are the isolation options of every server (see the file's comment); the
// adapter owns them (reservedOptions).
var isolationOptions = []string{"log-bin", "skip-log-bin", "disable-log-bin", "skip-slave-start", "skip-replica-start", "init-file"}

// isolationArgs are the server options that keep a server from replicating: no binary log
// (MySQL 8 writes one by default), and the replica threads not started at startup whatever the
// data directory's replica configuration says (--skip-replica-start from MySQL 8.0.26, where
// --skip-slave-start is deprecated).
func (s *server) isolationArgs() []string {
	start := "--skip-slave-start"
	if !s.mariaDB() && imagebuilder.CompareVersions(s.version, "8.0.26") >= 0 {
		start = "--skip-replica-start"
	}
	return []string{"--skip-log-bin", start}
}

// lockTCPAccountsSQL locks every account a TCP client could log in with (any host but
// localhost, which matches Unix socket clients only under --skip-name-resolve; roles have an
// empty host), one statement per line as --init-file wants them.
const lockTCPAccountsSQL = `SET SESSION group_concat_max_len = 67108864;
SET @dataimage_lock = (SELECT CONCAT('ALTER USER IF EXISTS ', GROUP_CONCAT(CONCAT(QUOTE(User), '@', QUOTE(Host)) SEPARATOR ', '), ' ACCOUNT LOCK') FROM mysql.user WHERE Host NOT IN ('localhost', ''));
SET @dataimage_lock = COALESCE(@dataimage_lock, 'DO 0');
PREPARE dataimage_lock FROM @dataimage_lock;
EXECUTE dataimage_lock;
DEALLOCATE PREPARE dataimage_lock;
`

// openTCPAccountsSQL counts the accounts a TCP client could log in with (see lockTCPAccountsSQL)
// that are not locked.
func (s *server) openTCPAccountsSQL() string {
	if s.mariaDB() {
		return `SELECT COUNT(*) FROM mysql.global_priv WHERE Host NOT IN ('localhost', '') AND IFNULL(JSON_EXTRACT(Priv, '$.account_locked'), 'false') <> 'true'`
	}
	return `SELECT COUNT(*) FROM mysql.user WHERE Host NOT IN ('localhost', '') AND account_locked <> 'Y'`
}

// writeInitFile writes the --init-file of a server with a TCP listener into the runtime
// directory, readable by the server's user only.
func writeInitFile(u *engine.User, runtimeDir string) (string, error) {
	p := filepath.Join(runtimeDir, initFileName)
	return p, u.WriteFile(p, []byte(lockTCPAccountsSQL), 0o600)
}

// hasReplicaConfig reports whether the data directory holds a replica configuration the server
// loads at startup: master.info (the default connection) or a named connection listed in
// multi-master.info (MariaDB). MySQL keeps it in tables by default: it is always checked.
func (s *server) hasReplicaConfig(dataDir string) (bool, error) {
	if !s.mariaDB() {
		return true, nil
	}
	if _, err := os.Stat(filepath.Join(dataDir, "master.info")); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	multi, err := os.ReadFile(filepath.Join(dataDir, "multi-master.info"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return len(bytes.TrimSpace(multi)) > 0, err
}

// resetReplicas stops every replica connection and removes its configuration, relay logs and
// position (RESET SLAVE ... ALL for each MariaDB connection, RESET REPLICA ALL for MySQL), so
// that no START SLAVE can connect to the source's primary. The GTID position the data holds
// (gtid_slave_pos) stays: it is data, and names no server.
func (in *instance) resetReplicas(ctx context.Context) error {
	var sql strings.Builder
	switch {
	case in.srv.mariaDB():
		out, err := in.query(ctx, "", "SHOW ALL SLAVES STATUS")
		if err != nil {
			return in.serverError("reset replicas", err)
		}
		if strings.TrimSpace(out) == "" {
			return nil
		}
		sql.WriteString("SET SESSION sql_mode = '';\nSTOP ALL SLAVES;\n")
		for _, line := range strings.Split(out, "\n") {
			name, _, _ := strings.Cut(line, "\t") // Connection_name is the first column
			fmt.Fprintf(&sql, "RESET SLAVE %s ALL;\n", quoteString(unescapeBatch(name)))
		}
	case imagebuilder.CompareVersions(in.srv.version, "8.0.22") >= 0:
		sql.WriteString("STOP REPLICA;\nRESET REPLICA ALL;\n")
	default:
		sql.WriteString("STOP SLAVE;\nRESET SLAVE ALL;\n")
	}
	if err := in.execSQL(ctx, "reset replicas", "", sql.String()); err != nil {
		return err
	}
	in.note("dataimage: replica configuration removed (RESET SLAVE ALL): this server replicates from nowhere")
	return nil
}

// unescapeBatch undoes the escapes of the client's batch output (\t, \n, \\, \0).
func unescapeBatch(s string) string {
	return strings.NewReplacer(`\t`, "\t", `\n`, "\n", `\\`, `\`, `\0`, "\x00").Replace(s)
}

// note appends a line of the adapter's own to the server's log.
func (in *instance) note(line string) {
	if f, err := os.OpenFile(in.logFile, os.O_WRONLY|os.O_APPEND, 0); err == nil {
		_, _ = f.WriteString(line + "\n")
		f.Close()
	}
}

// PrepareImage makes the instance's data safe to freeze as an image: every replica connection
// is reset (resetReplicas) and every account a TCP client could log in with is locked, so that
// the image carries no replica configuration and no password that works on its clones over TCP
// (SetPassword creates or unlocks root@'%' with each clone's own).
func (in *instance) PrepareImage(ctx context.Context) error {
	if err := in.resetReplicas(ctx); err != nil {
		return err
	}
	// A dump of the mysql schema replaces the grant tables without telling the server: the
	// accounts are read again first, so that ALTER USER sees those the tables hold.
	return in.execSQL(ctx, "prepare image", "", "FLUSH PRIVILEGES;\n"+lockTCPAccountsSQL)
}

// replicaStartRE matches a statement that starts replication, alone on its line, as
// mariadb-dump and mysqldump write it at the end of a dump taken with --apply-slave-statements
// (--apply-replica-statements).
var replicaStartRE = regexp.MustCompile(`(?i)^\s*START\s+(ALL\s+)?(SLAVES?|REPLICAS?)(\s+'[^'\\]*')?\s*;\s*$`)

// skipReplicaStarts returns a reader of r in which the lines that start replication
// (replicaStartRE) are turned into comments, the line count kept: a dump of a replica taken to
// make another replica must not make the build's server connect to its primary. Lines are
// looked at whole only when they are short and start a line; the rest passes as it is.
func skipReplicaStarts(r io.Reader) io.Reader {
	return &replicaStartFilter{br: bufio.NewReaderSize(r, 4096), lineStart: true}
}

// replicaStartFilter is skipReplicaStarts' reader.
type replicaStartFilter struct {
	br *bufio.Reader
	// lineStart: the next byte of br starts a line.
	lineStart bool
	// pending is what is left to return of the last chunk (it may be br's buffer, which stays
	// valid until the next ReadSlice, made only once pending is empty).
	pending []byte
	// err ends the stream once pending is returned.
	err error
}

func (f *replicaStartFilter) Read(p []byte) (int, error) {
	for len(f.pending) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		chunk, err := f.br.ReadSlice('\n')
		if len(chunk) > 0 {
			whole := chunk[len(chunk)-1] == '\n'
			f.pending = chunk
			if f.lineStart && whole && replicaStartRE.Match(chunk) {
				f.pending = []byte("-- dataimage: not run (an image's server never replicates): " + strings.TrimSpace(string(chunk)) + "\n")
			}
			f.lineStart = whole
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			f.err = err
		}
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}
