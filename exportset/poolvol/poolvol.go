// Package poolvol reads and writes images of a blockstore pool for package exportset: a
// snapshot as a push's Source, and a pool as a pull's Sink (a clone of an ancestor's snapshot,
// or a new volume, that becomes a snapshot when complete).
//
// It must not know who keeps the images (the local daemon's catalog, the CSI node's records):
// callers say which snapshot holds which digest, and what to name what a pull makes.
package poolvol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
)

// Source is a snapshot of a pool as an export-set source.
type Source struct {
	pool *blockstore.Pool
	snap blockstore.SnapshotID
	view *blockstore.SnapshotView
}

// NewSource returns the snapshot snap of p as a source.
func NewSource(p *blockstore.Pool, snap blockstore.SnapshotID) (*Source, error) {
	v, err := p.SnapshotView(snap)
	if err != nil {
		return nil, fmt.Errorf("poolvol: snapshot %d: %w", snap, err)
	}
	return &Source{pool: p, snap: snap, view: v}, nil
}

// Snapshot returns the snapshot's ID.
func (s *Source) Snapshot() blockstore.SnapshotID { return s.snap }

func (s *Source) Size() int64    { return s.view.Size() }
func (s *Source) BlockSize() int { return s.pool.BlockSize() }

func (s *Source) ReadAt(b []byte, off int64) (int, error) { return s.view.ReadAt(b, off) }

func (s *Source) Allocated(context.Context) ([]exportset.Extent, error) {
	ext, err := s.pool.AllocatedExtents(s.snap)
	if err != nil {
		return nil, fmt.Errorf("poolvol: allocated extents of snapshot %d: %w", s.snap, err)
	}
	return extents(ext), nil
}

// ChangedSince returns the pool's diff of base's snapshot and this one. base must be a
// *Source of the same pool.
func (s *Source) ChangedSince(_ context.Context, base exportset.Source) ([]exportset.Extent, error) {
	b, ok := base.(*Source)
	if !ok || b.pool != s.pool {
		return nil, fmt.Errorf("%w: poolvol: the base of a diff must be a snapshot of the same pool", exportset.ErrInvalid)
	}
	ext, err := s.pool.DiffSnapshots(b.snap, s.snap)
	if err != nil {
		return nil, fmt.Errorf("poolvol: diff of snapshots %d and %d: %w", b.snap, s.snap, err)
	}
	return extents(ext), nil
}

func extents(ext []blockstore.Extent) []exportset.Extent {
	out := make([]exportset.Extent, len(ext))
	for i, e := range ext {
		out[i] = exportset.Extent{Offset: e.Offset, Length: e.Length}
	}
	return out
}

// Sink is a pool as one pull's sink. Fill in its fields, pull, then read Committed.
type Sink struct {
	Pool *blockstore.Pool
	// Lookup returns the snapshot of the pool that holds image d, if any: the pull may start
	// from a clone of it.
	Lookup func(d exportset.Digest) (blockstore.SnapshotID, bool)
	// Volume names the volume the pull fills. A volume of that name is taken for what an
	// interrupted pull left, and deleted first: pulls start over.
	Volume string
	// Snapshot names the snapshot the image becomes.
	Snapshot string
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger

	mu        sync.Mutex
	committed *blockstore.SnapshotInfo
}

// Committed returns the snapshot a successful pull made.
func (s *Sink) Committed() (blockstore.SnapshotInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed == nil {
		return blockstore.SnapshotInfo{}, false
	}
	return *s.committed, true
}

func (s *Sink) Has(_ context.Context, d exportset.Digest) (bool, error) {
	if s.Lookup == nil {
		return false, nil
	}
	_, ok := s.Lookup(d)
	return ok, nil
}

func (s *Sink) Begin(_ context.Context, d exportset.Digest, m *exportset.Manifest, base exportset.Digest) (exportset.Fill, error) {
	if s.Volume == "" || s.Snapshot == "" {
		return nil, fmt.Errorf("%w: poolvol: a sink needs a volume and a snapshot name", exportset.ErrInvalid)
	}
	if old, err := s.Pool.LookupVolume(s.Volume); err == nil {
		s.log().Info("deleting what an interrupted pull left", "volume", s.Volume)
		if err := s.Pool.DeleteVolume(old.ID); err != nil {
			return nil, fmt.Errorf("poolvol: delete the leftover volume %s: %w", s.Volume, err)
		}
	} else if !errors.Is(err, blockstore.ErrNotFound) {
		return nil, fmt.Errorf("poolvol: look up volume %s: %w", s.Volume, err)
	}
	var info blockstore.VolumeInfo
	var err error
	if base != "" {
		snap, ok := s.Lookup(base)
		if !ok {
			return nil, fmt.Errorf("%w: poolvol: image %s is not in the pool any more", exportset.ErrNotFound, base)
		}
		info, err = s.Pool.Clone(snap, s.Volume, m.Size)
	} else {
		info, err = s.Pool.CreateVolume(s.Volume, m.Size)
	}
	if err != nil {
		return nil, fmt.Errorf("poolvol: make volume %s for image %s: %w", s.Volume, d, err)
	}
	vol, err := s.Pool.Volume(info.ID)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("poolvol: open volume %s: %w", s.Volume, err), s.Pool.DeleteVolume(info.ID))
	}
	return &fill{s: s, vol: vol, name: s.Volume}, nil
}

func (s *Sink) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// fill is the volume a pull fills.
type fill struct {
	s    *Sink
	vol  *blockstore.Volume
	name string
}

func (f *fill) ReadAt(b []byte, off int64) (int, error)  { return f.vol.ReadAt(b, off) }
func (f *fill) WriteAt(b []byte, off int64) (int, error) { return f.vol.WriteAt(b, off) }
func (f *fill) Zero(off, length int64) error             { return f.vol.WriteZeroes(off, length) }

// Commit flushes the volume, snapshots it as the image and deletes it: the snapshot is the
// image, durable when Commit returns.
func (f *fill) Commit(context.Context) error {
	if err := f.vol.Flush(); err != nil {
		return fmt.Errorf("poolvol: flush volume %s: %w", f.name, err)
	}
	snap, err := f.s.Pool.CreateSnapshot(f.vol.ID(), f.s.Snapshot)
	if err != nil {
		return fmt.Errorf("poolvol: snapshot volume %s as %s: %w", f.name, f.s.Snapshot, err)
	}
	f.s.mu.Lock()
	f.s.committed = &snap
	f.s.mu.Unlock()
	if err := f.s.Pool.DeleteVolume(f.vol.ID()); err != nil {
		// The image is made; the volume is what the next pull of that name deletes.
		f.s.log().Warn("deleting the volume of a pull", "volume", f.name, "err", err)
	}
	return nil
}

func (f *fill) Abort(context.Context) error {
	if err := f.s.Pool.DeleteVolume(f.vol.ID()); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
		return fmt.Errorf("poolvol: delete volume %s: %w", f.name, err)
	}
	return nil
}
