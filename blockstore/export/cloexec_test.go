package export_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestExportDescriptorsCloseOnExec: every descriptor an export opens in this process (the FUSE
// connection, what its server opens while it serves reads and writes, loop devices, files) is
// close-on-exec, and no process started while exports are live, or while one is being made,
// inherits a /dev/fuse descriptor. A FUSE connection lives while any descriptor of it is open:
// an inherited one would keep a dead server's connection alive and hang every I/O on it.
func TestExportDescriptorsCloseOnExec(t *testing.T) {
	needRoot(t)
	before := inheritable(t)
	p, _ := newPool(t, 256*mib)
	vol := newVolume(t, p, "v", 64*mib)
	e, _ := newExporter(t)

	dev, err := e.Export("cloexec", vol)
	require.NoError(t, err)
	defer func() { require.NoError(t, dev.Close()) }()
	// Writes and reads through the block device, so that the server's reply paths have run.
	f, err := os.OpenFile(dev.Path(), os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	want := pattern(7, 64<<10)
	_, err = f.WriteAt(want, 1*mib)
	require.NoError(t, err)
	got := alignedBuf(len(want))
	_, err = f.ReadAt(got, 1*mib)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())

	for fd, target := range inheritable(t) {
		if before[fd] != target {
			t.Errorf("descriptor %d (%s), opened while exporting, is not close-on-exec", fd, target)
		}
	}
	out, err := childDescriptors()
	require.NoError(t, err)
	require.NotContains(t, out, "/dev/fuse", "a child of a process serving an export")

	// Processes started while other exports are being made and torn down (the window between an
	// open and an fcntl(FD_CLOEXEC) in another goroutine is where a late flag leaks).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var leaked []string
	var childErr error
	children := 0
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			out, err := childDescriptors()
			if err != nil {
				childErr = err
				return
			}
			children++
			if strings.Contains(out, "/dev/fuse") {
				leaked = append(leaked, out)
			}
		}
	})
	for i := range 8 {
		d, err := e.Export("cloexec-"+strconv.Itoa(i), vol)
		if err == nil {
			err = d.Close()
		}
		if err != nil {
			close(stop)
			wg.Wait()
			require.NoError(t, err)
		}
	}
	close(stop)
	wg.Wait()
	require.NoError(t, childErr)
	t.Logf("%d children started during 8 exports", children)
	require.Empty(t, leaked, "children started during exports inherited /dev/fuse")
}

// inheritable returns the descriptors of this process that a child would inherit (no
// FD_CLOEXEC), with what each refers to.
func inheritable(t testing.TB) map[int]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	out := map[int]string{}
	for _, de := range ents {
		fd, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // closed meanwhile (the directory's own descriptor), or close-on-exec
		}
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", de.Name()))
		out[fd] = target
	}
	return out
}

// childDescriptors starts a shell and returns what its descriptors refer to, one per line: what
// a process this one starts inherits.
func childDescriptors() (string, error) {
	out, err := exec.Command("/bin/sh", "-c", `for f in /proc/$$/fd/*; do readlink "$f" || :; done`).Output()
	return string(out), err
}
