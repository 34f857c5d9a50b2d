package exportset

import "context"

// Extent is a byte range of an image.
type Extent struct {
	Offset int64
	Length int64
}

// Source is an image in a node's store, as a push reads it: a frozen snapshot. Package
// exportset/poolvol has one over a blockstore pool. Its methods may be called concurrently.
type Source interface {
	// Size returns the image's size in bytes, a multiple of BlockSize.
	Size() int64
	// BlockSize returns the store's block size: the unit of Allocated and ChangedSince, and of
	// the patches a push writes.
	BlockSize() int
	// ReadAt reads the image as io.ReaderAt does.
	ReadAt(p []byte, off int64) (int, error)
	// Allocated returns the extents that may hold data, ascending; the rest reads as zeros.
	Allocated(ctx context.Context) ([]Extent, error)
	// ChangedSince returns the extents whose contents may differ from base's, ascending, at a
	// cost proportional to what changed. base is a Source of the same store, the parent a push
	// was given.
	ChangedSince(ctx context.Context, base Source) ([]Extent, error)
}

// Sink is a node's store as a pull writes into it. Package exportset/poolvol has one over a
// blockstore pool.
type Sink interface {
	// Has reports whether the store holds the image d (pulled or pushed here), which a pull
	// may then start from.
	Has(ctx context.Context, d Digest) (bool, error)
	// Begin returns a new volume to fill with the image d (m describes it): a writable clone
	// of the image base grown to m.Size, or an empty volume of m.Size bytes when base is "".
	// It is not the image yet: only Fill.Commit makes it one.
	Begin(ctx context.Context, d Digest, m *Manifest, base Digest) (Fill, error)
}

// Fill is a volume a pull writes an image into. ReadAt, WriteAt and Zero may be called
// concurrently for ranges that do not overlap.
type Fill interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Zero makes the range read as zeros, unmapping it where it can.
	Zero(off, length int64) error
	// Commit makes the volume the image, atomically and durably: before it returns there is no
	// image, after it the whole one.
	Commit(ctx context.Context) error
	// Abort deletes the volume. It is called, instead of Commit, when a pull fails.
	Abort(ctx context.Context) error
}

// ResumableFill is a Fill that a failed pull can leave for the next pull of the same image to
// resume (Sink.Begin returns it again).
type ResumableFill interface {
	Fill
	// Resumed reports that the volume holds what an interrupted pull of the same image, from
	// the same base, wrote. Any part of it may be missing or torn (a kill, a power loss): the
	// pull trusts nothing of it unverified.
	Resumed() bool
	// Keep leaves the volume for the next pull of the image, instead of Abort, when a pull
	// fails for a cause that running it again may not meet (a lost connection, a cancelled
	// request); a corrupt or missing object aborts.
	Keep(ctx context.Context) error
}
