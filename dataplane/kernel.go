package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The kernel settings a data plane process needs.
//
// PR_SET_IO_FLUSHER (prctl(2), Linux 5.6): the data plane serves block devices, and the
// kernel may need them to write back dirty pages when it is short of memory. A process that
// allocates while serving such I/O could then wait for the very writeback it serves: the flag
// makes its allocations not start I/O (PF_MEMALLOC_NOIO) and exempts it from writeback
// throttling (PF_LOCAL_THROTTLE). The flag is per thread: a thread inherits it from the thread
// that creates it, and it survives execve. A Go program's threads are made by the runtime
// from whichever thread runs, so setting it on one thread is not enough: BecomeIOFlusher sets
// it and executes the program again, whose threads all descend from that one.
//
// FUSE request timeouts (fs.fuse.default_request_timeout and fs.fuse.max_request_timeout,
// Linux 6.14): a non-zero value makes the kernel abort a FUSE connection whose server takes
// longer than that to answer a request, which fails every later I/O of the device with EIO.
// The data plane promises a stall, never an error, while it restarts; the holder that keeps a
// connection across the data plane's restart (docs/blockstore.md) relies on the connection
// waiting. So the data plane refuses to start while either is set (CheckFUSERequestTimeouts).

// FUSESysctlDir is where the kernel's FUSE settings are (fs.fuse.*).
const FUSESysctlDir = "/proc/sys/fs/fuse"

// fuseTimeoutSettings are the settings CheckFUSERequestTimeouts reads, in FUSESysctlDir.
var fuseTimeoutSettings = []string{"default_request_timeout", "max_request_timeout"}

// CheckFUSERequestTimeouts fails (ErrKernel) when a FUSE request timeout is set in dir
// (FUSESysctlDir, a directory of the same files in tests): a non-zero
// default_request_timeout or max_request_timeout. A kernel without them (before 6.14) passes.
func CheckFUSERequestTimeouts(dir string) error {
	var set []string
	for _, name := range fuseTimeoutSettings {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("dataplane: read fs.fuse.%s: %w", name, err)
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return fmt.Errorf("dataplane: fs.fuse.%s: %q is not a number: %w", name, strings.TrimSpace(string(b)), err)
		}
		if v != 0 {
			set = append(set, fmt.Sprintf("fs.fuse.%s=%d", name, v))
		}
	}
	if len(set) > 0 {
		return wrapf(ErrKernel, "%s: the kernel would abort an export's FUSE connection (every later I/O of its device fails with EIO) "+
			"when the data plane takes longer than that to answer a request, as it may while it restarts; set them to 0 "+
			"(sysctl -w fs.fuse.default_request_timeout=0 fs.fuse.max_request_timeout=0)", strings.Join(set, ", "))
	}
	return nil
}

// IOFlusher reports whether the calling thread is an I/O flusher (PR_GET_IO_FLUSHER). After
// BecomeIOFlusher, every thread of the process is.
func IOFlusher() (bool, error) {
	v, err := unix.PrctlRetInt(unix.PR_GET_IO_FLUSHER, 0, 0, 0, 0)
	if err != nil {
		return false, fmt.Errorf("dataplane: prctl(PR_GET_IO_FLUSHER): %w", err)
	}
	return v == 1, nil
}

// BecomeIOFlusher makes every thread of this process an I/O flusher (see the top of this
// file). If the process is one already (the flag is inherited across execve), it returns nil.
// Otherwise it sets the flag on the calling thread and executes this program again
// (/proc/self/exe) with the same arguments and environment: it does not return then. It fails
// without CAP_SYS_RESOURCE (EPERM) and before Linux 5.6 (EINVAL); the caller decides whether
// that is fatal (the mains warn and go on).
func BecomeIOFlusher() error {
	if ok, err := IOFlusher(); err != nil || ok {
		return err
	}
	runtime.LockOSThread() // the flag is this thread's: the exec must happen on it
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("dataplane: prctl(PR_SET_IO_FLUSHER): %w", err)
	}
	err := syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	runtime.UnlockOSThread()
	return fmt.Errorf("dataplane: execute this program again as an I/O flusher: %w", err)
}
