package dataplane

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

// The errors of this package. A Store's errors otherwise are those of package blockstore and
// package export, which keep their meaning across the socket (see errorCodes).
var (
	// ErrUnavailable: the data plane does not answer on its socket (it is not running, or
	// stopping, or died during the call: a change the call asked for may or may not have been
	// made).
	ErrUnavailable = errors.New("dataplane: the data plane is unavailable")
	// ErrNotExported: the export id names no export of this data plane.
	ErrNotExported = errors.New("dataplane: not exported")
	// ErrProtocol: the other end of the socket answered something this version does not
	// understand (another API version, a broken answer).
	ErrProtocol = errors.New("dataplane: protocol error")
	// ErrInvalid: a bad configuration or request field (the message names it).
	ErrInvalid = errors.New("dataplane: invalid argument")
	// ErrKernel: the kernel is set up in a way that breaks what the data plane promises (a
	// FUSE request timeout: see CheckFUSERequestTimeouts).
	ErrKernel = errors.New("dataplane: kernel setting")
)

// errorCodes are the errors that cross the socket by name: the server sends the code of every
// one an error matches (errors.Is), the client returns an error that matches them again, with
// the server's message. A code is never reused for another error; a code the client does not
// know is dropped (the message stays). This table is the one place that lists them.
var errorCodes = []struct {
	code string
	err  error
}{
	{"not_found", blockstore.ErrNotFound},
	{"exists", blockstore.ErrExists},
	{"no_space", blockstore.ErrNoSpace},
	{"host_full", blockstore.ErrHostFull},
	{"over_provisioned", blockstore.ErrOverProvisioned},
	{"invalid_argument", blockstore.ErrInvalidArgument},
	{"out_of_range", blockstore.ErrOutOfRange},
	{"corrupt", blockstore.ErrCorrupt},
	{"closed", blockstore.ErrClosed},
	{"failed", blockstore.ErrFailed},
	{"not_pool", blockstore.ErrNotPool},
	{"export_unsupported", export.ErrUnsupported},
	{"export_invalid", export.ErrInvalid},
	{"export_exists", export.ErrExists},
	{"export_busy", export.ErrBusy},
	{"export_leftovers", export.ErrLeftovers},
	{"not_exported", ErrNotExported},
	{"invalid", ErrInvalid},
	{"protocol", ErrProtocol},
	{"kernel", ErrKernel},
	{"canceled", context.Canceled},
	{"deadline_exceeded", context.DeadlineExceeded},
}

// wireError is an error as it crosses the socket: the codes of the sentinels it matches, the
// errno it wraps (0: none), and its message.
type wireError struct {
	Codes   []string `json:"codes,omitempty"`
	Errno   int      `json:"errno,omitempty"`
	Message string   `json:"message"`
}

// encodeError describes err for the socket.
func encodeError(err error) *wireError {
	w := &wireError{Message: err.Error()}
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			w.Codes = append(w.Codes, c.code)
		}
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		w.Errno = int(errno)
	}
	return w
}

// decode returns the error w describes: its message, matching (errors.Is) the sentinels of its
// codes and its errno.
func (w *wireError) decode() error {
	e := &remoteError{msg: w.Message}
	for _, code := range w.Codes {
		for _, c := range errorCodes {
			if c.code == code {
				e.kinds = append(e.kinds, c.err)
			}
		}
	}
	if w.Errno != 0 {
		e.kinds = append(e.kinds, syscall.Errno(w.Errno))
	}
	if e.msg == "" {
		e.msg = "dataplane: an error without a message"
	}
	return e
}

// remoteError is an error the data plane returned over its socket.
type remoteError struct {
	msg   string
	kinds []error // the sentinels (and errno) it matches
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.kinds }

func wrapf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
