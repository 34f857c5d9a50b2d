// Package poolvol reads and writes images of a node's pool for package exportset: a snapshot as
// a push's Source (an O(1) clone of it, read), and the pool as a pull's Sink (a clone of an
// ancestor's snapshot grown to the image's size, or an empty volume, written, then snapshotted
// at commit). Diffs and allocated extents come from the store, at a cost proportional to what
// changed.
//
// A Node says how to reach the pool: InProcess where the pool is open in this process (the data
// plane, tests), WithStore where it is in another process (the local daemon and the CSI node
// reach their data plane's pool through its API, which also reads and writes the volumes'
// data: no block device is made for a push or a pull).
//
// It must not know who keeps the images (the local daemon's catalog, the CSI node's records:
// callers say which snapshot holds which digest and what to name what a pull makes), nor the
// data plane (a Store is an interface).
package poolvol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
)

// Store is what poolvol needs of a node's store: the methods of the same names of
// dataplane.Store, which are *blockstore.Pool's with a context.
type Store interface {
	CreateVolume(ctx context.Context, name string, size int64) (blockstore.VolumeInfo, error)
	Clone(ctx context.Context, snap blockstore.SnapshotID, name string, size int64) (blockstore.VolumeInfo, error)
	DeleteVolume(ctx context.Context, id blockstore.VolumeID) error
	LookupVolume(ctx context.Context, name string) (blockstore.VolumeInfo, error)
	CreateSnapshot(ctx context.Context, vol blockstore.VolumeID, name string) (blockstore.SnapshotInfo, error)
	SnapshotInfo(ctx context.Context, id blockstore.SnapshotID) (blockstore.SnapshotInfo, error)
	DiffVolume(ctx context.Context, from blockstore.SnapshotID, vol blockstore.VolumeID) ([]blockstore.Extent, error)
	AllocatedExtents(ctx context.Context, snap blockstore.SnapshotID) ([]blockstore.Extent, error)
}

// handle is a volume open for I/O.
type handle interface {
	io.ReaderAt
	io.WriterAt
	// zero makes the range read as zeros, unmapping whole blocks.
	zero(off, length int64) error
	// flush makes what was written durable.
	flush() error
	// close releases the handle (a device is detached); the volume stays.
	close(ctx context.Context) error
}

// Node is a node's pool as pushes read it and pulls write it. Its changes to the store (make,
// clone, snapshot, delete a volume; attach, detach a device) run to their end also when the
// push's or pull's context ends: a change cancelled half-way over a socket would leave it
// unknown whether it was made.
type Node struct {
	store     Store
	open      func(ctx context.Context, id string, vol blockstore.VolumeInfo, write bool) (handle, error)
	blockSize int
	log       *slog.Logger
}

// InProcess returns the node of a pool open in this process.
func InProcess(p *blockstore.Pool, log *slog.Logger) *Node {
	return &Node{store: poolStore{p}, blockSize: p.BlockSize(), log: discardIfNil(log),
		open: func(_ context.Context, _ string, vol blockstore.VolumeInfo, _ bool) (handle, error) {
			v, err := p.Volume(vol.ID)
			if err != nil {
				return nil, err
			}
			return poolHandle{v}, nil
		}}
}

func discardIfNil(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// device opens vol under export id (read-only unless write); on failure the volume is deleted.
func (n *Node) device(ctx context.Context, id string, vol blockstore.VolumeInfo, write bool) (*volume, error) {
	ctx = context.WithoutCancel(ctx)
	h, err := n.open(ctx, id, vol, write)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("poolvol: open volume %s: %w", vol.Name, err), n.store.DeleteVolume(context.WithoutCancel(ctx), vol.ID))
	}
	return &volume{n: n, vol: vol, h: h}, nil
}

// volume is a volume poolvol made, open.
type volume struct {
	n   *Node
	vol blockstore.VolumeInfo
	h   handle
}

// remove closes the volume and deletes it.
func (v *volume) remove(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	err := v.h.close(ctx)
	if derr := v.n.store.DeleteVolume(ctx, v.vol.ID); derr != nil && !errors.Is(derr, blockstore.ErrNotFound) {
		err = errors.Join(err, fmt.Errorf("poolvol: delete volume %s: %w", v.vol.Name, derr))
	}
	return err
}

// Source is a snapshot as a push's source: a clone of it, open. Close it.
type Source struct {
	snap blockstore.SnapshotID
	size int64
	v    *volume
}

// NewSource makes snapshot snap a source: a clone of it named volume, open under export id
// (both unique on the node; what an earlier process left of them is the caller's to clean up).
func (n *Node) NewSource(ctx context.Context, snap blockstore.SnapshotID, volume, id string) (*Source, error) {
	info, err := n.store.SnapshotInfo(ctx, snap)
	if err != nil {
		return nil, fmt.Errorf("poolvol: snapshot %d: %w", snap, err)
	}
	vol, err := n.store.Clone(context.WithoutCancel(ctx), snap, volume, 0)
	if err != nil {
		return nil, fmt.Errorf("poolvol: clone snapshot %s: %w", info.Name, err)
	}
	v, err := n.device(ctx, id, vol, false)
	if err != nil {
		return nil, err
	}
	return &Source{snap: snap, size: info.Size, v: v}, nil
}

// Close releases the source and deletes its clone.
func (s *Source) Close(ctx context.Context) error { return s.v.remove(ctx) }

func (s *Source) Size() int64                             { return s.size }
func (s *Source) BlockSize() int                          { return s.v.n.blockSize }
func (s *Source) ReadAt(b []byte, off int64) (int, error) { return s.v.h.ReadAt(b, off) }

func (s *Source) Allocated(ctx context.Context) ([]exportset.Extent, error) {
	ext, err := s.v.n.store.AllocatedExtents(ctx, s.snap)
	if err != nil {
		return nil, fmt.Errorf("poolvol: allocated extents of snapshot %d: %w", s.snap, err)
	}
	return extents(ext), nil
}

// ChangedSince returns the store's diff of base's snapshot and this source's clone (which shares
// its snapshot's tree: the cost is what changed). base must be a *Source of the same node.
func (s *Source) ChangedSince(ctx context.Context, base exportset.Source) ([]exportset.Extent, error) {
	b, ok := base.(*Source)
	if !ok || b.v.n != s.v.n {
		return nil, fmt.Errorf("%w: poolvol: the base of a diff must be a source of the same node", exportset.ErrInvalid)
	}
	ext, err := s.v.n.store.DiffVolume(ctx, b.snap, s.v.vol.ID)
	if err != nil {
		return nil, fmt.Errorf("poolvol: diff of snapshot %d and volume %s: %w", b.snap, s.v.vol.Name, err)
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

// Sink is a node as one pull's sink. Fill in its fields, pull, then read Committed.
type Sink struct {
	Node *Node
	// Lookup returns the snapshot that holds image d on the node, if any: the pull may start
	// from a clone of it.
	Lookup func(d exportset.Digest) (blockstore.SnapshotID, bool)
	// Volume names the volume the pull fills; ID names the pull to the Node (unused by
	// WithStore and InProcess; earlier versions exported the volume under it). A volume of
	// that name is taken for what an interrupted pull left: resumed (with Resume, when it has
	// the image's size and was cloned from the same base, or from none as the pull would be),
	// else deleted first.
	Volume, ID string
	// Resume: Volume names a pull of this one image (its digest is in the name), so a failed
	// pull keeps it (exportset.ResumableFill) and the next pull of the image resumes it.
	Resume bool
	// Snapshot names the snapshot the image becomes.
	Snapshot string

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

func (s *Sink) Begin(ctx context.Context, d exportset.Digest, m *exportset.Manifest, base exportset.Digest) (exportset.Fill, error) {
	n := s.Node
	ctx = context.WithoutCancel(ctx)
	if s.Volume == "" || s.Snapshot == "" {
		return nil, fmt.Errorf("%w: poolvol: a sink needs a volume and a snapshot name", exportset.ErrInvalid)
	}
	var origin blockstore.SnapshotID // the base's snapshot, or none
	if base != "" {
		snap, ok := s.Lookup(base)
		if !ok {
			return nil, fmt.Errorf("%w: poolvol: image %s is not on the node any more", exportset.ErrNotFound, base)
		}
		origin = snap
	}
	if old, err := n.store.LookupVolume(ctx, s.Volume); err == nil {
		if s.Resume && old.Size == m.Size && old.Origin == origin {
			n.log.Info("resuming what an interrupted pull left", "volume", s.Volume, "image", d)
			v, err := n.device(ctx, s.ID, old, true)
			if err != nil {
				return nil, err
			}
			return &resumableFill{fill: fill{s: s, v: v}, resumed: true}, nil
		}
		n.log.Info("deleting what an interrupted pull left", "volume", s.Volume)
		if err := n.store.DeleteVolume(ctx, old.ID); err != nil {
			return nil, fmt.Errorf("poolvol: delete the leftover volume %s: %w", s.Volume, err)
		}
	} else if !errors.Is(err, blockstore.ErrNotFound) {
		return nil, fmt.Errorf("poolvol: look up volume %s: %w", s.Volume, err)
	}
	var vol blockstore.VolumeInfo
	var err error
	if base != "" {
		vol, err = n.store.Clone(ctx, origin, s.Volume, m.Size)
	} else {
		vol, err = n.store.CreateVolume(ctx, s.Volume, m.Size)
	}
	if err != nil {
		return nil, fmt.Errorf("poolvol: make volume %s for image %s: %w", s.Volume, d, err)
	}
	v, err := n.device(ctx, s.ID, vol, true)
	if err != nil {
		return nil, err
	}
	if s.Resume {
		return &resumableFill{fill: fill{s: s, v: v}}, nil
	}
	return &fill{s: s, v: v}, nil
}

// resumableFill is the fill of a Sink that resumes (exportset.ResumableFill).
type resumableFill struct {
	fill
	resumed bool
}

func (f *resumableFill) Resumed() bool { return f.resumed }

// Keep flushes and closes the volume and leaves it for the next pull of the image.
func (f *resumableFill) Keep(ctx context.Context) error {
	v := f.v
	if err := v.h.flush(); err != nil {
		return fmt.Errorf("poolvol: flush volume %s: %w", v.vol.Name, err)
	}
	return v.h.close(context.WithoutCancel(ctx))
}

// fill is the volume a pull fills.
type fill struct {
	s *Sink
	v *volume
}

func (f *fill) ReadAt(b []byte, off int64) (int, error)  { return f.v.h.ReadAt(b, off) }
func (f *fill) WriteAt(b []byte, off int64) (int, error) { return f.v.h.WriteAt(b, off) }
func (f *fill) Zero(off, length int64) error             { return f.v.h.zero(off, length) }

// Commit flushes and closes the volume, snapshots it as the image and deletes it: the snapshot
// is the image, durable when Commit returns.
func (f *fill) Commit(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	v := f.v
	if err := v.h.flush(); err != nil {
		return fmt.Errorf("poolvol: flush volume %s: %w", v.vol.Name, err)
	}
	if err := v.h.close(ctx); err != nil {
		return fmt.Errorf("poolvol: close volume %s: %w", v.vol.Name, err)
	}
	snap, err := v.n.store.CreateSnapshot(ctx, v.vol.ID, f.s.Snapshot)
	if err != nil {
		return fmt.Errorf("poolvol: snapshot volume %s as %s: %w", v.vol.Name, f.s.Snapshot, err)
	}
	f.s.mu.Lock()
	f.s.committed = &snap
	f.s.mu.Unlock()
	if err := v.n.store.DeleteVolume(ctx, v.vol.ID); err != nil {
		// The image is made; the volume is what the next pull of that name deletes.
		v.n.log.Warn("deleting the volume of a pull", "volume", v.vol.Name, "err", err)
	}
	return nil
}

func (f *fill) Abort(ctx context.Context) error { return f.v.remove(ctx) }
