package mariadb

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// sniffSize is how much of a backup (after decompression) Detect reads.
const sniffSize = 64 << 10

// Detect names the format of the backup at path, by content: FormatMariaBackup for a
// mariabackup target directory (it has xtrabackup_checkpoints or mariadb_backup_checkpoints) or
// an xbstream (mbstream) stream, plain, gzip'd or zstd-compressed; FormatBinlog for a binary log
// file; FormatSQL for a mariadb-dump or mysqldump file, or any text that starts with an SQL
// statement, plain or gzip'd; anything else fails with engine.ErrFormat naming what it is.
// Physical backups are MariaDB's: for MySQL, they fail too.
func (s *server) Detect(path string) (imagebuilder.BackupFormat, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s: detect: %w", s.kind, err)
	}
	if st.IsDir() {
		if isMariaBackupDir(path) {
			return s.physicalFormat(path, imagebuilder.FormatMariaBackup, "a mariabackup directory")
		}
		return "", fmt.Errorf("%w: %s is a directory without xtrabackup_checkpoints or mariadb_backup_checkpoints, not a mariabackup target directory; %s restores SQL dump files (mariadb-dump, mysqldump), plain or gzip'd, and MariaDB's mariabackup backups (a directory or a --stream=xbstream file)",
			engine.ErrFormat, path, s.kind)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: detect: %w", s.kind, err)
	}
	defer f.Close()
	raw := make([]byte, 4)
	n, err := io.ReadFull(f, raw)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("%s: detect %s: %w", s.kind, path, err)
	}
	switch {
	case string(raw[:n]) == binlogMagic:
		return s.physicalFormat(path, imagebuilder.FormatBinlog, "a binary log")
	case bytes.Equal(raw[:n], zstdMagic):
		// A zstd stream: of an xbstream, or refused below.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", fmt.Errorf("%s: detect %s: %w", s.kind, path, err)
		}
		if zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1)); err == nil {
			head := make([]byte, len(xbMagic))
			_, rerr := io.ReadFull(zr, head)
			zr.Close()
			if rerr == nil && string(head) == xbMagic {
				return s.physicalFormat(path, imagebuilder.FormatMariaBackup, "a zstd-compressed xbstream")
			}
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("%s: detect: %w", s.kind, err)
	}
	r, gz, err := decompress(f)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", engine.ErrFormat, path, err)
	}
	head := make([]byte, sniffSize)
	n, err = io.ReadFull(r, head)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		if gz {
			return "", fmt.Errorf("%w: %s: a corrupt gzip stream: %w", engine.ErrFormat, path, err)
		}
		return "", fmt.Errorf("%s: detect %s: %w", s.kind, path, err)
	}
	if bytes.HasPrefix(head[:n], []byte(xbMagic)) {
		return s.physicalFormat(path, imagebuilder.FormatMariaBackup, "an xbstream (mariabackup --stream=xbstream)")
	}
	if what, ok := classify(head[:n]); !ok {
		if gz {
			what = "a gzip stream of " + what
		}
		return "", fmt.Errorf("%w: %s: %s, not an SQL dump", engine.ErrFormat, path, what)
	}
	return imagebuilder.FormatSQL, nil
}

// physicalFormat returns format, found in the backup at path (what it is), for MariaDB, and
// fails for MySQL, which restores dumps only.
func (s *server) physicalFormat(path string, format imagebuilder.BackupFormat, what string) (imagebuilder.BackupFormat, error) {
	if !s.mariaDB() {
		return "", fmt.Errorf("%w: %s: %s (MariaDB's physical backup format); %s restores SQL dumps only", engine.ErrFormat, path, what, s.kind)
	}
	return format, nil
}

// decompress returns r, or the gzip stream r holds decompressed (gz true).
func decompress(r io.Reader) (_ io.Reader, gz bool, _ error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	if !bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return br, false, nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, true, fmt.Errorf("a corrupt gzip stream: %w", err)
	}
	return zr, true, nil
}

// magics name the formats Detect recognizes only to refuse them.
var magics = []struct {
	prefix string
	what   string
}{
	{"PGDMP", "a PostgreSQL custom-format dump (pg_dump --format=custom)"},
	{"\x1f\x8b", "a gzip stream"},
	{"\x28\xb5\x2f\xfd", "a zstd stream (decompress it first)"},
	{"\xfd7zXZ\x00", "an xz stream (decompress it first)"},
	{"BZh", "a bzip2 stream (decompress it first)"},
	{"PK\x03\x04", "a zip archive"},
	{"\x00\x00\x00\x00\x00\x00\x00\x00", "binary data (zeros)"},
}

// sqlKeywords are the words an SQL script may start with.
var sqlKeywords = map[string]bool{
	"ALTER": true, "ANALYZE": true, "BEGIN": true, "CALL": true, "COMMIT": true, "CREATE": true,
	"DECLARE": true, "DELETE": true, "DELIMITER": true, "DO": true, "DROP": true, "EXECUTE": true,
	"FLUSH": true, "GRANT": true, "INSERT": true, "LOAD": true, "LOCK": true, "OPTIMIZE": true,
	"PREPARE": true, "RENAME": true, "REPLACE": true, "REVOKE": true, "ROLLBACK": true,
	"SELECT": true, "SET": true, "START": true, "TRUNCATE": true, "UNLOCK": true, "UPDATE": true,
	"USE": true, "WITH": true,
}

// sandboxLine is the first line of mariadb-dump's output since MariaDB 10.5.25 / 10.11.8: a
// client command that turns the mariadb client's sandbox mode on.
const sandboxLine = `/*M!999999\- enable the sandbox mode */`

// classify says whether head, the start of a file, is an SQL dump or script, and if not, what it
// looks like. A dump's data may hold any bytes (mariadb-dump writes BLOBs raw), so only the part
// before the first statement has to be text.
func classify(head []byte) (what string, sql bool) {
	if len(head) == 0 {
		return "an empty file", false
	}
	for _, m := range magics {
		if bytes.HasPrefix(head, []byte(m.prefix)) {
			return m.what, false
		}
	}
	if len(head) >= 262 && string(head[257:262]) == "ustar" {
		return "a tar archive", false
	}
	text := bytes.TrimPrefix(head, []byte("\xef\xbb\xbf"))
	if bytes.HasPrefix(text, []byte(sandboxLine)) {
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			text = text[i+1:]
		}
	}
	if bytes.HasPrefix(text, []byte("-- MySQL dump")) || bytes.HasPrefix(text, []byte("-- MariaDB dump")) {
		return "", true
	}
	tok, kind, at := firstToken(text)
	switch kind {
	case tokBinary:
		return describeBinary(head), false
	case tokEnd:
		if isPostgresDump(text) {
			return "a PostgreSQL dump (pg_dump or pg_dumpall)", false
		}
		return "text without an SQL statement (only comments and blank lines)", false
	case tokExecComment:
		return "", true
	case tokWord:
		if sqlKeywords[strings.ToUpper(tok)] {
			if isPostgresDump(text) {
				return "a PostgreSQL dump (pg_dump or pg_dumpall)", false
			}
			return "", true
		}
	}
	line, _, _ := bytes.Cut(text[at:], []byte("\n"))
	if len(line) > 60 {
		line = append(line[:60:60], "..."...)
	}
	return fmt.Sprintf("text that does not start with an SQL statement (%q)", line), false
}

// isPostgresDump reports whether text has pg_dump's or pg_dumpall's header.
func isPostgresDump(text []byte) bool {
	head := text[:min(len(text), 4096)]
	return bytes.Contains(head, []byte("-- PostgreSQL database dump")) ||
		bytes.Contains(head, []byte("-- PostgreSQL database cluster dump"))
}

// describeBinary describes head as binary data by its first bytes.
func describeBinary(head []byte) string {
	return fmt.Sprintf("binary data (starting % x)", head[:min(len(head), 8)])
}

// Kinds of first tokens.
const (
	tokEnd         = iota // text ends before any token
	tokBinary             // something that is not text
	tokExecComment        // an executable comment: /*!40101 ..., /*M!100100 ...
	tokWord               // a word: letters and '_'
	tokOther              // text, but neither a word nor an executable comment
)

// firstToken skips white space and comments ("-- ", "#", "/* */") at the start of text and
// says what comes first; tok is the word for tokWord, at where the token (or the non-text)
// starts.
func firstToken(text []byte) (tok string, kind, at int) {
	i := 0
	for i < len(text) {
		c := text[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == '#' || isDashComment(text[i:]):
			j := bytes.IndexByte(text[i:], '\n')
			if j < 0 {
				j = len(text) - i
			}
			if !isText(text[i : i+j]) {
				return "", tokBinary, i
			}
			i += j
		case bytes.HasPrefix(text[i:], []byte("/*!")) || bytes.HasPrefix(text[i:], []byte("/*M!")):
			return "", tokExecComment, i
		case bytes.HasPrefix(text[i:], []byte("/*")):
			j := bytes.Index(text[i+2:], []byte("*/"))
			if j < 0 {
				j = len(text) - i - 4 // unterminated: the rest is the comment
			}
			if !isText(text[i : i+2+j]) {
				return "", tokBinary, i
			}
			i += 2 + j + 2
		case isWordByte(c):
			j := i
			for j < len(text) && isWordByte(text[j]) {
				j++
			}
			return string(text[i:j]), tokWord, i
		default:
			if r, size := utf8.DecodeRune(text[i:]); r < 0x20 || r == 0x7f || r == utf8.RuneError && size <= 1 {
				return "", tokBinary, i
			}
			return "", tokOther, i
		}
	}
	return "", tokEnd, len(text)
}

// isDashComment reports whether b starts with an SQL "-- " comment: two dashes, then white
// space or the end.
func isDashComment(b []byte) bool {
	return bytes.HasPrefix(b, []byte("--")) && (len(b) == 2 || b[2] == ' ' || b[2] == '\t' || b[2] == '\r' || b[2] == '\n')
}

func isWordByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_'
}

// isText reports whether b is UTF-8 without control characters other than white space; an
// incomplete character at the very end (where a sniffed head was cut) is allowed.
func isText(b []byte) bool {
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size <= 1 {
			return !utf8.FullRune(b)
		}
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' && r != '\f' || r == 0x7f {
			return false
		}
		b = b[size:]
	}
	return true
}
