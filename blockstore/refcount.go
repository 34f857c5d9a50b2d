package blockstore

import (
	"fmt"
	"slices"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// Refcounts and allocation.
//
// Every block of the data region has a 32-bit reference count: the number of tree entries,
// volume/snapshot roots and catalog links that point at it. Zero means free. Two values above
// maxRefs mark blocks that are free in the current state but may not be reused yet:
//
//   - pendingCommit: a data block freed by a journal record that is not yet durable. Reused only
//     after the next journal commit (or checkpoint), so that a crash cannot let recovery find the
//     block still mapped while it already holds another volume's data.
//   - pendingCheckpoint: a block that the last durable checkpoint still references (a clean tree
//     node or catalog block). Reused only after the next checkpoint is durable, since recovery
//     reads that checkpoint. Also a data block freed by a record that recovery replayed past
//     the last commit (journal.go): reused after the recovery checkpoint.
//
// Refcount pages are written at checkpoints with both marks stored as zero.
const (
	maxRefs           = 0xFFFFFFF0
	pendingCommit     = 0xFFFFFFFE
	pendingCheckpoint = 0xFFFFFFFF
)

// refcounts holds the refcount of every data-region block, in pages that mirror the on-disk
// refcount pages. Pages are loaded on demand and clean ones are evicted past a budget, so memory
// does not grow with what is mapped: what stays resident per page is its slot, its count of
// non-zero entries and a pointer (13 bytes per 1020 blocks, about 3.3 MiB per TiB of pool at
// 4 KiB blocks).
// INVARIANT: a page that holds a pending mark or differs from its durable copy is dirty, and a
// dirty page is never evicted. All methods REQUIRE p.mu.
type refcounts struct {
	base    uint64    // first data-region block
	n       uint64    // data-region blocks
	perPage int       // counts per page
	pages   []*rcPage // resident pages; nil: zeros if used is 0, else on disk in slot
	used    []int32   // non-zero counts per page (marks included), resident or not
	dirty   map[int]struct{}
	slot    []uint8 // on-disk slot holding the durable copy of each page: 0, 1, or noSlot
	inUse   uint64  // non-zero counts in total (marks included)
	cursor  uint64  // next-fit allocation cursor (data-region index)

	load        func(pg int, dst []uint32) error // reads the durable copy of page pg
	maxResident int                              // clean pages kept in memory
	resident    int
	hand        int   // CLOCK hand over page indices
	err         error // sticky: a page could not be loaded
}

type rcPage struct {
	counts []uint32
	ref    bool // used since the CLOCK hand last passed
}

const noSlot = 2

func newRefcounts(base, n uint64, perPage int) *refcounts {
	pages := int((n + uint64(perPage) - 1) / uint64(perPage))
	r := &refcounts{
		base: base, n: n, perPage: perPage,
		pages:       make([]*rcPage, pages),
		used:        make([]int32, pages),
		dirty:       make(map[int]struct{}),
		slot:        make([]uint8, pages),
		maxResident: 1 << 30,
	}
	for i := range r.slot {
		r.slot[i] = noSlot
	}
	return r
}

func (r *refcounts) index(pbn uint64) (page, off int) {
	i := pbn - r.base
	return int(i / uint64(r.perPage)), int(i % uint64(r.perPage))
}

// valid reports whether pbn lies in the data region.
func (r *refcounts) valid(pbn uint64) bool { return pbn >= r.base && pbn < r.base+r.n }

// page returns page pg, loading it if needed; nil if it holds only zeros (or failed to load,
// with r.err set).
func (r *refcounts) page(pg int) *rcPage {
	if pp := r.pages[pg]; pp != nil {
		pp.ref = true
		return pp
	}
	if r.used[pg] == 0 || r.err != nil {
		return nil
	}
	counts := make([]uint32, r.perPage)
	if err := r.load(pg, counts); err != nil {
		r.err = err
		return nil
	}
	return r.insert(pg, counts)
}

// insert makes counts resident as page pg, evicting others first if the budget is full (so
// the page returned stays resident until the next insert).
func (r *refcounts) insert(pg int, counts []uint32) *rcPage {
	if r.resident >= r.maxResident {
		r.evict()
	}
	pp := &rcPage{counts: counts, ref: true}
	r.pages[pg] = pp
	r.resident++
	return pp
}

// evict drops clean pages not used since the CLOCK hand last passed them.
func (r *refcounts) evict() {
	target := r.maxResident * 7 / 8
	for steps := 0; r.resident > target && steps < 2*len(r.pages); steps++ {
		r.hand = (r.hand + 1) % len(r.pages)
		pp := r.pages[r.hand]
		if pp == nil {
			continue
		}
		if _, dirty := r.dirty[r.hand]; dirty {
			continue
		}
		if pp.ref {
			pp.ref = false
			continue
		}
		r.pages[r.hand] = nil
		r.resident--
	}
}

func (r *refcounts) get(pbn uint64) uint32 {
	pg, off := r.index(pbn)
	pp := r.page(pg)
	if pp == nil {
		if r.err != nil {
			return maxRefs // unknown: treat as shared and in use; the pool has failed
		}
		return 0
	}
	return pp.counts[off]
}

func (r *refcounts) set(pbn uint64, v uint32) {
	pg, off := r.index(pbn)
	pp := r.page(pg)
	if pp == nil {
		if v == 0 || r.err != nil {
			return
		}
		pp = r.insert(pg, make([]uint32, r.perPage))
	}
	old := pp.counts[off]
	if old == v {
		return
	}
	switch {
	case old == 0:
		r.used[pg]++
		r.inUse++
	case v == 0:
		r.used[pg]--
		r.inUse--
	}
	pp.counts[off] = v
	r.dirty[pg] = struct{}{}
}

// incref adds a reference to an allocated block.
func (p *Pool) incref(pbn uint64) error {
	c := p.rc.get(pbn)
	if c == 0 || c > maxRefs {
		return p.fail(&CorruptionError{Block: pbn, What: "refcount", Err: fmt.Errorf("%w: reference added to a block with refcount %#x", format.ErrInvalid, c)})
	}
	if c == maxRefs {
		return fmt.Errorf("%w: block %d already has %d references", ErrNoSpace, pbn, c)
	}
	p.rc.set(pbn, c+1)
	return nil
}

// decref drops a reference to pbn and reports whether it was the last one. A block whose last
// reference goes is marked with the given pending mark, or freed at once when mark is 0.
func (p *Pool) decref(pbn uint64, mark uint32) (last bool) {
	c := p.rc.get(pbn)
	if c == 0 || c > maxRefs {
		// The metadata on disk was damaged (a tree names a block its refcount says is free):
		// stop changing the pool rather than free something twice.
		p.fail(&CorruptionError{Block: pbn, What: "refcount", Err: fmt.Errorf("%w: reference dropped from a block with refcount %#x", format.ErrInvalid, c)})
		return false
	}
	if c > 1 {
		p.rc.set(pbn, c-1)
		if c == 2 && (!p.replaying || p.replayVolatile) {
			p.unshared[pbn] = p.cutSeq
		}
		return false
	}
	p.rc.set(pbn, mark)
	switch mark {
	case pendingCommit:
		p.pendingCommit = append(p.pendingCommit, pbn)
	case pendingCheckpoint:
		p.pendingCheckpoint = append(p.pendingCheckpoint, pbn)
	}
	return true
}

// recentlyUnshared reports whether pbn became private by a change that is not durable yet.
// REQUIRES p.mu.
func (p *Pool) recentlyUnshared(pbn uint64) bool {
	tag, ok := p.unshared[pbn]
	return ok && tag >= p.durableSeq
}

// release frees blocks that were pending, punching holes for them in the pool file.
// REQUIRES p.mu, and no I/O in flight that could still use the blocks (p.ioGate held).
func (p *Pool) release(blocks []uint64) {
	for _, b := range blocks {
		if c := p.rc.get(b); c == pendingCommit || c == pendingCheckpoint {
			p.rc.set(b, 0)
		}
	}
	p.punch(blocks)
}

// punch punches holes for the given free blocks, coalescing runs.
func (p *Pool) punch(blocks []uint64) {
	if len(blocks) == 0 || p.geo.Flags&format.FlagThick != 0 {
		return
	}
	p.hostFull = false // space returns to the file system: checkpoints may fit again
	s := slices.Clone(blocks)
	slices.Sort(s)
	bs := int64(p.bs)
	start, n := s[0], uint64(1)
	flush := func() {
		if err := p.f.PunchHole(int64(start)*bs, int64(n)*bs); err != nil {
			p.log.Warn("punch hole failed", "block", start, "blocks", n, "err", err)
		}
	}
	for _, b := range s[1:] {
		if b == start+n {
			n++
			continue
		}
		flush()
		start, n = b, 1
	}
	flush()
}

// freeBlocks returns the number of blocks that can be allocated now.
func (p *Pool) freeBlocks() uint64 { return p.rc.n - p.rc.inUse }

// catalogReserve is the number of blocks a checkpoint may need for the catalog. Tree nodes are
// never allocated into it, so a checkpoint can always run, and free what it has to free.
func (p *Pool) catalogReserve() uint64 {
	return 2*(uint64(len(p.vols)+len(p.snaps))*64/uint64(p.bs)+2) + 8
}

// reserveBlocks is the number of blocks kept back from data writes so that the tree updates
// that map them, and discards on a full pool, can always proceed.
func (p *Pool) reserveBlocks() uint64 {
	return p.catalogReserve() + 4*uint64(p.maxHeight) + 32
}

// Allocation classes: what an allocation may dig into.
const (
	allocData    = iota // data blocks: leave the whole reserve
	allocNode           // tree nodes: leave the catalog reserve
	allocCatalog        // the checkpoint's catalog: anything
)

// allocRun allocates up to max blocks, contiguous from the first free block found, each with
// refcount 1, leaving the reserve of the allocation class (plus extra blocks) untouched.
func (p *Pool) allocRun(max int, class int, extra uint64) (start uint64, n int, err error) {
	free := p.freeBlocks()
	var keep uint64
	switch class {
	case allocData:
		keep = p.reserveBlocks() + extra
	case allocNode:
		keep = p.catalogReserve()
	}
	if free <= keep {
		return 0, 0, ErrNoSpace
	}
	free -= keep
	max = int(min(uint64(max), free))
	r := p.rc
	i := r.cursor
	for scanned := uint64(0); scanned < r.n; {
		if i >= r.n {
			i = 0
		}
		pg := int(i / uint64(r.perPage))
		if int(r.used[pg]) == r.perPage {
			next := uint64(pg+1) * uint64(r.perPage)
			scanned += next - i
			i = next
			continue
		}
		pbn := r.base + i
		if r.get(pbn) == 0 && !p.isReserved(pbn) {
			start = pbn
			for n < max && i < r.n && r.get(r.base+i) == 0 && !p.isReserved(r.base+i) {
				r.set(r.base+i, 1)
				n++
				i++
			}
			r.cursor = i
			return start, n, nil
		}
		i++
		scanned++
	}
	return 0, 0, ErrNoSpace
}

func (p *Pool) isReserved(pbn uint64) bool {
	if len(p.reserved) == 0 {
		return false
	}
	_, ok := p.reserved[pbn]
	return ok
}

// allocBlock allocates one block of a metadata class (allocNode or allocCatalog).
func (p *Pool) allocBlock(class int) (uint64, error) {
	b, _, err := p.allocRun(1, class, 0)
	return b, err
}
