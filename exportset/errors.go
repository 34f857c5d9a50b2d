package exportset

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package and by the targets of package remote wrap
// one of these (test with errors.Is).
var (
	// ErrNotFound: the registry holds no such image, name or object.
	ErrNotFound = errors.New("exportset: not found")
	// ErrInvalid: an argument breaks a rule the message names (a name, a digest, a size, an
	// option).
	ErrInvalid = errors.New("exportset: invalid argument")
	// ErrMalformed: a manifest or a patch breaks the format (docs/export-sets.md); the message
	// names the field and the rule.
	ErrMalformed = errors.New("exportset: malformed")
	// ErrUnsupportedVersion: a manifest in a format version this package does not read.
	ErrUnsupportedVersion = errors.New("exportset: unsupported format version")
	// ErrCorrupt: an object's bytes do not match its digest (or do not decompress, or have the
	// wrong length). See ChunkError for the chunk and the image.
	ErrCorrupt = errors.New("exportset: corrupt object")
	// ErrBusy: a garbage collection gave up because a push holds a live lease (retry later).
	ErrBusy = errors.New("exportset: registry busy")
	// ErrLeaseLost: a push or a collection could not renew its lease in time, so another may
	// have taken the registry meanwhile; it stopped before writing what could be unsafe. Run it
	// again (a push resumes: the objects it uploaded are kept).
	ErrLeaseLost = errors.New("exportset: lease lost")
)

// ChunkError is a failure to read one chunk of an image: a missing object (ErrNotFound) or a
// corrupt one (ErrCorrupt).
type ChunkError struct {
	Image  Digest // the image's manifest digest
	Name   string // the image's name (from its manifest)
	Index  int64  // the chunk's index
	Offset int64  // the chunk's first byte in the image
	Object Digest // the object that failed
	Err    error
}

func (e *ChunkError) Error() string {
	return fmt.Sprintf("exportset: image %s (%s): chunk %d (offset %d): object %s: %v", e.Image, e.Name, e.Index, e.Offset, e.Object, e.Err)
}

func (e *ChunkError) Unwrap() error { return e.Err }

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
