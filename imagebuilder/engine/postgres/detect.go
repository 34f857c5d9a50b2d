package postgres

import (
	"archive/tar"
	"bufio"
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

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// sniffSize is how much of a file (decompressed) Detect looks at.
const sniffSize = 64 << 10

// maxSniffMembers bounds how many tar members Detect reads before giving up on telling a base
// backup from WAL; both are told by their first members in every archive pg_basebackup writes.
const maxSniffMembers = 256

// Magic bytes of the formats Detect recognizes.
var (
	magicPgDump = []byte("PGDMP")
	magicGzip   = []byte{0x1f, 0x8b}
	magicZstd   = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicLZ4    = []byte{0x04, 0x22, 0x4d, 0x18}
	// Compressions people may use that pg_basebackup does not write; tarx reads neither.
	unsupportedMagic = []struct {
		magic []byte
		name  string
	}{
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
	kindDumpTar                // pg_dump --format=tar: toc.dat first
)

func (k archiveKind) String() string {
	switch k {
	case kindBase:
		return "base backup"
	case kindWAL:
		return "WAL archive"
	case kindTablespace:
		return "tablespace archive"
	case kindDumpTar:
		return "pg_dump tar archive"
	}
	return "unknown archive"
}

var (
	// walFileRE matches the files of pg_wal: segments (possibly .partial), backup history
	// files and timeline history files.
	walFileRE = regexp.MustCompile(`^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$`)
	// tablespaceDirRE matches the top directory of a tablespace archive.
	tablespaceDirRE = regexp.MustCompile(`^PG_[0-9]+_[0-9]+$`)
	// tablespaceTarRE matches the file name pg_basebackup gives a tablespace archive: the
	// tablespace's OID, then the compression's suffix.
	tablespaceTarRE = regexp.MustCompile(`^([0-9]+)\.tar(?:\.gz|\.lz4|\.zst)?$`)
	// baseTarRE matches the names pg_basebackup gives the base and WAL archives.
	baseTarRE = regexp.MustCompile(`^(?:base|pg_wal)\.tar(?:\.gz|\.lz4|\.zst)?$`)
)

// Detect names the format of the backup at path by its content:
//   - a file starting with "PGDMP": FormatPgDumpCustom; a directory holding toc.dat (which
//     starts so): FormatPgDumpDir;
//   - a tar archive, plain or compressed (gzip, lz4, zstd), whose first members are those of a
//     data directory (backup_label, PG_VERSION, global/), of pg_wal (24-hex-digit segments,
//     archive_status/) or of a tablespace (PG_<major>_<catalog version>/): FormatBaseBackupTar;
//     a directory holding base.tar[.gz|.lz4|.zst] (and possibly pg_wal.tar*, <oid>.tar* of the
//     tablespaces, backup_manifest): FormatBaseBackupTar as well;
//   - a tar archive whose first member is toc.dat: FormatPgDumpTar;
//   - a WAL segment (its first page's header: the magic of a PostgreSQL version, a long
//     header, a sane segment and block size), or a directory holding only WAL files
//     (segments, timeline history and backup history files): FormatWAL;
//   - text, plain or compressed, starting with pg_dumpall's header comment: FormatPgDumpAll;
//     any other SQL text (pg_dump's plain output included): FormatSQL.
//
// Anything else fails with engine.ErrFormat naming what was found; bzip2 and xz compression fail
// with ErrUnsupported too.
func (e *pgEngine) Detect(p string) (imagebuilder.BackupFormat, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("postgres: detect the format of %s: %w", p, err)
	}
	if st.IsDir() {
		return detectDir(p)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %s is not a regular file or a directory", engine.ErrFormat, p)
	}
	return detectFile(p)
}

// detectDir is Detect for a directory.
func detectDir(p string) (imagebuilder.BackupFormat, error) {
	if st, err := os.Stat(filepath.Join(p, "toc.dat")); err == nil && st.Mode().IsRegular() {
		return imagebuilder.FormatPgDumpDir, nil
	}
	if ok, err := walDir(p); err != nil {
		return "", err
	} else if ok {
		return imagebuilder.FormatWAL, nil
	}
	if _, err := collectArchives([]engine.BackupFile{{Path: p}}); err != nil {
		return "", err
	}
	return imagebuilder.FormatBaseBackupTar, nil
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
	if isWALSegment(head) {
		return imagebuilder.FormatWAL, nil
	}
	if err := checkCompression(p, head); err != nil {
		return "", err
	}
	compression := compressionOf(head)
	if compression != "" {
		head, err = decompressedHead(p)
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
		case kindBase, kindWAL, kindTablespace:
			return imagebuilder.FormatBaseBackupTar, nil
		case kindDumpTar:
			return imagebuilder.FormatPgDumpTar, nil
		}
		return "", fmt.Errorf("%w: %s is a tar archive of neither a base backup, WAL nor a pg_dump (first members: %s)",
			engine.ErrFormat, p, strings.Join(names, ", "))
	}
	return classifyText(p, head, compression)
}

// checkCompression refuses the compressions the adapter does not read.
func checkCompression(p string, head []byte) error {
	for _, m := range unsupportedMagic {
		if bytes.HasPrefix(head, m.magic) {
			return fmt.Errorf("%w: %w: %s is %s-compressed; only plain, gzip-, lz4- and zstd-compressed backups are supported (decompress it, or take the backup with pg_basebackup --compress=gzip, lz4 or zstd)",
				engine.ErrFormat, ErrUnsupported, p, m.name)
		}
	}
	return nil
}

// compressionOf names the compression head starts with: "gzip", "lz4", "zstd" or "" (none).
func compressionOf(head []byte) string {
	switch {
	case bytes.HasPrefix(head, magicGzip):
		return "gzip"
	case bytes.HasPrefix(head, magicLZ4):
		return "lz4"
	case bytes.HasPrefix(head, magicZstd):
		return "zstd"
	}
	return ""
}

// decompressor returns a reader of what r holds, decompressed when it starts with the magic of
// gzip, lz4 or zstd. The returned close releases the decoder (not r).
func decompressor(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(4)
	nop := func() {}
	switch compressionOf(head) {
	case "gzip":
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nop, fmt.Errorf("corrupt gzip stream: %w", err)
		}
		return zr, nop, nil
	case "lz4":
		return lz4.NewReader(br), nop, nil
	case "zstd":
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(256<<20))
		if err != nil {
			return nil, nop, fmt.Errorf("corrupt zstd stream: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, nop, nil
}

// openDecompressed opens the file at p, decompressing it (see decompressor). The caller calls
// the returned close.
func openDecompressed(p string) (io.Reader, func(), error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	r, closeDec, err := decompressor(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %s: %w", engine.ErrFormat, p, err)
	}
	return r, func() { closeDec(); f.Close() }, nil
}

// decompressedHead returns the first sniffSize bytes of the compressed file at p.
func decompressedHead(p string) ([]byte, error) {
	r, closeR, err := openDecompressed(p)
	if err != nil {
		if errors.Is(err, engine.ErrFormat) {
			return nil, err
		}
		return nil, fmt.Errorf("postgres: detect the format of %s: %w", p, err)
	}
	defer closeR()
	head, err := io.ReadAll(io.LimitReader(r, sniffSize))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("%w: %s: corrupt %s stream: %v", engine.ErrFormat, p, compressionOf(mustSniff(p)), err)
	}
	if len(head) == 0 {
		return nil, fmt.Errorf("%w: %s is an empty or truncated %s stream", engine.ErrFormat, p, compressionOf(mustSniff(p)))
	}
	return head, nil
}

// mustSniff returns the first bytes of p, or nothing: for messages.
func mustSniff(p string) []byte {
	b, _ := engine.Sniff(p, 8)
	return b
}

// isTar reports whether b starts with a POSIX (ustar) or GNU tar header, as pg_basebackup and
// every current tar write.
func isTar(b []byte) bool {
	return len(b) >= 512 && bytes.Equal(b[257:262], []byte("ustar"))
}

// classifyTar tells what the tar archive at p (plain or compressed) holds from its first
// members. It returns the names it looked at, for messages.
func classifyTar(p string) (archiveKind, []string, error) {
	r, closeR, err := openDecompressed(p)
	if err != nil {
		return kindUnknown, nil, fmt.Errorf("postgres: read archive %s: %w", p, err)
	}
	defer closeR()
	tr := tar.NewReader(r)
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
		if i == 0 && name == "toc.dat" {
			return kindDumpTar, names, nil
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
func classifyText(p string, head []byte, compression string) (imagebuilder.BackupFormat, error) {
	what := ""
	if compression != "" {
		what = compression + "-compressed "
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

// dirArchives returns the archives of the pg_basebackup -Ft output directory dir: base.tar,
// pg_wal.tar and the tablespaces' <oid>.tar, each plain or compressed (.gz, .lz4, .zst). Other
// files (backup_manifest) are left to the caller.
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
		case baseTarRE.MatchString(name) || tablespaceTarRE.MatchString(name):
			if st, err := os.Stat(filepath.Join(dir, name)); err != nil || !st.Mode().IsRegular() {
				return nil, fmt.Errorf("%w: %s in %s is not a regular file", engine.ErrFormat, name, dir)
			}
			hasBase = hasBase || strings.HasPrefix(name, "base.")
			archives = append(archives, filepath.Join(dir, name))
		case strings.HasPrefix(name, "base.tar.") || strings.HasPrefix(name, "pg_wal.tar."):
			return nil, fmt.Errorf("%w: %w: %s in %s is compressed with a method pg_basebackup does not write; only plain, .gz, .lz4 and .zst archives are supported",
				engine.ErrFormat, ErrUnsupported, name, dir)
		}
	}
	if !hasBase {
		if len(found) == 0 {
			found = []string{"nothing"}
		}
		return nil, fmt.Errorf("%w: directory %s holds no base.tar[.gz|.lz4|.zst] of pg_basebackup --format=tar (found: %s)",
			engine.ErrFormat, dir, strings.Join(found, ", "))
	}
	slices.Sort(archives)
	return archives, nil
}
