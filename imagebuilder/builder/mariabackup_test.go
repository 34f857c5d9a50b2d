package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
)

// Builds from a mariabackup stream and the binary logs after it, taken with the real
// mariabackup from a source server with a binary log, as production runs one.

// mariaBinlogSource is a source MariaDB started by the test with log-bin (the adapter's own
// servers never have one); mariaSQL runs SQL on it.
type mariaBinlogSource struct {
	dataDir, socket string
}

func (s *mariaBinlogSource) sql(t *testing.T, sql string) string {
	t.Helper()
	cmd := exec.Command("mariadb", "--no-defaults", "--socket="+s.socket, "--user=root", "-N", "-B")
	cmd.Stdin = strings.NewReader(sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("source: %v\n%s", err, out)
	}
	return strings.TrimRight(string(out), "\n")
}

// mariaStartBinlogSource initializes an instance and runs mariadbd on it with a binary log
// until the test ends. It skips (fails under CI=true) without mariabackup.
func mariaStartBinlogSource(t *testing.T, e engine.Engine) *mariaBinlogSource {
	t.Helper()
	if _, err := exec.LookPath("mariabackup"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no mariabackup, and CI=true: hack/install-deps.sh should have installed mariadb-backup")
		}
		t.Skip("no mariabackup: skipping (apt-get install mariadb-backup, or make deps)")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("mariabackup of the test's source logs in as root through the socket, and CI=true: run the tests as root")
		}
		t.Skip("mariabackup of the test's source logs in as root through the socket: run as root")
	}
	root := mariaDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), mariaTimeout)
	defer cancel()
	if err := e.Init(ctx, root, engine.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	u, err := e.User("")
	if err != nil {
		t.Fatal(err)
	}
	run := mariaRunDir(t)
	if err := os.Chown(run, u.UID, u.GID); err != nil {
		t.Fatal(err)
	}
	s := &mariaBinlogSource{dataDir: engine.DataDir(root), socket: filepath.Join(run, "src.sock")}
	cmd := u.Command(context.Background(), "", "/usr/sbin/mariadbd", []string{"--no-defaults", "--basedir=/usr",
		"--datadir=" + s.dataDir, "--socket=" + s.socket, "--pid-file=" + filepath.Join(run, "src.pid"),
		"--log-error=" + filepath.Join(run, "src.log"), "--tmpdir=" + run, "--skip-networking",
		"--log-bin=binlog", "--server-id=1", "--character-set-server=utf8mb4"})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(mariaTimeout):
			_ = cmd.Process.Kill()
		}
	})
	for deadline := time.Now().Add(mariaTimeout); ; time.Sleep(100 * time.Millisecond) {
		if exec.Command("mariadb", "--no-defaults", "--socket="+s.socket, "--user=root", "-e", "SELECT 1").Run() == nil {
			return s
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(run, "src.log"))
			t.Fatalf("the source does not answer:\n%s", log)
		}
	}
}

// position is the source's log position as the adapter records it.
func (s *mariaBinlogSource) position(t *testing.T) string {
	st := strings.Split(s.sql(t, "SHOW MASTER STATUS"), "\t")
	return "GTID " + s.sql(t, "SELECT @@gtid_binlog_pos") + ", binlog " + st[0] + ":" + st[1]
}

func TestMariaDBBuildMariaBackup(t *testing.T) {
	t.Parallel()
	e, set := mariaEngine(t)
	src := mariaStartBinlogSource(t, e)
	backupRoot := t.TempDir()
	src.sql(t, "CREATE DATABASE shop;\nUSE shop;\n"+mariaSourceSQL)

	// The backup, as production streams it: mariabackup --stream=xbstream | gzip.
	var stream bytes.Buffer
	backup := exec.Command("sh", "-c", "mariabackup --no-defaults --backup --stream=xbstream --socket="+src.socket+
		" --user=root --target-dir="+t.TempDir()+" 2>/dev/null | gzip")
	backup.Stdout = &stream
	if err := backup.Run(); err != nil {
		t.Fatalf("mariabackup: %v", err)
	}
	if err := os.WriteFile(filepath.Join(backupRoot, "shop.xb.gz"), stream.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	// After the backup: a transaction to replay, one to leave out, in two binary logs.
	src.sql(t, "INSERT INTO shop.orders VALUES (13, 3, 5.00);")
	mid, midGTID := src.position(t), src.sql(t, "SELECT @@gtid_binlog_pos")
	src.sql(t, "FLUSH BINARY LOGS;\nDELETE FROM shop.orders;\nFLUSH BINARY LOGS;")
	if err := os.Mkdir(filepath.Join(backupRoot, "binlogs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"binlog.000001", "binlog.000002"} {
		data, err := os.ReadFile(filepath.Join(src.dataDir, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(backupRoot, "binlogs", n), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	def := func(binlogs ...string) string {
		d := fmt.Sprintf("name: shop-pitr\nengine: mariadb\nversion: %q\nsourceType: backup\ninitialDatabaseName: shop\nbackups:\n  - path: shop.xb.gz\n", majorMinor(e.Version()))
		for _, b := range binlogs {
			d += "  - path: binlogs/" + b + "\n"
		}
		return d + "recoveryTarget:\n  gtid: " + midGTID + "\n"
	}

	t.Run("to a GTID", func(t *testing.T) {
		rec := &recorder{}
		res, root, run, err := mariaBuild(t, set, backupRoot, def("binlog.000002", "binlog.000001"), rec)
		if err != nil {
			t.Fatalf("%v\n%s", err, rec.logText())
		}
		want := []string{StepRestore, StepStart, StepCheckpoint, StepStop}
		if got := mariaSteps(res); !slices.Equal(got, want) {
			t.Fatalf("steps = %v, want %v", got, want)
		}
		if res.DataState.LogPosition != mid {
			t.Errorf("LogPosition = %q, want %q (the source's after the transaction of the target)", res.DataState.LogPosition, mid)
		}
		if res.DataState.Time.IsZero() || !strings.Contains(res.DataState.Source, "binlog.000001") {
			t.Errorf("data state %+v: want the time of the last transaction replayed", res.DataState)
		}
		if pids := enginetest.ServersUsing(t, run); len(pids) != 0 {
			t.Fatalf("servers left running: %v", pids)
		}
		inst := mariaStart(t, e, root)
		if got := mariaQuery(t, inst, "shop", "SELECT id, total FROM orders ORDER BY id"); got != "10\t12.50\n11\t7.25\n12\t100.00\n13\t5.00" {
			t.Errorf("orders in the image:\n%s\nwant the backup's and the replayed row, not the DELETE after the target", got)
		}
	})
	t.Run("missing binlog", func(t *testing.T) {
		rec := &recorder{}
		_, root, run, err := mariaBuild(t, set, backupRoot, def("binlog.000002"), rec)
		var se *StepError
		if !errors.As(err, &se) || se.Step != StepRestore || !errors.Is(err, engine.ErrFormat) ||
			!strings.Contains(err.Error(), "binary log binlog.000001 is missing: the backup stands at binlog.000001:") {
			t.Fatalf("Build = %v; want the restore step failing, naming binlog.000001", err)
		}
		if _, err := os.Stat(engine.DataDir(root)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("data directory left in the volume (%v)", err)
		}
		if pids := enginetest.ServersUsing(t, run); len(pids) != 0 {
			t.Fatalf("servers left running: %v", pids)
		}
	})
}
