package app

import (
	"bytes"
	"context"
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
	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// The examples' StatefulSets run the official images' entrypoints, which this machine does not
// have; these tests run what matters of them on a freshly built image with the servers
// installed here: the server on the data directory where the example's PGDATA or --datadir
// says, with the example's arguments and configuration files, then the example's
// set-password.sh, then a client over TCP with the Secret's password, as a pod of the
// StatefulSet would be reached.

// example is what a test needs of an example's StatefulSet: its one container, the mount path
// of the clone and the ConfigMap's files.
type example struct {
	container corev1.Container
	mountPath string
	files     map[string]string
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
		}
	}
	require.NotNil(t, sts)
	require.Len(t, sts.Spec.Template.Spec.Containers, 1)
	require.Nil(t, sts.Spec.Template.Spec.SecurityContext, "no fsGroup (see the example's comment)")
	ex.container = sts.Spec.Template.Spec.Containers[0]
	require.Len(t, sts.Spec.VolumeClaimTemplates, 1)
	claim := sts.Spec.VolumeClaimTemplates[0]
	require.Equal(t, "VolumeSnapshot", claim.Spec.DataSource.Kind, "the replicas clone the image")
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

// runScript runs the example's set-password.sh as the pod's postStart hook does (as root),
// with env, within a minute.
func runScript(t *testing.T, conf string, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(conf, "set-password.sh"))
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "set-password.sh: %s", out)
}

// TestExamplePostgres: a clone as examples/postgres/statefulset.yaml runs it accepts TCP
// clients with the Secret's password, and only with it.
func TestExamplePostgres(t *testing.T) {
	pg := requirePostgres(t)
	ex := readExample(t, "postgres")
	env := map[string]string{}
	for _, e := range ex.container.Env {
		env[e.Name] = e.Value
	}
	require.Equal(t, engine.DataDir(ex.mountPath), env["PGDATA"], "PGDATA is the image's data directory")
	args := ex.container.Args
	require.Equal(t, "postgres", args[0], "the official entrypoint's command")

	root := filepath.Join(workDir(t), "clone")
	code, _, stderr, o := build(t, "--definition-json",
		`{"name":"sales","engine":"postgres","version":"`+strings.Split(pg.Version(), ".")[0]+`","sourceType":"empty"}`, "--root", root)
	require.Equal(t, 0, code, "stderr:\n%s", stderr)
	require.True(t, o.OK)

	conf, sock, port := ex.confDir(t), runDir(t, 0o755), freePort(t)
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	require.NoError(t, u.Chown(sock))
	serverArgs := []string{"-D", engine.DataDir(root)}
	for _, a := range args[1:] {
		serverArgs = append(serverArgs, strings.ReplaceAll(a, "/etc/dataimage", conf))
	}
	// This machine's loopback only, a free port, a socket directory of the test's.
	serverArgs = append(serverArgs, "-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(port), "-c", "unix_socket_directories="+sock)
	log := startServer(t, u.Command(context.Background(), "", pgTool(t, pg, "postgres"), serverArgs))

	const password = "s3cret-for-clones"
	bin := filepath.Dir(pgTool(t, pg, "psql"))
	runScript(t, conf, "CLONE_PASSWORD="+password, "PGSOCKET="+sock, "PGPORT="+strconv.Itoa(port), "PATH="+bin+":"+os.Getenv("PATH"))

	psql := func(pw string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "psql"), "-X", "-At", "-c", "SELECT current_user",
			"host=127.0.0.1 port="+strconv.Itoa(port)+" user=postgres dbname=postgres sslmode=disable")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+pw)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := psql(password)
	require.NoError(t, err, "%s\nserver log:\n%s", out, log)
	require.Equal(t, "postgres", out)
	out, err = psql("wrong")
	require.Error(t, err)
	require.Contains(t, out, "password authentication failed")
}

// TestExampleMariaDB: a clone as examples/mariadb/statefulset.yaml runs it accepts TCP clients
// as root with the Secret's password.
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

	const password = "s3cret-for-clones"
	runScript(t, conf, "CLONE_PASSWORD="+password, "MARIADB_SOCKET="+socket)

	client := func(pw string) (string, error) {
		cmd := exec.Command("mariadb", "--no-defaults", "--protocol=tcp", "--host=127.0.0.1", "--port="+strconv.Itoa(port),
			"--user=root", "--password="+pw, "-N", "-B", "-e", "SELECT CURRENT_USER(), COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop'")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := client(password)
	errLog, _ := os.ReadFile(filepath.Join(run, "error.log"))
	require.NoError(t, err, "%s\nserver log:\n%s", out, errLog)
	require.Equal(t, "root@%\t1", out)
	out, err = client("wrong")
	require.Error(t, err)
	require.Contains(t, out, "Access denied")
}

// requireMariaDB returns the installed MariaDB engine, or skips the test (fails it when CI is
// "true").
func requireMariaDB(t *testing.T) engine.Engine {
	t.Helper()
	set, err := builder.Discover()
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
