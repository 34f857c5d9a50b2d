package builder

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

// linkTree makes under root/name a copy of the tree at src of hard links (the builder follows
// no symbolic link out of the backup root).
func linkTree(t *testing.T, src, dst string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		return os.Link(p, filepath.Join(dst, rel))
	}))
}

// moreEnv is newEnv with the pgtest.More backups in the backup root too, under their base names.
func moreEnv(t *testing.T) (*env, *pgtest.More) {
	t.Helper()
	e := newEnv(t, nil)
	m := pgtest.MoreFixtures(t)
	for _, p := range []string{m.AppDir, m.AppTar, m.ShopTar, m.ShopDump, m.PITRBase, m.PITRWal, m.PITRWalTar} {
		linkTree(t, p, filepath.Join(e.root, filepath.Base(p)))
	}
	for _, p := range m.BaseBackups {
		linkTree(t, p, filepath.Join(e.root, filepath.Base(p)))
	}
	return e, m
}

// TestBuildBaseBackupWithTablespace builds an image from a server-side zstd-compressed base
// backup with a tablespace, and checks every table of both databases in the image.
func TestBuildBaseBackupWithTablespace(t *testing.T) {
	e, m := moreEnv(t)
	rec := &recorder{}
	res, root, run, err := e.build(t, "name: ts\nengine: postgres\nversion: \""+e.eng.Version()+"\"\nsourceType: backup\nbackups:\n  - path: base-server-zstd\n", rec)
	require.NoError(t, err, rec.logText())
	checkResult(t, e, res, []string{StepRestore, StepStart, StepCheckpoint, StepStop})
	require.Regexp(t, `^LSN [0-9A-F]+/[0-9A-F]+$`, res.DataState.LogPosition)
	require.Empty(t, enginetest.ServersUsing(t, run))

	inst := e.restart(t, root)
	for db, sums := range m.Sums {
		require.Equal(t, sums, query(t, inst, db, pgtest.ChecksumSQL), db)
	}
}

// TestBuildSeveralDumps builds an image from a directory-format dump of app and a tar-format
// dump of shop: each goes into its own database; the initial database is made besides.
func TestBuildSeveralDumps(t *testing.T) {
	e, m := moreEnv(t)
	rec := &recorder{}
	res, root, _, err := e.build(t, "name: two\nengine: postgres\nversion: \""+e.eng.Version()+"\"\nsourceType: backup\nbackups:\n  - path: app.dir\n  - path: shop.tar\ninitialDatabaseName: scratch\n", rec)
	require.NoError(t, err, rec.logText())
	checkResult(t, e, res, []string{StepInit, StepStart, StepRestore, StepCheckpoint, StepStop})
	require.Empty(t, res.DataState.LogPosition, "dumps record no log position")

	inst := e.restart(t, root)
	for db, sums := range m.Sums {
		require.Equal(t, sums, query(t, inst, db, pgtest.ChecksumSQL), db)
	}
	require.Equal(t, "", query(t, inst, "scratch", pgtest.ChecksumSQL), "the initial database is empty")
}

// TestBuildBadBaseBackup builds from a base backup whose manifest does not match it: the restore
// step fails naming the file, and no server is left running.
func TestBuildBadBaseBackup(t *testing.T) {
	e, m := moreEnv(t)
	dir := filepath.Join(e.root, "truncated")
	linkTree(t, m.BaseBackups["none"], dir)
	// Replace the tablespace's archive by one cut short (a new file: the fixture is linked).
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var ts string
	for _, ent := range ents {
		if strings.HasSuffix(ent.Name(), ".tar") && ent.Name() != "base.tar" && ent.Name() != "pg_wal.tar" {
			ts = ent.Name()
		}
	}
	require.NotEmpty(t, ts)
	data, err := os.ReadFile(filepath.Join(dir, ts))
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, ts)))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ts), data[:len(data)-2048], 0o600))

	rec := &recorder{}
	_, _, run, err := e.build(t, "name: bad\nengine: postgres\nversion: \""+e.eng.Version()+"\"\nsourceType: backup\nbackups:\n  - path: truncated\n", rec)
	var se *StepError
	require.ErrorAs(t, err, &se)
	require.Equal(t, StepRestore, se.Step)
	require.ErrorIs(t, err, engine.ErrFormat)
	require.ErrorContains(t, err, "builder: step restore failed: engine: unrecognized backup format: tablespace archive "+filepath.Join(dir, ts)+" is truncated or corrupt: tarx: member ")
	require.ErrorContains(t, err, "reading contents: tarx: invalid archive: unexpected EOF")
	require.Empty(t, enginetest.ServersUsing(t, run))
}

// TestBuildPointInTime builds an image from a base backup and the WAL past it, replayed to a
// restore point: the image holds the data of that point, and no recovery setting.
func TestBuildPointInTime(t *testing.T) {
	e, m := moreEnv(t)
	rec := &recorder{}
	def := "name: pitr\nengine: postgres\nversion: \"" + e.eng.Version() + "\"\nsourceType: backup\nbackups:\n  - path: pitr-base\n  - path: pitr-wal\n    format: wal\n" +
		"recoveryTarget:\n  name: " + m.RestorePoint + "\n"
	res, root, run, err := e.build(t, def, rec)
	require.NoError(t, err, rec.logText())
	checkResult(t, e, res, []string{StepRestore, StepStart, StepCheckpoint, StepStop})
	require.Regexp(t, `^LSN [0-9A-F]+/[0-9A-F]+$`, res.DataState.LogPosition)
	require.Contains(t, res.DataState.Source, `recovery to name "`+m.RestorePoint+`": recovery stopping at restore point "`+m.RestorePoint+`"`)
	require.Empty(t, enginetest.ServersUsing(t, run))
	auto, err := os.ReadFile(filepath.Join(engine.DataDir(root), "postgresql.auto.conf"))
	require.NoError(t, err)
	require.Contains(t, string(auto), "restore_command = ''\n", "the isolation settings: no WAL restored from anywhere")
	require.NotRegexp(t, `restore_command = '.+'`, string(auto))
	require.NoFileExists(t, filepath.Join(engine.DataDir(root), "recovery.signal"))

	inst := e.restart(t, root)
	require.Equal(t, m.SumsAtRestorePoint, query(t, inst, "app", pgtest.ChecksumSQL))

	// Without the segment the restore point is in, the build fails naming it.
	segs, err := filepath.Glob(filepath.Join(e.root, "pitr-wal", "0*"))
	require.NoError(t, err)
	last := segs[len(segs)-1]
	require.NoError(t, os.Remove(last))
	rec = &recorder{}
	_, _, run, err = e.build(t, def, rec)
	var se *StepError
	require.ErrorAs(t, err, &se)
	require.Equal(t, StepRestore, se.Step)
	require.ErrorIs(t, err, engine.ErrFormat)
	require.ErrorContains(t, err, "builder: step restore failed: postgres: recovery: engine: unrecognized backup format: recovery to name \""+m.RestorePoint+
		"\" failed: recovery ended before configured recovery target was reached; the last WAL segment replayed is ")
	require.ErrorContains(t, err, "; the next segment, "+filepath.Base(last)+", is not among the backups")
	require.Contains(t, se.LogTail, "FATAL:  recovery ended before configured recovery target was reached")
	require.Empty(t, enginetest.ServersUsing(t, run))
}
