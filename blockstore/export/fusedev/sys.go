package fusedev

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The kernel's request timeouts (Linux 6.14): a connection made while
// /proc/sys/fs/fuse/default_request_timeout or max_request_timeout is non-zero gets a timeout, fixed
// at INIT, after which a request still unanswered aborts the whole connection (fuse_check_timeout:
// every request fails, the mount is dead). A server restart that takes longer than that loses the
// connection although the holder keeps it open. The timeout is not visible on a live connection,
// so Init records the one in effect (Params.RequestTimeout).
const (
	defaultRequestTimeoutPath = "/proc/sys/fs/fuse/default_request_timeout"
	maxRequestTimeoutPath     = "/proc/sys/fs/fuse/max_request_timeout"
	// timeoutTimerFreq is FUSE_TIMEOUT_TIMER_FREQ: the shortest timeout the kernel sets.
	timeoutTimerFreq = 15
)

// RequestTimeout returns the timeout in seconds that a connection initialised now gets (0: none),
// as the kernel computes it for a server that asks for none (init_server_timeout): the default,
// bounded by the maximum, at least 15 s. A kernel without the sysctls has none.
func RequestTimeout() (int, error) {
	def, err := readSysctl(defaultRequestTimeoutPath)
	if err != nil {
		return 0, err
	}
	maxT, err := readSysctl(maxRequestTimeoutPath)
	if err != nil {
		return 0, err
	}
	t := def
	if maxT != 0 && (t == 0 || maxT < t) {
		t = maxT
	}
	if t != 0 {
		t = max(t, timeoutTimerFreq)
	}
	return t, nil
}

func readSysctl(path string) (int, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, &os.PathError{Op: "parse", Path: path, Err: err}
	}
	return v, nil
}

// SetIOFlusher puts every thread of this process in the IO_FLUSHER state (prctl
// PR_SET_IO_FLUSHER, Linux 5.6; needs CAP_SYS_RESOURCE): their memory allocations do not wait for
// I/O to be written back, and they are not throttled for dirtying pages. A process that serves a
// block device is on the write-back path of that device: without it, memory pressure can make it
// wait for write-back that waits for it. Threads made later inherit the state from the thread
// that makes them. The data plane calls it once at start.
//
// It needs CAP_SYS_RESOURCE and a binary without cgo (syscall.AllThreadsSyscall); without either
// it fails with ErrUnsupported and changes nothing.
func SetIOFlusher() error {
	_, _, errno := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 1, 0)
	switch errno {
	case 0:
		return nil
	case syscall.ENOTSUP:
		return wrapf(ErrUnsupported, "PR_SET_IO_FLUSHER on every thread needs a binary built with CGO_ENABLED=0")
	case syscall.EPERM:
		return wrapf(ErrUnsupported, "PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE: %v", errno)
	default:
		return &os.SyscallError{Syscall: "prctl(PR_SET_IO_FLUSHER)", Err: errno}
	}
}
