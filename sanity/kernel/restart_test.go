package kernel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export/holder"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// buildBinary builds ./cmd/<name> into a temp dir and returns the binary's path.
func buildBinary(t *testing.T, name string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go command to build the plugin")
	}
	out, err := exec.Command(goTool, "env", "GOMOD").Output()
	require.NoError(t, err)
	gomod := strings.TrimSpace(string(out))
	require.NotEmpty(t, gomod)
	require.NotEqual(t, os.DevNull, gomod, "not in a module")
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command(goTool, "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = filepath.Dir(gomod)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// process is a running binary: the plugin or the data plane.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd.Wait returned
	err    error         // cmd.Wait's; read after exited is closed
}

// startProcess starts bin with args, its output appended to logPath. Cleanup kills it if it is
// still running.
func startProcess(t *testing.T, bin, logPath string, args ...string) *process {
	t.Helper()
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	require.NoError(t, err)
	p := &process{name: filepath.Base(bin), cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	require.NoError(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		log.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// stop sends sig and waits for the process to exit; it returns the exit error.
func (p *process) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
	select {
	case <-p.exited:
		return p.err
	case <-time.After(time.Minute):
		t.Fatalf("%s did not exit after %v", p.name, sig)
		return nil
	}
}

// running reports whether the process has not exited.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// restartEnv is a node's two processes, as the chart runs them: the data plane
// (dataimage-dataplane: the pool and the exports) and the CSI plugin (dataimage-csi), which
// reaches it over its socket; their binaries, flags, pool, state directory and logs are in a
// temp dir.
type restartEnv struct {
	pluginBin, dataPlaneBin                      string
	dir, stateDir, pool, paths, endpoint, dpSock string
	pluginLog, dataPlaneLog                      string
	pluginArgs, dataPlaneArgs                    []string
	// With useHolder: the FUSE holder (dataimage-fuse-holder), which start starts first.
	holderBin, holderSock, holderLog string
	holder                           *process
}

// useHolder builds the FUSE holder and has the data plane use it (--holder), as the chart
// runs them: start starts the holder before the data plane.
func (e *restartEnv) useHolder(t *testing.T) {
	t.Helper()
	e.holderBin = buildBinary(t, "dataimage-fuse-holder")
	e.holderSock, e.holderLog = filepath.Join(e.dir, "holder.sock"), filepath.Join(e.dir, "holder.log")
	e.dataPlaneArgs = append(e.dataPlaneArgs, "--holder", e.holderSock)
}

// startHolder starts the holder and waits until it answers.
func (e *restartEnv) startHolder(t *testing.T) {
	t.Helper()
	e.holder = startProcess(t, e.holderBin, e.holderLog, "--socket", e.holderSock)
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := holder.Dial(e.holderSock)
		if err == nil {
			c.Close()
			return
		}
		require.True(t, time.Now().Before(deadline), "the holder does not answer: %v", err)
		require.True(t, e.holder.running(), "the holder exited")
		time.Sleep(20 * time.Millisecond)
	}
}

// newRestartEnv builds the two binaries. Cleanup (after the processes are killed) unmounts
// what is left under paths, tears down the exports left in stateDir, and prints the logs if the
// test failed.
func newRestartEnv(t *testing.T) *restartEnv {
	t.Helper()
	needKernel(t)
	e := &restartEnv{pluginBin: buildBinary(t, "dataimage-csi"), dataPlaneBin: buildBinary(t, "dataimage-dataplane")}
	dir, err := os.MkdirTemp("", "kernel") // short: socket paths are limited to 107 bytes
	require.NoError(t, err)
	e.dir = dir
	e.stateDir, e.pool, e.paths = filepath.Join(dir, "export"), filepath.Join(dir, "pool"), filepath.Join(dir, "paths")
	e.pluginLog, e.dataPlaneLog = filepath.Join(dir, "plugin.log"), filepath.Join(dir, "dataplane.log")
	e.endpoint, e.dpSock = "unix://"+filepath.Join(dir, "csi.sock"), filepath.Join(dir, "dp", "dataplane.sock")
	e.dataPlaneArgs = []string{"--socket", e.dpSock, "--pool", e.pool, "--pool-size", "2Gi", "--export-state-dir", e.stateDir}
	e.pluginArgs = []string{"--endpoint", e.endpoint, "--node-id", "n1", "--dataplane-socket", e.dpSock}
	t.Cleanup(func() {
		forceTeardown(t, e.paths, e.stateDir)
		if t.Failed() {
			for _, l := range []string{e.dataPlaneLog, e.pluginLog, e.holderLog} {
				if l == "" {
					continue
				}
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), b)
			}
		}
		os.RemoveAll(dir)
	})
	return e
}

// startDataPlane starts the data plane and waits until it answers.
func (e *restartEnv) startDataPlane(t *testing.T) *process {
	t.Helper()
	p := startProcess(t, e.dataPlaneBin, e.dataPlaneLog, e.dataPlaneArgs...)
	c := dataplane.NewClient(e.dpSock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, c.WaitReady(ctx, nil))
	return p
}

// startPlugin starts the plugin and connects to it (it answers once its data plane does).
func (e *restartEnv) startPlugin(t *testing.T) (*process, *client) {
	t.Helper()
	p := startProcess(t, e.pluginBin, e.pluginLog, e.pluginArgs...)
	return p, dial(t, e.endpoint, e.paths, false)
}

// start starts the data plane and the plugin.
func (e *restartEnv) start(t *testing.T) (dp, plugin *process, c *client) {
	t.Helper()
	if e.holderBin != "" {
		e.startHolder(t)
	}
	dp = e.startDataPlane(t)
	plugin, c = e.startPlugin(t)
	return dp, plugin, c
}

// stopAll stops the plugin and then the data plane with SIGTERM (both exit 0), and checks the
// pool: clean, and closed cleanly (nothing to replay).
func (e *restartEnv) stopAll(t *testing.T, dp, plugin *process) {
	t.Helper()
	require.NoError(t, plugin.stop(t, syscall.SIGTERM), "the plugin's exit status after SIGTERM")
	require.NoError(t, dp.stop(t, syscall.SIGTERM), "the data plane's exit status after SIGTERM")
	if e.holder != nil && e.holder.running() {
		require.NoError(t, e.holder.stop(t, syscall.SIGTERM), "the holder's exit status after SIGTERM")
	}
	for _, sock := range []string{strings.TrimPrefix(e.endpoint, "unix://"), e.dpSock} {
		_, err := os.Stat(sock)
		require.True(t, errors.Is(err, os.ErrNotExist), "the socket %s is removed: %v", sock, err)
	}
	p, err := blockstore.Open(e.pool, blockstore.Options{})
	require.NoError(t, err)
	defer p.Close()
	require.Zero(t, p.Recovery().Records, "a clean stop leaves nothing to replay")
	rep, err := p.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "fsck: %s", rep)
}

// requireHealthy asserts that NodeGetVolumeHealth reports no problem for vol at path.
func requireHealthy(t *testing.T, c *client, vol, path string) {
	t.Helper()
	h, err := c.node.NodeGetVolumeHealth(rpcContext(t), &csi.NodeGetVolumeHealthRequest{VolumeId: vol, VolumePublishPath: path})
	require.NoError(t, err)
	require.Empty(t, h.GetVolumeHealth().GetHealthStatuses(), "health of %s at %s", vol, path)
}

// TestPluginKilledIOContinues: the CSI plugin is killed (SIGKILL) three times, and started
// again each time, while fio writes and verifies a file on a staged and published ext4 volume
// and a direct-I/O writer writes and flushes a published block volume. The I/O goes on
// throughout, without an error: the data plane, not the plugin, serves it. Each new plugin
// adopts the staged volumes (healthy, no leftovers), fio's verification passes, every block of
// the block volume holds the last write acknowledged to it, and the volumes unpublish and
// unstage through the last plugin, leaving nothing behind. On a tree where the plugin serves
// the exports itself, the first kill fails every later I/O with EIO.
func TestPluginKilledIOContinues(t *testing.T) {
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("needs fio (make deps)")
	}
	e := newRestartEnv(t)
	dp, plugin, c := e.start(t)
	fsVol, fsTarget, blkVol, blkTarget := stageTwo(t, c)

	const runtime = 12 * time.Second
	fio := nodetest.StartFIOVerify(t, filepath.Join(fsTarget, "fio.dat"), 32*mib, runtime)
	w := startDrainWriter(t, blkTarget, blkSize, 4)
	start := time.Now()
	var kills []time.Time
	for i := range 3 {
		time.Sleep(2 * time.Second)
		require.NoError(t, w.failed(), "the block writer before kill %d", i+1)
		kills = append(kills, time.Now())
		require.Error(t, plugin.stop(t, syscall.SIGKILL), "killed")
		plugin, c = e.startPlugin(t)
		for _, v := range []struct{ id, label string }{{fsVol, "fs"}, {blkVol, "blk"}} {
			requireHealthy(t, c, v.id, c.stagingPath(v.label))
			requireHealthy(t, c, v.id, c.targetPath(v.label))
		}
	}
	require.Less(t, time.Since(start), runtime, "the kills happened while fio ran")
	require.True(t, dp.running(), "the data plane never stopped")

	res := fio.Wait(t)
	require.Positive(t, res.Writes)
	require.Positive(t, res.Reads, "fio verified what it wrote")
	w.halt()
	require.NoError(t, w.failed(), "the block writer across the kills")
	acked, longest := w.summary(kills)
	t.Logf("fio: %d blocks written and %d verified across %d plugin kills; block writer: %d writes acknowledged, longest request spanning a kill %v",
		res.Writes, res.Reads, len(kills), acked, longest)
	logs, err := os.ReadFile(e.pluginLog)
	require.NoError(t, err)
	require.Equal(t, 3, strings.Count(string(logs), `msg="volume staged by an earlier run of the plugin" volume=`+fsVol), "each new plugin adopts the file system volume")
	require.NotContains(t, string(logs), "export left by an earlier data plane")

	// The last plugin unpublishes and unstages what the first one staged.
	e.verifyAndTearDown(t, c, w, blkTarget, fsVol, blkVol, dp, plugin)
}

// TestDataPlaneKilled: the data plane and then the FUSE holder are killed (SIGKILL) while an
// ext4 volume is staged and published, and both are started again; the plugin runs on. With
// both gone the volume's export ended (its I/O fails at once; TestDataPlaneRestartIOContinues
// is the data plane's death alone, which the holder bridges):
// the plugin reports it INACCESSIBLE at both paths, the dead mounts unpublish and unstage,
// nothing is left behind, the volume stages again with the data fsynced before the kill, and
// both processes stop cleanly on SIGTERM with a pool that checks clean.
func TestDataPlaneKilled(t *testing.T) {
	e := newRestartEnv(t)
	e.useHolder(t)
	dp, plugin, c := e.start(t)
	vc := mountCap("ext4")
	vol := c.createVolume(t, "restart", 64*mib, vc, nil)
	target := c.stagePublish(t, "vol", vol, vc)
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	nodetest.WriteSynced(t, filepath.Join(target, "before-kill"), data)

	require.Error(t, dp.stop(t, syscall.SIGKILL))
	// I/O waits in the kernel while the holder keeps the connection; its death ends it: the
	// write fails, promptly.
	werr := make(chan error, 1)
	go func() {
		f, err := os.Create(filepath.Join(target, "after-kill"))
		if err == nil {
			_, err = f.Write(data)
			err = errors.Join(err, f.Sync(), f.Close())
		}
		werr <- err
	}()
	select {
	case err := <-werr:
		t.Fatalf("an fsynced write while the data plane is dead and the holder keeps its connection returned %v: want it to wait", err)
	case <-time.After(500 * time.Millisecond):
	}
	require.Error(t, e.holder.stop(t, syscall.SIGKILL))
	killed := time.Now()
	select {
	case err := <-werr:
		require.Error(t, err, "an fsynced write once the data plane and the holder are dead")
		t.Logf("the fsynced write waiting at the holder's death failed after %v: %v", time.Since(killed).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("an fsynced write still hangs 30 s after the data plane and the holder died")
	}
	// The FUSE server died with the data plane: the mounts and the loop device are still there.
	require.NotEmpty(t, nodetest.Mounts(t, e.paths))
	require.NotEmpty(t, nodetest.LoopDevicesOn(t, e.stateDir))
	e.startHolder(t)
	dp = e.startDataPlane(t)
	logs, err := os.ReadFile(e.dataPlaneLog)
	require.NoError(t, err)
	require.Contains(t, string(logs), "export left by an earlier data plane")

	for _, path := range []string{target, c.stagingPath("vol")} {
		h, err := c.node.NodeGetVolumeHealth(rpcContext(t), &csi.NodeGetVolumeHealthRequest{VolumeId: vol, VolumePublishPath: path})
		require.NoError(t, err)
		inaccessible := false
		for _, s := range h.GetVolumeHealth().GetHealthStatuses() {
			inaccessible = inaccessible || s.GetStatus() == csi.VolumeHealthErrorType_INACCESSIBLE
		}
		require.True(t, inaccessible, "NodeGetVolumeHealth(%s) of a volume whose export died with the data plane: %v, want INACCESSIBLE", path, h)
	}
	_, err = c.node.NodeUnpublishVolume(rpcContext(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
	require.NoError(t, err)
	_, err = c.node.NodeUnstageVolume(rpcContext(t), &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: c.stagingPath("vol")})
	require.NoError(t, err)
	nodetest.RequireNothingLeft(t, e.paths, e.stateDir)

	// Staged anew, the volume holds the data fsynced before the kill.
	target = c.stagePublish(t, "vol", vol, vc)
	got, err := os.ReadFile(filepath.Join(target, "before-kill"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "the file written before the kill differs")
	c.unpublishUnstage(t, "vol", vol)
	nodetest.RequireNothingLeft(t, e.paths, e.stateDir)
	e.stopAll(t, dp, plugin)

	p, err := blockstore.Open(e.pool, blockstore.Options{})
	require.NoError(t, err)
	defer p.Close()
	info, err := p.LookupVolume("restart")
	require.NoError(t, err)
	require.Equal(t, 64*mib, info.Size)
}

// TestDataPlaneRestartIOContinues: while fio writes and verifies a file on a staged and
// published ext4 volume and a direct-I/O writer writes and flushes a published block volume,
// the data plane is killed (SIGKILL) three times and upgraded once (SIGTERM: it hands the
// exports over), a new one started each time; the FUSE holder and the plugin run on. The I/O
// waits across each restart and goes on, without an error: each new data plane serves again
// the exports the holder kept (the kernel resends what the dead one had read). fio's
// verification passes, every block of the block volume holds the last write acknowledged to it,
// and the volumes unpublish and unstage, leaving nothing behind. On a tree whose data plane
// does not adopt, the first kill fails every later I/O with EIO.
func TestDataPlaneRestartIOContinues(t *testing.T) {
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("needs fio (make deps)")
	}
	e := newRestartEnv(t)
	e.useHolder(t)
	dp, plugin, c := e.start(t)
	fsVol, fsTarget, blkVol, blkTarget := stageTwo(t, c)

	const runtime = 25 * time.Second
	fio := nodetest.StartFIOVerify(t, filepath.Join(fsTarget, "fio.dat"), 32*mib, runtime)
	w := startDrainWriter(t, blkTarget, blkSize, 4)
	// Run first among the cleanups of a failed test: with the holder gone (and so the
	// connections, if no data plane runs), the writers' I/O fails instead of waiting forever.
	t.Cleanup(func() {
		if e.holder.running() {
			_ = e.holder.cmd.Process.Kill()
			<-e.holder.exited
		}
	})
	start := time.Now()
	var restarts []time.Time
	signals := []syscall.Signal{syscall.SIGKILL, syscall.SIGKILL, syscall.SIGTERM, syscall.SIGKILL}
	for i, sig := range signals {
		time.Sleep(3 * time.Second)
		require.NoError(t, w.failed(), "the block writer before restart %d", i+1)
		restarts = append(restarts, time.Now())
		err := dp.stop(t, sig)
		if sig == syscall.SIGTERM {
			require.NoError(t, err, "the exit status of a data plane that hands over")
		} else {
			require.Error(t, err, "killed")
		}
		dp = e.startDataPlane(t)
		for _, v := range []struct{ id, label string }{{fsVol, "fs"}, {blkVol, "blk"}} {
			requireHealthy(t, c, v.id, c.stagingPath(v.label))
			requireHealthy(t, c, v.id, c.targetPath(v.label))
		}
	}
	require.Less(t, time.Since(start), runtime, "the restarts happened while fio ran")
	require.True(t, e.holder.running(), "the holder never stopped")

	res := fio.Wait(t)
	require.Positive(t, res.Writes)
	require.Positive(t, res.Reads, "fio verified what it wrote")
	w.halt()
	require.NoError(t, w.failed(), "the block writer across the restarts")
	acked, longest := w.summary(restarts)
	fioStall := res.MaxStall()
	t.Logf("fio: %d blocks written and %d verified across %d data-plane restarts (SIGKILL, SIGKILL, SIGTERM, SIGKILL), longest fio request %v; "+
		"block writer: %d writes acknowledged, longest request spanning a restart %v",
		res.Writes, res.Reads, len(restarts), fioStall.Round(time.Millisecond), acked, longest.Round(time.Millisecond))
	// Generous: the target is 2 s; this bounds a stall that would be a hang.
	require.Less(t, longest, 20*time.Second, "the longest block request spanning a restart")
	require.Less(t, fioStall, 20*time.Second, "the longest fio request")

	logs, err := os.ReadFile(e.dataPlaneLog)
	require.NoError(t, err)
	require.Equal(t, 2*len(signals), strings.Count(string(logs), `msg="export of an earlier data plane served again"`), "each new data plane serves both exports again")
	require.Equal(t, 1, strings.Count(string(logs), `msg="exports handed over" handedOver=2 drained=0`), "the upgraded data plane hands both exports over")
	require.NotContains(t, string(logs), "export left by an earlier data plane")

	e.verifyAndTearDown(t, c, w, blkTarget, fsVol, blkVol, dp, plugin)
}

// verifyAndTearDown ends a restart test whose block writer w wrote to the block volume published
// at blkTarget: the volume holds, block by block, the last write acknowledged (read back through
// the device with O_DIRECT: from the data plane); then the file system volume ("fs") and the
// block volume ("blk") are unpublished and unstaged, nothing is left, and both processes stop.
func (e *restartEnv) verifyAndTearDown(t *testing.T, c *client, w *drainWriter, blkTarget, fsVol, blkVol string, dp, plugin *process) {
	t.Helper()
	f, err := os.OpenFile(blkTarget, os.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	w.verify(t, func(b int64, buf []byte) {
		_, err := f.ReadAt(buf, b*w.bs)
		require.NoError(t, err)
	})
	f.Close()
	c.unpublishUnstage(t, "fs", fsVol)
	c.unpublishUnstage(t, "blk", blkVol)
	nodetest.RequireNothingLeft(t, e.paths, e.stateDir)
	e.stopAll(t, dp, plugin)
}

// blkSize is the size of the block volume of stageTwo.
const blkSize = 64 * mib

// stageTwo creates, stages and publishes an ext4 volume of 256 MiB ("fs") and a block volume of
// blkSize ("blk") through c.
func stageTwo(t *testing.T, c *client) (fsVol, fsTarget, blkVol, blkTarget string) {
	t.Helper()
	fsCap := mountCap("ext4")
	fsVol = c.createVolume(t, "fs", 256*mib, fsCap, nil)
	fsTarget = c.stagePublish(t, "fs", fsVol, fsCap)
	blkVol = c.createVolume(t, "blk", blkSize, blockCap(), nil)
	blkTarget = c.stagePublish(t, "blk", blkVol, blockCap())
	return fsVol, fsTarget, blkVol, blkTarget
}
