// Package blockio owns the types of batched disk I/O: a disk that serves many reads and writes
// in one go (blockstore.Volume) and a server that collects them (fusedev) meet here, so that
// neither imports the other. It owns no I/O of its own.
package blockio

// Op is one read (Write false: into Buf) or write (of Buf) of len(Buf) bytes at offset Off of a
// disk. Batcher.Do sets N and Err as ReaderAt/WriterAt would return them.
type Op struct {
	Write bool
	Buf   []byte
	Off   int64

	N   int
	Err error
}

// Batcher performs batches of Ops. It is for one goroutine at a time; a server makes one per
// request loop.
type Batcher interface {
	// Do performs ops, concurrently with each other as far as the disk can, and returns once
	// every one has completed. Ops in one batch are concurrent I/O: overlapping ones end as
	// some interleaving of whole blocks, as on a disk. Each op's outcome is that of a ReadAt or
	// WriteAt of the same arguments, its durability included. done, unless nil, is called on
	// the calling goroutine with the index of each op as soon as it completed (its N and Err
	// set), once per op, before Do returns; it must not call into the disk.
	Do(ops []Op, done func(i int))
	// Close releases what the Batcher holds (kernel I/O contexts). Do must not run.
	Close() error
}

// BatchDisk is implemented by a disk that can take its reads and writes in batches.
type BatchDisk interface {
	// NewBatcher returns a Batcher for batches of up to max ops.
	NewBatcher(max int) (Batcher, error)
}
