package postgres_test

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/engine/postgres"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

// tablespaceArchive returns the name of the tablespace archive in the pg_basebackup output
// directory dir, and the tablespace's OID.
func tablespaceArchive(t *testing.T, dir string) (name, oid string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	re := regexp.MustCompile(`^([0-9]+)\.tar`)
	for _, ent := range ents {
		if m := re.FindStringSubmatch(ent.Name()); m != nil {
			return ent.Name(), m[1]
		}
	}
	t.Fatalf("no tablespace archive in %s", dir)
	return "", ""
}

// physical returns backups of the physical format for paths, with their sizes.
func physical(t *testing.T, paths ...string) []engine.BackupFile {
	var out []engine.BackupFile
	for _, p := range paths {
		out = append(out, engine.BackupFile{Path: p, Format: imagebuilder.FormatBaseBackupTar, Size: sizeOf(t, p)})
	}
	return out
}

func TestDetectMoreBackups(t *testing.T) {
	e := pgEngine(t)
	m := pgtest.MoreFixtures(t)
	cases := map[string]imagebuilder.BackupFormat{
		m.AppDir:     imagebuilder.FormatPgDumpDir,
		m.AppTar:     imagebuilder.FormatPgDumpTar,
		m.ShopTar:    imagebuilder.FormatPgDumpTar,
		m.ShopDump:   imagebuilder.FormatPgDumpCustom,
		m.PITRWal:    imagebuilder.FormatWAL,
		m.PITRWalTar: imagebuilder.FormatBaseBackupTar,
		m.PITRBase:   imagebuilder.FormatBaseBackupTar,
	}
	segs, err := filepath.Glob(filepath.Join(m.PITRWal, "0*"))
	require.NoError(t, err)
	require.NotEmpty(t, segs)
	cases[segs[0]] = imagebuilder.FormatWAL
	for _, dir := range m.BaseBackups {
		cases[dir] = imagebuilder.FormatBaseBackupTar
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, ent := range ents {
			if strings.Contains(ent.Name(), ".tar") {
				cases[filepath.Join(dir, ent.Name())] = imagebuilder.FormatBaseBackupTar
			}
		}
	}
	for p, want := range cases {
		got, err := e.Detect(p)
		require.NoError(t, err, p)
		require.Equal(t, want, got, p)
	}
}

// TestRestoreTablespacesAndCompressions restores the base backups with a tablespace, in every
// compression, and checks every table of both databases against the source; one of them is
// started from a copy of its volume at another path, as a clone is.
func TestRestoreTablespacesAndCompressions(t *testing.T) {
	e := pgEngine(t)
	m := pgtest.MoreFixtures(t)
	for _, c := range []string{"none", "gzip", "client-lz4", "client-zstd", "server-lz4", "server-zstd"} {
		t.Run(c, func(t *testing.T) {
			ctx := testCtx(t)
			dir := m.BaseBackups[c]
			_, oid := tablespaceArchive(t, dir)
			root := filepath.Join(pgtest.Dir(t), "vol")
			state, err := e.RestorePhysical(ctx, root, physical(t, dir), engine.RestoreOptions{MaxBytes: 1 << 30, MaxMembers: 100000})
			require.NoError(t, err)
			require.Equal(t, "backup_label START TIME", state.Source)
			require.False(t, state.Time.Before(m.Made), "data state %v", state.Time)
			require.Regexp(t, `^LSN [0-9A-F]+/[0-9A-F]+$`, state.LogPosition)

			dataDir := engine.DataDir(root)
			link, err := os.Readlink(filepath.Join(dataDir, "pg_tblspc", oid))
			require.NoError(t, err)
			require.Equal(t, "../../"+postgres.TablespacesDir+"/"+oid, link, "a link inside the volume, relative")
			require.DirExists(t, filepath.Join(root, postgres.TablespacesDir, oid))
			for _, gone := range []string{"tablespace_map", "backup_manifest"} {
				require.NoFileExists(t, filepath.Join(dataDir, gone))
			}

			if c == "none" {
				// A clone is a copy of the volume mounted elsewhere: the original goes away.
				moved := filepath.Join(pgtest.Dir(t), "clone")
				out, err := osexec.Command("cp", "-a", root, moved).CombinedOutput()
				require.NoError(t, err, string(out))
				require.NoError(t, os.RemoveAll(root))
				root = moved
			}
			inst := startInstance(t, e, root, engine.StartOptions{})
			for db, sums := range m.Sums {
				require.Equal(t, sums, query(t, inst, db, pgtest.ChecksumSQL), db)
			}
			require.Equal(t, "../../"+postgres.TablespacesDir+"/"+oid, query(t, inst, "", "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"))
			exec(t, inst, "app", "INSERT INTO ts_items VALUES (100000, 'written to the tablespace');\nCHECKPOINT;\n")
			require.NoError(t, inst.Stop(ctx))
		})
	}
}

// rewriteTar copies the tar archive in to out through edit, which returns the header and body
// to write for each member (nil to drop it); add members are appended.
func rewriteTar(t *testing.T, in, out string, edit func(hdr *tar.Header, body []byte) (*tar.Header, []byte), add map[string]string) {
	t.Helper()
	f, err := os.Open(in)
	require.NoError(t, err)
	defer f.Close()
	w, err := os.Create(out)
	require.NoError(t, err)
	tr, tw := tar.NewReader(f), tar.NewWriter(w)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		body, err := io.ReadAll(tr)
		require.NoError(t, err)
		hdr, body = edit(hdr, body)
		if hdr == nil {
			continue
		}
		require.NoError(t, tw.WriteHeader(hdr))
		_, err = tw.Write(body)
		require.NoError(t, err)
	}
	for name, body := range add {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(body)), Typeflag: tar.TypeReg}))
		_, err = tw.Write([]byte(body))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, w.Close())
}

// brokenCopy returns a copy of the uncompressed base backup directory of m whose base.tar went
// through edit (see rewriteTar), and the OID of its tablespace.
func brokenCopy(t *testing.T, m *pgtest.More, edit func(hdr *tar.Header, body []byte) (*tar.Header, []byte), add map[string]string) string {
	t.Helper()
	src := m.BaseBackups["none"]
	dir := pgtest.Dir(t)
	ents, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, ent := range ents {
		if ent.Name() == "base.tar" {
			rewriteTar(t, filepath.Join(src, "base.tar"), filepath.Join(dir, "base.tar"), edit, add)
		} else {
			copyFile(t, filepath.Join(src, ent.Name()), filepath.Join(dir, ent.Name()))
		}
	}
	return dir
}

// TestRestorePhysicalBadBackups restores broken base backups: each fails naming the file and
// what is wrong, and RestorePhysical leaves its root for the caller to discard.
func TestRestorePhysicalBadBackups(t *testing.T) {
	e := pgEngine(t)
	m := pgtest.MoreFixtures(t)
	keep := func(hdr *tar.Header, body []byte) (*tar.Header, []byte) { return hdr, body }
	// The first non-empty relation file of the base archive: the one the tests break.
	var victim string
	rewriteTar(t, filepath.Join(m.BaseBackups["none"], "base.tar"), filepath.Join(t.TempDir(), "scan.tar"), func(hdr *tar.Header, body []byte) (*tar.Header, []byte) {
		if victim == "" && strings.HasPrefix(hdr.Name, "base/") && hdr.Typeflag == tar.TypeReg && len(body) > 0 {
			victim = hdr.Name
		}
		return hdr, body
	}, nil)
	require.NotEmpty(t, victim)
	tsName, oid := tablespaceArchive(t, m.BaseBackups["none"])

	for _, tc := range []struct {
		name string
		dir  func(t *testing.T) []string
		msg  string
	}{
		{"corrupt file", func(t *testing.T) []string {
			return []string{brokenCopy(t, m, func(hdr *tar.Header, body []byte) (*tar.Header, []byte) {
				if hdr.Name == victim {
					body = append([]byte(nil), body...)
					body[len(body)/2] ^= 0xff
				}
				return hdr, body
			}, nil)}
		}, `checksum mismatch for file "` + victim + `"`},
		{"missing file", func(t *testing.T) []string {
			return []string{brokenCopy(t, m, func(hdr *tar.Header, body []byte) (*tar.Header, []byte) {
				if hdr.Name == victim {
					return nil, nil
				}
				return hdr, body
			}, nil)}
		}, `"` + victim + `" is present in the manifest but not on disk`},
		{"file not in the manifest", func(t *testing.T) []string {
			return []string{brokenCopy(t, m, keep, map[string]string{"stray.conf": "x = 1\n"})}
		}, `"stray.conf" is present on disk but not in the manifest`},
		{"missing WAL", func(t *testing.T) []string {
			dir := brokenCopy(t, m, keep, nil)
			require.NoError(t, os.Remove(filepath.Join(dir, "pg_wal.tar")))
			return []string{dir}
		}, "pg_waldump: error: could not find any WAL file\nerror: WAL parsing failed for timeline 1\nthe backup needs the WAL from its start to its end: segment 0000000100000000000000"},
		{"wrong major version", func(t *testing.T) []string {
			return []string{brokenCopy(t, m, func(hdr *tar.Header, body []byte) (*tar.Header, []byte) {
				if hdr.Name == "PG_VERSION" {
					return hdr, []byte("14\n")
				}
				return hdr, body
			}, nil)}
		}, "base.tar is of PostgreSQL 14 (its PG_VERSION), the server is PostgreSQL " + e.Version() + ": restore it with a PostgreSQL 14 server"},
		{"truncated archive", func(t *testing.T) []string {
			dir := brokenCopy(t, m, keep, nil)
			p := filepath.Join(dir, "base.tar")
			st, err := os.Stat(p)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(p, st.Size()/2))
			return []string{dir}
		}, `base.tar is truncated or corrupt: tarx: member `},
		{"truncated zstd archive", func(t *testing.T) []string {
			dir := pgtest.Dir(t)
			src := m.BaseBackups["client-zstd"]
			ents, err := os.ReadDir(src)
			require.NoError(t, err)
			for _, ent := range ents {
				copyFile(t, filepath.Join(src, ent.Name()), filepath.Join(dir, ent.Name()))
			}
			p := filepath.Join(dir, "base.tar.zst")
			st, err := os.Stat(p)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(p, st.Size()-100))
			return []string{dir}
		}, `base.tar.zst is truncated or corrupt: tarx: member `},
		{"missing tablespace", func(t *testing.T) []string {
			dir := brokenCopy(t, m, keep, nil)
			require.NoError(t, os.Remove(filepath.Join(dir, tsName)))
			return []string{dir}
		}, "has tablespace " + oid + " (" + m.TablespaceDir + " in its source) but its archive, " + oid + ".tar, is not among the backups"},
		{"tablespace of another backup", func(t *testing.T) []string {
			dir := pgtest.Dir(t)
			copyFile(t, filepath.Join(m.PITRBase, "base.tar"), filepath.Join(dir, "base.tar"))
			copyFile(t, filepath.Join(m.PITRBase, "pg_wal.tar"), filepath.Join(dir, "pg_wal.tar"))
			other := filepath.Join(pgtest.Dir(t), "99999.tar")
			copyFile(t, filepath.Join(m.BaseBackups["none"], tsName), other)
			return []string{dir, other}
		}, "99999.tar is the archive of tablespace 99999, which the base backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := tc.dir(t)
			root := filepath.Join(pgtest.Dir(t), "vol")
			_, err := e.RestorePhysical(testCtx(t), root, physical(t, paths...), engine.RestoreOptions{})
			t.Log(err)
			require.ErrorIs(t, err, engine.ErrFormat)
			require.ErrorContains(t, err, tc.msg)
		})
	}
}

// TestRestoreDumpFormats restores pg_dump's directory and tar formats and several dumps, each
// into the database it records or the one given, and checks every table against the source.
func TestRestoreDumpFormats(t *testing.T) {
	e := pgEngine(t)
	m := pgtest.MoreFixtures(t)
	ctx := testCtx(t)
	inst := newInstance(t, e, engine.StartOptions{})
	// The directory archive, readable by root only.
	private := filepath.Join(t.TempDir(), "app.dir")
	out, err := osexec.Command("cp", "-a", m.AppDir, private).CombinedOutput()
	require.NoError(t, err, string(out))
	require.NoError(t, os.Chmod(private, 0o700))
	for _, tc := range []struct {
		path     string
		format   imagebuilder.BackupFormat
		db       string
		recorded bool
		want     string // the database it goes into
		sums     string
	}{
		{private, imagebuilder.FormatPgDumpDir, "", true, "app", m.Sums["app"]},
		{m.ShopTar, imagebuilder.FormatPgDumpTar, "ignored", true, "shop", m.Sums["shop"]},
		{m.AppTar, imagebuilder.FormatPgDumpTar, "app_tar", false, "app_tar", m.Sums["app"]},
		{m.ShopDump, imagebuilder.FormatPgDumpCustom, "", false, "postgres", m.Sums["shop"]},
	} {
		var last int64
		state, err := inst.RestoreLogical(ctx, engine.BackupFile{Path: tc.path, Format: tc.format, Size: sizeOf(t, tc.path)},
			engine.RestoreOptions{Database: tc.db, RecordedDatabase: tc.recorded, Progress: func(done int64) { last = done }})
		require.NoError(t, err, tc.path)
		require.Contains(t, state.Source, "pg_dump archive header")
		require.Empty(t, state.LogPosition, "a dump records no log position")
		require.Equal(t, sizeOf(t, tc.path), last)
		require.Equal(t, tc.sums, query(t, inst, tc.want, pgtest.ChecksumSQL), tc.path)
	}
	require.Equal(t, "0", query(t, inst, "", "SELECT count(*) FROM pg_database WHERE datname = 'ignored'"))

	// A directory archive with a link in it: refused before pg_restore opens anything.
	linked := filepath.Join(t.TempDir(), "linked.dir")
	out, err = osexec.Command("cp", "-a", m.AppDir, linked).CombinedOutput()
	require.NoError(t, err, string(out))
	require.NoError(t, os.Symlink("/etc/hostname", filepath.Join(linked, "9999.dat")))
	_, err = inst.RestoreLogical(ctx, engine.BackupFile{Path: linked, Format: imagebuilder.FormatPgDumpDir}, engine.RestoreOptions{Database: "linked"})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.ErrorContains(t, err, "9999.dat in the pg_dump directory archive "+linked+" is not a regular file")
	require.Equal(t, "0", query(t, inst, "", "SELECT count(*) FROM pg_database WHERE datname = 'linked'"))

	// A tar archive that is not one.
	bad := filepath.Join(t.TempDir(), "bad.tar")
	require.NoError(t, os.WriteFile(bad, []byte("not an archive"), 0o644))
	_, err = inst.RestoreLogical(ctx, engine.BackupFile{Path: bad, Format: imagebuilder.FormatPgDumpTar}, engine.RestoreOptions{})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.ErrorContains(t, err, bad+": pg_restore cannot read it as a pg_dump tar archive")
}

// copyDir copies the files of the directory src into a new directory, but those skip names.
func copyDir(t *testing.T, src string, skip ...string) string {
	t.Helper()
	dir := pgtest.Dir(t)
	ents, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, ent := range ents {
		if !slices.Contains(skip, ent.Name()) {
			copyFile(t, filepath.Join(src, ent.Name()), filepath.Join(dir, ent.Name()))
		}
	}
	return dir
}

// TestRestorePointInTime restores the PITR base backup with the WAL past it to each kind of
// target (the restore point, its LSN, its time), and to the end of the WAL without one: every
// table of app is as in the source at that point, and nothing of the recovery stays behind.
func TestRestorePointInTime(t *testing.T) {
	e := pgEngine(t)
	m := pgtest.MoreFixtures(t)
	exclusive := false
	for _, tc := range []struct {
		name   string
		target *imagebuilder.RecoveryTarget
		wal    string
		sums   string
	}{
		{"restore point", &imagebuilder.RecoveryTarget{Name: m.RestorePoint}, m.PITRWal, m.SumsAtRestorePoint},
		{"lsn", &imagebuilder.RecoveryTarget{LSN: m.RestorePointLSN}, m.PITRWalTar, m.SumsAtRestorePoint},
		{"time", &imagebuilder.RecoveryTarget{Time: m.RestorePointTime.Format(time.RFC3339Nano), Inclusive: &exclusive}, m.PITRWal, m.SumsAtRestorePoint},
		{"end of the WAL", nil, m.PITRWal, m.SumsAtEnd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			root := filepath.Join(pgtest.Dir(t), "vol")
			backups := physical(t, m.PITRBase, tc.wal)
			state, err := e.RestorePhysical(ctx, root, backups, engine.RestoreOptions{RecoveryTarget: tc.target})
			require.NoError(t, err)
			t.Logf("data state: %+v", state)
			require.Regexp(t, `^LSN [0-9A-F]+/[0-9A-F]+$`, state.LogPosition)
			if tc.target == nil {
				require.Equal(t, "recovery to the end of the WAL: the last transaction replayed", state.Source)
				require.True(t, state.Time.After(m.RestorePointTime), "the last transaction replayed (%v) is batch 2's", state.Time)
				require.Greater(t, lsnOf(t, strings.TrimPrefix(state.LogPosition, "LSN ")), lsnOf(t, m.RestorePointLSN))
			} else {
				require.Contains(t, state.Source, "recovery to "+tc.target.String())
				require.False(t, state.Time.After(m.RestorePointTime), "the last transaction replayed (%v) is before the target", state.Time)
				require.True(t, state.Time.After(m.Made), "the last transaction replayed (%v) is batch 1's, after the backup", state.Time)
				lsn, target := lsnOf(t, strings.TrimPrefix(state.LogPosition, "LSN ")), lsnOf(t, m.RestorePointLSN)
				if tc.target.Time == "" {
					require.LessOrEqual(t, lsn, target, "recovery ended at the restore point")
					require.Greater(t, lsn, target-4096, "recovery ended at the restore point")
				} else {
					require.Greater(t, lsn, target, "recovery ended before batch 2's commit, after its rows' records")
				}
			}
			for _, gone := range []string{"wal-staging", "wal-verify"} {
				require.NoDirExists(t, filepath.Join(root, gone), "the recovery's staging is removed")
			}
			dataDir := engine.DataDir(root)
			require.NoFileExists(t, filepath.Join(dataDir, "recovery.signal"))
			auto, err := os.ReadFile(filepath.Join(dataDir, "postgresql.auto.conf"))
			require.NoError(t, err)
			require.NotContains(t, string(auto), "restore_command")
			require.NotContains(t, string(auto), "recovery_target")

			inst := startInstance(t, e, root, engine.StartOptions{})
			require.Equal(t, tc.sums, query(t, inst, "app", pgtest.ChecksumSQL))
			require.Equal(t, m.Sums["shop"], query(t, inst, "shop", pgtest.ChecksumSQL))
			require.Equal(t, "f", query(t, inst, "", "SELECT pg_is_in_recovery()"))
			require.NoError(t, inst.Stop(ctx))
		})
	}

	// The failures: a target past the WAL, a segment missing.
	segs, err := filepath.Glob(filepath.Join(m.PITRWal, "0*"))
	require.NoError(t, err)
	slices.Sort(segs)
	last := filepath.Base(segs[len(segs)-1])
	for _, tc := range []struct {
		name   string
		target *imagebuilder.RecoveryTarget
		wal    func(t *testing.T) string
		msg    []string
	}{
		{"target past the WAL", &imagebuilder.RecoveryTarget{Name: "no_such_point"}, func(*testing.T) string { return m.PITRWal }, []string{
			`postgres: recovery: engine: unrecognized backup format: recovery to name "no_such_point" failed: recovery ended before configured recovery target was reached; the last WAL segment replayed is ` + last,
			"; the next segment, " + nextName(t, last) + ", is not among the backups\nserver log (last lines):\n",
		}},
		{"missing segment", &imagebuilder.RecoveryTarget{Name: m.RestorePoint}, func(t *testing.T) string { return copyDir(t, m.PITRWal, last) }, []string{
			`postgres: recovery: engine: unrecognized backup format: recovery to name "` + m.RestorePoint + `" failed: recovery ended before configured recovery target was reached; the last WAL segment replayed is `,
			"; the next segment, " + last + ", is not among the backups",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			root := filepath.Join(pgtest.Dir(t), "vol")
			_, err := e.RestorePhysical(ctx, root, physical(t, m.PITRBase, tc.wal(t)), engine.RestoreOptions{RecoveryTarget: tc.target})
			t.Log(err)
			require.ErrorIs(t, err, engine.ErrFormat)
			require.ErrorIs(t, err, engine.ErrServer)
			for _, msg := range tc.msg {
				require.ErrorContains(t, err, msg)
			}
			require.Empty(t, enginetest.ServersUsing(t, root), "the recovery's server is stopped")
		})
	}
}

// nextName returns the name of the WAL segment after seg (16 MiB segments).
func nextName(t *testing.T, seg string) string {
	t.Helper()
	n, err := strconv.ParseUint(seg[16:], 16, 32)
	require.NoError(t, err)
	require.Less(t, n, uint64(0xFF))
	return seg[:16] + fmt.Sprintf("%08X", n+1)
}

func lsnOf(t *testing.T, s string) uint64 {
	t.Helper()
	var hi, lo uint64
	_, err := fmt.Sscanf(s, "%X/%X", &hi, &lo)
	require.NoError(t, err, s)
	return hi<<32 | lo
}
