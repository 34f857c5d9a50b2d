package app

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
	"github.com/dataimage/dataimage/internal/conncount"
)

// The examples' StatefulSets run the official images' entrypoints, which this machine does not
// have; these tests run what matters of them on a freshly built image with the servers
// installed here: the server on the data directory where the example's PGDATA or --datadir
// says, with the example's arguments and configuration files, then the example's
// set-password.sh with a replica's key of the Secret, then clients over TCP, as a pod of the
// StatefulSet would be reached. Before that, the image is given what a careless clone (or an
// image built before the builder isolated images) could hold: archiving, a synchronous standby,
// a replica configuration, accounts with known passwords; the example's server must neither
// archive nor connect anywhere, and admit the replica's own login only.

// example is what a test needs of an example's StatefulSet: its one container, the mount path
// of the clone and the ConfigMap's files.
type example struct {
	container corev1.Container
	mountPath string
	files     map[string]string
	passwords map[string]string // the Secret's, by pod name
}

// readExample reads examples/<engine>/statefulset.yaml.
func readExample(t *testing.T, engineDir string) example {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "examples", engineDir, "statefulset.yaml"))
	require.NoError(t, err)
	var ex example
	var sts *appsv1.StatefulSet
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta struct{ Kind string }
		require.NoError(t, yaml.Unmarshal([]byte(doc), &meta))
		switch meta.Kind {
		case "StatefulSet":
			sts = &appsv1.StatefulSet{}
			require.NoError(t, yaml.UnmarshalStrict([]byte(doc), sts))
		case "ConfigMap":
			var cm corev1.ConfigMap
			require.NoError(t, yaml.UnmarshalStrict([]byte(doc), &cm))
			ex.files = cm.Data
		case "Secret":
			var sec corev1.Secret
			require.NoError(t, yaml.UnmarshalStrict([]byte(doc), &sec))
			ex.passwords = sec.StringData
		}
	}
	require.NotNil(t, sts)
	require.Len(t, sts.Spec.Template.Spec.Containers, 1)
	require.Nil(t, sts.Spec.Template.Spec.SecurityContext, "no fsGroup (see the example's comment)")
	ex.container = sts.Spec.Template.Spec.Containers[0]
	require.Len(t, sts.Spec.VolumeClaimTemplates, 1)
	claim := sts.Spec.VolumeClaimTemplates[0]
	require.Equal(t, "VolumeSnapshot", claim.Spec.DataSource.Kind, "the replicas clone the image")
	// Each replica's password: a key of the Secret per pod, one per replica.
	require.Len(t, ex.passwords, int(*sts.Spec.Replicas))
	seen := map[string]bool{}
	for i := range int(*sts.Spec.Replicas) {
		pw, ok := ex.passwords[sts.Name+"-"+strconv.Itoa(i)]
		require.True(t, ok, "no password for pod %s-%d", sts.Name, i)
		require.False(t, seen[pw], "two replicas share a password")
		seen[pw] = true
	}
	for _, m := range ex.container.VolumeMounts {
		if m.Name == claim.Name {
			ex.mountPath = m.MountPath
		}
	}
	require.NotEmpty(t, ex.mountPath)
	return ex
}

// confDir writes the example's ConfigMap where the server's user can read it and returns the
// directory.
func (ex example) confDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(workDir(t), "conf")
	require.NoError(t, os.Mkdir(dir, 0o755))
	for name, text := range ex.files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644))
	}
	return dir
}

// freePort returns a TCP port on the loopback address that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startServer starts cmd (the server) and stops it with SIGTERM at the end of the test.
func startServer(t *testing.T, cmd *exec.Cmd) *bytes.Buffer {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return &out
}

// runScript runs the example's set-password.sh as the pod's postStart hook does (as root), with
// the password of pod sales-clones-1 (shop-clones-1) of the example's Secret in the file
// CLONE_PASSWORD_FILE names, and env, within a minute. It returns the password.
func runScript(t *testing.T, ex example, conf string, env ...string) string {
	t.Helper()
	require.Contains(t, ex.containerEnv(), "CLONE_PASSWORD_FILE", "the password's file is named in the container's environment")
	require.NotEmpty(t, ex.passwords, "the Secret holds a password per pod")
	var pod, password string
	for k, v := range ex.passwords {
		if strings.HasSuffix(k, "-1") {
			pod, password = k, v
		}
	}
	require.NotEmpty(t, pod, "a password for the replica -1: %v", ex.passwords)
	file := filepath.Join(t.TempDir(), pod)
	require.NoError(t, os.WriteFile(file, []byte(password), 0o400))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(conf, "set-password.sh"))
	cmd.Env = append(os.Environ(), append(env, "CLONE_PASSWORD_FILE="+file)...)
	// Past the deadline the script's clients go too (a commit waiting for a standby would hold
	// the output open).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "set-password.sh: %s", out)
	return password
}

// containerEnv returns the container's environment variables with a plain value.
func (ex example) containerEnv() map[string]string {
	env := map[string]string{}
	for _, e := range ex.container.Env {
		env[e.Name] = e.Value
	}
	return env
}

// TestExamplePostgres: a clone as examples/postgres/statefulset.yaml runs it archives nothing,
// waits for no standby, and accepts TCP clients as postgres with the replica's password only.
func TestExamplePostgres(t *testing.T) {
	pg := requirePostgres(t)
	ex := readExample(t, "postgres")
	require.Equal(t, engine.DataDir(ex.mountPath), ex.containerEnv()["PGDATA"], "PGDATA is the image's data directory")
	args := ex.container.Args
	require.Equal(t, "postgres", args[0], "the official entrypoint's command")

	root := filepath.Join(workDir(t), "clone")
	code, _, stderr, o := build(t, "--definition-json",
		`{"name":"sales","engine":"postgres","version":"`+strings.Split(pg.Version(), ".")[0]+`","sourceType":"empty"}`, "--root", root)
	require.Equal(t, 0, code, "stderr:\n%s", stderr)
	require.True(t, o.OK)

	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	// What a clone's user (or an image older than the builder's isolation) may leave: a role
	// with a known password, archiving to a marker directory, a synchronous standby.
	markers := filepath.Join(workDir(t), "markers")
	require.NoError(t, u.MkdirAll(markers, 0o755))
	setup := runDir(t, 0o755)
	inst, err := pg.Start(context.Background(), root, engine.StartOptions{RuntimeDir: setup})
	require.NoError(t, err)
	require.NoError(t, inst.Exec(context.Background(), "", strings.NewReader("CREATE ROLE app LOGIN PASSWORD 'app-secret';\n")))
	require.NoError(t, inst.Stop(context.Background()))
	auto, err := os.OpenFile(filepath.Join(engine.DataDir(root), "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fmt.Fprintf(auto, "archive_mode = on\narchive_command = 'touch %s/archived-%%f'\nsynchronous_standby_names = 'standby1'\n", markers)
	require.NoError(t, err)
	require.NoError(t, auto.Close())

	conf, sock, port := ex.confDir(t), runDir(t, 0o755), freePort(t)
	require.NoError(t, u.Chown(sock))
	serverArgs := []string{"-D", engine.DataDir(root)}
	for _, a := range args[1:] {
		serverArgs = append(serverArgs, strings.ReplaceAll(a, "/etc/dataimage", conf))
	}
	// This machine's loopback only, a free port, a socket directory of the test's.
	serverArgs = append(serverArgs, "-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(port), "-c", "unix_socket_directories="+sock)
	log := startServer(t, u.Command(context.Background(), "", pgTool(t, pg, "postgres"), serverArgs))

	bin := filepath.Dir(pgTool(t, pg, "psql"))
	password := runScript(t, ex, conf, "PGSOCKET="+sock, "PGPORT="+strconv.Itoa(port), "PATH="+bin+":"+os.Getenv("PATH"))

	psqlAs := func(user, pw, sql string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "psql"), "-X", "-At", "-c", sql,
			"host=127.0.0.1 port="+strconv.Itoa(port)+" user="+user+" dbname=postgres sslmode=disable")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+pw)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := psqlAs("postgres", password, "SELECT current_user")
	require.NoError(t, err, "%s\nserver log:\n%s", out, log)
	require.Equal(t, "postgres", out)
	out, err = psqlAs("postgres", "wrong", "SELECT 1")
	require.Error(t, err)
	require.Contains(t, out, "password authentication failed")
	out, err = psqlAs("app", "app-secret", "SELECT 1")
	require.Error(t, err, "a role of the image over TCP")
	require.Contains(t, out, `no pg_hba.conf entry for host "127.0.0.1", user "app"`)

	out, err = psqlAs("postgres", password, "SELECT current_setting('archive_mode') || '|' || current_setting('synchronous_standby_names') || '|' || current_setting('max_logical_replication_workers')")
	require.NoError(t, err, out)
	require.Equal(t, "off||0", out)
	for range 2 {
		out, err = psqlAs("postgres", password, "SET statement_timeout = '30s'; CREATE TABLE IF NOT EXISTS t (i int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
		require.NoError(t, err, out)
	}
	time.Sleep(2 * time.Second)
	entries, err := os.ReadDir(markers)
	require.NoError(t, err)
	require.Empty(t, entries, "the clone archived WAL")
}

// TestExampleMariaDB: a clone as examples/mariadb/statefulset.yaml runs it never connects to
// the primary its data names, and accepts TCP clients as root with the replica's password only.
func TestExampleMariaDB(t *testing.T) {
	my := requireMariaDB(t)
	ex := readExample(t, "mariadb")
	args := ex.container.Args
	require.Equal(t, "mariadbd", args[0], "the official entrypoint's command")
	require.Contains(t, args, "--datadir="+engine.DataDir(ex.mountPath), "--datadir is the image's data directory")

	root := filepath.Join(workDir(t), "clone")
	v := strings.Split(my.Version(), ".")
	code, _, stderr, o := build(t, "--definition-json",
		`{"name":"shop","engine":"mariadb","version":"`+v[0]+"."+v[1]+`","sourceType":"empty","initialDatabaseName":"shop"}`, "--root", root)
	require.Equal(t, 0, code, "stderr:\n%s", stderr)
	require.True(t, o.OK)

	// What a clone's user (or an image older than the builder's isolation) may leave: the
	// configuration of a replica, with credentials, of a primary that is a counting listener;
	// an account with a known password for TCP clients.
	primary := conncount.New(t, "unix", filepath.Join(t.TempDir(), "nothing-listens-here"))
	setup := runDir(t, 0o755)
	inst, err := my.Start(context.Background(), root, engine.StartOptions{RuntimeDir: setup})
	require.NoError(t, err)
	require.NoError(t, inst.Exec(context.Background(), "", strings.NewReader(fmt.Sprintf(
		"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='repl', MASTER_PASSWORD='repl-secret', MASTER_CONNECT_RETRY=1;\n"+
			"CREATE USER app@'%%' IDENTIFIED BY 'app-secret';\nGRANT ALL ON shop.* TO app@'%%';\n", primary.Port()))))
	require.NoError(t, inst.Stop(context.Background()))

	conf, run, port := ex.confDir(t), runDir(t, 0o755), freePort(t)
	u, err := engine.ResolveUser("", "mysql")
	require.NoError(t, err)
	require.NoError(t, u.Chown(run))
	mariadbd, err := exec.LookPath("mariadbd")
	require.NoError(t, err)
	socket := filepath.Join(run, "mysqld.sock")
	// No configuration files of this machine but the official image's skip-name-resolve (its
	// 05-skipcache.cnf: a client at 127.0.0.1 is not root@localhost); the loopback only, a
	// free port, files of the test's.
	serverArgs := []string{"--no-defaults", "--skip-name-resolve"}
	for _, a := range args[1:] {
		serverArgs = append(serverArgs, strings.ReplaceAll(a, ex.mountPath, root))
	}
	serverArgs = append(serverArgs, "--bind-address=127.0.0.1", "--port="+strconv.Itoa(port), "--socket="+socket,
		"--pid-file="+filepath.Join(run, "mysqld.pid"), "--tmpdir="+run, "--log-error="+filepath.Join(run, "error.log"))
	startServer(t, u.Command(context.Background(), "", mariadbd, serverArgs))

	password := runScript(t, ex, conf, "MARIADB_SOCKET="+socket)

	client := func(user, pw, sql string) (string, error) {
		cmd := exec.Command("mariadb", "--no-defaults", "--protocol=tcp", "--host=127.0.0.1", "--port="+strconv.Itoa(port),
			"--user="+user, "--password="+pw, "-N", "-B", "-e", sql)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := client("root", password, "SELECT CURRENT_USER(), COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop'")
	errLog, _ := os.ReadFile(filepath.Join(run, "error.log"))
	require.NoError(t, err, "%s\nserver log:\n%s", out, errLog)
	require.Equal(t, "root@%\t1", out)
	out, err = client("root", "wrong", "SELECT 1")
	require.Error(t, err)
	require.Contains(t, out, "Access denied")
	out, err = client("app", "app-secret", "SELECT 1")
	require.Error(t, err, "an account of the image over TCP")
	require.Contains(t, out, "account is locked")

	out, err = client("root", password, "SHOW ALL SLAVES STATUS")
	require.NoError(t, err, out)
	require.Empty(t, out, "the replica configuration is gone")
	out, err = client("root", password, "SELECT @@log_bin")
	require.NoError(t, err, out)
	require.Equal(t, "0", out)
	time.Sleep(2 * time.Second) // a replica thread connects at once
	require.Zero(t, primary.Count(), "connections to the primary")
}

// requireMariaDB returns the installed MariaDB engine, or skips the test (fails it when CI is
// "true").
func requireMariaDB(t *testing.T) engine.Engine {
	t.Helper()
	set, err := registry.Discover()
	var my engine.Engine
	if err == nil {
		for _, e := range set {
			if e.Kind() == imagebuilder.EngineMariaDB && (my == nil || imagebuilder.CompareVersions(e.Version(), my.Version()) > 0) {
				my = e
			}
		}
		if my == nil {
			err = engine.ErrNotFound
		}
	}
	if err == nil {
		_, err = exec.LookPath("mariadbd")
	}
	if err == nil {
		_, err = engine.ResolveUser("", "mysql")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("MariaDB is required when CI=true: %v", err)
		}
		t.Skipf("MariaDB is not available (install mariadb-server; CI=true makes this a failure): %v", err)
	}
	return my
}
