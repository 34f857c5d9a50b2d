package nodevolume

import (
	"errors"
	"fmt"
)

// The errors of this package. Errors of the export (export.ErrBusy, export.ErrLeftovers,
// export.ErrUnsupported, ...), of the pool and of mount and file system tools keep their chain.
var (
	// ErrInvalid: a bad Spec (id, mount point, file system type).
	ErrInvalid = errors.New("nodevolume: invalid argument")
	// ErrConflict: the id is attached already, otherwise than asked (another mount point, or
	// as a block device and as a file system).
	ErrConflict = errors.New("nodevolume: attached otherwise")
	// ErrNotAttached: the id is not attached by this Attacher.
	ErrNotAttached = errors.New("nodevolume: not attached")
)

func wrapf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
