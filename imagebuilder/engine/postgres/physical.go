package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/tarx"
)

// archive is one tar archive of a base backup, with what it holds.
type archive struct {
	path string
	kind archiveKind
	size int64
	// oid is a tablespace archive's tablespace, from its file name (<oid>.tar[.gz|.lz4|.zst]).
	oid string
}

// walSource is WAL given besides the base archive: a tar archive of pg_wal (kind kindWAL), or
// segment files (files, a directory's files).
type walSource struct {
	archive *archive // a tar archive, or nil
	files   []string // segment and history files, when archive is nil
	// own is whether it is the base backup's own WAL (pg_basebackup's pg_wal.tar, by its
	// name), rather than WAL past the backup.
	own bool
}

// walArchiveRE matches the name pg_basebackup gives the archive of a backup's own WAL.
var walArchiveRE = regexp.MustCompile(`^pg_wal\.tar(?:\.gz|\.lz4|\.zst)?$`)

// physicalPlan is what RestorePhysical restores, told by content.
type physicalPlan struct {
	base        archive
	tablespaces []archive
	wal         []walSource
	// manifest is the base backup's backup_manifest ("" = none): next to base.tar in a
	// pg_basebackup -Ft output directory.
	manifest string
	// total is the size of every input, for progress.
	total int64
}

// collectArchives resolves backups (archives, pg_basebackup -Ft output directories, WAL
// segments or directories of them) into a plan: exactly one base archive, its tablespaces'
// archives, and WAL in the order given. Each archive is told by its content, not by its name or
// position; a tablespace archive's OID comes from its file name, which pg_basebackup makes.
func collectArchives(backups []engine.BackupFile) (*physicalPlan, error) {
	var paths []string
	plan := &physicalPlan{}
	for _, b := range backups {
		st, err := os.Stat(b.Path)
		if err != nil {
			return nil, fmt.Errorf("postgres: base backup %s: %w", b.Path, err)
		}
		switch {
		case st.IsDir():
			isWAL, err := walDir(b.Path)
			if err != nil {
				return nil, err
			}
			if isWAL {
				files, err := walFiles(b.Path)
				if err != nil {
					return nil, err
				}
				plan.wal = append(plan.wal, walSource{files: files})
				plan.total += b.Size
				continue
			}
			inDir, err := dirArchives(b.Path)
			if err != nil {
				return nil, err
			}
			paths = append(paths, inDir...)
			m := filepath.Join(b.Path, "backup_manifest")
			if st, err := os.Stat(m); err == nil && st.Mode().IsRegular() {
				if plan.manifest != "" {
					return nil, fmt.Errorf("%w: more than one base backup: %s and %s", engine.ErrFormat, plan.manifest, m)
				}
				plan.manifest = m
			}
		default:
			head, err := engine.Sniff(b.Path, walLongHeaderSize)
			if err != nil {
				return nil, fmt.Errorf("postgres: base backup %s: %w", b.Path, err)
			}
			if isWALSegment(head) {
				plan.wal = append(plan.wal, walSource{files: []string{b.Path}})
				plan.total += st.Size()
				continue
			}
			paths = append(paths, b.Path)
		}
	}
	var base []archive
	seenOID := map[string]string{}
	for _, p := range paths {
		a, err := classifyArchive(p)
		if err != nil {
			return nil, err
		}
		plan.total += a.size
		switch a.kind {
		case kindBase:
			base = append(base, a)
		case kindWAL:
			plan.wal = append(plan.wal, walSource{archive: &a, own: walArchiveRE.MatchString(filepath.Base(a.path))})
		case kindTablespace:
			m := tablespaceTarRE.FindStringSubmatch(filepath.Base(p))
			if m == nil {
				return nil, fmt.Errorf("%w: %s is the archive of a tablespace, but not named <oid>.tar[.gz|.lz4|.zst] as pg_basebackup names it: its name says which tablespace it is", engine.ErrFormat, p)
			}
			if other, ok := seenOID[m[1]]; ok {
				return nil, fmt.Errorf("%w: two archives of tablespace %s: %s and %s", engine.ErrFormat, m[1], other, p)
			}
			seenOID[m[1]] = p
			a.oid = m[1]
			plan.tablespaces = append(plan.tablespaces, a)
		}
	}
	switch len(base) {
	case 0:
		what := strings.Join(paths, ", ")
		if what == "" {
			what = "the backups given"
		}
		return nil, fmt.Errorf("%w: no base backup among %s (only WAL or tablespace archives)", engine.ErrFormat, what)
	case 1:
	default:
		return nil, fmt.Errorf("%w: more than one base backup: %s and %s", engine.ErrFormat, base[0].path, base[1].path)
	}
	plan.base = base[0]
	return plan, nil
}

// walFiles returns the WAL files of the directory dir (see walDir), sorted by name.
func walFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("postgres: read WAL directory %s: %w", dir, err)
	}
	var files []string
	for _, ent := range entries {
		if walFileRE.MatchString(ent.Name()) {
			if !ent.Type().IsRegular() {
				return nil, fmt.Errorf("%w: %s in %s is not a regular file", engine.ErrFormat, ent.Name(), dir)
			}
			files = append(files, filepath.Join(dir, ent.Name()))
		}
	}
	return files, nil
}

// classifyArchive tells what the archive at p holds, refusing what is not part of a base backup.
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
	if compressionOf(head) != "" {
		if head, err = decompressedHead(p); err != nil {
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
	case kindUnknown, kindDumpTar:
		return archive{}, fmt.Errorf("%w: %s is a tar archive of neither a base backup, its WAL nor one of its tablespaces (first members: %s)",
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

// TablespacesDir is the directory, under an instance's root (beside its data directory), that
// holds the tablespaces of a restored base backup: tablespace <oid> in TablespacesDir/<oid>,
// reached from the data directory through the relative link pg_tblspc/<oid> ->
// ../../TablespacesDir/<oid>, so that the instance is self-contained wherever its volume is
// mounted (a clone's root is another mount of a copy of the image's volume).
const TablespacesDir = "tablespaces"

// walStagingDir is the directory, under an instance's root, that holds the WAL a recovery to a
// target replays (see recover.go) while RestorePhysical runs it; it is removed once recovery
// has ended, and never part of an image.
const walStagingDir = "wal-staging"

// RestorePhysical restores a base backup taken with pg_basebackup --format=tar (each archive
// plain, gzip, lz4 or zstd compressed, client or server side; its WAL in pg_wal.tar or inside
// the base archive; its tablespaces in <oid>.tar) into DataDir(root), which must not exist
// yet, plus extra WAL (tar archives of segments, segment files, directories of them). backups
// are archives, files or directories (a pg_basebackup output directory, a WAL directory);
// what each holds is told by its content.
//
// Tablespaces are restored into root/TablespacesDir/<oid>, and pg_tblspc/<oid> links there
// relatively; every tablespace that the backup's tablespace_map lists must have its archive
// and every archive its entry. tablespace_map is then removed (it names the source's
// directories, which the server would link to).
//
// A backup_manifest next to base.tar is verified with the real pg_verifybackup of the
// installation on the restored files, before anything is changed in them: every file it lists
// present with its size and checksum, no other file in the data directory but those
// pg_verifybackup ignores, and the WAL from the backup's start to its end present and readable
// (pg_waldump). A mismatch fails the restore with pg_verifybackup's messages, which name the
// files.
//
// Without a recovery target, the WAL is restored into pg_wal and the next Start replays it all
// (crash recovery from the backup's checkpoint). With opts.RecoveryTarget, the WAL goes into a
// staging directory under root and RestorePhysical itself runs the recovery (recover.go): a
// server started for it alone, restore_command copying from the staging directory, replaying
// to the target, then promoted and stopped cleanly; the staging directory is removed and no
// recovery setting stays in the data directory. A target the WAL does not reach fails the
// restore naming the last segment replayed and the one missing.
//
// The files belong to the server's user and the data directory gets mode 0700. So that the
// next Start recovers to consistency and comes up as a primary, standby.signal and
// recovery.signal are removed, and so are primary_conninfo and primary_slot_name from
// postgresql.auto.conf. A backup without postgresql.conf (a Debian cluster's) gets a minimal
// one. A base backup of another major version than the engine's is refused.
//
// The data's point in time is the backup's START TIME in backup_label, and its log position
// the backup's end LSN (backup_manifest's last WAL-Ranges End-LSN: the first LSN at which its
// data is consistent; empty without a manifest). After a recovery to a target, both are where
// the recovery ended: the time of the last transaction replayed and the LSN of the last record
// replayed (the server's "redo done at").
//
// opts.MaxBytes and opts.MaxMembers bound what all the archives and WAL files restore together;
// an archive that passes one (a tar bomb) fails the restore with engine.ErrRestoreLimit, naming
// the archive, the member and the limit, before that member is written.
func (e *pgEngine) RestorePhysical(ctx context.Context, root string, backups []engine.BackupFile, opts engine.RestoreOptions) (engine.DataState, error) {
	var state engine.DataState
	if len(backups) == 0 {
		return state, fmt.Errorf("postgres: restore base backup: no backup given")
	}
	u, err := e.User(opts.RunAs)
	if err != nil {
		return state, err
	}
	target, err := recoveryTargetOf(opts)
	if err != nil {
		return state, err
	}
	plan, err := collectArchives(backups)
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

	r := &restorer{u: u, opts: opts}
	if err := r.extract(ctx, plan.base, dataDir); err != nil {
		return state, err
	}
	if err := checkVersion(dataDir, e.version, plan.base.path); err != nil {
		return state, err
	}
	if err := r.tablespaces(ctx, root, plan); err != nil {
		return state, err
	}
	// The backup's own WAL goes into pg_wal; WAL past it, and all of it for a recovery to a
	// target, into the staging directory that the recovery run reads.
	pgWAL, staging := filepath.Join(dataDir, "pg_wal"), filepath.Join(root, walStagingDir)
	recovery := target != nil
	for _, w := range plan.wal {
		recovery = recovery || !w.own
	}
	walDir := pgWAL
	if recovery {
		walDir = staging
	}
	for _, dir := range []string{pgWAL, walDir} {
		if err := ensureDir(u, dir); err != nil {
			return state, fmt.Errorf("postgres: restore WAL into %s: %w", dir, err)
		}
	}
	for _, w := range plan.wal {
		dest := pgWAL
		if recovery {
			dest = staging
		}
		if err := r.restoreWAL(ctx, w, dest); err != nil {
			return state, err
		}
	}
	if opts.Progress != nil {
		opts.Progress(plan.total)
	}

	var endLSN string
	if plan.manifest != "" {
		if endLSN, err = e.verifyManifest(ctx, u, root, plan.manifest, walDir); err != nil {
			return state, err
		}
	}
	if err := os.Remove(filepath.Join(dataDir, "tablespace_map")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return state, fmt.Errorf("postgres: restore base backup: %w", err)
	}
	if err := finishDataDir(u, dataDir); err != nil {
		return state, err
	}
	state, err = backupLabelState(filepath.Join(dataDir, "backup_label"))
	if err != nil {
		return state, err
	}
	if endLSN != "" {
		state.LogPosition = "LSN " + endLSN
	}
	if !recovery {
		return state, nil
	}
	return e.recoverTo(ctx, root, u, target, state)
}

// restorer restores the archives and WAL files of one RestorePhysical, within its limits.
type restorer struct {
	u    *engine.User
	opts engine.RestoreOptions
	// offset is the input consumed by the archives and files restored so far, for progress.
	offset int64
	// restored is what they restored: they share the limits.
	restored tarx.Stats
}

// extract restores archive a into dest.
func (r *restorer) extract(ctx context.Context, a archive, dest string) error {
	st, err := extract(ctx, r.u, a, dest, r.offset, r.opts, r.restored)
	r.restored = r.restored.Add(st)
	r.offset += a.size
	return err
}

// checkVersion refuses a base backup of another major version than the engine's version.
func checkVersion(dataDir, version, archivePath string) error {
	pgVersion, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return fmt.Errorf("%w: the base backup %s has no PG_VERSION: %v", engine.ErrFormat, archivePath, err)
	}
	if have, want := strings.TrimSpace(string(pgVersion)), majorVersion(version); have != want {
		return fmt.Errorf("%w: the base backup %s is of PostgreSQL %s (its PG_VERSION), the server is PostgreSQL %s: restore it with a PostgreSQL %s server",
			engine.ErrFormat, archivePath, have, version, have)
	}
	return nil
}

// tablespaces restores the plan's tablespace archives into root/TablespacesDir/<oid> and links
// pg_tblspc/<oid> to each, after checking them against the backup's tablespace_map.
func (r *restorer) tablespaces(ctx context.Context, root string, plan *physicalPlan) error {
	dataDir := engine.DataDir(root)
	mapped, err := readTablespaceMap(filepath.Join(dataDir, "tablespace_map"))
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, a := range plan.tablespaces {
		have[a.oid] = true
		if _, ok := mapped[a.oid]; !ok {
			return fmt.Errorf("%w: %s is the archive of tablespace %s, which the base backup %s does not have (its tablespace_map lists %s)",
				engine.ErrFormat, a.path, a.oid, plan.base.path, describeMap(mapped))
		}
	}
	for _, oid := range slices.Sorted(maps.Keys(mapped)) {
		if !have[oid] {
			return fmt.Errorf("%w: the base backup %s has tablespace %s (%s in its source) but its archive, %s.tar, is not among the backups",
				engine.ErrFormat, plan.base.path, oid, mapped[oid], oid)
		}
	}
	if len(plan.tablespaces) == 0 {
		return nil
	}
	if err := ensureDir(r.u, filepath.Join(root, TablespacesDir)); err != nil {
		return fmt.Errorf("postgres: restore tablespaces: %w", err)
	}
	for _, a := range plan.tablespaces {
		dest := filepath.Join(root, TablespacesDir, a.oid)
		if err := r.u.MkdirAll(dest, 0o700); err != nil {
			return fmt.Errorf("postgres: restore tablespace %s: %w", a.oid, err)
		}
		if err := r.extract(ctx, a, dest); err != nil {
			return err
		}
		link := filepath.Join(dataDir, "pg_tblspc", a.oid)
		if err := ensureDir(r.u, filepath.Dir(link)); err != nil {
			return fmt.Errorf("postgres: restore tablespace %s: %w", a.oid, err)
		}
		if err := os.RemoveAll(link); err != nil {
			return fmt.Errorf("postgres: restore tablespace %s: %w", a.oid, err)
		}
		if err := os.Symlink(path.Join("..", "..", TablespacesDir, a.oid), link); err != nil {
			return fmt.Errorf("postgres: restore tablespace %s: %w", a.oid, err)
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(link, r.u.UID, r.u.GID); err != nil {
				return fmt.Errorf("postgres: restore tablespace %s: %w", a.oid, err)
			}
		}
	}
	return nil
}

// readTablespaceMap reads a base backup's tablespace_map: "<oid> <path>" lines (none when the
// file is missing).
func readTablespaceMap(p string) (map[string]string, error) {
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: read %s: %w", p, err)
	}
	m := map[string]string{}
	for i, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		oid, loc, ok := strings.Cut(line, " ")
		if _, err := strconv.ParseUint(oid, 10, 32); !ok || err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %q is not \"<oid> <path>\"", engine.ErrFormat, p, i+1, line)
		}
		m[oid] = loc
	}
	return m, nil
}

func describeMap(m map[string]string) string {
	if len(m) == 0 {
		return "none"
	}
	return strings.Join(slices.Sorted(maps.Keys(m)), ", ")
}

// restoreWAL restores WAL source w into dest: a tar archive extracted, files copied.
func (r *restorer) restoreWAL(ctx context.Context, w walSource, dest string) error {
	if w.archive != nil {
		return r.extract(ctx, *w.archive, dest)
	}
	for _, f := range w.files {
		if err := r.copyFile(ctx, f, filepath.Join(dest, filepath.Base(f))); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies the WAL file from to to, owned by the server's user, within the limits.
func (r *restorer) copyFile(ctx context.Context, from, to string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	in, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("postgres: restore WAL file %s: %w", from, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("postgres: restore WAL file %s: %w", from, err)
	}
	if max := r.opts.MaxMembers; max > 0 && r.restored.Members+1 > max {
		return fmt.Errorf("postgres: restore WAL file %s: %w: the backup has more than %d members (files, directories, links), the restore's member limit",
			from, engine.ErrRestoreLimit, max)
	}
	if max := r.opts.MaxBytes; max > 0 && r.restored.Bytes+st.Size() > max {
		return fmt.Errorf("postgres: restore WAL file %s: %w: the backup's files would take more than %d bytes, the restore's byte limit (the size of the volume restored into)",
			from, engine.ErrRestoreLimit, max)
	}
	// A later file of the same name replaces an earlier one; never written through a link.
	if err := os.Remove(to); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("postgres: restore WAL file %s: %w", from, err)
	}
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("postgres: restore WAL file %s: %w", from, err)
	}
	defer out.Close()
	pr := &engine.ProgressReader{R: in, Report: func(done int64) {
		if r.opts.Progress != nil {
			r.opts.Progress(r.offset + done)
		}
	}}
	n, err := io.Copy(out, pr)
	if err == nil && n != st.Size() {
		err = fmt.Errorf("read %d bytes of %d: the file changed while it was copied", n, st.Size())
	}
	if err == nil && os.Geteuid() == 0 {
		err = out.Chown(r.u.UID, r.u.GID)
	}
	if err == nil {
		err = out.Close()
	}
	if err != nil {
		return fmt.Errorf("postgres: restore WAL file %s into %s: %w", from, to, err)
	}
	r.restored = r.restored.Add(tarx.Stats{Files: 1, Bytes: n, Members: 1})
	r.offset += n
	return nil
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
	case errors.Is(err, tarx.ErrInvalidArchive):
		return st, fmt.Errorf("%w: %s %s is truncated or corrupt: %w", engine.ErrFormat, a.kind, a.path, err)
	case err != nil:
		return st, fmt.Errorf("postgres: restore %s %s into %s: %w", a.kind, a.path, dest, err)
	}
	return st, nil
}

// finishDataDir makes a restored data directory ready for a start that recovers to a primary.
func finishDataDir(u *engine.User, dataDir string) error {
	fail := func(err error) error { return fmt.Errorf("postgres: restore base backup into %s: %w", dataDir, err) }
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
