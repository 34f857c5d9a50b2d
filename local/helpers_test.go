package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/dataimage/dataimage/internal/s3test"
)

// daemonChildEnv makes the test binary run a daemon (RunDaemon) for the home it names instead
// of the tests: the kill test starts it through Connect, kills it with SIGKILL and starts it
// again.
const daemonChildEnv = "DATAIMAGE_LOCAL_TEST_DAEMON"

// dataPlaneChildArg, as the test binary's first argument, makes it run the data plane
// (RunDataPlane) of the home its second argument names instead of the tests: the daemons of the
// tests start it so (testConfig), as the dataimage command starts `dataimage dataplane`.
const dataPlaneChildArg = "dataimage-local-test-dataplane"

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == dataPlaneChildArg {
		os.Exit(runChildDataPlane(os.Args[2]))
	}
	if home := os.Getenv(daemonChildEnv); home != "" {
		os.Exit(runChildDaemon(home))
	}
	os.Exit(s3test.Main(m, &s3srv))
}

// s3srv is the S3 server of the registry tests.
var s3srv *s3test.Server

// runChildDaemon runs the daemon of home until SIGTERM or SIGINT (daemon.log, through
// Connect).
func runChildDaemon(home string) int { return runChild("daemon", home, RunDaemon) }

// runChildDataPlane runs the data plane of home until SIGTERM or SIGINT (dataplane.log,
// through the daemon that starts it).
func runChildDataPlane(home string) int { return runChild("data plane", home, RunDataPlane) }

// runChild runs run with the tests' configuration of home until SIGTERM or SIGINT, logging to
// standard error, and returns the exit code.
func runChild(what, home string, run func(context.Context, Config) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := run(ctx, testConfig(home, log)); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		return 1
	}
	return 0
}

// testConfig is the configuration of the tests' daemons: a small sparse pool, small thin
// volumes, no periodic reaping (tests call reap), and this test binary as the data plane.
func testConfig(home string, log *slog.Logger) Config {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return Config{
		Home:         home,
		PoolSize:     8 << 30,
		VolumeSize:   2 << 30,
		ReapInterval: time.Hour,
		DataPlane:    DataPlaneCommand{Executable: exe, Args: []string{dataPlaneChildArg, home}},
		Logger:       log,
	}
}

// inCI reports whether the tests run in CI, where a missing dependency fails the test instead
// of skipping it (CI installs them all; a skip would hide a broken install).
func inCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail skips the test, or fails it in CI.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf("CI=true and "+format, args...)
	}
	t.Skipf(format, args...)
}

// needKernel skips (fails in CI) unless the tests run as root with FUSE, loop devices and the
// tools a daemon uses.
func needKernel(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "the daemon needs root (FUSE, loop devices, mounts)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			skipOrFail(t, "the daemon needs %s: %v", dev, err)
		}
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "the daemon needs %s (make deps)", tool)
		}
	}
}

var discovered struct {
	once sync.Once
	set  engine.Set
	err  error
}

// needEngine returns the installed engine of kind, skipping (failing in CI) when there is none.
func needEngine(t testing.TB, kind imagebuilder.Engine) engine.Engine {
	t.Helper()
	needKernel(t)
	discovered.once.Do(func() { discovered.set, discovered.err = registry.Discover() })
	for _, e := range discovered.set {
		if e.Kind() == kind {
			return e
		}
	}
	skipOrFail(t, "no %s server is installed (discover: %v); make deps or apt-get install the server", kind, discovered.err)
	return nil
}

// testDir returns a new directory that the database servers' users can traverse (see
// enginetest.Root). Cleanup stops the data plane of its home (dir/home) if one still runs: a
// test that failed half-way may leave one.
func testDir(t testing.TB) string {
	t.Helper()
	dir := enginetest.Root(t)
	t.Cleanup(func() { killDataPlane(t, filepath.Join(dir, "home")) })
	return dir
}

// killDataPlane stops the data plane of home, if one runs: SIGTERM, then SIGKILL after a
// minute.
func killDataPlane(t testing.TB, home string) {
	t.Helper()
	sock := DataPlaneSocketPath(home)
	pid, held, err := dataplane.LockHolder(sock)
	if err != nil || !held || pid <= 0 {
		return
	}
	t.Logf("stopping the data plane (pid %d) of %s", pid, home)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(time.Minute)
	for {
		if _, held, _ := dataplane.LockHolder(sock); !held {
			return
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("the data plane %d of %s did not stop on SIGTERM", pid, home)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLog returns a logger writing to a file, whose content is printed when the test fails.
func testLog(t testing.TB, dir string) *slog.Logger {
	t.Helper()
	path := filepath.Join(dir, "test.log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			t.Logf("daemon log (last lines):\n%s", engine.TailFile(path, 60))
		}
	})
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newTestDaemon starts a daemon in a new home. At cleanup it is closed, and the test fails if
// anything is left mounted or exported, or the pool does not check clean.
func newTestDaemon(t testing.TB) (*Daemon, Config) {
	t.Helper()
	needKernel(t)
	dir := testDir(t)
	cfg := testConfig(filepath.Join(dir, "home"), testLog(t, dir))
	d, err := NewDaemon(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAndCheck(t, d, cfg) })
	return d, cfg
}

// closeAndCheck closes d and checks that nothing is left of it: no mounts, no exports, no loop
// devices, a pool that checks clean.
func closeAndCheck(t testing.TB, d *Daemon, cfg Config) {
	t.Helper()
	rep, err := d.CheckPool(context.Background(), false)
	if !errors.Is(err, ErrUnavailable) { // closed by the test already
		require.NoError(t, err)
		require.True(t, rep.OK, "pool check before close: %+v", rep)
	}
	require.NoError(t, d.Close())
	requireNothingLeft(t, cfg.Home)
}

// requireNothingLeft checks that no daemon's kernel state is left in home, and that its pool
// checks clean.
func requireNothingLeft(t testing.TB, home string) {
	t.Helper()
	require.False(t, dataPlaneRunning(home), "a data plane still runs for the home")
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	require.NotContains(t, string(mi), home+"/", "mounts under the home")
	require.Empty(t, nodetest.LoopDevicesOn(t, home), "loop devices backed by files under the home")
	exp, err := export.Detect(export.Options{StateDir: filepath.Join(home, "export")})
	require.NoError(t, err)
	left, err := exp.Leftovers()
	require.NoError(t, err)
	require.Empty(t, left, "exports left")
	require.Empty(t, processesUnder(filepath.Join(home, "mnt")+"/"), "processes left under the mounts")
	p, err := blockstore.Open(filepath.Join(home, "pool.img"), blockstore.Options{})
	require.NoError(t, err)
	defer p.Close()
	rep, err := p.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "pool check after close: %v", rep)
}

// backupDir returns a directory for backups that the servers' users can read.
func backupDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(testDir(t), "backups")
	require.NoError(t, os.Mkdir(dir, 0o755))
	return dir
}

// writeFile writes a file the servers' users can read.
func writeTestFile(t testing.TB, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

// build builds an image from a definition (YAML) with backup root root, and returns it with the
// steps its progress named.
func build(t testing.TB, s Service, def, root string) (*Image, []string) {
	t.Helper()
	img, steps, err := tryBuild(s, def, root)
	require.NoError(t, err)
	return img, steps
}

func tryBuild(s Service, def, root string) (*Image, []string, error) {
	var mu sync.Mutex
	var steps []string
	img, err := s.BuildImage(context.Background(), BuildRequest{Definition: []byte(def), DefinitionPath: "test.yaml", BackupRoot: root},
		func(ev wire.Event) {
			mu.Lock()
			defer mu.Unlock()
			if len(steps) == 0 || steps[len(steps)-1] != ev.Step {
				steps = append(steps, ev.Step)
			}
		})
	return img, steps, err
}

// createClone makes a clone and deletes it at cleanup (unless the test did).
func createClone(t testing.TB, s Service, req CloneRequest) *Clone {
	t.Helper()
	c, err := s.CreateClone(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, CloneRunning, c.State, "%+v", c)
	t.Cleanup(func() {
		if err := s.DeleteClone(context.Background(), c.Name); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrUnavailable) {
			t.Errorf("delete clone %s: %v", c.Name, err)
		}
	})
	return c
}

// sql runs a statement against a clone's server through its connection string, with the
// engine's client, and returns its output (unaligned, no headers).
func sql(t testing.TB, c *Clone, stmt string) string {
	t.Helper()
	out, err := trySQL(c, stmt)
	require.NoError(t, err, "%s on clone %s", stmt, c.Name)
	return out
}

func trySQL(c *Clone, stmt string) (string, error) {
	var cmd *exec.Cmd
	switch c.Engine {
	case imagebuilder.EnginePostgres:
		cmd = exec.Command("psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", stmt, c.Connection)
	default:
		cmd = exec.Command("mariadb", "--protocol=TCP", "-h", c.Host, "-P", fmt.Sprint(c.Port), "-u", c.User,
			"--password="+c.Password, "-N", "-B", "-e", stmt, c.Database)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", cmd.Path, err, out.String())
	}
	return strings.TrimSpace(out.String()), nil
}

// toolPath returns the path of a PostgreSQL client tool of eng's major version.
func pgTool(t testing.TB, eng engine.Engine, tool string) string {
	t.Helper()
	major, _, _ := strings.Cut(eng.Version(), ".")
	p := filepath.Join("/usr/lib/postgresql", major, "bin", tool)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	p, err := exec.LookPath(tool)
	require.NoError(t, err, "PostgreSQL tool %s", tool)
	return p
}

// sourceServer starts a throwaway server of eng (Init, Start) in a directory of its own, runs
// setup in it, and stops it at cleanup. It returns the instance and its runtime directory.
func sourceServer(t testing.TB, eng engine.Engine, setup string) (engine.Instance, string) {
	t.Helper()
	ctx := context.Background()
	dir := testDir(t)
	root, run := filepath.Join(dir, "src"), filepath.Join(dir, "run")
	require.NoError(t, os.Mkdir(root, 0o755))
	require.NoError(t, os.Mkdir(run, 0o755))
	require.NoError(t, eng.Init(ctx, root, engine.InitOptions{Database: "app"}))
	inst, err := eng.Start(ctx, root, engine.StartOptions{RuntimeDir: run})
	require.NoError(t, err)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, inst.Stop(sctx))
	})
	if setup != "" {
		require.NoError(t, inst.Exec(ctx, "app", strings.NewReader(setup)))
	}
	return inst, run
}

// serverUser is the OS user the servers of kind run as.
func serverUser(t testing.TB, kind imagebuilder.Engine) *engine.User {
	t.Helper()
	u, err := needEngine(t, kind).User("")
	require.NoError(t, err)
	return u
}

// serverUserCommand runs a tool as the servers' OS user, writing its standard output to stdout
// (a file root opens) when not nil.
func serverUserCommand(t testing.TB, kind imagebuilder.Engine, stdout *os.File, name string, args ...string) {
	t.Helper()
	u := serverUser(t, kind)
	cmd := u.Command(context.Background(), "", name, args)
	if stdout != nil {
		cmd.Stdout = stdout
	}
	_, err := engine.Run(cmd)
	require.NoError(t, err)
}

// dumpTo runs a dump tool as the servers' user and writes its output to path.
func dumpTo(t testing.TB, kind imagebuilder.Engine, path, name string, args ...string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	require.NoError(t, err)
	defer f.Close()
	serverUserCommand(t, kind, f, name, args...)
	require.NoError(t, f.Sync())
}

// poolNames lists the names of the pool's volumes and snapshots.
func poolNames(t testing.TB, d *Daemon) []string {
	t.Helper()
	vols, err := d.store.ListVolumes(context.Background())
	require.NoError(t, err)
	snaps, err := d.store.ListSnapshots(context.Background())
	require.NoError(t, err)
	var names []string
	for _, v := range vols {
		names = append(names, "volume "+v.Name)
	}
	for _, s := range snaps {
		names = append(names, "snapshot "+s.Name)
	}
	slices.Sort(names)
	return names
}
