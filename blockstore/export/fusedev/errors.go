package fusedev

import (
	"errors"
	"fmt"
)

var (
	// ErrProtocol: the kernel spoke a FUSE protocol this package does not (major version, a
	// minor older than 7.28, a malformed message).
	ErrProtocol = errors.New("fusedev: unsupported FUSE protocol")
	// ErrUnsupported: the kernel lacks what was asked (FUSE_NOTIFY_RESEND before Linux 6.9,
	// descriptor cloning, PR_SET_IO_FLUSHER in a cgo binary).
	ErrUnsupported = errors.New("fusedev: not supported")
	// ErrDisconnected: the connection is gone: unmounted, or aborted (through fusectl, or by the
	// kernel when its last descriptor closed or a request timed out).
	ErrDisconnected = errors.New("fusedev: connection gone")
	// ErrInvalid: bad parameters (Params that do not describe a connection this package made, a
	// bad block size, no descriptors).
	ErrInvalid = errors.New("fusedev: invalid argument")
	// ErrRequestTimeout: the kernel aborts FUSE connections whose requests wait longer than a
	// timeout (fs.fuse.default_request_timeout, fs.fuse.max_request_timeout, Linux 6.14): a
	// server that restarts more slowly than that loses the connection.
	ErrRequestTimeout = errors.New("fusedev: FUSE request timeout in effect")
)

func wrapf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
