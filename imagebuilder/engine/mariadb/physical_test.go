package mariadb_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
			in := checkRestored(t, e, root, want)
			checkShop(t, in, "shop") // the view, the procedure, the AUTO_INCREMENT counter
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

// Bad and partial backups fail with a message naming the file and what is wrong, and leave no
// data directory.
func TestMariaBackupFailures(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	src := mariadbtest.StartSource(t, e)
	sourceData(t, src)
	dir := src.DirBackup(t)
	stream := src.StreamBackup(t, "")

	// copyDir copies the directory backup, for a test to break.
	copyDir := func(t *testing.T) string {
		t.Helper()
		to := filepath.Join(t.TempDir(), "backup")
		if out, err := exec.Command("cp", "-a", dir, to).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v\n%s", err, out)
		}
		return to
	}
	cases := []struct {
		name string
		path func(t *testing.T) string
		want []string
	}{
		{
			name: "truncated stream",
			path: func(t *testing.T) string {
				data, err := os.ReadFile(stream)
				if err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(t.TempDir(), "cut.xb")
				if err := os.WriteFile(p, data[:len(data)/2], 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			},
			want: []string{"cut.xb: truncated: the stream ends in the middle of "},
		},
		{
			name: "corrupt stream",
			path: func(t *testing.T) string {
				data, err := os.ReadFile(stream)
				if err != nil {
					t.Fatal(err)
				}
				data[len(data)/2] ^= 0xff
				p := filepath.Join(t.TempDir(), "flipped.xb")
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			},
			want: []string{"flipped.xb: ", "the stream is corrupt"},
		},
		{
			name: "mariabackup --compress",
			path: func(t *testing.T) string { return src.DirBackup(t, "--compress") },
			want: []string{".qp is compressed by mariabackup --compress (QuickLZ), which the image builder does not restore"},
		},
		{
			name: "another major version",
			path: func(t *testing.T) string {
				p := copyDir(t)
				info := filepath.Join(p, "xtrabackup_info")
				data, err := os.ReadFile(info)
				if err != nil {
					t.Fatal(err)
				}
				data = regexp.MustCompile(`(?m)^server_version = .*$`).ReplaceAll(data, []byte("server_version = 10.6.21-MariaDB-log"))
				if err := os.WriteFile(info, data, 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			},
			want: []string{"a backup of MariaDB 10.6 (xtrabackup_info server_version 10.6.21-MariaDB-log), and this engine is MariaDB " + e.Version(),
				`build it with version "10.6"`},
		},
		{
			name: "not preparable",
			path: func(t *testing.T) string {
				p := copyDir(t)
				if err := os.Truncate(filepath.Join(p, "ib_logfile0"), 1000); err != nil {
					t.Fatal(err)
				}
				return p
			},
			want: []string{"mariabackup --prepare failed", "the backup cannot be prepared", "ib_logfile0 is too small"},
		},
		{
			name: "incomplete directory",
			path: func(t *testing.T) string {
				p := copyDir(t)
				if err := os.Remove(filepath.Join(p, "xtrabackup_info")); err != nil {
					t.Fatal(err)
				}
				return p
			},
			want: []string{"not a complete mariabackup backup: no mariadb_backup_info nor xtrabackup_info"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := c.path(t)
			root, _, err := restore(t, e, engine.RestoreOptions{}, p)
			if !errors.Is(err, engine.ErrFormat) {
				t.Fatalf("err = %v, want ErrFormat", err)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error does not name %s: %v", p, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			noDataDir(t, root)
		})
	}
}

// Binary logs replay onto a backup from its binlog position, in file order, to the end of the
// last transaction; a missing or cut file fails, naming it.
func TestMariaBackupBinlogReplay(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	src := mariadbtest.StartSource(t, e)
	sourceData(t, src)
	backup := src.StreamBackup(t, "")
	checksums := func() string { return mariadbtest.Checksums(t, func(sql string) string { return src.Query(t, sql) }) }

	// After the backup: row changes, a non-transactional table, DDL, across three binary logs.
	src.Exec(t, "INSERT INTO shop.orders VALUES (13, 3, 1.00);\nUPDATE shop.events SET payload = 'changed' WHERE id < 100;")
	mid, midSums, midGTID := src.Position(t), checksums(), src.Query(t, "SELECT @@gtid_binlog_pos")
	// Binary logs record whole seconds: the time target lies between two seconds that the
	// transactions before and after it do not share.
	time.Sleep(1200 * time.Millisecond)
	midTime := time.Now().UTC()
	time.Sleep(1200 * time.Millisecond)
	src.Exec(t, "FLUSH BINARY LOGS;")
	src.Exec(t, "CREATE TABLE shop.later (id INT PRIMARY KEY, v BLOB) ENGINE=InnoDB;\nINSERT INTO shop.later VALUES (1, X'00FF0A'), (2, NULL);\nINSERT INTO ledger.entries VALUES (3, 1.25);")
	src.Exec(t, "FLUSH BINARY LOGS;")
	src.Exec(t, "DELETE FROM shop.events WHERE id > 19000;\nALTER TABLE shop.later ADD COLUMN w INT DEFAULT 7;")
	end, endSums := src.Position(t), checksums()
	binlogs := src.Binlogs(t)
	if len(binlogs) != 3 {
		t.Fatalf("binary logs: %v, want 3", binlogs)
	}
	for _, b := range binlogs {
		if f, err := e.Detect(b); err != nil || f != imagebuilder.FormatBinlog {
			t.Fatalf("Detect(%s) = %q, %v; want binlog", b, f, err)
		}
	}

	t.Run("to the end", func(t *testing.T) {
		// In any order: the files are replayed in sequence.
		root, state, err := restore(t, e, engine.RestoreOptions{}, backup, binlogs[2], binlogs[0], binlogs[1])
		if err != nil {
			t.Fatalf("RestorePhysical: %v", err)
		}
		if state.LogPosition != end {
			t.Errorf("LogPosition = %q, want %q (the source's at the end)", state.LogPosition, end)
		}
		if !strings.Contains(state.Source, "binlog.000003") {
			t.Errorf("Source = %q, want the last binary log's transaction", state.Source)
		}
		checkRestored(t, e, root, endSums)
	})
	seq := func(g string) int {
		n, err := strconv.Atoi(g[strings.LastIndexByte(g, '-')+1:])
		if err != nil {
			t.Fatalf("GTID %q: %v", g, err)
		}
		return n
	}
	all := []string{backup, binlogs[0], binlogs[1], binlogs[2]}
	exclusive := false
	midFile, midOff, _ := strings.Cut(strings.TrimPrefix(mid[strings.Index(mid, "binlog "):], "binlog "), ":")
	for _, tc := range []struct {
		name   string
		target imagebuilder.RecoveryTarget
	}{
		{"gtid", imagebuilder.RecoveryTarget{GTID: midGTID}},
		{"gtid exclusive", imagebuilder.RecoveryTarget{GTID: fmt.Sprintf("0-1-%d", seq(midGTID)+1), Inclusive: &exclusive}},
		{"binlog position", imagebuilder.RecoveryTarget{BinlogPosition: midFile + ":" + midOff}},
		{"time", imagebuilder.RecoveryTarget{Time: midTime.Format(time.RFC3339Nano)}},
	} {
		t.Run("to "+tc.name, func(t *testing.T) {
			root, state, err := restore(t, e, engine.RestoreOptions{RecoveryTarget: &tc.target}, all...)
			if err != nil {
				t.Fatalf("RestorePhysical: %v", err)
			}
			if state.LogPosition != mid {
				t.Errorf("LogPosition = %q, want %q", state.LogPosition, mid)
			}
			checkRestored(t, e, root, midSums)
		})
	}
	for _, tc := range []struct {
		name   string
		target imagebuilder.RecoveryTarget
		want   string
	}{
		{"not reached", imagebuilder.RecoveryTarget{GTID: "0-1-99999"},
			`recoveryTarget gtid "0-1-99999" not reached: the binary logs end at binlog.000003:` + end[strings.LastIndexByte(end, ':')+1:] + " (the last transaction: GTID " + strings.TrimPrefix(end[:strings.IndexByte(end, ',')], "GTID ")},
		{"time not reached", imagebuilder.RecoveryTarget{Time: "2099-01-01T00:00:00Z"},
			`recoveryTarget time "2099-01-01T00:00:00Z" not reached: the binary logs end at binlog.000003:`},
		{"before the backup", imagebuilder.RecoveryTarget{GTID: "0-1-1"},
			`recoveryTarget gtid "0-1-1" is not after the backup, which already stands at GTID `},
		{"not a transaction's end", imagebuilder.RecoveryTarget{BinlogPosition: fmt.Sprintf("%s:%d", midFile, seq(midOff)-1)},
			fmt.Sprintf(`recoveryTarget binlogPosition "%s:%d" is not the end of a transaction of %s: the transaction of GTID %s goes from `, midFile, seq(midOff)-1, midFile, midGTID)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, _, err := restore(t, e, engine.RestoreOptions{RecoveryTarget: &tc.target}, all...)
			if !errors.Is(err, engine.ErrFormat) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant %q", err, tc.want)
			}
			noDataDir(t, root)
		})
	}
	t.Run("gap", func(t *testing.T) {
		root, _, err := restore(t, e, engine.RestoreOptions{}, backup, binlogs[0], binlogs[2])
		want := "binary log binlog.000002 is missing: the binary logs given go from binlog.000001 to binlog.000001, and the next one given is " + binlogs[2]
		if !errors.Is(err, engine.ErrFormat) || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want %q", err, want)
		}
		noDataDir(t, root)
	})
	t.Run("first missing", func(t *testing.T) {
		root, _, err := restore(t, e, engine.RestoreOptions{}, backup, binlogs[1], binlogs[2])
		want := "binary log binlog.000001 is missing: the backup stands at binlog.000001:"
		if !errors.Is(err, engine.ErrFormat) || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want %q", err, want)
		}
		noDataDir(t, root)
	})
	t.Run("cut", func(t *testing.T) {
		data, err := os.ReadFile(binlogs[2])
		if err != nil {
			t.Fatal(err)
		}
		cut := filepath.Join(t.TempDir(), "binlog.000003")
		if err := os.WriteFile(cut, data[:len(data)-100], 0o644); err != nil {
			t.Fatal(err)
		}
		root, _, err := restore(t, e, engine.RestoreOptions{}, backup, binlogs[0], binlogs[1], cut)
		want := cut + ": it ends in the middle of "
		if !errors.Is(err, engine.ErrFormat) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "binary log binlog.000003 is cut short; the binary logs up to it end at binlog.000003:") {
			t.Fatalf("err = %v, want %q", err, want)
		}
		noDataDir(t, root)
	})
}

// A dump taken with --master-data and --gtid records the source's position: the restore
// returns it as the data's log position.
func TestDumpLogPosition(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	src := mariadbtest.StartSource(t, e)
	sourceData(t, src)
	want := src.Position(t)
	for _, masterData := range []string{"--master-data=1", "--master-data=2"} {
		dump := src.Dump(t, masterData, "--gtid", "--single-transaction", "--databases", "shop")
		in, _ := mariadbtest.Instance(t, e, engine.InitOptions{}, engine.StartOptions{})
		state, err := in.RestoreLogical(ctx(t), engine.BackupFile{Path: dump, Format: imagebuilder.FormatSQL}, engine.RestoreOptions{})
		if err != nil {
			t.Fatalf("%s: RestoreLogical: %v", masterData, err)
		}
		if state.LogPosition != want {
			t.Errorf("%s: LogPosition = %q, want %q", masterData, state.LogPosition, want)
		}
	}
	// Without --master-data, no position.
	dump := src.Dump(t, "--databases", "shop")
	in, _ := mariadbtest.Instance(t, e, engine.InitOptions{}, engine.StartOptions{})
	state, err := in.RestoreLogical(ctx(t), engine.BackupFile{Path: dump, Format: imagebuilder.FormatSQL}, engine.RestoreOptions{})
	if err != nil || state.LogPosition != "" {
		t.Errorf("plain dump: LogPosition = %q, %v; want none", state.LogPosition, err)
	}
}
