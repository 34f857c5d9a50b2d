package blockstore

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinel errors. Errors returned by this package wrap one of these (test with errors.Is).
var (
	// ErrNotFound: the named volume or snapshot does not exist.
	ErrNotFound = errors.New("blockstore: not found")
	// ErrExists: a volume or snapshot with that name already exists.
	ErrExists = errors.New("blockstore: already exists")
	// ErrNoSpace: the pool has no free block left. It also matches syscall.ENOSPC.
	ErrNoSpace = fmt.Errorf("blockstore: pool is full: %w", syscall.ENOSPC)
	// ErrOverProvisioned: the request would take the logical size of all volumes past the
	// pool's over-provisioning limit.
	ErrOverProvisioned = errors.New("blockstore: over-provisioning limit reached")
	// ErrInvalidArgument: a size, offset, name or option breaks a rule the message names.
	ErrInvalidArgument = errors.New("blockstore: invalid argument")
	// ErrOutOfRange: an I/O reaches past the end of the volume.
	ErrOutOfRange = errors.New("blockstore: out of range")
	// ErrCorrupt: on-disk metadata failed verification. See CorruptionError for the block.
	ErrCorrupt = errors.New("blockstore: corruption detected")
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("blockstore: pool is closed")
	// ErrFailed: an earlier write or sync of the pool failed; the pool refuses further changes
	// until it is reopened (recovery then restores the last durable state).
	ErrFailed = errors.New("blockstore: pool failed")
	// ErrNotPool: neither superblock slot of the file holds anything of a Dataimage pool. Damaged
	// superblocks are ErrCorrupt, and a read error is neither: only ErrNotPool says that the
	// file holds no pool (Traces looks further before a pool is made over it).
	ErrNotPool = errors.New("blockstore: not a pool")
)

// CorruptionError reports metadata that failed verification, naming the block that holds it.
type CorruptionError struct {
	Block uint64 // physical block number
	What  string // "tree node", "superblock", "refcount page", ...
	Err   error  // the decoder's error
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("blockstore: corrupt %s at block %d: %v", e.What, e.Block, e.Err)
}

// Unwrap returns ErrCorrupt and the decoder's error.
func (e *CorruptionError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidArgument}, args...)...)
}
