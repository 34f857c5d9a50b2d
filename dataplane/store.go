package dataplane

import (
	"context"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

// Store is a node's data plane as its control planes use it: the volumes and snapshots of its
// pool, and their exports as kernel block devices. *Local is one in this process; *Client
// reaches the data plane process over its socket. Both are safe for concurrent use and return
// the same errors: those of package blockstore and package export, and this package's, which
// callers test with errors.Is (through the socket too).
type Store interface {
	Volumes
	Exports
}

// Volumes is the pool part of a Store: what the CSI controller and the local daemon do with
// the volumes and snapshots of the node's pool. The methods are those of *blockstore.Pool of
// the same names, with a context (a Client's call ends with it; the pool's own operations are
// not interrupted) and an error where the pool has none (a Client's call can fail).
type Volumes interface {
	// Health is nil while the pool works; it wraps blockstore.ErrFailed or ErrClosed otherwise
	// (blockstore.Pool.Health), and ErrUnavailable when the data plane does not answer.
	Health(ctx context.Context) error
	Stats(ctx context.Context) (blockstore.Stats, error)
	// Check verifies the pool (blockstore.Pool.CheckWith): problems are in the report, the
	// error says the check could not run, or wraps blockstore.ErrCorrupt with a report.
	Check(ctx context.Context, o blockstore.CheckOptions) (*blockstore.CheckReport, error)

	CreateVolume(ctx context.Context, name string, size int64) (blockstore.VolumeInfo, error)
	// Clone makes a volume from a snapshot, CloneVolume from a volume; both O(1).
	Clone(ctx context.Context, snap blockstore.SnapshotID, name string, size int64) (blockstore.VolumeInfo, error)
	CloneVolume(ctx context.Context, src blockstore.VolumeID, name string, size int64) (blockstore.VolumeInfo, error)
	GrowVolume(ctx context.Context, id blockstore.VolumeID, size int64) error
	DeleteVolume(ctx context.Context, id blockstore.VolumeID) error
	// DeleteVolumeSnapshots deletes every snapshot of a volume and returns how many.
	DeleteVolumeSnapshots(ctx context.Context, id blockstore.VolumeID) (int, error)
	Revert(ctx context.Context, vol blockstore.VolumeID, snap blockstore.SnapshotID) error
	VolumeInfo(ctx context.Context, id blockstore.VolumeID) (blockstore.VolumeInfo, error)
	LookupVolume(ctx context.Context, name string) (blockstore.VolumeInfo, error)
	// ListVolumes lists the pool's volumes ordered by ID.
	ListVolumes(ctx context.Context) ([]blockstore.VolumeInfo, error)

	CreateSnapshot(ctx context.Context, vol blockstore.VolumeID, name string) (blockstore.SnapshotInfo, error)
	DeleteSnapshot(ctx context.Context, id blockstore.SnapshotID) error
	SnapshotInfo(ctx context.Context, id blockstore.SnapshotID) (blockstore.SnapshotInfo, error)
	LookupSnapshot(ctx context.Context, name string) (blockstore.SnapshotInfo, error)
	// ListSnapshots lists the pool's snapshots ordered by ID.
	ListSnapshots(ctx context.Context) ([]blockstore.SnapshotInfo, error)

	// DiffVolume returns the extents of a volume that may differ from a snapshot;
	// AllocatedExtents the mapped extents of a snapshot.
	DiffVolume(ctx context.Context, from blockstore.SnapshotID, vol blockstore.VolumeID) ([]blockstore.Extent, error)
	AllocatedExtents(ctx context.Context, snap blockstore.SnapshotID) ([]blockstore.Extent, error)

	// ReadVolume fills b (at most MaxDataBytes) from volume id at off; WriteVolume writes b
	// there: acknowledged, a write survives the data plane's death, and a FlushVolume makes it
	// durable. ZeroVolume makes a range read as zeros, unmapping its whole blocks. They move
	// the chunks of image pushes and pulls (package exportset/poolvol) over the socket, not
	// through a block device: no export, no kernel block path (BENCHMARKS.md section 14).
	// A range past the volume's end fails with blockstore.ErrOutOfRange.
	ReadVolume(ctx context.Context, id blockstore.VolumeID, off int64, b []byte) error
	WriteVolume(ctx context.Context, id blockstore.VolumeID, off int64, b []byte) error
	ZeroVolume(ctx context.Context, id blockstore.VolumeID, off, length int64) error
	FlushVolume(ctx context.Context, id blockstore.VolumeID) error
}

// MaxDataBytes bounds the data of one ReadVolume or WriteVolume: an export set's largest
// chunk.
const MaxDataBytes = 64 << 20

// Exports is the export part of a Store: the pool's volumes as kernel block devices, by export
// id (package nodevolume uses it; mkfs, mounts and bind mounts stay with the caller, in its
// mount namespace). An export's device is global: a /dev/loopN that any mount namespace with
// /dev sees.
type Exports interface {
	// Export exports a volume as a block device under spec.ID (export.ValidID). Exporting an id
	// that is exported already returns that export, with spec.Attrs recorded instead of the
	// earlier ones, when it is the same volume, and fails with export.ErrExists otherwise.
	// Leftovers of the id (see Leftovers) fail it with export.ErrLeftovers: clean them up
	// first.
	Export(ctx context.Context, spec ExportSpec) (Export, error)
	// Unexport tears the export of id down: the block device, then what serves it (the
	// volume is flushed). It fails with export.ErrBusy, changing nothing, while the device is
	// in use (a file system on it is mounted). An id that is not exported is not an error.
	Unexport(ctx context.Context, id string) error
	// ResizeExport makes the device of id follow its volume's size after the volume grew.
	// ErrNotExported if id is not exported.
	ResizeExport(ctx context.Context, id string) error
	// ListExports lists the exports this data plane serves, by id.
	ListExports(ctx context.Context) ([]Export, error)
	// Leftovers lists the kernel state of exports that this data plane does not serve: what an
	// earlier data plane process left (its server died with it, so their I/O fails).
	Leftovers(ctx context.Context) ([]export.Leftover, error)
	// CleanupLeftover tears the leftovers of id down (export.Exporter.Cleanup): export.ErrBusy
	// while its device is in use, export.ErrExists if id is served. Nothing left is not an
	// error. The caller checks first that no mount of its own uses the device: a bind mount of
	// a device node does not hold the device (package nodevolume does).
	CleanupLeftover(ctx context.Context, id string) error
	// IOStats counts the I/O the exports made on their volumes since the data plane started.
	IOStats(ctx context.Context) (IOStats, error)
}

// ExportSpec says what to export.
type ExportSpec struct {
	// ID names the export (export.ValidID), unique on the node.
	ID string
	// Volume is the pool volume to export.
	Volume blockstore.VolumeID
	// Attrs are the caller's notes about the export, opaque to the data plane and returned
	// with it by ListExports, so that a control plane that restarted finds them (nodevolume
	// keeps the mount point and file system there). At most 16 of at most 4 KiB each.
	Attrs map[string]string
}

// Export is a volume exported as a block device.
type Export struct {
	ID     string
	Volume blockstore.VolumeID
	// Device is the block device node, e.g. /dev/loop3.
	Device string
	// Method is the export method that serves it (export.MethodFUSELoop).
	Method string
	Attrs  map[string]string
}

// The I/O operations an export makes on a volume, as IOStats counts them.
const (
	IORead = iota
	IOWrite
	IOFlush
	IODiscard
	IOWriteZeroes
	IOOps
)

// IOOpNames name the operations of IOStats (its array indexes).
var IOOpNames = [IOOps]string{"read", "write", "flush", "discard", "write_zeroes"}

// IOStats counts the I/O the kernel made on exported volumes through their devices, by
// operation (IORead, ...), since the data plane started.
type IOStats struct {
	Ops    [IOOps]uint64 // operations
	Errors [IOOps]uint64 // of those, the ones that failed
	Bytes  [IOOps]uint64 // bytes moved (reads and writes)
	// Exported is the number of volumes exported now.
	Exported int
}

// Limits of ExportSpec.Attrs.
const (
	maxAttrs    = 16
	maxAttrSize = 4 << 10
)

func (s ExportSpec) check() error {
	if !export.ValidID(s.ID) {
		return wrapf(export.ErrInvalid, "export id %q: want 1 to 200 of [A-Za-z0-9._-], not starting with '.'", s.ID)
	}
	if len(s.Attrs) > maxAttrs {
		return wrapf(export.ErrInvalid, "export %s: %d attrs, at most %d", s.ID, len(s.Attrs), maxAttrs)
	}
	for k, v := range s.Attrs {
		if len(k)+len(v) > maxAttrSize {
			return wrapf(export.ErrInvalid, "export %s: attr %.40q: %d bytes, at most %d", s.ID, k, len(k)+len(v), maxAttrSize)
		}
	}
	return nil
}
