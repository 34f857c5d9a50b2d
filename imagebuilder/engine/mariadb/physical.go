package mariadb

// This file restores physical backups made by mariabackup --backup: its target directory, or
// the stream of --stream=xbstream (mbstream), plain or compressed with gzip or zstd. The backup
// is placed into the instance's data directory (a directory is copied, a stream extracted by
// mbstream -x after forwardXBStream checked it), checked (a full backup, of the engine's major
// version), prepared there by mariabackup --prepare, rid of mariabackup's own files, and given
// to the server's user. Binary logs given with it are then replayed (replay.go).

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Files mariabackup writes besides the data: MariaDB 11 names them mariadb_backup_*, earlier
// versions xtrabackup_*. Each name is tried in turn.
var (
	checkpointsFiles = []string{"mariadb_backup_checkpoints", "xtrabackup_checkpoints"}
	infoFiles        = []string{"mariadb_backup_info", "xtrabackup_info"}
	binlogInfoFiles  = []string{"mariadb_backup_binlog_info", "xtrabackup_binlog_info"}
)

// backupMetaFile reports whether name, a file at the top of a backup, is mariabackup's own
// (removed from the data directory once the backup is prepared).
func backupMetaFile(name string) bool {
	return name == "backup-my.cnf" || name == "donor_galera_info" ||
		strings.HasPrefix(name, "xtrabackup_") || strings.HasPrefix(name, "mariadb_backup_")
}

// isMariaBackupDir reports whether dir is a mariabackup target directory.
func isMariaBackupDir(dir string) bool {
	for _, n := range checkpointsFiles {
		if st, err := os.Stat(filepath.Join(dir, n)); err == nil && st.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// Physical reports whether format is restored into the data directory before the server
// starts: a mariabackup backup, and the binary logs replayed onto it.
func (s *server) Physical(format imagebuilder.BackupFormat) bool {
	return format == imagebuilder.FormatMariaBackup || format == imagebuilder.FormatBinlog
}

// RestorePhysical restores one mariabackup backup (a directory or a stream) into DataDir(root),
// prepares it, and replays the binary logs given after it (in file order, from the backup's
// binlog position, up to opts.RecoveryTarget when set). The data state is the backup's end
// time and binlog position, or where the replay stopped. A failure leaves no data directory.
func (s *server) RestorePhysical(ctx context.Context, root string, backups []engine.BackupFile, opts engine.RestoreOptions) (engine.DataState, error) {
	if !s.mariaDB() {
		return engine.DataState{}, fmt.Errorf("%w: %s restores no physical backups (mariabackup backups are MariaDB's): %s",
			engine.ErrFormat, s.kind, backupNames(backups))
	}
	var base *engine.BackupFile
	var binlogs []engine.BackupFile
	for i := range backups {
		switch b := backups[i]; b.Format {
		case imagebuilder.FormatMariaBackup:
			if base != nil {
				return engine.DataState{}, fmt.Errorf("%w: two mariabackup backups, %s and %s: an image is restored from one full backup (incremental backups are not restored)",
					engine.ErrFormat, base.Path, b.Path)
			}
			base = &backups[i]
		case imagebuilder.FormatBinlog:
			binlogs = append(binlogs, b)
		default:
			return engine.DataState{}, fmt.Errorf("%w: %s (%s): a mariabackup backup is restored with binary logs only", engine.ErrFormat, b.Path, b.Format)
		}
	}
	if base == nil {
		return engine.DataState{}, fmt.Errorf("%w: %s: binary logs without a mariabackup backup to replay them onto", engine.ErrFormat, backupNames(backups))
	}
	if s.backupTool == "" || s.mbstream == "" {
		return engine.DataState{}, fmt.Errorf("%w: %s has no mariabackup or mbstream next to it: install the mariadb-backup package of the same version", ErrTool, s)
	}
	if len(binlogs) > 0 && s.binlogTool == "" {
		return engine.DataState{}, fmt.Errorf("%w: %s has no mariadb-binlog next to it, which replays binary logs", ErrTool, s)
	}
	target, err := targetOf(opts)
	if err != nil {
		return engine.DataState{}, err
	}
	if target != nil && len(binlogs) == 0 {
		return engine.DataState{}, fmt.Errorf("%w: %s: no binary logs to replay (backups of format binlog after the mariabackup backup)", engine.ErrFormat, target.what)
	}
	u, err := s.User(opts.RunAs)
	if err != nil {
		return engine.DataState{}, err
	}
	if err := checkTraversable(u, root); err != nil {
		return engine.DataState{}, fmt.Errorf("%s: restore: %w", s.kind, err)
	}
	dataDir := engine.DataDir(root)
	if err := os.Mkdir(dataDir, 0o750); err != nil {
		return engine.DataState{}, fmt.Errorf("%s: restore: data directory: %w", s.kind, err)
	}
	state, err := s.restoreMariaBackup(ctx, u, root, *base, binlogs, target, opts)
	if err != nil {
		// Half a data directory is no instance: leave none.
		if rmErr := os.RemoveAll(dataDir); rmErr != nil {
			return engine.DataState{}, fmt.Errorf("%w (and removing %s: %v)", err, dataDir, rmErr)
		}
		return engine.DataState{}, err
	}
	return state, nil
}

func backupNames(backups []engine.BackupFile) string {
	names := make([]string, len(backups))
	for i, b := range backups {
		names[i] = fmt.Sprintf("%s (%s)", b.Path, b.Format)
	}
	return strings.Join(names, ", ")
}

// restoreMariaBackup places, checks and prepares the backup b in DataDir(root), then replays
// binlogs.
func (s *server) restoreMariaBackup(ctx context.Context, u *engine.User, root string, b engine.BackupFile, binlogs []engine.BackupFile, target *replayTarget, opts engine.RestoreOptions) (engine.DataState, error) {
	dataDir := engine.DataDir(root)
	lim := &restoreLimits{maxBytes: opts.MaxBytes, maxMembers: opts.MaxMembers}
	if err := u.Chown(dataDir); err != nil {
		return engine.DataState{}, err
	}
	st, err := os.Stat(b.Path)
	if err != nil {
		return engine.DataState{}, fmt.Errorf("%s: restore: %w", s.kind, err)
	}
	if st.IsDir() {
		err = copyBackupDir(b.Path, dataDir, lim, opts.Progress)
	} else {
		err = s.extractStream(ctx, u, b.Path, dataDir, lim, opts.Progress)
	}
	if err != nil {
		return engine.DataState{}, err
	}
	meta, err := readBackupMeta(b.Path, dataDir)
	if err != nil {
		return engine.DataState{}, err
	}
	if err := s.checkBackup(b.Path, meta); err != nil {
		return engine.DataState{}, err
	}
	if err := u.Chown(dataDir); err != nil {
		return engine.DataState{}, err
	}
	if err := s.prepare(ctx, u, b.Path, dataDir); err != nil {
		return engine.DataState{}, err
	}
	if err := removeBackupMeta(dataDir); err != nil {
		return engine.DataState{}, err
	}
	state := meta.state()
	if len(binlogs) == 0 {
		return state, nil
	}
	return s.replay(ctx, root, meta, binlogs, target, opts, b.Size)
}

// copyBackupDir copies the mariabackup directory src into dst (which exists), regular files and
// directories only, counting them against lim.
func copyBackupDir(src, dst string, lim *restoreLimits, progress func(int64)) error {
	var done int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			if err := lim.addMember(src, rel+"/"); err != nil {
				return err
			}
			return os.Mkdir(target, 0o750)
		case !d.Type().IsRegular():
			return fmt.Errorf("%w: %s: %s is not a regular file or a directory (%v): a mariabackup directory holds nothing else", engine.ErrFormat, src, rel, d.Type())
		case strings.HasSuffix(rel, ".qp"):
			return fmt.Errorf("%w: %s: %s is compressed by mariabackup --compress (QuickLZ), which the image builder does not restore (mariabackup --decompress needs qpress, which Debian does not ship): take the backup without --compress, or stream it compressed (--stream=xbstream | gzip or | zstd)", engine.ErrFormat, src, rel)
		}
		if err := lim.addMember(src, rel); err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if err := lim.addBytes(src, rel, info.Size()); err != nil {
			return err
		}
		n, err := copyFile(p, target)
		done += n
		if progress != nil {
			progress(done)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: copy the backup: %w", src, err)
	}
	return nil
}

// copyFile copies the regular file src to the new file dst (mode 0640), through
// copy_file_range where the file systems allow it.
func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// extractStream extracts the xbstream at path (plain, gzip or zstd) into dir with mbstream -x,
// run as u, after forwardXBStream checked each chunk.
func (s *server) extractStream(ctx context.Context, u *engine.User, path, dir string, lim *restoreLimits, progress func(int64)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: restore: %w", s.kind, err)
	}
	defer f.Close()
	pr := &engine.ProgressReader{R: f, Report: progress}
	r, closeR, err := decompressStream(pr)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", engine.ErrFormat, path, err)
	}
	defer closeR()

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := u.Command(cctx, dir, s.mbstream, []string{"-x", "-C", dir})
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out := &tailWriter{max: 8 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", s.mbstream, err)
	}
	// Chunk headers are small writes: batched, so that mbstream reads big pieces of a pipe.
	bw := bufio.NewWriterSize(stdin, 1<<20)
	fwdErr := forwardXBStream(r, bw, path, lim)
	if fwdErr == nil {
		fwdErr = bw.Flush()
	}
	if fwdErr != nil {
		cancel() // mbstream is not to finish what was checked so far
	}
	stdin.Close()
	waitErr := cmd.Wait()
	switch {
	case errors.Is(fwdErr, engine.ErrFormat) || errors.Is(fwdErr, engine.ErrRestoreLimit):
		return fwdErr // mbstream was stopped for it
	case waitErr != nil:
		// A write to mbstream failed because it exited: its own message says why.
		return fmt.Errorf("%s: mbstream -x: %w\n%s", path, waitErr, errorLines(string(out.Bytes()), 10))
	case fwdErr != nil:
		return fmt.Errorf("%s: %w", path, fwdErr)
	}
	pr.Finish()
	return nil
}

// decompressStream returns r, or the gzip or zstd stream r holds decompressed, and a function
// that releases the decoder.
func decompressStream(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("a corrupt gzip stream: %w", err)
		}
		return zr, func() {}, nil
	case bytes.Equal(magic, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, fmt.Errorf("a corrupt zstd stream: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// backupMeta is what mariabackup recorded of a backup.
type backupMeta struct {
	backupType    string // xtrabackup_checkpoints backup_type
	serverVersion string // xtrabackup_info server_version
	endTime       time.Time
	infoFile      string // the info file's name, for messages
	binlogFile    string // xtrabackup_binlog_info: the binary log and position the backup stands at
	binlogPos     int64
	gtid          string // the GTID position (empty when the server had none)
}

// readBackupMeta reads mariabackup's files in dataDir (the backup path names it in errors).
func readBackupMeta(backup, dataDir string) (*backupMeta, error) {
	m := &backupMeta{}
	cp, name, err := readKV(dataDir, checkpointsFiles)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: not a complete mariabackup backup: %w", engine.ErrFormat, backup, err)
	}
	if m.backupType = cp["backup_type"]; m.backupType == "" {
		return nil, fmt.Errorf("%w: %s: %s has no backup_type", engine.ErrFormat, backup, name)
	}
	info, name, err := readKV(dataDir, infoFiles)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: not a complete mariabackup backup: %w", engine.ErrFormat, backup, err)
	}
	m.infoFile = name
	m.serverVersion = info["server_version"]
	if t, err := time.Parse(time.DateTime, info["end_time"]); err == nil {
		m.endTime = t
	}
	for _, n := range binlogInfoFiles {
		data, err := os.ReadFile(filepath.Join(dataDir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", backup, n, err)
		}
		fields := strings.Split(strings.TrimSpace(string(data)), "\t")
		if len(fields) < 2 {
			return nil, fmt.Errorf("%w: %s: %s: want <binlog file>\\t<position>[\\t<GTID>], got %q", engine.ErrFormat, backup, n, data)
		}
		pos, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || pos < 4 {
			return nil, fmt.Errorf("%w: %s: %s: position %q", engine.ErrFormat, backup, n, fields[1])
		}
		m.binlogFile, m.binlogPos = filepath.Base(fields[0]), pos
		if len(fields) > 2 {
			m.gtid = strings.TrimSpace(fields[2])
		}
		break
	}
	return m, nil
}

// readKV reads the first of names in dir that exists, as "key = value" lines.
func readKV(dir string, names []string) (map[string]string, string, error) {
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, n, err
		}
		kv := map[string]string{}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
		return kv, n, nil
	}
	return nil, "", fmt.Errorf("no %s", strings.Join(names, " nor "))
}

// majorRE reads the major version (10.11) of a version string (10.11.19-MariaDB-0+deb12u1-log).
var majorRE = regexp.MustCompile(`^(\d+\.\d+)\.`)

// checkBackup refuses backups the engine cannot prepare: incremental ones, and those of
// another major version.
func (s *server) checkBackup(backup string, m *backupMeta) error {
	switch m.backupType {
	case "full-backuped", "log-applied", "full-prepared":
	case "incremental":
		return fmt.Errorf("%w: %s: an incremental backup (backup_type = incremental): restore a full backup, with incremental ones applied to it by mariabackup --prepare --incremental-dir", engine.ErrFormat, backup)
	default:
		return fmt.Errorf("%w: %s: backup_type %q: not a full mariabackup backup", engine.ErrFormat, backup, m.backupType)
	}
	mine := majorRE.FindStringSubmatch(s.version + ".")
	theirs := majorRE.FindStringSubmatch(m.serverVersion)
	if theirs == nil {
		return fmt.Errorf("%w: %s: %s has no server_version (got %q)", engine.ErrFormat, backup, m.infoFile, m.serverVersion)
	}
	if mine == nil || mine[1] != theirs[1] {
		return fmt.Errorf("%w: %s: a backup of MariaDB %s (%s server_version %s), and this engine is MariaDB %s: mariabackup prepares backups of its own major version only; build it with version %q",
			engine.ErrFormat, backup, theirs[1], m.infoFile, m.serverVersion, s.version, theirs[1])
	}
	return nil
}

// prepare runs mariabackup --prepare on dataDir, as u.
func (s *server) prepare(ctx context.Context, u *engine.User, backup, dataDir string) error {
	cmd := u.Command(ctx, dataDir, s.backupTool, []string{"--no-defaults", "--prepare", "--target-dir=" + dataDir})
	out := &tailWriter{max: 16 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s: mariabackup --prepare failed (%w): the backup cannot be prepared:\n%s", engine.ErrFormat, backup, err, errorLines(string(out.Bytes()), 15))
	}
	return nil
}

// removeBackupMeta removes mariabackup's files from the data directory.
func removeBackupMeta(dataDir string) error {
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Type().IsRegular() && backupMetaFile(e.Name()) {
			if err := os.Remove(filepath.Join(dataDir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// backupTimeSource is DataState.Source for a mariabackup's end time.
const backupTimeSource = "mariabackup end_time (the backup host's local time, read as UTC)"

// state is the data state the backup holds.
func (m *backupMeta) state() engine.DataState {
	st := engine.DataState{Time: m.endTime, LogPosition: formatPosition(m.gtid, m.binlogFile, m.binlogPos)}
	if !m.endTime.IsZero() {
		st.Source = m.infoFile + " " + backupTimeSource
	}
	return st
}

// formatPosition is DataState.LogPosition: "GTID <gtid>, binlog <file>:<pos>", either part
// left out when unknown.
func formatPosition(gtid, file string, pos int64) string {
	var parts []string
	if gtid != "" {
		parts = append(parts, "GTID "+gtid)
	}
	if file != "" {
		parts = append(parts, fmt.Sprintf("binlog %s:%d", file, pos))
	}
	return strings.Join(parts, ", ")
}
