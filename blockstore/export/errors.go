package export

import (
	"errors"
	"fmt"
)

var (
	// ErrUnsupported: the node lacks what an export method needs (e.g. /dev/fuse).
	ErrUnsupported = errors.New("export: not supported on this node")
	// ErrInvalid: a bad id, size or option.
	ErrInvalid = errors.New("export: invalid argument")
	// ErrExists: the id is already exported by this Exporter.
	ErrExists = errors.New("export: already exported")
	// ErrBusy: the block device is in use (e.g. a file system on it is mounted).
	ErrBusy = errors.New("export: device busy")
	// ErrLeftovers: an earlier export of the id left kernel state behind: Cleanup it first (or
	// Adopt it, when Leftover.Held). From Adopt: what was left cannot be served again.
	ErrLeftovers = errors.New("export: leftovers of an earlier export")
	// ErrNotFound: Adopt found nothing left of the id.
	ErrNotFound = errors.New("export: nothing left to adopt")
	// ErrNoHolder: the holder (Options.Holder) is not running.
	ErrNoHolder = errors.New("export: holder not running")
)

// Error describes a failed step of an export: what (Op), for which export (ID) and device.
type Error struct {
	Op     string // the step, e.g. "attach loop device"
	ID     string // the export's id, if any
	Device string // the block device, if known
	Err    error
}

func (e *Error) Error() string {
	s := "export: " + e.Op
	if e.ID != "" {
		s += " " + e.ID
	}
	if e.Device != "" {
		s += " (" + e.Device + ")"
	}
	return s + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

func invalidf(format string, args ...any) error { return wrapf(ErrInvalid, format, args...) }

func wrapf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
