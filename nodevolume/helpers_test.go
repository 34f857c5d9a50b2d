package nodevolume

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
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
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/dataimage/dataimage/internal/nodetest"
)

const mib = int64(1) << 20

// needKernel skips unless the test can attach loop devices, mount FUSE, and make and grow ext4
// and xfs.
func needKernel(t *testing.T) {
	t.Helper()
	nodetest.Need(t, "mkfs.ext4", "mkfs.xfs", "blkid", "resize2fs", "xfs_growfs")
}

// env is an Attacher on a real pool (2 GiB, sparse) and this node's exporter, through a data
// plane served on a socket, all in a temporary directory.
type env struct {
	a        *Attacher
	devs     *dataplane.Client // the data plane of pool, served on a socket
	pool     *blockstore.Pool
	dir      string // mount points go here
	stateDir string // the exporter's state directory
}

// newEnv makes an env. Cleanup (after the test's own cleanups, which detach) fails the test if
// an attachment is left, and detaches it, so that a test that failed half-way leaves nothing in
// the kernel either; then it checks that nothing is left (no export, no loop device on the
// state directory, no mount under dir), checks the pool (fsck) and closes it.
func newEnv(t *testing.T) *env {
	t.Helper()
	needKernel(t)
	e := &env{dir: t.TempDir()}
	e.stateDir = filepath.Join(e.dir, "export")
	e.pool = nodetest.Pool(t, filepath.Join(e.dir, "pool"), 2<<30)
	e.devs = dataplanetest.Serve(t, newDataPlane(t, e.pool, e.stateDir))
	e.a = newAttacher(t, e.devs)
	t.Cleanup(func() { nodetest.RequireNothingLeft(t, e.dir, e.stateDir) })
	t.Cleanup(func() {
		for _, at := range e.a.All() {
			if !t.Failed() {
				t.Errorf("%s is still attached at the end of the test", at.ID())
			}
			if err := e.a.Detach(context.Background(), at.ID(), ""); err != nil {
				t.Errorf("cleanup: detach %s: %v", at.ID(), err)
			}
		}
	})
	return e
}

// newDataPlane detects this node's exporter on stateDir and makes a data plane of pool with it.
func newDataPlane(t *testing.T, pool *blockstore.Pool, stateDir string) *dataplane.Local {
	t.Helper()
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	return dataplane.NewLocal(pool, exp, nil)
}

// newAttacher makes an Attacher on the data plane devs.
func newAttacher(t *testing.T, devs dataplane.Exports) *Attacher {
	t.Helper()
	a, err := New(context.Background(), devs, nil)
	require.NoError(t, err)
	return a
}

// mountCount returns how many times something is mounted at path.
func mountCount(t *testing.T, path string) int {
	t.Helper()
	n := 0
	for _, p := range nodetest.Mounts(t, path) {
		if p == path {
			n++
		}
	}
	return n
}

func isMounted(t *testing.T, path string) bool {
	return slices.Contains(nodetest.Mounts(t, path), path)
}

// volume creates a pool volume.
func (e *env) volume(t *testing.T, name string, size int64) blockstore.VolumeID {
	t.Helper()
	info, err := e.pool.CreateVolume(name, size)
	require.NoError(t, err)
	return info.ID
}

// attach attaches and registers the detach for cleanup.
func (e *env) attach(t *testing.T, s Spec) *Attachment {
	t.Helper()
	at, err := e.a.Attach(context.Background(), s)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, e.a.Detach(context.Background(), s.ID, s.MountPoint), "cleanup: detach %s", s.ID)
	})
	return at
}

// pattern returns n bytes that differ per seed.
func pattern(n int, seed byte) []byte {
	b := bytes.Repeat([]byte{seed}, n)
	for i := range b {
		b[i] ^= byte(i * 31)
	}
	return b
}

// startReady starts cmd, a helper run of this test binary, waits until it says "ready" on its
// standard output, and returns a function that kills it (SIGKILL) and waits for it; cleanup
// kills it unless the test did.
func startReady(t *testing.T, cmd *exec.Cmd, what string) (kill func()) {
	t.Helper()
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
	t.Cleanup(kill)
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready") {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		require.True(t, ok, "%s failed", what)
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s did not get ready", what)
	}
	return kill
}
