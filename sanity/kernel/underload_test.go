package kernel

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// Restarts of TestRestartsUnderLoad: the plugin and the data plane are each killed this many
// times, alternately, then the data plane is upgraded once (SIGTERM: it hands over).
const underLoadKills = 10

// TestRestartsUnderLoad: an ext4 volume runs fio (random writes, each block verified) and a
// second one runs a PostgreSQL server under pgbench, both staged and published through the
// plugin, while the CSI plugin is killed (SIGKILL) underLoadKills times and the data plane
// underLoadKills times, alternately, each started again, and the data plane is upgraded once
// (SIGTERM: it hands the exports over to the FUSE holder). Nothing fails: fio exits 0 with its
// verification passed, pgbench reports no failed transaction and exits 0, pgbench's balance
// invariant holds, the server never restarted, the kernel logged no I/O or EXT4 error on the
// volumes' devices, each file system checks clean (e2fsck -fn, unmounted) and the pool checks
// clean after a SIGTERM of both processes.
func TestRestartsUnderLoad(t *testing.T) {
	for _, tool := range []string{"fio", "e2fsck", "dmesg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (make deps)", tool)
		}
	}
	eng := postgresEngine(t)
	e := newRestartEnv(t)
	e.useHolder(t)
	// The server runs as its own user: it must get through the test's directories.
	require.NoError(t, os.Chmod(e.dir, 0o755))
	dp, plugin, c := e.start(t)

	fsCap := mountCap("ext4")
	fsVol := c.createVolume(t, "fs", 256*mib, fsCap, nil)
	fsTarget := c.stagePublish(t, "fs", fsVol, fsCap)
	pgVol := c.createVolume(t, "pg", 512*mib, fsCap, nil)
	pgTarget := c.stagePublish(t, "pg", pgVol, fsCap)
	devices := map[string]string{"fs": nodetest.MountSource(t, c.stagingPath("fs")), "pg": nodetest.MountSource(t, c.stagingPath("pg"))}
	kmsg := nodetest.OpenKmsg(t)
	for _, d := range []string{e.paths, filepath.Join(e.paths, "pg"), pgTarget} {
		require.NoError(t, os.Chmod(d, 0o755))
	}

	ctx := context.Background()
	root := filepath.Join(pgTarget, "pg")
	require.NoError(t, os.Mkdir(root, 0o755))
	require.NoError(t, eng.Init(ctx, root, engine.InitOptions{}))
	run, err := os.MkdirTemp("", "pgrun") // short: the socket's path is limited
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(run) })
	require.NoError(t, os.Chmod(run, 0o755))
	port, err := engine.FreePort("127.0.0.1")
	require.NoError(t, err)
	inst, err := eng.Start(ctx, root, engine.StartOptions{RuntimeDir: run, ListenAddress: "127.0.0.1", Port: port})
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = inst.Stop(sctx)
		}
	})
	const password = "under-load"
	require.NoError(t, inst.SetPassword(ctx, password))
	conn := inst.Conn()
	url := registry.URL(engine.ConnInfo{Engine: imagebuilder.EnginePostgres, Host: "127.0.0.1", Port: port, User: conn.User, Password: password, Database: conn.Database})
	pgbench := pgTool(t, eng, "pgbench")
	out, err := exec.Command(pgbench, "-i", "-s", "2", "-q", url).CombinedOutput()
	require.NoError(t, err, "pgbench -i: %s", out)

	// The restarts come every interval; each takes a second or two more (more under load):
	// the load is given 5 s for each, so that it runs past them all.
	const interval = 2 * time.Second
	events := 2*underLoadKills + 1
	runtime := time.Duration(events)*5*time.Second + 10*time.Second
	fio := nodetest.StartFIOVerify(t, filepath.Join(fsTarget, "fio.dat"), 32*mib, runtime)
	bench := exec.Command(pgbench, "-n", "-T", strconv.Itoa(int(runtime.Seconds())), "-c", "4", url)
	var benchOut strings.Builder
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	require.NoError(t, bench.Start())
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	t.Cleanup(func() {
		select {
		case <-benchDone:
		default:
			_ = bench.Process.Kill()
		}
	})

	// Run first among the cleanups of a failed test: with the holder gone (and so the
	// connections, if no data plane runs), the load's I/O fails instead of waiting forever.
	t.Cleanup(func() {
		if t.Failed() && e.holder.running() {
			_ = e.holder.cmd.Process.Kill()
			<-e.holder.exited
		}
	})
	start := time.Now()
	var kinds []string
	for i := range events {
		time.Sleep(interval)
		select {
		case err := <-benchDone:
			t.Fatalf("pgbench ended early, before restart %d: %v\n%s", i+1, err, benchOut.String())
		case <-inst.Done():
			t.Fatalf("the PostgreSQL server exited before restart %d:\n%s", i+1, inst.LogTail(30))
		default:
		}
		switch {
		case i == events-1:
			kinds = append(kinds, "data plane SIGTERM")
			require.NoError(t, dp.stop(t, syscall.SIGTERM), "the exit status of a data plane that hands over")
			dp = e.startDataPlane(t)
		case i%2 == 0:
			kinds = append(kinds, "plugin SIGKILL")
			require.Error(t, plugin.stop(t, syscall.SIGKILL), "killed")
			plugin, c = e.startPlugin(t)
		default:
			kinds = append(kinds, "data plane SIGKILL")
			require.Error(t, dp.stop(t, syscall.SIGKILL), "killed")
			dp = e.startDataPlane(t)
		}
		for _, v := range []struct{ id, label string }{{fsVol, "fs"}, {pgVol, "pg"}} {
			requireHealthy(t, c, v.id, c.stagingPath(v.label))
			requireHealthy(t, c, v.id, c.targetPath(v.label))
		}
	}
	elapsed := time.Since(start)
	require.Less(t, elapsed, runtime, "the restarts happened while the load ran")
	require.True(t, e.holder.running(), "the holder never stopped")

	res := fio.Wait(t)
	require.Positive(t, res.Reads, "fio verified what it wrote")
	select {
	case err = <-benchDone:
	case <-time.After(runtime + 2*time.Minute):
		t.Fatal("pgbench did not finish")
	}
	require.NoError(t, err, "pgbench: %s", benchOut.String())
	require.Contains(t, benchOut.String(), "number of failed transactions: 0 ", benchOut.String())
	balance, err := inst.Query(ctx, "", nodetest.PgbenchBalanced)
	require.NoError(t, err)
	require.Equal(t, "t", strings.TrimSpace(balance), "pgbench's balance invariant")
	select {
	case <-inst.Done():
		t.Fatal("the PostgreSQL server exited")
	default:
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	require.NoError(t, inst.Stop(sctx))
	stopped = true
	t.Logf("across %d restarts in %v (%s): fio wrote %d blocks and verified %d, longest fio request %v; pgbench:\n%s",
		events, elapsed.Round(time.Second), strings.Join(kinds[:3], ", ")+", ...", res.Writes, res.Reads,
		res.MaxStall().Round(time.Millisecond), benchOut.String())

	// No kernel error on the volumes' devices: a resent request that failed would show here
	// even when the file systems above retried it.
	kmsg.RequireNoErrorsAbout(t, devices["fs"])
	kmsg.RequireNoErrorsAbout(t, devices["pg"])

	// Each file system checks clean, unmounted, on its device; then both volumes unstage.
	for _, v := range []struct{ id, label string }{{fsVol, "fs"}, {pgVol, "pg"}} {
		_, err := c.node.NodeUnpublishVolume(rpcContext(t), &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: c.targetPath(v.label)})
		require.NoError(t, err)
		require.NoError(t, unix.Unmount(c.stagingPath(v.label), 0))
		ectx, cancel := context.WithTimeout(ctx, 5*time.Minute) // e2fsck stats the loop devices' files: a hung FUSE file elsewhere would hang it
		out, err := exec.CommandContext(ectx, "e2fsck", "-fn", devices[v.label]).CombinedOutput()
		cancel()
		require.NoError(t, err, "e2fsck -fn of the %s volume after the restarts: %s", v.label, out)
		_, err = c.node.NodeUnstageVolume(rpcContext(t), &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: c.stagingPath(v.label)})
		require.NoError(t, err)
	}
	e.stopAll(t, dp, plugin) // checks the pool
}

// postgresEngine returns the PostgreSQL server installed here, or skips.
func postgresEngine(t *testing.T) engine.Engine {
	t.Helper()
	set, err := registry.Discover()
	for _, e := range set {
		if e.Kind() == imagebuilder.EnginePostgres {
			return e
		}
	}
	t.Skipf("needs a PostgreSQL server (make deps): %v", err)
	return nil
}

// pgTool returns the path of a client tool of eng's major version.
func pgTool(t *testing.T, eng engine.Engine, tool string) string {
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
