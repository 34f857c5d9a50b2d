package blockstore

import (
	"fmt"
	"sort"
	"time"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// SnapshotInfo describes a snapshot: a frozen converter tree of a volume.
type SnapshotInfo struct {
	ID      SnapshotID
	Name    string
	Volume  VolumeID // source volume (it may have been deleted since)
	LSN     uint64   // log position at which the snapshot was taken
	Created time.Time
	Size    int64 // bytes: the volume's size when the snapshot was taken
}

type snapState struct {
	id      SnapshotID
	name    string
	vol     VolumeID
	lsn     uint64
	created int64
	size    uint64
	t       tree
	deleted bool
}

func (s *snapState) info() SnapshotInfo {
	return SnapshotInfo{ID: s.id, Name: s.name, Volume: s.vol, LSN: s.lsn, Created: time.Unix(0, s.created), Size: int64(s.size)}
}

func (p *Pool) addSnapshot(s *snapState) {
	p.snaps[s.id] = s
	if s.name != "" {
		p.snapNames[s.name] = s.id
	}
}

func (p *Pool) removeSnapshot(s *snapState) {
	delete(p.snaps, s.id)
	if s.name != "" {
		delete(p.snapNames, s.name)
	}
	s.deleted = true
}

func (p *Pool) snapByID(id SnapshotID) (*snapState, error) {
	s, ok := p.snaps[id]
	if !ok {
		return nil, fmt.Errorf("%w: snapshot %d", ErrNotFound, id)
	}
	return s, nil
}

// CreateSnapshot freezes the current contents of a volume in O(1): every write that completed
// before the call is in the snapshot, none that starts after it. name may be empty; a non-empty
// name must be unique among snapshots. The snapshot is durable when CreateSnapshot returns.
func (p *Pool) CreateSnapshot(vol VolumeID, name string) (SnapshotInfo, error) {
	if err := validName("snapshot", name); err != nil {
		return SnapshotInfo{}, err
	}
	var info SnapshotInfo
	err := p.durableChange(true, func() error {
		v, err := p.volByID(vol)
		if err != nil {
			return err
		}
		if _, ok := p.snapNames[name]; ok && name != "" {
			return fmt.Errorf("%w: snapshot %q", ErrExists, name)
		}
		id := p.nextSnap
		if _, err := p.changeLocked(format.Record{Type: format.RecCreateSnapshot, Vol: uint64(v.id), Snap: id, Name: name, Time: p.now().UnixNano()}); err != nil {
			return err
		}
		info = p.snaps[SnapshotID(id)].info()
		return nil
	})
	return info, err
}

// Snapshots lists every snapshot of the pool ordered by ID.
func (p *Pool) Snapshots() []SnapshotInfo {
	return p.listSnapshots(func(*snapState) bool { return true })
}

// VolumeSnapshots lists the snapshots taken of a volume ordered by ID.
func (p *Pool) VolumeSnapshots(vol VolumeID) []SnapshotInfo {
	return p.listSnapshots(func(s *snapState) bool { return s.vol == vol })
}

func (p *Pool) listSnapshots(keep func(*snapState) bool) []SnapshotInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []SnapshotInfo
	for _, s := range p.snaps {
		if keep(s) {
			out = append(out, s.info())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SnapshotInfo returns a snapshot's description.
func (p *Pool) SnapshotInfo(id SnapshotID) (SnapshotInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, err := p.snapByID(id)
	if err != nil {
		return SnapshotInfo{}, err
	}
	return s.info(), nil
}

// LookupSnapshot finds a snapshot by name.
func (p *Pool) LookupSnapshot(name string) (SnapshotInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.snapNames[name]
	if !ok || name == "" {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot %q", ErrNotFound, name)
	}
	return p.snaps[id].info(), nil
}

// DeleteSnapshot deletes a snapshot. Volumes cloned from it keep their data. The deletion is
// durable when DeleteSnapshot returns.
func (p *Pool) DeleteSnapshot(id SnapshotID) error {
	return p.durableChange(true, func() error {
		if _, err := p.snapByID(id); err != nil {
			return err
		}
		_, err := p.changeLocked(format.Record{Type: format.RecDeleteSnapshot, Snap: uint64(id)})
		return err
	})
}

// DeleteVolumeSnapshots deletes every snapshot taken of a volume and returns how many.
func (p *Pool) DeleteVolumeSnapshots(vol VolumeID) (int, error) {
	n := 0
	err := p.durableChange(true, func() error {
		for _, s := range p.snaps {
			if s.vol != vol {
				continue
			}
			if _, err := p.changeLocked(format.Record{Type: format.RecDeleteSnapshot, Snap: uint64(s.id)}); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// Clone creates a writable volume whose contents start as the snapshot's, in O(1). size 0 means
// the snapshot's size; a larger size grows the clone.
func (p *Pool) Clone(snap SnapshotID, name string, size int64) (VolumeInfo, error) {
	return p.clone(format.RecCloneSnapshot, uint64(snap), name, size)
}

// CloneVolume creates a writable volume whose contents start as the volume's current contents,
// in O(1), as if a snapshot were taken and cloned.
func (p *Pool) CloneVolume(src VolumeID, name string, size int64) (VolumeInfo, error) {
	return p.clone(format.RecCloneVolume, uint64(src), name, size)
}

func (p *Pool) clone(typ format.RecordType, src uint64, name string, size int64) (VolumeInfo, error) {
	if err := validName("volume", name); err != nil {
		return VolumeInfo{}, err
	}
	if size < 0 {
		return VolumeInfo{}, invalidf("size %d: must not be negative", size)
	}
	var info VolumeInfo
	err := p.durableChange(typ == format.RecCloneVolume, func() error {
		var srcSize uint64
		r := format.Record{Type: typ, Name: name, Time: p.now().UnixNano()}
		if typ == format.RecCloneSnapshot {
			s, err := p.snapByID(SnapshotID(src))
			if err != nil {
				return err
			}
			srcSize, r.Snap = s.size, uint64(s.id)
		} else {
			v, err := p.volByID(VolumeID(src))
			if err != nil {
				return err
			}
			srcSize, r.B = v.size, uint64(v.id)
		}
		if size == 0 {
			size = int64(srcSize)
		}
		if uint64(size) < srcSize {
			return invalidf("size %d: smaller than the source's %d bytes", size, srcSize)
		}
		if _, ok := p.volNames[name]; ok && name != "" {
			return fmt.Errorf("%w: volume %q", ErrExists, name)
		}
		if err := p.checkSize(uint64(size), uint64(size)); err != nil {
			return err
		}
		r.Vol, r.A = p.nextVol, uint64(size)
		if _, err := p.changeLocked(r); err != nil {
			return err
		}
		info = p.vols[VolumeID(r.Vol)].info()
		return nil
	})
	return info, err
}

// Revert points a volume back at one of its snapshots (or the snapshot it was cloned from) in
// O(1), discarding every change made since. The volume keeps its size. Durable on return.
func (p *Pool) Revert(vol VolumeID, snap SnapshotID) error {
	return p.durableChange(true, func() error {
		v, err := p.volByID(vol)
		if err != nil {
			return err
		}
		s, err := p.snapByID(snap)
		if err != nil {
			return err
		}
		if s.vol != v.id && v.origin != s.id {
			return invalidf("snapshot %d: taken of volume %d, not of volume %d or its origin", s.id, s.vol, v.id)
		}
		if s.size > v.size {
			return invalidf("snapshot %d: %d bytes, larger than volume %d (%d bytes)", s.id, s.size, v.id, v.size)
		}
		_, err = p.changeLocked(format.Record{Type: format.RecRevert, Vol: uint64(v.id), Snap: uint64(s.id)})
		return err
	})
}

// SnapshotView reads a snapshot. It stays point-in-time while the source volume changes.
type SnapshotView struct {
	p *Pool
	s *snapState
}

// SnapshotView returns a read-only view of a snapshot.
func (p *Pool) SnapshotView(id SnapshotID) (*SnapshotView, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, err := p.snapByID(id)
	if err != nil {
		return nil, err
	}
	return &SnapshotView{p: p, s: s}, nil
}

// Size returns the snapshot's size in bytes.
func (sv *SnapshotView) Size() int64 { return int64(sv.s.size) }

// ReadAt reads the snapshot like Volume.ReadAt reads a volume.
func (sv *SnapshotView) ReadAt(b []byte, off int64) (int, error) {
	s := sv.s
	return sv.p.readTree(func() (tree, uint64, error) {
		if sv.p.closed {
			return tree{}, 0, ErrClosed
		}
		if s.deleted {
			return tree{}, 0, fmt.Errorf("%w: snapshot %d was deleted", ErrNotFound, s.id)
		}
		return s.t, s.size, nil
	}, b, off, func() string { return fmt.Sprintf("snapshot %d", s.id) })
}

// SnapshotLogBytes returns the snapshot log's size: the bytes of blocks that only this snapshot
// still holds (what deleting it would free). It costs time proportional to that, not to the
// snapshot's size.
func (p *Pool) SnapshotLogBytes(id SnapshotID) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, err := p.snapByID(id)
	if err != nil {
		return 0, err
	}
	var blocks uint64
	var walk func(pbn uint64, level int) error
	walk = func(pbn uint64, level int) error {
		if pbn == 0 || p.rc.get(pbn) != 1 {
			return nil // shared: everything below is held by someone else too
		}
		n, err := p.getNode(pbn)
		if err != nil {
			return err
		}
		for _, c := range n.ent {
			if c == 0 {
				continue
			}
			if level == 0 {
				if p.rc.get(c) == 1 {
					blocks++
				}
			} else if err := walk(c, level-1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(s.t.root, int(s.t.height)-1); err != nil {
		return 0, err
	}
	return int64(blocks) * int64(p.bs), nil
}
