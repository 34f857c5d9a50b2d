package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/tarx"
)

// archive is one tar archive of a base backup, with what it holds.
type archive struct {
	path string
	kind archiveKind
	size int64
}

// collectArchives resolves backups (archives, or pg_basebackup -Ft output directories) into the
// archives to restore: exactly one base backup, first, then the WAL archives in the order given.
// Each archive is told by its content, not by its name or position.
func collectArchives(backups []engine.BackupFile) ([]archive, error) {
	var paths []string
	for _, b := range backups {
		st, err := os.Stat(b.Path)
		if err != nil {
			return nil, fmt.Errorf("postgres: base backup %s: %w", b.Path, err)
		}
		if st.IsDir() {
			inDir, err := dirArchives(b.Path)
			if err != nil {
				return nil, err
			}
			paths = append(paths, inDir...)
		} else {
			paths = append(paths, b.Path)
		}
	}
	var base []archive
	var wal []archive
	for _, p := range paths {
		a, err := classifyArchive(p)
		if err != nil {
			return nil, err
		}
		switch a.kind {
		case kindBase:
			base = append(base, a)
		case kindWAL:
			wal = append(wal, a)
		}
	}
	switch len(base) {
	case 0:
		return nil, fmt.Errorf("%w: no base backup among %s (only WAL archives)", engine.ErrFormat, strings.Join(paths, ", "))
	case 1:
	default:
		return nil, fmt.Errorf("%w: more than one base backup: %s and %s", engine.ErrFormat, base[0].path, base[1].path)
	}
	return append(base, wal...), nil
}

// classifyArchive tells what the archive at p holds, refusing what is not a base backup or WAL.
func classifyArchive(p string) (archive, error) {
	st, err := os.Stat(p)
	if err != nil {
		return archive{}, fmt.Errorf("postgres: base backup archive %s: %w", p, err)
	}
	if !st.Mode().IsRegular() {
		return archive{}, fmt.Errorf("%w: %s is not a regular file", engine.ErrFormat, p)
	}
	head, err := engine.Sniff(p, 512)
	if err != nil {
		return archive{}, fmt.Errorf("postgres: base backup archive %s: %w", p, err)
	}
	if err := checkCompression(p, head); err != nil {
		return archive{}, err
	}
	if bytes.HasPrefix(head, magicGzip) {
		if head, err = gunzipHead(p); err != nil {
			return archive{}, err
		}
	}
	if !isTar(head) {
		return archive{}, fmt.Errorf("%w: %s is not a tar archive (pg_basebackup --format=tar)", engine.ErrFormat, p)
	}
	kind, names, err := classifyTar(p)
	if err != nil {
		return archive{}, err
	}
	switch kind {
	case kindTablespace:
		return archive{}, tablespaceError(p)
	case kindUnknown:
		return archive{}, fmt.Errorf("%w: %s is a tar archive of neither a base backup nor WAL (first members: %s)",
			engine.ErrFormat, p, strings.Join(names, ", "))
	}
	return archive{path: p, kind: kind, size: st.Size()}, nil
}

// Files RestorePhysical removes from a restored base backup, so that the server recovers to
// consistency and comes up as a primary instead of waiting for a primary or an archive.
var signalFiles = []string{"standby.signal", "recovery.signal"}

// Settings RestorePhysical removes from postgresql.auto.conf: pg_basebackup -R writes them,
// they point at the backup's source (the connection string may hold its password) and a primary
// does not use them.
var standbySettings = []string{"primary_conninfo", "primary_slot_name"}

// minimalConf is the postgresql.conf written into a base backup that has none.
const minimalConf = `# Written by dataimage: the base backup had no postgresql.conf (Debian keeps a cluster's
# configuration in /etc/postgresql, outside the data directory). The settings a server needs
# to start are given on its command line.
`

// RestorePhysical restores a base backup taken with pg_basebackup --format=tar (plain or gzip,
// with its WAL in pg_wal.tar or inside the base archive) into DataDir(root), which must not
// exist yet. backups are archives or pg_basebackup output directories; the base archive and the
// WAL archives are told apart by their content. Archives of tablespaces are refused.
//
// The files belong to the server's user and the data directory gets mode 0700. So that the
// next Start recovers to consistency and comes up as a primary, standby.signal and
// recovery.signal are removed, and so are primary_conninfo and primary_slot_name from
// postgresql.auto.conf. A backup without postgresql.conf (a Debian cluster's) gets a minimal
// one. The data's point in time is the backup's START TIME in backup_label.
//
// opts.MaxBytes and opts.MaxMembers bound what all the archives restore together; an archive
// that passes one (a tar bomb) fails the restore with engine.ErrRestoreLimit, naming the
// archive, the member and the limit, before that member is written.
func (e *pgEngine) RestorePhysical(ctx context.Context, root string, backups []engine.BackupFile, opts engine.RestoreOptions) (engine.DataState, error) {
	var state engine.DataState
	if len(backups) == 0 {
		return state, fmt.Errorf("postgres: restore base backup: no backup given")
	}
	u, err := e.User(opts.RunAs)
	if err != nil {
		return state, err
	}
	archives, err := collectArchives(backups)
	if err != nil {
		return state, err
	}
	dataDir := engine.DataDir(root)
	if _, err := os.Lstat(dataDir); err == nil {
		return state, fmt.Errorf("postgres: restore base backup: data directory %s already exists", dataDir)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return state, fmt.Errorf("postgres: restore base backup: %w", err)
	}
	if err := u.MkdirAll(dataDir, 0o700); err != nil {
		return state, fmt.Errorf("postgres: restore base backup: make data directory: %w", err)
	}

	var total, offset int64
	for _, a := range archives {
		total += a.size
	}
	var restored tarx.Stats // by the archives so far: they share the limits
	for _, a := range archives {
		dest := dataDir
		if a.kind == kindWAL {
			dest = filepath.Join(dataDir, "pg_wal")
			if err := ensureDir(u, dest); err != nil {
				return state, fmt.Errorf("postgres: restore WAL archive %s: %w", a.path, err)
			}
		}
		st, err := extract(ctx, u, a, dest, offset, opts, restored)
		if err != nil {
			return state, err
		}
		restored = restored.Add(st)
		offset += a.size
	}
	if opts.Progress != nil {
		opts.Progress(total)
	}

	if err := finishDataDir(u, dataDir, e.version); err != nil {
		return state, err
	}
	return backupLabelState(filepath.Join(dataDir, "backup_label"))
}

// ensureDir makes dir (mode 0700, owned by u) unless it exists as a directory.
func ensureDir(u *engine.User, dir string) error {
	st, err := os.Lstat(dir)
	switch {
	case err == nil && st.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("%s exists and is not a directory", dir)
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return u.MkdirAll(dir, 0o700)
}

// extract restores one archive into dest, reporting progress as offset plus the archive's
// bytes read, within the restore's limits (opts.MaxBytes, opts.MaxMembers) less what the
// archives before it restored.
func extract(ctx context.Context, u *engine.User, a archive, dest string, offset int64, opts engine.RestoreOptions, restored tarx.Stats) (tarx.Stats, error) {
	f, err := os.Open(a.path)
	if err != nil {
		return tarx.Stats{}, fmt.Errorf("postgres: restore %s: %w", a.kind, err)
	}
	defer f.Close()
	topts := tarx.Options{Owner: &tarx.Owner{UID: u.UID, GID: u.GID}, InputSize: a.size,
		MaxBytes: opts.MaxBytes, MaxMembers: opts.MaxMembers, Restored: restored}
	if opts.Progress != nil {
		topts.Progress = func(done, _ int64) { opts.Progress(offset + done) }
	}
	st, err := tarx.Extract(ctx, f, dest, topts)
	switch {
	case errors.Is(err, tarx.ErrTooLarge):
		return st, fmt.Errorf("postgres: restore %s %s: %w: the backup's files would take more than %d bytes, the restore's byte limit (the size of the volume restored into): %w",
			a.kind, a.path, engine.ErrRestoreLimit, opts.MaxBytes, err)
	case errors.Is(err, tarx.ErrTooManyMembers):
		return st, fmt.Errorf("postgres: restore %s %s: %w: the backup has more than %d members (files, directories, links), the restore's member limit: %w",
			a.kind, a.path, engine.ErrRestoreLimit, opts.MaxMembers, err)
	case err != nil:
		return st, fmt.Errorf("postgres: restore %s %s into %s: %w", a.kind, a.path, dest, err)
	}
	return st, nil
}

// finishDataDir makes a restored data directory ready for a start that recovers to a primary.
func finishDataDir(u *engine.User, dataDir, version string) error {
	fail := func(err error) error { return fmt.Errorf("postgres: restore base backup into %s: %w", dataDir, err) }
	pgVersion, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return fmt.Errorf("%w: the base backup has no PG_VERSION: %v", engine.ErrFormat, err)
	}
	if have, want := strings.TrimSpace(string(pgVersion)), majorVersion(version); have != want {
		return fmt.Errorf("%w: the base backup is of PostgreSQL %s, the server is PostgreSQL %s", engine.ErrFormat, have, version)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "backup_label")); err != nil {
		return fmt.Errorf("%w: the base backup has no backup_label: %v", engine.ErrFormat, err)
	}
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return fail(err)
	}
	for _, name := range signalFiles {
		if err := os.Remove(filepath.Join(dataDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fail(err)
		}
	}
	conf := filepath.Join(dataDir, "postgresql.conf")
	if _, err := os.Lstat(conf); errors.Is(err, fs.ErrNotExist) {
		if err := u.WriteFile(conf, []byte(minimalConf), 0o600); err != nil {
			return fail(err)
		}
	} else if err != nil {
		return fail(err)
	}
	if err := dropSettings(filepath.Join(dataDir, "postgresql.auto.conf"), standbySettings, u); err != nil {
		return fail(err)
	}
	return nil
}

// majorVersion returns the major version PG_VERSION holds for a server version: "15" for
// "15.18", "9.6" for "9.6.24".
func majorVersion(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if n, err := strconv.Atoi(parts[0]); err == nil && n < 10 && len(parts) > 1 {
		return parts[0] + "." + parts[1]
	}
	return parts[0]
}

// dropSettings rewrites the configuration file at p without the lines that set one of names.
// A missing file is fine.
func dropSettings(p string, names []string, u *engine.User) error {
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	dropped := false
	for _, line := range strings.SplitAfter(string(data), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), "=")
		name = strings.ToLower(strings.TrimSpace(name))
		keep := true
		for _, n := range names {
			if name == n {
				keep = false
			}
		}
		if keep {
			out.WriteString(line)
		} else {
			dropped = true
		}
	}
	if !dropped {
		return nil
	}
	return u.WriteFile(p, out.Bytes(), st.Mode().Perm())
}

// backupLabelState reads the data's point in time from a backup_label's START TIME line.
func backupLabelState(p string) (engine.DataState, error) {
	f, err := os.Open(p)
	if err != nil {
		return engine.DataState{}, fmt.Errorf("postgres: read %s: %w", p, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "START TIME: ")
		if !ok {
			continue
		}
		t, note, err := parsePGTime(v)
		if err != nil {
			return engine.DataState{Source: "backup_label START TIME unreadable: " + err.Error()}, nil
		}
		return engine.DataState{Time: t, Source: withNote("backup_label START TIME", note)}, nil
	}
	if err := sc.Err(); err != nil {
		return engine.DataState{}, fmt.Errorf("postgres: read %s: %w", p, err)
	}
	return engine.DataState{Source: "backup_label has no START TIME"}, nil
}

func withNote(source, note string) string {
	if note == "" {
		return source
	}
	return source + " (" + note + ")"
}

// parsePGTime parses a time as PostgreSQL's tools write it, "2024-06-01 12:00:00 UTC": the wall
// clock and a time zone abbreviation (%Z). UTC, GMT and numeric zones (+03, -0530) are exact;
// another abbreviation (CEST, EST) cannot be resolved without the writer's time zone database,
// so the time is taken as UTC and note says so.
func parsePGTime(s string) (t time.Time, note string, err error) {
	s = strings.TrimSpace(s)
	wall, zone, _ := strings.Cut(s, " ")
	if rest, z, ok := strings.Cut(zone, " "); ok {
		wall, zone = wall+" "+rest, z
	} else {
		wall, zone = wall+" "+zone, ""
	}
	t, err = time.ParseInLocation("2006-01-02 15:04:05", wall, time.UTC)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("time %q: %w", s, err)
	}
	switch strings.ToUpper(zone) {
	case "UTC", "GMT", "UCT", "Z", "ZULU", "UNIVERSAL":
		return t, "", nil
	case "":
		return t, "no time zone: taken as UTC", nil
	}
	if off, ok := parseOffset(zone); ok {
		return t.Add(-time.Duration(off) * time.Second).In(time.FixedZone(zone, off)), "", nil
	}
	return t, "time zone " + zone + " taken as UTC", nil
}

// parseOffset parses a numeric time zone: +HH, -HH, +HHMM, +HH:MM.
func parseOffset(z string) (int, bool) {
	if len(z) < 3 || (z[0] != '+' && z[0] != '-') {
		return 0, false
	}
	digits := strings.ReplaceAll(z[1:], ":", "")
	if len(digits) != 2 && len(digits) != 4 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil {
		return 0, false
	}
	h, m := n, 0
	if len(digits) == 4 {
		h, m = n/100, n%100
	}
	if h > 15 || m > 59 {
		return 0, false
	}
	off := h*3600 + m*60
	if z[0] == '-' {
		off = -off
	}
	return off, true
}
