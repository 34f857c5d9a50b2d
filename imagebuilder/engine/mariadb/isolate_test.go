package mariadb_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb/internal/mariadbtest"
	"github.com/dataimage/dataimage/internal/conncount"
)

// primaries returns two counting listeners that stand for primaries (a connection attempt is
// what counts) and the total of their connections.
func primaries(t *testing.T) ([2]int, func() int64) {
	a := conncount.New(t, "unix", filepath.Join(t.TempDir(), "nothing-listens-here"))
	b := conncount.New(t, "unix", filepath.Join(t.TempDir(), "nothing-listens-here"))
	return [2]int{a.Port(), b.Port()}, func() int64 { return a.Count() + b.Count() }
}

// replicaOf configures in as a replica of the primaries at ports (the default connection and a
// named one), without starting it.
func replicaOf(t *testing.T, in engine.Instance, ports [2]int) {
	t.Helper()
	mariadbtest.Exec(t, in, "", fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='repl', MASTER_PASSWORD='repl-secret', MASTER_CONNECT_RETRY=1;\n"+
		"CHANGE MASTER 'other' TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='repl', MASTER_CONNECT_RETRY=1;\n", ports[0], ports[1]))
	if got := mariadbtest.Query(t, in, "", "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE '%Slave%'"); got != "0" {
		t.Fatalf("replica threads running before the test starts them: %s", got)
	}
}

func stop(t *testing.T, in engine.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mariadbtest.Timeout)
	defer cancel()
	if err := in.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStartIsolates starts a server on a data directory configured as the replica of a primary
// (master.info, a named connection in multi-master.info), without any preparation of the data:
// the server starts no replica thread, removes the configuration, writes no binary log, and
// never connects to the primary.
func TestStartIsolates(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	ports, connections := primaries(t)
	in, root := mariadbtest.Instance(t, e, engine.InitOptions{}, engine.StartOptions{})
	replicaOf(t, in, ports)
	stop(t, in)
	dataDir := engine.DataDir(root)
	if _, err := os.Stat(filepath.Join(dataDir, "master.info")); err != nil {
		t.Fatalf("the replica configuration: %v", err)
	}

	in = mariadbtest.Start(t, e, root, engine.StartOptions{})
	if got := mariadbtest.Query(t, in, "", "SHOW ALL SLAVES STATUS"); got != "" {
		t.Errorf("SHOW ALL SLAVES STATUS = %q, want none", got)
	}
	if got := mariadbtest.Query(t, in, "", "SELECT CONCAT_WS('|', @@log_bin, @@read_only)"); got != "OFF|OFF" {
		t.Errorf("log_bin|read_only = %q, want OFF|OFF", got)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "master.info")); !os.IsNotExist(err) {
		t.Errorf("master.info after the start: %v", err)
	}
	if !strings.Contains(in.LogTail(50), "dataimage: replica configuration removed") {
		t.Errorf("the log does not say that the replica configuration was removed:\n%s", in.LogTail(50))
	}
	mariadbtest.Exec(t, in, "", "CREATE DATABASE w;\nCREATE TABLE w.t (i int);\nINSERT INTO w.t VALUES (1), (2), (3);\nFLUSH LOGS;\n")
	// A replica thread connects at once when it starts; and START SLAVE has nothing to start.
	time.Sleep(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), mariadbtest.Timeout)
	defer cancel()
	if err := in.Exec(ctx, "", strings.NewReader("START SLAVE;\n")); err == nil || !strings.Contains(err.Error(), "1200") {
		t.Errorf("START SLAVE = %v, want ERROR 1200 (misconfigured: no primary)", err)
	}
	if n := connections(); n != 0 {
		t.Errorf("%d connection(s) to the primary", n)
	}
}

// TestPrepareImageMariaDB: the image keeps no replica configuration and no account that logs in
// over TCP; the GTID position of the data stays.
func TestPrepareImageMariaDB(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	ports, connections := primaries(t)
	in, _ := mariadbtest.Instance(t, e, engine.InitOptions{}, engine.StartOptions{})
	replicaOf(t, in, ports)
	mariadbtest.Exec(t, in, "", "SET GLOBAL gtid_slave_pos = '0-1-42';\nCREATE USER app@'%' IDENTIFIED BY 'app-secret';\nCREATE USER root@'%' IDENTIFIED BY 'source-root';\nCREATE USER tool@localhost IDENTIFIED BY 'x';\n")
	ctx, cancel := context.WithTimeout(context.Background(), mariadbtest.Timeout)
	defer cancel()
	if err := in.PrepareImage(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mariadbtest.Query(t, in, "", "SHOW ALL SLAVES STATUS"); got != "" {
		t.Errorf("SHOW ALL SLAVES STATUS = %q, want none", got)
	}
	got := mariadbtest.Query(t, in, "", "SELECT GROUP_CONCAT(CONCAT(User, '@', Host, '=', IFNULL(JSON_EXTRACT(Priv, '$.account_locked'), 'false')) ORDER BY User, Host) FROM mysql.global_priv WHERE User IN ('app', 'root', 'tool')")
	if got != "app@%=true,root@%=true,root@localhost=false,tool@localhost=false" {
		t.Errorf("accounts = %q: the TCP ones must be locked, the socket ones not", got)
	}
	if got := mariadbtest.Query(t, in, "", "SELECT @@gtid_slave_pos"); got != "0-1-42" {
		t.Errorf("gtid_slave_pos = %q, want it kept", got)
	}
	if n := connections(); n != 0 {
		t.Errorf("%d connection(s) to the primary", n)
	}
}

// TestTCPAdmitsTheClonesCredentialsOnly: a server with a TCP listener admits nobody over TCP
// until SetPassword, whatever accounts and passwords its data holds (its source's, or those of
// the clone it was made from), then root with that password only. The socket's directory is the
// server user's only.
func TestTCPAdmitsTheClonesCredentialsOnly(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	in, root := mariadbtest.Instance(t, e, engine.InitOptions{}, engine.StartOptions{})
	mariadbtest.Exec(t, in, "", "CREATE USER app@'%' IDENTIFIED BY 'app-secret';\nCREATE USER root@'%' IDENTIFIED BY 'image-known';\nGRANT ALL ON *.* TO root@'%';\n"+
		"CREATE USER anon@'127.0.0.1' IDENTIFIED BY '';\n")
	stop(t, in)

	port, err := engine.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	rd := mariadbtest.RuntimeDir(t)
	if err := os.Chmod(rd, 0o755); err != nil {
		t.Fatal(err)
	}
	in = mariadbtest.Start(t, e, root, engine.StartOptions{RuntimeDir: rd, ListenAddress: "127.0.0.1", Port: port})
	login := func(user, pw string) (string, error) {
		cmd := exec.Command("mariadb", "--no-defaults", "--protocol=tcp", "--host=127.0.0.1", "--port="+strconv.Itoa(port),
			"--user="+user, "--password="+pw, "-N", "-B", "-e", "SELECT CURRENT_USER()")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	for _, c := range [][2]string{{"root", "image-known"}, {"app", "app-secret"}, {"anon", ""}} {
		if out, err := login(c[0], c[1]); err == nil || !strings.Contains(out, "locked") {
			t.Errorf("before SetPassword, %s over TCP: %v %s; want a locked account", c[0], err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), mariadbtest.Timeout)
	defer cancel()
	if err := in.SetPassword(ctx, "clone-own"); err != nil {
		t.Fatal(err)
	}
	if out, err := login("root", "clone-own"); err != nil || out != "root@%" {
		t.Errorf("root with the clone's password: %v %s", err, out)
	}
	if out, err := login("root", "image-known"); err == nil || !strings.Contains(out, "Access denied") {
		t.Errorf("root with the image's password: %v %s", err, out)
	}
	for _, c := range [][2]string{{"app", "app-secret"}, {"anon", ""}} {
		if out, err := login(c[0], c[1]); err == nil || !strings.Contains(out, "locked") {
			t.Errorf("after SetPassword, %s over TCP: %v %s; want a locked account", c[0], err, out)
		}
	}

	st, err := os.Stat(rd)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("runtime directory mode %v, want 0700", st.Mode().Perm())
	}
	if os.Geteuid() == 0 {
		nobody, err := engine.ResolveUser("nobody", "")
		if err != nil {
			t.Fatal(err)
		}
		c := nobody.Command(ctx, "", "mariadb", []string{"--no-defaults", "--socket=" + in.Conn().Socket, "--user=nobody", "-e", "SELECT 1"})
		out, err := c.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "(13)") {
			t.Errorf("another OS user through the socket: %v %s; want permission denied (13)", err, out)
		}
	}
}
