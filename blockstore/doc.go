// Package blockstore is Dataimage's node-local thin block store: volumes, O(1) snapshots and
// O(1) writable clones in one pool, a file or a block device carved into fixed-size blocks.
//
// A Pool holds volumes (writable, thin-provisioned logical disks) and snapshots (frozen
// converter trees of a volume, each with the log position at which it was taken). A Volume reads
// and writes like a disk (ReadAt, WriteAt, Flush, Discard, WriteZeroes); a SnapshotView reads a
// snapshot. Clone starts a new volume from a snapshot, Revert points a volume back at one, and
// DiffSnapshots / DiffVolume / AllocatedExtents report changed or mapped extents at a cost
// proportional to what changed. Check verifies a checkpoint of the pool (fsck) in memory
// bounded by a budget: holding the pool, or read-only while I/O goes on (CheckOptions).
//
// Crash safety: every change is described by a logical redo record, written to the journal
// (through the page cache) before the change returns and made durable by Flush; checkpoints
// write changed metadata copy-on-write and commit it with alternating checksummed superblocks;
// Open replays the journal (Pool.Recovery reports what) and starts a new journal epoch. A
// write that returned survives the death of the process; a write acknowledged by Flush
// survives a power loss too, an unflushed one may then be lost, never half-applied to metadata.
// A failed write or fdatasync of metadata fails the pool (ErrFailed) until it is reopened. The commit order is documented in journal.go and tested by
// killing processes, by dropping or tearing unsynced writes, several crashes in a row and
// crashes during recovery, and by failing each file operation in turn (crash_test.go,
// crashseq_test.go, crashio_test.go, kill_test.go).
//
// The design, its invariants and its tests are described in docs/blockstore.md.
//
// It must not know CSI, gRPC, Kubernetes, images, database engines, the file systems above a
// volume or how a volume reaches the kernel (package export does): it is the bottom layer and
// reaches nothing of the module above it (layers_test.go).
package blockstore
