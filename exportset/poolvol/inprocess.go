package poolvol

import (
	"context"

	"github.com/dataimage/dataimage/blockstore"
)

// poolStore is a pool as a Store: its methods with a context they do not need.
type poolStore struct{ p *blockstore.Pool }

func (s poolStore) CreateVolume(_ context.Context, name string, size int64) (blockstore.VolumeInfo, error) {
	return s.p.CreateVolume(name, size)
}
func (s poolStore) Clone(_ context.Context, snap blockstore.SnapshotID, name string, size int64) (blockstore.VolumeInfo, error) {
	return s.p.Clone(snap, name, size)
}
func (s poolStore) DeleteVolume(_ context.Context, id blockstore.VolumeID) error {
	return s.p.DeleteVolume(id)
}
func (s poolStore) LookupVolume(_ context.Context, name string) (blockstore.VolumeInfo, error) {
	return s.p.LookupVolume(name)
}
func (s poolStore) CreateSnapshot(_ context.Context, vol blockstore.VolumeID, name string) (blockstore.SnapshotInfo, error) {
	return s.p.CreateSnapshot(vol, name)
}
func (s poolStore) SnapshotInfo(_ context.Context, id blockstore.SnapshotID) (blockstore.SnapshotInfo, error) {
	return s.p.SnapshotInfo(id)
}
func (s poolStore) DiffVolume(_ context.Context, from blockstore.SnapshotID, vol blockstore.VolumeID) ([]blockstore.Extent, error) {
	return s.p.DiffVolume(from, vol)
}
func (s poolStore) AllocatedExtents(_ context.Context, snap blockstore.SnapshotID) ([]blockstore.Extent, error) {
	return s.p.AllocatedExtents(snap)
}

// poolHandle is a volume of a pool open in this process.
type poolHandle struct{ v *blockstore.Volume }

func (h poolHandle) ReadAt(b []byte, off int64) (int, error)  { return h.v.ReadAt(b, off) }
func (h poolHandle) WriteAt(b []byte, off int64) (int, error) { return h.v.WriteAt(b, off) }
func (h poolHandle) zero(off, length int64) error             { return h.v.WriteZeroes(off, length) }
func (h poolHandle) flush() error                             { return h.v.Flush() }
func (h poolHandle) close(context.Context) error              { return nil }
