package blockstore

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// Check (fsck).
//
// Check verifies one checkpoint as it is on disk: its superblock, its catalog, every tree node
// reachable from a volume or snapshot root (checksum, location, level, bounds), and the refcount
// of every block of the data region against the references found from the roots.
//
// Memory is bounded by a budget (CheckOptions.MemoryBytes), not by what is mapped: the data
// region is cut into windows of whole refcount pages, and each window is one pass that walks
// every tree again, counts only the references into the window (4 bytes per block of the
// window) and compares them with the window's refcount pages. A pass reads each tree node once:
// the nodes reached so far are one bit per block of the data region (32 MiB per TiB of pool at
// 4 KiB blocks). The cost of a pass is one read of every tree node (about 1/500 of what is
// mapped), so a budget that holds the whole data region makes Check a single pass.
//
// Two modes:
//   - exclusive (the default): Check holds the pool exclusively (I/O waits), checkpoints, and
//     verifies that checkpoint, which is then also the state in memory; it compares the
//     refcounts in memory too, and with Repair corrects leaks and checkpoints the fix.
//   - read-only: Check verifies the last durable checkpoint (what Open would load before
//     replaying the journal) while I/O goes on, and writes nothing. It reads only blocks that
//     checkpoint references, which copy-on-write never changes in place, and keeps them from
//     being reused by holding back checkpoints while it runs (Pool.checks): commits skip the
//     checkpoints they may take, and one that must happen (the journal is full, Close, a full
//     Check, a full pool with blocks waiting for a checkpoint) waits for the Check to end.
//     Changes made since that checkpoint are in the journal and in memory, and are not checked
//     until a later checkpoint holds them.

// CheckOptions choose how Check runs. The zero value is Check(false).
type CheckOptions struct {
	// ReadOnly verifies the last durable checkpoint without taking one, while I/O goes on,
	// and writes nothing to the pool (see check.go). Not with Repair.
	ReadOnly bool
	// Repair corrects leaks (refcounts higher than the references found) and checkpoints the
	// fix.
	Repair bool
	// MemoryBytes bounds the memory of the recount; default 64 MiB. Below what one refcount
	// page's window and the bitmap of tree nodes need (one bit per block of the pool), Check
	// takes that much and runs one pass per refcount page.
	MemoryBytes int64
}

// DefaultCheckMemory is the default of CheckOptions.MemoryBytes: one pass over a pool of up to
// about 60 GiB at 4 KiB blocks.
const DefaultCheckMemory = 64 << 20

// maxReported bounds each list of problems a CheckReport spells out.
const maxReported = 1000

// CheckReport is what Check found.
type CheckReport struct {
	ReadOnly   bool   // the read-only mode ran
	Generation uint64 // generation of the checkpoint verified
	Volumes    int
	Snapshots  int
	Nodes      uint64 // distinct tree nodes reached
	DataBlocks uint64 // distinct data blocks reached
	UsedBlocks uint64 // blocks with a non-zero refcount
	FreeBlocks uint64

	Passes      int   // windows of the data region, each one walk of every tree
	MemoryBytes int64 // memory the recount allocated (counts, bitmaps, buffers, roots)

	Corrupt        []error  // unreadable or inconsistent metadata, each naming its block
	RefcountErrors []string // a block referenced more often than its refcount says, ...
	Leaked         []uint64 // blocks with more references counted than found (first 100)
	LeakedBlocks   int      // number of such blocks
	Repaired       int      // refcounts corrected (with repair)

	moreCorrupt, moreRefcount int // problems past maxReported, summed up at the end
}

// OK reports whether the pool is fully consistent (leaks that were repaired count as found).
func (r *CheckReport) OK() bool {
	return len(r.Corrupt) == 0 && len(r.RefcountErrors) == 0 && r.LeakedBlocks == 0
}

func (r *CheckReport) String() string {
	return fmt.Sprintf("%d volumes, %d snapshots, %d nodes, %d data blocks, %d used, %d free; %d corrupt, %d refcount errors, %d leaked, %d repaired",
		r.Volumes, r.Snapshots, r.Nodes, r.DataBlocks, r.UsedBlocks, r.FreeBlocks, len(r.Corrupt), len(r.RefcountErrors), r.LeakedBlocks, r.Repaired)
}

func (r *CheckReport) corrupt(err error) {
	if len(r.Corrupt) < maxReported {
		r.Corrupt = append(r.Corrupt, err)
		return
	}
	r.moreCorrupt++
}

func (r *CheckReport) refcountf(format string, args ...any) {
	if len(r.RefcountErrors) < maxReported {
		r.RefcountErrors = append(r.RefcountErrors, fmt.Sprintf(format, args...))
		return
	}
	r.moreRefcount++
}

// finish sums up what was not spelled out.
func (r *CheckReport) finish() {
	if r.moreCorrupt > 0 {
		r.Corrupt = append(r.Corrupt, fmt.Errorf("%w: and %d more problems", ErrCorrupt, r.moreCorrupt))
	}
	if r.moreRefcount > 0 {
		r.RefcountErrors = append(r.RefcountErrors, fmt.Sprintf("and %d more refcount errors", r.moreRefcount))
	}
	r.moreCorrupt, r.moreRefcount = 0, 0
}

// Check verifies the pool (fsck) in the exclusive mode with the default memory budget:
// CheckWith(CheckOptions{Repair: repair}).
func (p *Pool) Check(repair bool) (*CheckReport, error) {
	return p.CheckWith(CheckOptions{Repair: repair})
}

// CheckWith verifies the pool (fsck): a checkpoint's trees, catalog and refcounts, in memory
// bounded by o.MemoryBytes. By default it holds the pool exclusively and checkpoints first; with
// o.ReadOnly it verifies the last checkpoint while I/O goes on and writes nothing (check.go).
// Problems are in the report; the error is non-nil when the check could not run, and wraps
// ErrCorrupt when metadata is corrupt.
func (p *Pool) CheckWith(o CheckOptions) (*CheckReport, error) {
	switch {
	case o.ReadOnly && o.Repair:
		return nil, invalidf("check: Repair changes the pool and cannot be ReadOnly")
	case o.MemoryBytes < 0:
		return nil, invalidf("check: MemoryBytes %d: must not be negative", o.MemoryBytes)
	case o.MemoryBytes == 0:
		o.MemoryBytes = DefaultCheckMemory
	}
	if o.ReadOnly {
		return p.checkReadOnly(o.MemoryBytes)
	}
	return p.checkExclusive(o)
}

// checkExclusive is Check's default mode.
func (p *Pool) checkExclusive(o CheckOptions) (*CheckReport, error) {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	p.ioGate.Lock()
	defer p.ioGate.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkLocked(); err != nil {
		return nil, err
	}
	if err := p.checkpointLocked(); err != nil {
		return nil, err
	}
	rep := &CheckReport{Generation: p.generation}
	c, sb := p.checkerOnDisk(rep, p.generation, p.rc.slot, o.MemoryBytes)
	if c == nil {
		rep.finish()
		return rep, fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(rep.Corrupt...))
	}
	var inUse uint64
	c.run(func() { inUse += c.compare(true, o.Repair) })
	if rep.Nodes != sb.NodeBlocks {
		rep.refcountf("node block count is %d in the superblock, found %d nodes", sb.NodeBlocks, rep.Nodes)
	}
	if rep.Nodes != p.nodeBlocks {
		rep.refcountf("node block count is %d, found %d nodes", p.nodeBlocks, rep.Nodes)
		if o.Repair {
			p.nodeBlocks = rep.Nodes
		}
	}
	if inUse != p.rc.inUse {
		rep.refcountf("in-use count is %d, found %d", p.rc.inUse, inUse)
	}
	rep.UsedBlocks = p.rc.inUse
	rep.FreeBlocks = p.rc.n - p.rc.inUse
	rep.finish()
	if o.Repair && rep.Repaired > 0 {
		if err := p.checkpointLocked(); err != nil {
			return rep, err
		}
	}
	if len(rep.Corrupt) > 0 {
		return rep, fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(rep.Corrupt...))
	}
	return rep, nil
}

// checkReadOnly is Check's read-only mode: it pins the last checkpoint (no other checkpoint
// completes until it ends) and verifies it without holding any lock meanwhile.
func (p *Pool) checkReadOnly(budget int64) (*CheckReport, error) {
	p.mu.Lock()
	for p.ckptWaiting > 0 {
		p.unpinned.Wait() // a checkpoint that must happen goes first
	}
	if err := p.checkLocked(); err != nil {
		p.mu.Unlock()
		return nil, err
	}
	p.checks++
	gen, slots := p.generation, slices.Clone(p.rc.slot)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.checks--
		if p.checks == 0 {
			p.unpinned.Broadcast()
		}
		p.mu.Unlock()
	}()

	rep := &CheckReport{ReadOnly: true, Generation: gen}
	c, sb := p.checkerOnDisk(rep, gen, slots, budget)
	if c == nil {
		rep.finish()
		return rep, fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(rep.Corrupt...))
	}
	c.run(func() { rep.UsedBlocks += c.compare(false, false) })
	if rep.Nodes != sb.NodeBlocks {
		rep.refcountf("node block count is %d in the superblock, found %d nodes", sb.NodeBlocks, rep.Nodes)
	}
	rep.FreeBlocks = c.n - rep.UsedBlocks
	rep.finish()
	if len(rep.Corrupt) > 0 {
		return rep, fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(rep.Corrupt...))
	}
	return rep, nil
}

// waitChecksLocked waits until no read-only Check runs; none starts meanwhile. REQUIRES p.mu
// held exclusively (released while waiting); the caller keeps it until its checkpoint is done.
func (p *Pool) waitChecksLocked() {
	p.ckptWaiting++
	for p.checks > 0 {
		p.unpinned.Wait()
	}
	p.ckptDone()
}

// ckptDone ends a checkpoint's hold on read-only Checks (waitChecksLocked, checkpoint).
// REQUIRES p.mu.
func (p *Pool) ckptDone() {
	p.ckptWaiting--
	if p.ckptWaiting == 0 {
		p.unpinned.Broadcast() // read-only Checks waiting to start
	}
}

// checker recounts the references of one checkpoint, one window of the data region per pass.
// It reads the pool file and what it was given; callers hold p.mu only in the exclusive modes.
type checker struct {
	p       *Pool
	rep     *CheckReport
	bs      int
	base, n uint64 // the data region: blocks [base, base+n)
	perPage int
	slots   []uint8 // slot of each refcount page's durable copy

	roots   []checkRoot
	catalog []uint64 // catalog blocks

	winPages int      // refcount pages per window
	lo, hi   uint64   // the window: data-region indices [lo, hi)
	counts   []uint32 // references to each block of the window
	asData   []uint64 // bitmap over the window: blocks a leaf maps
	visited  []uint64 // bitmap over the data region: tree nodes reached in this pass
	first    bool     // the first pass: report corrupt nodes (later passes meet them again)

	bufs  [format.MaxHeight][]byte   // a node's block, per level of the walk
	ents  [format.MaxHeight][]uint64 // a node's entries, per level of the walk
	pbuf  []byte                     // a refcount page's block
	page  []uint32                   // its counts
	zeros []uint32                   // a page of zero counts (exclusive mode)
}

// checkRoot is a tree to walk: a volume's or a snapshot's.
type checkRoot struct {
	root   uint64
	height uint8
	limit  uint64 // logical blocks of the volume or snapshot
}

// checkerOnDisk returns a checker for checkpoint gen as the pool file holds it: the superblock
// of that generation and its catalog, read from disk. It returns nil, with the reason in rep,
// when they cannot be read.
func (p *Pool) checkerOnDisk(rep *CheckReport, gen uint64, slots []uint8, budget int64) (*checker, *format.Superblock) {
	blk := gen % 2
	buf := make([]byte, p.bs)
	if _, err := p.f.ReadAt(buf, int64(blk)*int64(p.bs)); err != nil {
		rep.corrupt(fmt.Errorf("read superblock slot %d: %w", blk, err))
		return nil, nil
	}
	sb, err := format.DecodeSuperblock(buf)
	if err == nil && sb.Generation != gen {
		err = fmt.Errorf("%w: generation %d, the pool's last checkpoint is %d", format.ErrInvalid, sb.Generation, gen)
	}
	if err != nil {
		rep.corrupt(&CorruptionError{Block: blk, What: "superblock", Err: err})
		return nil, nil
	}
	cat, catBlocks, err := p.readCatalog(sb.CatalogHead, sb.CatalogBlocks)
	if err != nil {
		rep.corrupt(err)
		return nil, nil
	}
	var roots []checkRoot
	if cat != nil {
		for _, v := range cat.Volumes {
			if p.heightFor(p.blocksFor(v.Size)) > v.Height {
				rep.corrupt(fmt.Errorf("%w: volume %d of %d bytes has a tree of height %d", ErrCorrupt, v.ID, v.Size, v.Height))
				continue
			}
			roots = append(roots, checkRoot{root: v.Root, height: v.Height, limit: p.blocksFor(v.Size)})
		}
		for _, s := range cat.Snapshots {
			roots = append(roots, checkRoot{root: s.Root, height: s.Height, limit: p.blocksFor(s.Size)})
		}
		rep.Volumes, rep.Snapshots = len(cat.Volumes), len(cat.Snapshots)
	}
	return p.newChecker(rep, roots, catBlocks, slots, budget), sb
}

// newChecker sizes a checker's window to the budget.
func (p *Pool) newChecker(rep *CheckReport, roots []checkRoot, catalog []uint64, slots []uint8, budget int64) *checker {
	c := &checker{p: p, rep: rep, bs: p.bs, base: p.geo.DataStart, n: p.geo.PoolBlocks - p.geo.DataStart,
		perPage: format.RCPerPage(p.bs), slots: slots, roots: roots, catalog: catalog}
	pages := int((c.n + uint64(c.perPage) - 1) / uint64(c.perPage))
	height := 0
	for _, r := range roots {
		height = max(height, int(r.height))
	}
	words := func(bits uint64) uint64 { return (bits + 63) / 64 }
	fixed := int64(8*words(c.n)) + // visited
		int64(height)*int64(c.bs+8*format.NodeCapacity(c.bs)) + // bufs, ents
		int64(c.bs+8*c.perPage) + // pbuf, page, zeros
		int64(len(roots))*int64(24) + int64(len(catalog))*8
	perWindowPage := int64(4*c.perPage) + int64(8*words(uint64(c.perPage)))
	c.winPages = int(min(max((budget-fixed)/perWindowPage, 1), int64(pages)))
	winBlocks := uint64(c.winPages) * uint64(c.perPage)
	c.visited = make([]uint64, words(c.n))
	c.counts = make([]uint32, winBlocks)
	c.asData = make([]uint64, words(winBlocks))
	for l := range height {
		c.bufs[l] = alignedBuf(c.bs)
		c.ents[l] = make([]uint64, 0, format.NodeCapacity(c.bs))
	}
	c.pbuf = alignedBuf(c.bs)
	c.page = make([]uint32, c.perPage)
	c.zeros = make([]uint32, c.perPage)
	rep.MemoryBytes = fixed + int64(c.winPages)*perWindowPage
	return c
}

// run makes one pass per window, calling compare after each, and counts nodes and data blocks
// into the report.
func (c *checker) run(compare func()) {
	for lo := uint64(0); lo < c.n; lo += uint64(c.winPages) * uint64(c.perPage) {
		c.lo, c.hi = lo, min(lo+uint64(c.winPages)*uint64(c.perPage), c.n)
		c.first = lo == 0
		c.pass()
		if c.first {
			for _, w := range c.visited {
				c.rep.Nodes += uint64(bits.OnesCount64(w))
			}
		}
		for _, w := range c.asData {
			c.rep.DataBlocks += uint64(bits.OnesCount64(w))
		}
		compare()
		c.rep.Passes++
	}
}

// pass walks every tree once and counts the references into the window.
func (c *checker) pass() {
	clear(c.visited)
	clear(c.counts[:c.hi-c.lo])
	clear(c.asData)
	for _, r := range c.roots {
		if r.root == 0 {
			continue
		}
		if !c.valid(r.root) {
			c.corrupt(r.root, "tree reference", fmt.Errorf("%w: outside the data region", format.ErrInvalid))
			continue
		}
		c.ref(r.root)
		c.walk(r.root, int(r.height)-1, 0, r.limit)
	}
	for _, b := range c.catalog {
		c.ref(b)
	}
}

func (c *checker) valid(pbn uint64) bool { return pbn >= c.base && pbn < c.base+c.n }

// ref counts a reference to pbn if it lies in the window.
func (c *checker) ref(pbn uint64) {
	if i := pbn - c.base; i >= c.lo && i < c.hi && c.counts[i-c.lo] < math.MaxUint32 {
		c.counts[i-c.lo]++
	}
}

func (c *checker) corrupt(pbn uint64, what string, err error) {
	if c.first {
		c.rep.corrupt(&CorruptionError{Block: pbn, What: what, Err: err})
	}
}

// walk reads the node at pbn, if this pass has not yet, and counts its references.
func (c *checker) walk(pbn uint64, level int, base, limit uint64) {
	i := pbn - c.base
	if c.visited[i/64]&(1<<(i%64)) != 0 {
		return // children counted on the first visit
	}
	c.visited[i/64] |= 1 << (i % 64)
	buf := c.bufs[level]
	if _, err := c.p.f.ReadAt(buf, int64(pbn)*int64(c.bs)); err != nil {
		if c.first {
			c.rep.corrupt(fmt.Errorf("read tree node at block %d: %w", pbn, err))
		}
		return
	}
	lv, ent, err := format.DecodeNode(buf, pbn, c.ents[level])
	switch {
	case err != nil:
		c.corrupt(pbn, "tree node", err)
		return
	case int(lv) != level:
		c.corrupt(pbn, "tree node", fmt.Errorf("%w: level %d where %d belongs", format.ErrInvalid, lv, level))
		return
	case len(ent) != c.p.fanout:
		c.corrupt(pbn, "tree node", fmt.Errorf("%w: %d entries, pool fanout is %d", format.ErrInvalid, len(ent), c.p.fanout))
		return
	}
	s := c.p.span(uint8(level))
	for e, child := range ent {
		if child == 0 {
			continue
		}
		lo := base + uint64(e)*s
		switch {
		case lo >= limit:
			c.corrupt(pbn, "tree node", fmt.Errorf("%w: entry %d maps logical block %d past the end (%d blocks)", format.ErrInvalid, e, lo, limit))
			continue
		case !c.valid(child):
			c.corrupt(pbn, "tree node", fmt.Errorf("%w: entry %d points outside the data region (%d)", format.ErrInvalid, e, child))
			continue
		}
		c.ref(child)
		if level > 0 {
			c.walk(child, level-1, lo, limit)
			continue
		}
		if k := child - c.base; k >= c.lo && k < c.hi {
			c.asData[(k-c.lo)/64] |= 1 << ((k - c.lo) % 64)
		}
	}
}

// compare checks the window's counts against its durable refcount pages and, with mem, against
// the refcounts in memory (which repair corrects). It returns how many blocks of the window
// have a non-zero refcount (in memory with mem, else on disk). REQUIRES p.mu with mem.
func (c *checker) compare(mem, repair bool) (used uint64) {
	p, rep := c.p, c.rep
	for pg := int(c.lo / uint64(c.perPage)); uint64(pg)*uint64(c.perPage) < c.hi; pg++ {
		n := int(min(uint64(c.perPage), c.n-uint64(pg)*uint64(c.perPage)))
		durable := c.page[:n]
		durOK := c.readPage(pg, durable)
		var resident []uint32 // the page in memory; nil: the same as on disk, or zeros
		if mem {
			if pp := p.rc.pages[pg]; pp != nil {
				resident = pp.counts
			} else if p.rc.used[pg] == 0 {
				resident = c.zeros[:n]
			}
		}
		if !durOK && resident == nil {
			continue // nothing to compare with (the damage is reported)
		}
		for off := range n {
			i := uint64(pg)*uint64(c.perPage) + uint64(off)
			pbn := c.base + i
			w := i - c.lo
			node := c.visited[i/64]&(1<<(i%64)) != 0
			if node && c.asData[w/64]&(1<<(w%64)) != 0 {
				rep.corrupt(&CorruptionError{Block: pbn, What: "tree node", Err: fmt.Errorf("%w: a leaf maps it as data", format.ErrInvalid)})
			}
			found, have := c.counts[w], durable[off]
			if mem {
				if resident != nil {
					have = resident[off]
				}
				if have > maxRefs {
					rep.refcountf("block %d still pending free after a checkpoint", pbn)
					used++
					continue
				}
				if durOK && have != durable[off] {
					rep.refcountf("block %d: durable refcount %d, in memory %d", pbn, durable[off], have)
				}
			}
			if have != 0 {
				used++
			}
			switch {
			case have == found:
			case have < found:
				rep.refcountf("block %d: refcount %d, referenced %d times", pbn, have, found)
			default: // a leak
				rep.LeakedBlocks++
				if len(rep.Leaked) < 100 {
					rep.Leaked = append(rep.Leaked, pbn)
				}
				if repair {
					p.rc.set(pbn, found)
					rep.Repaired++
					if found == 0 {
						used-- // free now
					}
				}
			}
		}
	}
	return used
}

// readPage reads the durable copy of refcount page pg into counts (zeros if it was never
// written). It reports false, with the damage in the report, if that copy does not decode.
func (c *checker) readPage(pg int, counts []uint32) bool {
	slot := c.slots[pg]
	if slot == noSlot {
		clear(counts)
		return true
	}
	blk := c.p.geo.RCStart + 2*uint64(pg) + uint64(slot)
	if _, err := c.p.f.ReadAt(c.pbuf, int64(blk)*int64(c.bs)); err != nil {
		c.rep.corrupt(fmt.Errorf("read refcount page %d at block %d: %w", pg, blk, err))
		return false
	}
	_, ok, err := format.DecodeRCPage(c.pbuf, uint32(pg), counts)
	if err == nil && !ok {
		err = fmt.Errorf("%w: slot is empty", format.ErrInvalid)
	}
	if err != nil {
		c.rep.corrupt(&CorruptionError{Block: blk, What: "refcount page", Err: err})
		return false
	}
	return true
}

// rebuildRefcounts recounts every reference from the trees and the catalog of the checkpoint
// just loaded and replaces the refcounts read from disk with the result; every page is
// rewritten at the next checkpoint. REQUIRES exclusive use (Open).
func (p *Pool) rebuildRefcounts() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var roots []checkRoot
	for _, v := range p.vols {
		roots = append(roots, checkRoot{root: v.t.root, height: v.t.height, limit: p.blocksFor(v.size)})
	}
	for _, s := range p.snaps {
		roots = append(roots, checkRoot{root: s.t.root, height: s.t.height, limit: p.blocksFor(s.size)})
	}
	rep := &CheckReport{}
	c := p.newChecker(rep, roots, p.catalogBlocks, p.rc.slot, DefaultCheckMemory)
	rc := p.newRefcounts(p.rcCacheBytes)
	rc.slot = p.rc.slot
	c.run(func() {
		for w, n := range c.counts[:c.hi-c.lo] {
			if n != 0 {
				rc.set(c.base+c.lo+uint64(w), n)
			}
		}
	})
	rep.finish()
	if len(rep.Corrupt) > 0 {
		return fmt.Errorf("%w: refcount pages damaged and the trees cannot be recounted: %w",
			ErrCorrupt, errors.Join(append(p.recovery.DamagedRefcountPages, rep.Corrupt...)...))
	}
	p.rc = rc
	for pg := range p.rc.pages {
		p.rc.dirty[pg] = struct{}{}
	}
	p.nodeBlocks = rep.Nodes
	p.log.Warn("refcounts rebuilt from the trees", "damagedSlots", len(p.recovery.DamagedRefcountPages),
		"blocks", p.rc.inUse, "nodes", p.nodeBlocks)
	return nil
}
