package tarx

import (
	"errors"
	"fmt"
)

// ErrUnsafeMember matches (errors.Is) the *MemberError of a member that Extract refuses to
// restore: an absolute path, a ".." component, a path through a symbolic link or a non-directory,
// a symbolic link whose target leaves the destination, a hard link to anything but a regular file
// restored earlier from the same archive, a device node or FIFO, a directory replaced by another
// kind of member (or the reverse), or a member type Extract does not know.
var ErrUnsafeMember = errors.New("tarx: unsafe member")

// ErrTooLarge matches the *MemberError of the member that would take the restored file contents
// past Options.MaxBytes.
var ErrTooLarge = errors.New("tarx: archive expands beyond the size limit")

// ErrTooManyMembers matches the *MemberError of the member past Options.MaxMembers.
var ErrTooManyMembers = errors.New("tarx: archive has more members than the limit")

// ErrInvalidArchive matches errors for input that is not a readable tar stream: empty input, a
// broken tar header, a corrupt or truncated gzip, zstd or lz4 stream, or data after the
// end-of-archive marker.
var ErrInvalidArchive = errors.New("tarx: invalid archive")

// ErrUnsupported matches the error for input compressed with a method Extract cannot read
// (bzip2, xz): only gzip, zstd, lz4 and uncompressed tar are supported.
var ErrUnsupported = errors.New("tarx: unsupported compression")

// MemberError reports a problem with one member of the archive. Its shape follows fs.PathError.
type MemberError struct {
	// Index is the 1-based position of the member among the headers the archive holds (PAX
	// global headers count; the PAX and GNU long-name headers that belong to a member do not).
	Index int
	// Name is the member's name as written in the archive, before any cleaning.
	Name string
	// Rule says what is wrong, e.g. `path contains a ".." component` or `symbolic link target
	// "../x" leaves the destination`.
	Rule string
	// Err is ErrUnsafeMember, ErrTooLarge or ErrTooManyMembers for a refused member, or the
	// error of the file system operation or read that failed.
	Err error
}

// Error returns `tarx: member 3 "name": rule`, followed by ": err" when Err is not one of this
// package's sentinel errors.
func (e *MemberError) Error() string {
	s := fmt.Sprintf("tarx: member %d %q: %s", e.Index, e.Name, e.Rule)
	if e.Err != nil && e.Err != ErrUnsafeMember && e.Err != ErrTooLarge && e.Err != ErrTooManyMembers {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns Err.
func (e *MemberError) Unwrap() error { return e.Err }
