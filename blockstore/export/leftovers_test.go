package export_test

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

// The leftover and restart tests re-execute the test binary as a FUSE server or a holder (TestMain
// runs serveChild, serveExportChild or runHolderChild), kill it, and clean up after it from the
// parent.
const (
	childEnv = "DATAIMAGE_EXPORT_CHILD" // "pool path|state dir|id"
	readyMsg = "READY "
)

func TestMain(m *testing.M) {
	for env, child := range map[string]func(string) error{
		childEnv:       serveChild,
		serverChildEnv: serveExportChild,
		holderChildEnv: runHolderChild,
	} {
		if arg := os.Getenv(env); arg != "" {
			if err := child(arg); err != nil {
				fmt.Fprintln(os.Stderr, "child:", err)
				os.Exit(2)
			}
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

// serveChild exports volume "v" of the pool and serves it until killed.
func serveChild(arg string) error {
	parts := strings.Split(arg, "|")
	if len(parts) != 3 {
		return fmt.Errorf("bad %s=%q", childEnv, arg)
	}
	p, err := blockstore.Open(parts[0], blockstore.Options{})
	if err != nil {
		return err
	}
	info, err := p.LookupVolume("v")
	if err != nil {
		return err
	}
	vol, err := p.Volume(info.ID)
	if err != nil {
		return err
	}
	e, err := export.Detect(export.Options{StateDir: parts[1]})
	if err != nil {
		return err
	}
	dev, err := e.Export(parts[2], vol)
	if err != nil {
		return err
	}
	fmt.Println(readyMsg + dev.Path())
	select {}
}

// TestLeftoversDeadServer: a process exports a volume, a file system on it is written, the process
// is killed (its FUSE mount goes dead: ENOTCONN); a new Exporter lists the leftovers and cleans
// them up, and the id can be exported again.
func TestLeftoversDeadServer(t *testing.T) {
	needRoot(t, "mkfs.ext4")
	p, poolPath := newPool(t, 256*mib)
	newVolume(t, p, "v", 64*mib)
	require.NoError(t, p.Close()) // the child opens it; Check and Close at cleanup reopen below

	e, state := newExporter(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+poolPath+"|"+state+"|dead")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "child did not report its device")
	devPath := strings.TrimSpace(strings.TrimPrefix(line, readyMsg))
	require.True(t, strings.HasPrefix(devPath, "/dev/loop"), line)
	run(t, "mkfs.ext4", "-q", "-F", devPath)

	// While the child lives, its export is a leftover for this Exporter, and Export refuses the id.
	lo, err := e.Leftovers()
	require.NoError(t, err)
	require.Equal(t, []export.Leftover{{ID: "dead", Devices: []string{devPath}, Mounted: true, Dir: filepath.Join(state, "dead")}}, lo)
	_, err = e.Export("dead", zeroDisk{})
	require.ErrorIs(t, err, export.ErrLeftovers)

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	_, err = os.Stat(filepath.Join(state, "dead", "disk"))
	require.True(t, errors.Is(err, syscall.ENOTCONN), "dead FUSE mount: %v", err)

	lo, err = e.Leftovers()
	require.NoError(t, err)
	require.Len(t, lo, 1)
	require.Equal(t, []string{devPath}, lo[0].Devices)
	require.True(t, lo[0].Mounted)

	start := time.Now()
	require.NoError(t, e.Cleanup("dead"))
	t.Logf("cleanup of a dead export took %v", time.Since(start))
	require.NoError(t, e.Cleanup("dead"), "Cleanup is idempotent")
	requireNothingLeft(t, e, state)

	// The pool recovers and the volume exports again.
	p2, err := blockstore.Open(poolPath, blockstore.Options{})
	require.NoError(t, err)
	defer p2.Close()
	info, err := p2.LookupVolume("v")
	require.NoError(t, err)
	vol, err := p2.Volume(info.ID)
	require.NoError(t, err)
	dev, err := e.Export("dead", vol)
	require.NoError(t, err)
	require.NoError(t, dev.Close())
	rep, err := p2.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v", rep)
}

// TestCleanupBusy: Cleanup refuses while a file system on the leftover device is mounted.
func TestCleanupBusy(t *testing.T) {
	needRoot(t, "mkfs.ext4")
	p, poolPath := newPool(t, 256*mib)
	newVolume(t, p, "v", 64*mib)
	require.NoError(t, p.Close())

	e, state := newExporter(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+poolPath+"|"+state+"|busy")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	devPath := strings.TrimSpace(strings.TrimPrefix(line, readyMsg))
	run(t, "mkfs.ext4", "-q", "-F", devPath)
	mnt := t.TempDir()
	run(t, "mount", devPath, mnt)
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644))

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	require.ErrorIs(t, e.Cleanup("busy"), export.ErrBusy)
	// The driver unmounts first (the file system sees I/O errors: its server is gone).
	run(t, "umount", mnt)
	require.NoError(t, e.Cleanup("busy"))
	requireNothingLeft(t, e, state)

	p2, err := blockstore.Open(poolPath, blockstore.Options{})
	require.NoError(t, err)
	require.NoError(t, p2.Close())
}

// zeroDisk is a Disk of zeros of the given size (default 1 MiB) that ignores writes.
type zeroDisk struct{ size int64 }

func (zeroDisk) ReadAt(b []byte, off int64) (int, error)  { clear(b); return len(b), nil }
func (zeroDisk) WriteAt(b []byte, off int64) (int, error) { return len(b), nil }
func (zeroDisk) Flush() error                             { return nil }
func (zeroDisk) Discard(off, n int64) error               { return nil }
func (z zeroDisk) Size() int64                            { return cmp.Or(z.size, mib) }
