package mariadb_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb/internal/mariadbtest"
)

// sourceData fills a source with what a backup must carry: sourceSQL's shop (InnoDB, a view, a
// procedure), an Aria and a MyISAM table (copied by mariabackup under its backup lock), and
// enough rows to span many pages.
func sourceData(t *testing.T, src *mariadbtest.Source) {
	t.Helper()
	src.Exec(t, "CREATE DATABASE shop;\nUSE shop;\n"+sourceSQL+`
CREATE TABLE events (id INT PRIMARY KEY, at DATETIME(6), payload VARCHAR(200)) ENGINE=InnoDB;
INSERT INTO events SELECT seq, '2024-05-01 10:00:00' + INTERVAL seq SECOND, REPEAT(CHAR(65 + seq % 26), 1 + seq % 200) FROM seq_1_to_20000;
CREATE TABLE notes_aria (id INT PRIMARY KEY, note TEXT) ENGINE=Aria;
INSERT INTO notes_aria VALUES (1, 'aria'), (2, 'crash-safe');
CREATE DATABASE ledger;
CREATE TABLE ledger.entries (id INT PRIMARY KEY, amount DECIMAL(12,2)) ENGINE=MyISAM;
INSERT INTO ledger.entries VALUES (1, 10.00), (2, -3.50);
`)
}

// restore restores backups into a new instance and returns its root and data state.
func restore(t *testing.T, e engine.Engine, opts engine.RestoreOptions, paths ...string) (string, engine.DataState, error) {
	t.Helper()
	root := mariadbtest.Root(t)
	var files []engine.BackupFile
	for _, p := range paths {
		format, err := e.Detect(p)
		if err != nil {
			t.Fatalf("Detect(%s): %v", p, err)
		}
		files = append(files, engine.BackupFile{Path: p, Format: format, Size: size(t, p)})
	}
	state, err := e.RestorePhysical(ctx(t), root, files, opts)
	return root, state, err
}

func size(t *testing.T, p string) int64 {
	var n int64
	err := filepath.Walk(p, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkRestored starts a server on root and compares every table with the source's checksums.
func checkRestored(t *testing.T, e engine.Engine, root, want string) engine.Instance {
	t.Helper()
	dataDir := engine.DataDir(root)
	u, err := e.User("")
	if err != nil {
		t.Fatal(err)
	}
	// mariabackup's files stay out of the image, and the server's user owns everything.
	err = filepath.Walk(dataDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if name := fi.Name(); strings.HasPrefix(name, "xtrabackup_") || name == "backup-my.cnf" {
			t.Errorf("%s: mariabackup's file left in the data directory", p)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != u.UID {
			t.Errorf("%s: owned by uid %d, want %s (%d)", p, st.Uid, u.Name, u.UID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	in := mariadbtest.Start(t, e, root, engine.StartOptions{})
	got := mariadbtest.Checksums(t, func(sql string) string { return mariadbtest.Query(t, in, "", sql) })
	if got != want {
		t.Errorf("restored checksums:\n%s\nwant (the source's):\n%s", got, want)
	}
	checkShop(t, in, "shop")
	// Isolation: the restored server has no binary log, whatever its source had.
	if v := mariadbtest.Query(t, in, "", "SELECT @@log_bin"); v != "0" {
		t.Errorf("log_bin = %s on the restored server, want 0", v)
	}
	return in
}

func TestMariaBackupRestore(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	src := mariadbtest.StartSource(t, e)
	sourceData(t, src)
	want := mariadbtest.Checksums(t, func(sql string) string { return src.Query(t, sql) })
	pos := src.Position(t)

	backups := map[string]string{
		"directory":   src.DirBackup(t),
		"stream":      src.StreamBackup(t, ""),
		"stream gzip": src.StreamBackup(t, "gzip"),
		"stream zstd": src.StreamBackup(t, "zstd"),
	}
	for name, path := range backups {
		t.Run(name, func(t *testing.T) {
			if f, err := e.Detect(path); err != nil || f != imagebuilder.FormatMariaBackup {
				t.Fatalf("Detect = %q, %v; want mariabackup", f, err)
			}
			var p progress
			root, state, err := restore(t, e, engine.RestoreOptions{Progress: p.report, MaxMembers: 10000}, path)
			if err != nil {
				t.Fatalf("RestorePhysical: %v", err)
			}
			if state.LogPosition != pos {
				t.Errorf("LogPosition = %q, want the source's at the backup: %q", state.LogPosition, pos)
			}
			if state.Time.IsZero() || !strings.Contains(state.Source, "end_time") {
				t.Errorf("DataState = %+v, want the backup's end_time", state)
			}
			if last := p.last(); last != size(t, path) {
				t.Errorf("progress ends at %d, want the backup's %d bytes", last, size(t, path))
			}
			checkRestored(t, e, root, want)
		})
	}
}

// A backup that would restore more than the limits allow fails before it is past them, and
// leaves no data directory.
func TestMariaBackupRestoreLimits(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	src := mariadbtest.StartSource(t, e)
	sourceData(t, src)
	for _, path := range []string{src.StreamBackup(t, ""), src.DirBackup(t)} {
		for _, opts := range []engine.RestoreOptions{{MaxBytes: 1 << 20}, {MaxMembers: 20}} {
			root, _, err := restore(t, e, opts, path)
			if !errors.Is(err, engine.ErrRestoreLimit) {
				t.Fatalf("%s with %+v: err = %v, want ErrRestoreLimit", path, opts, err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the backup: %v", err)
			}
			noDataDir(t, root)
		}
	}
}

func noDataDir(t *testing.T, root string) {
	t.Helper()
	if _, err := os.Stat(engine.DataDir(root)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data directory left behind after a failed restore (stat: %v)", err)
	}
}
