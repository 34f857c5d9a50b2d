package postgres

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// manifestName is the name pg_basebackup gives the backup manifest (next to base.tar with
// --format=tar) and pg_verifybackup looks for in a data directory.
const manifestName = "backup_manifest"

// walVerifyDir is the directory, under an instance's root, where verifyManifest gathers links to
// the WAL a recovery to a target will read (pg_wal and the staging directory), for pg_waldump.
const walVerifyDir = "wal-verify"

// manifestWAL is the part of a backup manifest that says which WAL the backup needs.
type manifestWAL struct {
	Version   int `json:"PostgreSQL-Backup-Manifest-Version"`
	WALRanges []struct {
		Timeline uint32 `json:"Timeline"`
		StartLSN string `json:"Start-LSN"`
		EndLSN   string `json:"End-LSN"`
	} `json:"WAL-Ranges"`
}

// verifyManifest checks the restored data directory under root against the backup manifest at
// manifest with the installation's pg_verifybackup, as the server's user, before anything in the
// data directory is changed: every file listed present with the listed size and checksum, no
// unlisted file (but those pg_verifybackup ignores: postgresql.auto.conf, the signal files,
// pg_wal), and the WAL from the backup's start to its end present in walDir and parseable. It
// returns the backup's end LSN (the last WAL range's End-LSN). The manifest is copied into the
// data directory for the check and removed after it.
func (e *pgEngine) verifyManifest(ctx context.Context, u *engine.User, root, manifest, walDir string) (string, error) {
	dataDir := engine.DataDir(root)
	info, err := readManifestWAL(manifest)
	if err != nil {
		return "", err
	}
	tool := e.tool("pg_verifybackup")
	if _, err := os.Stat(tool); err != nil {
		return "", fmt.Errorf("postgres: the base backup has a %s, but pg_verifybackup, which checks it, is not installed: %w", manifest, err)
	}
	copied := filepath.Join(dataDir, manifestName)
	if err := copyOwned(u, manifest, copied); err != nil {
		return "", fmt.Errorf("postgres: verify %s: %w", manifest, err)
	}
	defer os.Remove(copied)

	pgWAL := filepath.Join(dataDir, "pg_wal")
	if walDir != pgWAL {
		// A recovery to a target reads the staging directory first, then pg_wal (the WAL of a
		// backup taken with --wal-method=fetch is in the base archive).
		gathered := filepath.Join(root, walVerifyDir)
		if err := gatherWAL(u, gathered, pgWAL, walDir); err != nil {
			return "", fmt.Errorf("postgres: verify %s: gather the WAL: %w", manifest, err)
		}
		defer os.RemoveAll(gathered)
		walDir = gathered
	}
	var out strings.Builder
	cmd := u.Command(ctx, "", tool, []string{"--manifest-path=" + copied, "--wal-directory=" + walDir, dataDir})
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("postgres: verify %s: %w", manifest, ctx.Err())
		}
		msg := verifyErrors(out.String())
		if strings.Contains(msg, "WAL parsing failed") {
			msg += "\n" + e.walNeeded(ctx, u, dataDir, info)
		}
		return "", fmt.Errorf("%w: the base backup does not match its manifest %s (pg_verifybackup: %v):\n%s",
			engine.ErrFormat, manifest, err, msg)
	}
	last := info.WALRanges[len(info.WALRanges)-1]
	return last.EndLSN, nil
}

// readManifestWAL reads the WAL ranges of the manifest at p.
func readManifestWAL(p string) (*manifestWAL, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("postgres: read %s: %w", p, err)
	}
	defer f.Close()
	var m manifestWAL
	if err := json.NewDecoder(bufio.NewReader(f)).Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %s is not a backup manifest: %v", engine.ErrFormat, p, err)
	}
	if m.Version == 0 || len(m.WALRanges) == 0 {
		return nil, fmt.Errorf("%w: %s is not a backup manifest: no PostgreSQL-Backup-Manifest-Version or WAL-Ranges", engine.ErrFormat, p)
	}
	for _, r := range m.WALRanges {
		if _, err := parseLSN(r.EndLSN); err != nil {
			return nil, fmt.Errorf("%w: %s: WAL-Ranges: %v", engine.ErrFormat, p, err)
		}
	}
	return &m, nil
}

// verifyErrors returns pg_verifybackup's error lines (at most 20), without its program name.
func verifyErrors(out string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		l = strings.TrimPrefix(strings.TrimSpace(l), "pg_verifybackup: ")
		if l == "" || strings.HasPrefix(l, "hint:") {
			continue
		}
		if len(lines) == 20 {
			lines = append(lines, "...")
			break
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}

// copyOwned copies the file from to to (which must not exist), mode 0600, owned by u.
func copyOwned(u *engine.User, from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := out.Chown(u.UID, u.GID); err != nil {
			return err
		}
	}
	return out.Close()
}

// gatherWAL makes dir (owned by u) with a link to every file of the directories from, a later
// directory's file replacing an earlier one's of the same name.
func gatherWAL(u *engine.User, dir string, from ...string) error {
	if err := u.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, d := range from {
		entries, err := os.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ent := range entries {
			if !ent.Type().IsRegular() {
				continue
			}
			link := filepath.Join(dir, ent.Name())
			_ = os.Remove(link)
			if err := os.Symlink(filepath.Join(d, ent.Name()), link); err != nil {
				return err
			}
		}
	}
	return nil
}

// walNeeded says which WAL segments the backup needs (its manifest's WAL ranges), for the
// message of a backup whose WAL is missing or broken.
func (e *pgEngine) walNeeded(ctx context.Context, u *engine.User, dataDir string, info *manifestWAL) string {
	segSize, err := e.controlSegmentSize(ctx, u, dataDir)
	if err != nil {
		return "the backup needs its WAL (the segments of its manifest's WAL-Ranges): " + err.Error()
	}
	var parts []string
	for _, r := range info.WALRanges {
		start, err1 := parseLSN(r.StartLSN)
		end, err2 := parseLSN(r.EndLSN)
		if err1 != nil || err2 != nil {
			continue
		}
		first, last := segmentName(r.Timeline, start, segSize), segmentName(r.Timeline, end, segSize)
		if first == last {
			parts = append(parts, "segment "+first)
		} else {
			parts = append(parts, "segments "+first+" to "+last)
		}
	}
	return "the backup needs the WAL from its start to its end: " + strings.Join(parts, ", ") + " (in pg_wal.tar, in the base archive, or among the backups)"
}

// controlSegmentSize reads the WAL segment size of the data directory from pg_controldata.
func (e *pgEngine) controlSegmentSize(ctx context.Context, u *engine.User, dataDir string) (uint64, error) {
	var out strings.Builder
	cmd := u.Command(ctx, "", e.tool("pg_controldata"), []string{dataDir})
	cmd.Stdout = &out
	if _, err := engine.Run(cmd); err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "Bytes per WAL segment:"); ok {
			var n uint64
			if _, err := fmt.Sscan(strings.TrimSpace(v), &n); err == nil && n > 0 {
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("pg_controldata %s printed no WAL segment size", dataDir)
}
