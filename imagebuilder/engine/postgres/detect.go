package postgres

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// sniffSize is how much of a file (decompressed, for gzip) Detect looks at.
const sniffSize = 64 << 10

// maxSniffMembers bounds how many tar members Detect reads before giving up on telling a base
// backup from WAL; both are told by their first members in every archive pg_basebackup writes.
const maxSniffMembers = 256

// Magic bytes of the formats Detect recognizes.
var (
	magicPgDump = []byte("PGDMP")
	magicGzip   = []byte{0x1f, 0x8b}
	// Compressions pg_basebackup (zstd, lz4) or people (bzip2, xz) may use; tarx reads none.
	unsupportedMagic = []struct {
		magic []byte
		name  string
	}{
		{[]byte{0x28, 0xb5, 0x2f, 0xfd}, "zstd"},
		{[]byte{0x04, 0x22, 0x4d, 0x18}, "lz4"},
		{[]byte("BZh"), "bzip2"},
		{[]byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, "xz"},
	}
)

// Header comments of plain dumps.
const (
	headerPgDumpAll = "-- PostgreSQL database cluster dump"
	headerPgDump    = "-- PostgreSQL database dump"
)

// archiveKind is what one tar archive of a base backup holds.
type archiveKind int

const (
	kindUnknown    archiveKind = iota
	kindBase                   // the data directory: backup_label, PG_VERSION, global/...
	kindWAL                    // pg_wal: segments, timeline history, archive_status/
	kindTablespace             // a tablespace: PG_<major>_<catversion>/...
)

func (k archiveKind) String() string {
	switch k {
	case kindBase:
		return "base backup"
	case kindWAL:
		return "WAL archive"
	case kindTablespace:
		return "tablespace archive"
	}
	return "unknown archive"
}

var (
	// walFileRE matches the files of pg_wal: segments (possibly .partial), backup history
	// files and timeline history files.
	walFileRE = regexp.MustCompile(`^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$`)
	// tablespaceDirRE matches the top directory of a tablespace archive.
	tablespaceDirRE = regexp.MustCompile(`^PG_[0-9]+_[0-9]+$`)
	// tablespaceTarRE matches the file name pg_basebackup gives a tablespace archive.
	tablespaceTarRE = regexp.MustCompile(`^[0-9]+\.tar(?:\.gz)?$`)
)

// Detect names the format of the backup at path by its content:
//   - a file starting with "PGDMP": FormatPgDumpCustom;
//   - a tar archive, plain or gzip-compressed, whose first members are those of a data
//     directory (backup_label, PG_VERSION, global/) or of pg_wal (24-hex-digit segments,
//     archive_status/): FormatBaseBackupTar; a directory holding base.tar[.gz] (and possibly
//     pg_wal.tar[.gz], backup_manifest): FormatBaseBackupTar as well;
//   - text, plain or gzip-compressed, starting with pg_dumpall's header comment:
//     FormatPgDumpAll; any other SQL text (pg_dump's plain output included): FormatSQL.
//
// Anything else fails with engine.ErrFormat naming what was found; tablespace archives,
// zstd/lz4/bzip2/xz compression and pg_dump directory archives fail with ErrUnsupported too.
func (e *pgEngine) Detect(p string) (imagebuilder.BackupFormat, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("postgres: detect the format of %s: %w", p, err)
	}
	if st.IsDir() {
		if _, err := collectArchives([]engine.BackupFile{{Path: p}}); err != nil {
			return "", err
		}
		return imagebuilder.FormatBaseBackupTar, nil
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %s is not a regular file or a directory", engine.ErrFormat, p)
	}
	return detectFile(p)
}

// detectFile is Detect for a regular file.
func detectFile(p string) (imagebuilder.BackupFormat, error) {
	head, err := engine.Sniff(p, sniffSize)
	if err != nil {
		return "", fmt.Errorf("postgres: detect the format of %s: %w", p, err)
	}
	if len(head) == 0 {
		return "", fmt.Errorf("%w: %s is empty", engine.ErrFormat, p)
	}
	if bytes.HasPrefix(head, magicPgDump) {
		return imagebuilder.FormatPgDumpCustom, nil
	}
	if err := checkCompression(p, head); err != nil {
		return "", err
	}
	compressed := bytes.HasPrefix(head, magicGzip)
	if compressed {
		head, err = gunzipHead(p)
		if err != nil {
			return "", err
		}
	}
	if isTar(head) {
		kind, names, err := classifyTar(p)
		if err != nil {
			return "", err
		}
		switch kind {
		case kindBase, kindWAL:
			return imagebuilder.FormatBaseBackupTar, nil
		case kindTablespace:
			return "", tablespaceError(p)
		}
		return "", fmt.Errorf("%w: %s is a tar archive of neither a base backup nor WAL (first members: %s)",
			engine.ErrFormat, p, strings.Join(names, ", "))
	}
	return classifyText(p, head, compressed)
}

// checkCompression refuses the compressions the adapter does not read.
func checkCompression(p string, head []byte) error {
	for _, m := range unsupportedMagic {
		if bytes.HasPrefix(head, m.magic) {
			return fmt.Errorf("%w: %w: %s is %s-compressed; only plain and gzip-compressed archives are supported (decompress it, or take the backup with pg_basebackup --compress=gzip)",
				engine.ErrFormat, ErrUnsupported, p, m.name)
		}
	}
	return nil
}

func tablespaceError(p string) error {
	return fmt.Errorf("%w: %w: %s is the archive of a tablespace; base backups with tablespaces outside the data directory are not supported",
		engine.ErrFormat, ErrUnsupported, p)
}

// gunzipHead returns the first sniffSize bytes of the gzip-compressed file at p.
func gunzipHead(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("postgres: detect the format of %s: %w", p, err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %s starts like gzip but is not: %v", engine.ErrFormat, p, err)
	}
	head, err := io.ReadAll(io.LimitReader(zr, sniffSize))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("%w: %s: corrupt gzip stream: %v", engine.ErrFormat, p, err)
	}
	if len(head) == 0 {
		return nil, fmt.Errorf("%w: %s is an empty gzip stream", engine.ErrFormat, p)
	}
	return head, nil
}

// isTar reports whether b starts with a POSIX (ustar) or GNU tar header, as pg_basebackup and
// every current tar write.
func isTar(b []byte) bool {
	return len(b) >= 512 && bytes.Equal(b[257:262], []byte("ustar"))
}

// openArchive opens the tar archive at p, decompressing gzip. The caller closes the returned
// closer.
func openArchive(p string) (*tar.Reader, io.Closer, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	var magic [2]byte
	n, _ := io.ReadFull(f, magic[:])
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, nil, err
	}
	if n == 2 && bytes.Equal(magic[:], magicGzip) {
		zr, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%w: corrupt gzip stream: %v", engine.ErrFormat, err)
		}
		return tar.NewReader(zr), f, nil
	}
	return tar.NewReader(f), f, nil
}

// classifyTar tells what the tar archive at p (plain or gzip) holds from its first members. It
// returns the names it looked at, for messages.
func classifyTar(p string) (archiveKind, []string, error) {
	tr, c, err := openArchive(p)
	if err != nil {
		return kindUnknown, nil, fmt.Errorf("postgres: read archive %s: %w", p, err)
	}
	defer c.Close()
	var names []string
	for i := 0; i < maxSniffMembers; i++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return kindUnknown, names, fmt.Errorf("%w: %s: broken tar archive after %d members: %v", engine.ErrFormat, p, i, err)
		}
		name := memberName(hdr.Name)
		if len(names) < 5 {
			names = append(names, fmt.Sprintf("%q", hdr.Name))
		}
		if k := memberKind(name); k != kindUnknown {
			return k, names, nil
		}
	}
	if len(names) == 0 {
		names = []string{"none"}
	}
	return kindUnknown, names, nil
}

// memberName cleans a member name: no leading "./" or "/", no trailing "/".
func memberName(name string) string {
	name = path.Clean("/" + name)
	return strings.TrimPrefix(name, "/")
}

// memberKind says which kind of archive a member (cleaned name) shows, if any.
func memberKind(name string) archiveKind {
	top, _, _ := strings.Cut(name, "/")
	switch {
	case name == "backup_label" || name == "PG_VERSION" || top == "global":
		return kindBase
	case walFileRE.MatchString(name) || top == "archive_status":
		return kindWAL
	case tablespaceDirRE.MatchString(top):
		return kindTablespace
	}
	return kindUnknown
}

// classifyText names the format of a text file from its first bytes (decompressed).
func classifyText(p string, head []byte, compressed bool) (imagebuilder.BackupFormat, error) {
	what := ""
	if compressed {
		what = "gzip-compressed "
	}
	if !isText(head) {
		n := min(len(head), 16)
		return "", fmt.Errorf("%w: %s holds %sbinary data of no known backup format (first bytes: % x)",
			engine.ErrFormat, p, what, head[:n])
	}
	text := strings.TrimPrefix(string(head), "\uFEFF")
	if strings.TrimSpace(text) == "" {
		return "", fmt.Errorf("%w: %s holds only white space", engine.ErrFormat, p)
	}
	top := text[:min(len(text), 4096)]
	switch {
	case strings.Contains(top, headerPgDumpAll):
		return imagebuilder.FormatPgDumpAll, nil
	case strings.Contains(top, headerPgDump):
		return imagebuilder.FormatSQL, nil
	case strings.HasPrefix(top, "-- MySQL dump") || strings.HasPrefix(top, "-- MariaDB dump"):
		return "", fmt.Errorf("%w: %s is a MySQL or MariaDB dump, not a PostgreSQL backup", engine.ErrFormat, p)
	}
	return imagebuilder.FormatSQL, nil
}

// isText reports whether b looks like text: no NUL byte, valid UTF-8 (a character cut at the
// end of b aside) and few control characters.
func isText(b []byte) bool {
	if bytes.IndexByte(b, 0) >= 0 {
		return false
	}
	// A multi-byte character may be cut by the sniff: drop at most 3 trailing bytes.
	for i := 0; i < 3 && len(b) > 0 && !utf8.Valid(b); i++ {
		b = b[:len(b)-1]
	}
	if !utf8.Valid(b) {
		return false
	}
	ctl := 0
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' && c != '\f' && c != '\v' {
			ctl++
		}
	}
	return ctl*100 <= len(b) // at most 1%
}

// dirArchives returns the archives of the pg_basebackup -Ft output directory dir: base.tar[.gz]
// and pg_wal.tar[.gz]. Other files (backup_manifest) are ignored; tablespace archives and
// compressions the adapter cannot read are refused.
func dirArchives(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("postgres: read backup directory %s: %w", dir, err)
	}
	var archives, found []string
	hasBase := false
	for _, ent := range entries {
		name := ent.Name()
		found = append(found, name)
		switch {
		case name == "toc.dat":
			return nil, fmt.Errorf("%w: %w: %s is a pg_dump directory-format archive; take the dump with pg_dump --format=custom instead",
				engine.ErrFormat, ErrUnsupported, dir)
		case tablespaceTarRE.MatchString(name):
			return nil, tablespaceError(filepath.Join(dir, name))
		case name == "base.tar" || name == "base.tar.gz" || name == "pg_wal.tar" || name == "pg_wal.tar.gz":
			if ent.Type()&os.ModeType != 0 {
				if st, err := os.Stat(filepath.Join(dir, name)); err != nil || !st.Mode().IsRegular() {
					return nil, fmt.Errorf("%w: %s in %s is not a regular file", engine.ErrFormat, name, dir)
				}
			}
			hasBase = hasBase || strings.HasPrefix(name, "base.")
			archives = append(archives, filepath.Join(dir, name))
		case strings.HasPrefix(name, "base.tar.") || strings.HasPrefix(name, "pg_wal.tar."):
			return nil, fmt.Errorf("%w: %w: %s in %s is compressed with a method other than gzip; only plain and gzip-compressed archives are supported",
				engine.ErrFormat, ErrUnsupported, name, dir)
		}
	}
	if !hasBase {
		if len(found) == 0 {
			found = []string{"nothing"}
		}
		return nil, fmt.Errorf("%w: directory %s holds no base.tar or base.tar.gz of pg_basebackup --format=tar (found: %s)",
			engine.ErrFormat, dir, strings.Join(found, ", "))
	}
	slices.Sort(archives) // base.* before pg_wal.*
	return archives, nil
}
