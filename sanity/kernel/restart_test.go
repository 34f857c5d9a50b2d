package kernel

import (
	"bytes"
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

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// buildPlugin builds cmd/dataimage-csi into a temp dir and returns the binary's path.
func buildPlugin(t *testing.T) string {
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
	bin := filepath.Join(t.TempDir(), "dataimage-csi")
	cmd := exec.Command(goTool, "build", "-o", bin, "./cmd/dataimage-csi")
	cmd.Dir = filepath.Dir(gomod)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// process is a running plugin binary.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd.Wait returned
	err    error         // cmd.Wait's; read after exited is closed
	log    *os.File
}

// startPlugin starts the plugin binary with args, its log going to logPath (appended). Cleanup
// kills it if it is still running.
func startPlugin(t *testing.T, bin, logPath string, args ...string) *process {
	t.Helper()
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	require.NoError(t, err)
	p := &process{cmd: exec.Command(bin, args...), exited: make(chan struct{}), log: log}
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
		t.Fatalf("the plugin did not exit after %v", sig)
		return nil
	}
}

// restartEnv is a plugin binary with its flags, pool, state directory and log in a temp dir.
type restartEnv struct {
	bin, dir, stateDir, pool, logPath, paths, endpoint string
	args                                               []string
}

// newRestartEnv builds the plugin. Cleanup (after the processes are killed) unmounts what is
// left under paths, tears down the exports left in stateDir, and prints the plugin's log if
// the test failed.
func newRestartEnv(t *testing.T) *restartEnv {
	t.Helper()
	needKernel(t)
	e := &restartEnv{bin: buildPlugin(t), dir: t.TempDir()}
	e.stateDir, e.pool, e.logPath = filepath.Join(e.dir, "export"), filepath.Join(e.dir, "pool"), filepath.Join(e.dir, "plugin.log")
	e.paths = filepath.Join(e.dir, "paths")
	e.endpoint = "unix://" + filepath.Join(e.dir, "csi.sock")
	e.args = []string{"--endpoint", e.endpoint, "--node-id", "n1", "--pool", e.pool, "--pool-size", "2Gi", "--export-state-dir", e.stateDir}
	t.Cleanup(func() {
		forceTeardown(t, e.paths, e.stateDir)
		if t.Failed() {
			b, _ := os.ReadFile(e.logPath)
			t.Logf("plugin log:\n%s", b)
		}
	})
	return e
}

// start starts the plugin and connects to it.
func (e *restartEnv) start(t *testing.T) (*process, *client) {
	t.Helper()
	p := startPlugin(t, e.bin, e.logPath, e.args...)
	return p, dial(t, e.endpoint, e.paths, false)
}

// publishAndKill starts the plugin, creates, stages and publishes an ext4 volume, writes a file
// (fsynced), kills the plugin with SIGKILL and starts it again. It returns the new process and
// client, the volume ID, its target path and the file's content.
func (e *restartEnv) publishAndKill(t *testing.T) (*process, *client, string, string, []byte) {
	t.Helper()
	first, c := e.start(t)
	vc := mountCap("ext4")
	vol := c.createVolume(t, "restart", 64*mib, vc, nil)
	target := c.stagePublish(t, "vol", vol, vc)
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	nodetest.WriteSynced(t, filepath.Join(target, "before-kill"), data)

	require.Error(t, first.stop(t, syscall.SIGKILL))
	// The FUSE server died with the plugin: the mounts and the loop device are still there.
	require.NotEmpty(t, nodetest.Mounts(t, e.paths))
	require.NotEmpty(t, nodetest.LoopDevicesOn(t, e.stateDir))

	second, c := e.start(t)
	logs, err := os.ReadFile(e.logPath)
	require.NoError(t, err)
	require.Contains(t, string(logs), "export left by an earlier run")
	return second, c, vol, target, data
}

// TestRestartAfterKill kills the plugin binary while a volume is staged and published, starts
// it again, and checks that the dead mounts unpublish and unstage, that nothing is left behind,
// that the volume stages again with the data fsynced before the kill, and that SIGTERM stops
// the plugin cleanly with a pool that checks clean.
func TestRestartAfterKill(t *testing.T) {
	e := newRestartEnv(t)
	second, c, vol, target, data := e.publishAndKill(t)
	_, err := c.node.NodeUnpublishVolume(rpcContext(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
	require.NoError(t, err)
	_, err = c.node.NodeUnstageVolume(rpcContext(t), &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: c.stagingPath("vol")})
	require.NoError(t, err)
	nodetest.RequireNothingLeft(t, e.paths, e.stateDir)

	// Staged anew, the volume holds the data fsynced before the kill.
	vc := mountCap("ext4")
	target = c.stagePublish(t, "vol", vol, vc)
	got, err := os.ReadFile(filepath.Join(target, "before-kill"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "the file written before the kill differs")
	c.unpublishUnstage(t, "vol", vol)
	nodetest.RequireNothingLeft(t, e.paths, e.stateDir)

	require.NoError(t, second.stop(t, syscall.SIGTERM), "exit status after SIGTERM")
	_, err = os.Stat(filepath.Join(e.dir, "csi.sock"))
	require.True(t, errors.Is(err, os.ErrNotExist), "the socket is removed: %v", err)

	p, err := blockstore.Open(e.pool, blockstore.Options{})
	require.NoError(t, err)
	defer p.Close()
	rep, err := p.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "fsck: %s", rep)
	info, err := p.LookupVolume("restart")
	require.NoError(t, err)
	require.Equal(t, 64*mib, info.Size)
	require.NoError(t, p.Close())
}

// TestHealthAfterKill: after a restart, a volume still published from the killed plugin's run
// serves no I/O (its FUSE server is gone; reads come from the page cache and writes are lost),
// and NodeGetVolumeHealth says so, as its documentation promises: INACCESSIBLE.
func TestHealthAfterKill(t *testing.T) {
	e := newRestartEnv(t)
	second, c, vol, target, _ := e.publishAndKill(t)
	for _, path := range []string{target, c.stagingPath("vol")} {
		h, err := c.node.NodeGetVolumeHealth(rpcContext(t), &csi.NodeGetVolumeHealthRequest{VolumeId: vol, VolumePublishPath: path})
		require.NoError(t, err)
		inaccessible := false
		for _, s := range h.GetVolumeHealth().GetHealthStatuses() {
			inaccessible = inaccessible || s.GetStatus() == csi.VolumeHealthErrorType_INACCESSIBLE
		}
		if !inaccessible {
			t.Errorf("NodeGetVolumeHealth(%s) of a volume whose export died with the plugin: %v, want an INACCESSIBLE status", path, h)
		}
	}
	// Unpublish, unstage and stop, as in TestRestartAfterKill.
	c.unpublishUnstage(t, "vol", vol)
	nodetest.RequireNothingLeft(t, e.paths, e.stateDir)
	require.NoError(t, second.stop(t, syscall.SIGTERM))
}
