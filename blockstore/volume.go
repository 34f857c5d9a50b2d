package blockstore

import (
	"fmt"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// VolumeID identifies a volume within a pool. IDs are never reused.
type VolumeID uint64

// SnapshotID identifies a snapshot within a pool. IDs are never reused.
type SnapshotID uint64

// VolumeInfo describes a volume.
type VolumeInfo struct {
	ID      VolumeID
	Name    string
	Size    int64 // bytes
	Created time.Time
	Origin  SnapshotID // the snapshot it was cloned from, 0 if none
}

// volState is a volume in memory. Fields other than stripes are guarded by p.mu.
type volState struct {
	id      VolumeID
	name    string
	size    uint64
	created int64
	origin  SnapshotID
	t       tree
	deleted bool

	// stripes serialize writes to the same region of the volume: a write holds the stripe of
	// every logical block it changes from looking up their mapping to installing the new one.
	stripes [numStripes]sync.Mutex
}

// Write stripes: stripe i holds the runs of 16 consecutive logical blocks whose run number is i
// modulo numStripes. 512 stripes keep 32 random 4 KiB writers from meeting often (~6% of
// writes wait, against ~40% with 64 stripes of 64 blocks).
const (
	numStripes  = 512
	stripeShift = 4
)

func (v *volState) info() VolumeInfo {
	return VolumeInfo{ID: v.id, Name: v.name, Size: int64(v.size), Created: time.Unix(0, v.created), Origin: v.origin}
}

func (p *Pool) addVolume(v *volState) {
	p.vols[v.id] = v
	p.maxHeight = max(p.maxHeight, v.t.height)
	if v.name != "" {
		p.volNames[v.name] = v.id
	}
}

func (p *Pool) removeVolume(v *volState) {
	delete(p.vols, v.id)
	if v.name != "" {
		delete(p.volNames, v.name)
	}
	v.deleted = true
}

func (p *Pool) volByID(id VolumeID) (*volState, error) {
	v, ok := p.vols[id]
	if !ok {
		return nil, fmt.Errorf("%w: volume %d", ErrNotFound, id)
	}
	return v, nil
}

func validName(kind, name string) error {
	if len(name) > format.MaxNameLen {
		return invalidf("%s name: %d bytes, at most %d allowed", kind, len(name), format.MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return invalidf("%s name %q: not valid UTF-8", kind, name)
	}
	return nil
}

// checkSize validates a volume size and the over-provisioning limit for growing the logical
// total by add bytes. REQUIRES p.mu.
func (p *Pool) checkSize(size uint64, add uint64) error {
	if size == 0 || size%uint64(p.bs) != 0 {
		return invalidf("size %d: must be a positive multiple of the block size %d", size, p.bs)
	}
	if size > uint64(p.bs)<<40 || p.heightFor(size/uint64(p.bs)) > format.MaxHeight {
		return invalidf("size %d: exceeds the largest volume of this pool", size)
	}
	limit := uint64(float64(p.rc.n*uint64(p.bs)) * p.overProv)
	if prov := p.provisioned(); prov+add > limit {
		return fmt.Errorf("%w: %d bytes provisioned + %d requested > %d (%.2f × %d bytes of pool)",
			ErrOverProvisioned, prov, add, limit, p.overProv, p.rc.n*uint64(p.bs))
	}
	return nil
}

// changeLocked validates and applies a change described by r, then queues its record.
// REQUIRES p.mu.
func (p *Pool) changeLocked(r format.Record) (uint64, error) {
	if err := p.checkLocked(); err != nil {
		return 0, err
	}
	r.LSN = p.lsn + 1
	if err := p.apply(&r); err != nil {
		return 0, err
	}
	return p.appendRecord(r), nil
}

// CreateVolume creates an empty volume of size bytes (a multiple of the block size). name may
// be empty; a non-empty name must be unique among volumes.
func (p *Pool) CreateVolume(name string, size int64) (VolumeInfo, error) {
	if err := validName("volume", name); err != nil {
		return VolumeInfo{}, err
	}
	if size < 0 {
		return VolumeInfo{}, invalidf("size %d: must be positive", size)
	}
	var info VolumeInfo
	err := p.durableChange(false, func() error {
		if _, ok := p.volNames[name]; ok && name != "" {
			return fmt.Errorf("%w: volume %q", ErrExists, name)
		}
		if err := p.checkSize(uint64(size), uint64(size)); err != nil {
			return err
		}
		id := p.nextVol
		if _, err := p.changeLocked(format.Record{Type: format.RecCreateVolume, Vol: id, A: uint64(size), Name: name, Time: p.now().UnixNano()}); err != nil {
			return err
		}
		info = p.vols[VolumeID(id)].info()
		return nil
	})
	return info, err
}

// DeleteVolume deletes a volume. Its snapshots and clones keep their data. The deletion is
// durable when DeleteVolume returns.
func (p *Pool) DeleteVolume(id VolumeID) error {
	return p.durableChange(true, func() error {
		v, err := p.volByID(id)
		if err != nil {
			return err
		}
		_, err = p.changeLocked(format.Record{Type: format.RecDeleteVolume, Vol: uint64(v.id)})
		return err
	})
}

// durableChange applies a change (fn, with p.mu held) and commits it before returning.
// REQUIRES none of the pool's locks.
//
// With barrier set, fn runs once the data reads and writes in flight on every volume have
// ended, and before any more start (p.ioGate held exclusively): a change that makes blocks
// shared (a snapshot, a clone of a volume) must not meet a write that looked a block up as its
// own and is about to overwrite it, and one that frees blocks or ends sharing (a delete, a
// revert) must not meet a read of them. The commit that follows holds back nothing but other
// commits: blocks fn freed are reused only after it (pendingCommit), and data under a tree
// node or block that fn made private is not overwritten in place before it is durable
// (p.unshared, checked by lookup), so a crash that loses the change cannot bring back a
// snapshot or clone whose blocks were changed.
//
// With barrier unset, fn must not change what any volume or snapshot shares: I/O goes on
// while it runs.
func (p *Pool) durableChange(barrier bool, fn func() error) error {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	if err := p.applyChange(barrier, fn); err != nil {
		return err
	}
	return p.commitLocked()
}

// applyChange runs fn with p.mu held, and with p.ioGate held exclusively when barrier is set.
// REQUIRES p.commitMu.
func (p *Pool) applyChange(barrier bool, fn func() error) error {
	if barrier {
		p.ioGate.Lock()
		defer p.ioGate.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkLocked(); err != nil {
		return err
	}
	return fn()
}

// GrowVolume grows a volume to size bytes. Shrinking is refused.
func (p *Pool) GrowVolume(id VolumeID, size int64) error {
	return p.durableChange(false, func() error {
		v, err := p.volByID(id)
		if err != nil {
			return err
		}
		if size < int64(v.size) {
			return invalidf("size %d: volume %d is %d bytes and cannot shrink", size, id, v.size)
		}
		if size == int64(v.size) {
			return nil
		}
		if err := p.checkSize(uint64(size), uint64(size)-v.size); err != nil {
			return err
		}
		_, err = p.changeLocked(format.Record{Type: format.RecGrowVolume, Vol: uint64(id), A: uint64(size)})
		return err
	})
}

// Volumes lists the pool's volumes ordered by ID.
func (p *Pool) Volumes() []VolumeInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]VolumeInfo, 0, len(p.vols))
	for _, v := range p.vols {
		out = append(out, v.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// VolumeInfo returns a volume's description.
func (p *Pool) VolumeInfo(id VolumeID) (VolumeInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.volByID(id)
	if err != nil {
		return VolumeInfo{}, err
	}
	return v.info(), nil
}

// LookupVolume finds a volume by name.
func (p *Pool) LookupVolume(name string) (VolumeInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.volNames[name]
	if !ok || name == "" {
		return VolumeInfo{}, fmt.Errorf("%w: volume %q", ErrNotFound, name)
	}
	return p.vols[id].info(), nil
}

// Volume returns a handle for I/O on a volume.
func (p *Pool) Volume(id VolumeID) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.volByID(id)
	if err != nil {
		return nil, err
	}
	return &Volume{p: p, v: v}, nil
}
