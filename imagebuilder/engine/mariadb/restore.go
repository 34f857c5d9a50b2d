package mariadb

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// scanSize is how much of a dump (after decompression) RestoreLogical reads ahead to find out
// whether the dump selects its databases itself.
const scanSize = 1 << 20

// trailerSize is how much of a dump's end RestoreLogical keeps to read its completion time.
const trailerSize = 4 << 10

// dumpTimeSource is DataState.Source for a time read from a dump's trailer.
const dumpTimeSource = `dump trailer "-- Dump completed on" (the dumping host's local time, read as UTC)`

// systemDatabases are not what a connection to a restored instance should default to.
var systemDatabases = map[string]bool{
	"mysql": true, "information_schema": true, "performance_schema": true, "sys": true,
}

// RestoreLogical restores a SQL dump (plain or gzip'd) through the client, which stops at the
// first error. A dump that selects its databases itself (mariadb-dump --databases or
// --all-databases: CREATE DATABASE and USE statements before its first table) restores into
// them, and opts.Database is not used; any other dump (mariadb-dump of one database) restores
// into opts.Database, created if need be, and fails with ErrNoDatabase when that is empty.
// Client commands in the dump (source, system, ...) are refused, and so is LOAD DATA LOCAL: a
// dump cannot reach the builder's files. The replica start statements of a dump of a replica
// (--apply-slave-statements) are not run (skipReplicaStarts): its CHANGE MASTER is, and
// PrepareImage removes what it configured. Progress counts the bytes of the file (compressed, for
// a gzip'd dump). The data's time is the dump's "-- Dump completed on" trailer, when it has one.
func (in *instance) RestoreLogical(ctx context.Context, b engine.BackupFile, opts engine.RestoreOptions) (engine.DataState, error) {
	if b.Format != imagebuilder.FormatSQL {
		return engine.DataState{}, fmt.Errorf("%w: %s: format %q: %s restores SQL dumps only",
			engine.ErrFormat, b.Path, b.Format, in.srv.kind)
	}
	f, err := os.Open(b.Path)
	if err != nil {
		return engine.DataState{}, fmt.Errorf("%s: restore: %w", in.srv.kind, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return engine.DataState{}, fmt.Errorf("%s: restore: %w", in.srv.kind, err)
	} else if st.IsDir() {
		return engine.DataState{}, fmt.Errorf("%w: %s is a directory, not a SQL dump", engine.ErrFormat, b.Path)
	}
	progress := &engine.ProgressReader{R: f, Report: opts.Progress}
	r, _, err := decompress(progress)
	if err != nil {
		return engine.DataState{}, fmt.Errorf("%w: %s: %w", engine.ErrFormat, b.Path, err)
	}
	br := bufio.NewReaderSize(r, scanSize)
	head, err := br.Peek(scanSize)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return engine.DataState{}, fmt.Errorf("%s: restore: read %s: %w", in.srv.kind, b.Path, err)
	}
	own, dumpDB := scanDatabases(head)
	// head is br's buffer, which the restore overwrites: what dumpPosition reads of it (the
	// comments before the first table) is kept.
	headStart := bytes.Clone(head[:min(len(head), 64<<10)])

	db := ""
	if !own {
		if opts.Database == "" {
			return engine.DataState{}, fmt.Errorf("%w: %s has no USE or CREATE DATABASE before its first table", ErrNoDatabase, b.Path)
		}
		if err := in.CreateDatabase(ctx, opts.Database); err != nil {
			return engine.DataState{}, err
		}
		db = opts.Database
	}
	trailer := &tailWriter{max: trailerSize}
	cmd := in.client(ctx, db)
	cmd.Stdin = io.TeeReader(skipReplicaStarts(br), trailer)
	if _, err := engine.Run(cmd); err != nil {
		into := "the databases it creates"
		if db != "" {
			into = "database " + db
		}
		return engine.DataState{}, in.serverError("restore", fmt.Errorf("%s into %s: %w", b.Path, into, err))
	}
	progress.Finish()
	if own && dumpDB != "" {
		in.mu.Lock()
		in.database = dumpDB
		in.mu.Unlock()
	}
	state := engine.DataState{LogPosition: dumpPosition(headStart, trailer.Bytes())}
	if t, ok := dumpTime(trailer.Bytes()); ok {
		state.Time, state.Source = t, dumpTimeSource
	}
	return state, nil
}

// The binlog position and GTID a dump taken with --master-data (--dump-slave) and --gtid
// records, commented out (=2) or not: the position near the start, the GTID near the end.
var (
	dumpBinlogRE = regexp.MustCompile(`(?m)^(?:-- )?CHANGE MASTER TO MASTER_LOG_FILE='([^'\n]+)', MASTER_LOG_POS=(\d+)`)
	dumpGTIDRE   = regexp.MustCompile(`(?m)^(?:-- )?SET GLOBAL gtid_slave_pos='([0-9,-]*)'`)
)

// dumpPosition is the log position a dump records in its head or its trailer
// (DataState.LogPosition), "" when it records none.
func dumpPosition(head, trailer []byte) string {
	var file, gtid string
	var pos int64
	if m := dumpBinlogRE.FindSubmatch(head); m != nil {
		file = string(m[1])
		pos, _ = strconv.ParseInt(string(m[2]), 10, 64)
	}
	for _, b := range [][]byte{trailer, head} {
		if m := dumpGTIDRE.FindSubmatch(b); m != nil {
			gtid = string(m[1])
			break
		}
	}
	return formatPosition(gtid, file, pos)
}

// scanDatabases reads the start of a dump, up to the first statement that needs a current
// database (CREATE TABLE, INSERT, ...), and reports whether a USE or CREATE DATABASE comes
// first (own), and the first database besides the system ones that the head creates or uses.
func scanDatabases(head []byte) (own bool, db string) {
	for len(head) > 0 {
		var line []byte
		line, head, _ = bytes.Cut(head, []byte("\n"))
		t := strings.TrimSpace(string(line))
		u := upperASCII(t)
		switch {
		case hasWord(u, "USE"):
			own = true
			if name := databaseName(t[len("USE"):]); db == "" && name != "" && !systemDatabases[strings.ToLower(name)] {
				db = name
			}
		case strings.HasPrefix(u, "CREATE DATABASE") || strings.HasPrefix(u, "CREATE SCHEMA"):
			own = true
			if name := createdDatabase(t); db == "" && name != "" && !systemDatabases[strings.ToLower(name)] {
				db = name
			}
		case !own && needsDatabase(u):
			return false, ""
		}
		if own && db != "" {
			return own, db
		}
	}
	return own, db
}

// needsDatabase reports whether a statement (upper-cased) acts on tables of the current
// database.
func needsDatabase(u string) bool {
	for _, p := range []string{
		"CREATE TABLE", "CREATE TEMPORARY", "CREATE VIEW", "CREATE OR REPLACE", "CREATE ALGORITHM",
		"CREATE DEFINER", "CREATE TRIGGER", "CREATE PROCEDURE", "CREATE FUNCTION", "CREATE SEQUENCE",
		"CREATE INDEX", "CREATE UNIQUE", "INSERT", "REPLACE", "DROP TABLE", "DROP VIEW",
		"LOCK TABLES", "ALTER TABLE", "UPDATE", "DELETE",
	} {
		if strings.HasPrefix(u, p) {
			return true
		}
	}
	return false
}

// hasWord reports whether s starts with word followed by a non-word character or the end.
func hasWord(s, word string) bool {
	return strings.HasPrefix(s, word) && (len(s) == len(word) || !isWordByte(s[len(word)]))
}

// databaseName reads the identifier at the start of s (after white space): backquoted, with
// doubled backquotes, or a bare word up to white space or ';'.
func databaseName(s string) string {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "`") {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			if s[i] == '`' {
				if i+1 < len(s) && s[i+1] == '`' {
					b.WriteByte('`')
					i++
					continue
				}
				return b.String()
			}
			b.WriteByte(s[i])
		}
		return "" // unterminated
	}
	end := strings.IndexAny(s, " \t;")
	if end < 0 {
		end = len(s)
	}
	return s[:end]
}

// createdDatabase reads the database a CREATE DATABASE statement creates, skipping comments
// (/*!32312 IF NOT EXISTS*/) and IF NOT EXISTS.
func createdDatabase(stmt string) string {
	u := upperASCII(stmt)
	var rest string
	switch {
	case strings.HasPrefix(u, "CREATE DATABASE"):
		rest = stmt[len("CREATE DATABASE"):]
	case strings.HasPrefix(u, "CREATE SCHEMA"):
		rest = stmt[len("CREATE SCHEMA"):]
	default:
		return ""
	}
	for {
		rest = strings.TrimSpace(rest)
		switch {
		case strings.HasPrefix(rest, "/*"):
			end := strings.Index(rest, "*/")
			if end < 0 {
				return ""
			}
			rest = rest[end+2:]
		case hasWord(upperASCII(rest), "IF"):
			rest = rest[len("IF"):]
		case hasWord(upperASCII(rest), "NOT"):
			rest = rest[len("NOT"):]
		case hasWord(upperASCII(rest), "EXISTS"):
			rest = rest[len("EXISTS"):]
		default:
			return databaseName(rest)
		}
	}
}

// upperASCII upper-cases the ASCII letters of s only, so that byte offsets stay those of s.
func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// dumpTimeRE matches mariadb-dump's and mysqldump's last line; mariadb-dump pads the hour with
// a space ("2024-05-01  4:28:49"), mysqldump with a zero.
var dumpTimeRE = regexp.MustCompile(`-- Dump completed on (\d{4})-(\d{2})-(\d{2})\s+(\d{1,2}):(\d{2}):(\d{2})`)

// dumpTime reads the time of the last "-- Dump completed on" line in tail, as UTC.
func dumpTime(tail []byte) (time.Time, bool) {
	all := dumpTimeRE.FindAllSubmatch(tail, -1)
	if len(all) == 0 {
		return time.Time{}, false
	}
	m := all[len(all)-1]
	var v [6]int
	for i := range v {
		v[i], _ = strconv.Atoi(string(m[i+1])) // all digits, at most 4
	}
	t := time.Date(v[0], time.Month(v[1]), v[2], v[3], v[4], v[5], 0, time.UTC)
	if t.Year() != v[0] || int(t.Month()) != v[1] || t.Day() != v[2] || t.Hour() != v[3] || t.Minute() != v[4] || t.Second() != v[5] {
		return time.Time{}, false // 2024-13-45 is not a date
	}
	return t, true
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// Bytes returns the last max bytes written.
func (t *tailWriter) Bytes() []byte {
	if len(t.buf) > t.max {
		return t.buf[len(t.buf)-t.max:]
	}
	return t.buf
}
