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
	// ErrHostFull: the file system holding the pool file had no space (ENOSPC) or quota
	// (EDQUOT) left for a block the pool wrote. It is a kind of ErrNoSpace (errors.Is matches
	// ErrNoSpace and syscall.ENOSPC too) and as transient: the write or commit that met it did
	// nothing durable, and the pool serves again once space is freed on that file system.
	ErrHostFull error = hostFullError{}
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
	// ErrInUse: another open of the pool holds it (Open and Create lock a pool file, or claim
	// a block device exclusively, for as long as the pool is open): two processes serving one
	// pool would each overwrite the other's metadata.
	ErrInUse = errors.New("blockstore: pool is in use")
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

type hostFullError struct{}

func (hostFullError) Error() string {
	return "blockstore: the file system holding the pool file is full"
}

// Is makes ErrHostFull match ErrNoSpace and syscall.ENOSPC.
func (hostFullError) Is(target error) bool { return target == ErrNoSpace || target == syscall.ENOSPC }

// isHostFull reports whether an error of the pool's File says that its file system has no
// space or quota left (not to be called on errors that may wrap ErrNoSpace).
func isHostFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidArgument}, args...)...)
}
