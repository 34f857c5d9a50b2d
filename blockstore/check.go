package blockstore

import (
	"errors"
	"fmt"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// CheckReport is what Check found.
type CheckReport struct {
	Volumes    int
	Snapshots  int
	Nodes      uint64 // distinct tree nodes reached
	DataBlocks uint64 // distinct data blocks reached
	UsedBlocks uint64 // blocks with a non-zero refcount
	FreeBlocks uint64

	Corrupt        []error  // unreadable or inconsistent metadata, each naming its block
	RefcountErrors []string // a block referenced more often than its refcount says
	Leaked         []uint64 // blocks with more references counted than found (first 100)
	LeakedBlocks   int      // number of such blocks
	Repaired       int      // refcounts corrected (with repair)
}

// OK reports whether the pool is fully consistent (leaks that were repaired count as found).
func (r *CheckReport) OK() bool {
	return len(r.Corrupt) == 0 && len(r.RefcountErrors) == 0 && r.LeakedBlocks == 0
}

func (r *CheckReport) String() string {
	return fmt.Sprintf("%d volumes, %d snapshots, %d nodes, %d data blocks, %d used, %d free; %d corrupt, %d refcount errors, %d leaked, %d repaired",
		r.Volumes, r.Snapshots, r.Nodes, r.DataBlocks, r.UsedBlocks, r.FreeBlocks, len(r.Corrupt), len(r.RefcountErrors), r.LeakedBlocks, r.Repaired)
}

// Check verifies the pool (fsck): it checkpoints, then reads every tree node and catalog block
// from disk checking checksums, levels and bounds, recounts every reference from the roots, and
// compares the counts with the refcounts in memory and in the durable refcount pages. With
// repair set, blocks holding more references than found (leaks) get their counts corrected and
// the fix is checkpointed. Check holds the pool exclusively while it runs.
func (p *Pool) Check(repair bool) (*CheckReport, error) {
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
	rep := &CheckReport{Volumes: len(p.vols), Snapshots: len(p.snaps)}
	rc := p.recount(true)
	expected, isNode := rc.refs, rc.nodes
	rep.Nodes, rep.DataBlocks, rep.Corrupt = uint64(len(rc.nodes)), rc.dataBlocks, rc.corrupt

	// Compare with the refcounts in memory, then with the durable refcount pages.
	if got := uint64(len(isNode)); got != p.nodeBlocks {
		rep.RefcountErrors = append(rep.RefcountErrors, fmt.Sprintf("node block count is %d, found %d nodes", p.nodeBlocks, got))
		if repair {
			p.nodeBlocks = got
		}
	}
	var inUse uint64
	for pg := range p.rc.pages {
		pp := p.rc.page(pg)
		if pp == nil {
			continue
		}
		for off, c := range pp.counts[:p.pageLen(pg)] {
			if c == 0 {
				continue
			}
			pbn := p.rc.base + uint64(pg*p.rc.perPage+off)
			inUse++
			want := expected[pbn]
			switch {
			case c > maxRefs:
				rep.RefcountErrors = append(rep.RefcountErrors, fmt.Sprintf("block %d still pending free after a checkpoint", pbn))
			case c == want:
			case c < want:
				rep.RefcountErrors = append(rep.RefcountErrors, fmt.Sprintf("block %d: refcount %d, referenced %d times", pbn, c, want))
			default: // c > want: a leak
				rep.LeakedBlocks++
				if len(rep.Leaked) < 100 {
					rep.Leaked = append(rep.Leaked, pbn)
				}
				if repair {
					p.rc.set(pbn, want)
					rep.Repaired++
				}
			}
		}
	}
	for pbn, want := range expected {
		if p.rc.get(pbn) == 0 && want > 0 {
			rep.RefcountErrors = append(rep.RefcountErrors, fmt.Sprintf("block %d: refcount 0, referenced %d times", pbn, want))
		}
	}
	if inUse != p.rc.inUse {
		rep.RefcountErrors = append(rep.RefcountErrors, fmt.Sprintf("in-use count is %d, found %d", p.rc.inUse, inUse))
	}
	if err := p.checkDurableRefcounts(rep); err != nil {
		return rep, err
	}
	rep.UsedBlocks = p.rc.inUse
	rep.FreeBlocks = p.rc.n - p.rc.inUse
	if repair && rep.Repaired > 0 {
		if err := p.checkpointLocked(); err != nil {
			return rep, err
		}
	}
	if len(rep.Corrupt) > 0 {
		return rep, fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(rep.Corrupt...))
	}
	return rep, nil
}

// refCount is what recount found.
type refCount struct {
	refs       map[uint64]uint32 // references to each block
	nodes      map[uint64]bool   // tree node blocks
	dataBlocks uint64            // distinct data blocks
	corrupt    []error
}

// recount counts every reference from the roots: volumes, snapshots and the catalog. With
// fromDisk, tree nodes are read from disk (bypassing the cache) and catalog blocks verified;
// otherwise through the node cache. REQUIRES p.mu; with fromDisk, no dirty node (a checkpoint
// just ran).
func (p *Pool) recount(fromDisk bool) *refCount {
	rc := &refCount{refs: make(map[uint64]uint32), nodes: make(map[uint64]bool)}
	buf := make([]byte, p.bs)
	ent := make([]uint64, 0, p.fanout)
	corrupt := func(pbn uint64, what string, err error) {
		rc.corrupt = append(rc.corrupt, &CorruptionError{Block: pbn, What: what, Err: err})
	}
	readNode := func(pbn uint64) (uint8, []uint64, error) {
		if !fromDisk {
			n, err := p.getNode(pbn)
			if err != nil {
				return 0, nil, err
			}
			return n.level, n.ent, nil
		}
		if _, err := p.f.ReadAt(buf, int64(pbn)*int64(p.bs)); err != nil {
			return 0, nil, fmt.Errorf("read tree node at block %d: %w", pbn, err)
		}
		lv, e, err := format.DecodeNode(buf, pbn, ent)
		if err != nil {
			return 0, nil, &CorruptionError{Block: pbn, What: "tree node", Err: err}
		}
		return lv, e, nil
	}
	var walk func(pbn uint64, level int, base, limit uint64)
	walk = func(pbn uint64, level int, base, limit uint64) {
		if !p.rc.valid(pbn) {
			corrupt(pbn, "tree reference", fmt.Errorf("%w: outside the data region", format.ErrInvalid))
			return
		}
		rc.refs[pbn]++
		if rc.refs[pbn] > 1 {
			return // children counted on the first visit
		}
		rc.nodes[pbn] = true
		lv, e, err := readNode(pbn)
		switch {
		case err != nil:
			rc.corrupt = append(rc.corrupt, err)
			return
		case int(lv) != level:
			corrupt(pbn, "tree node", fmt.Errorf("%w: level %d where %d belongs", format.ErrInvalid, lv, level))
			return
		case len(e) != p.fanout:
			corrupt(pbn, "tree node", fmt.Errorf("%w: %d entries, pool fanout is %d", format.ErrInvalid, len(e), p.fanout))
			return
		}
		children := append([]uint64(nil), e...)
		s := p.span(uint8(level))
		for i, c := range children {
			if c == 0 {
				continue
			}
			lo := base + uint64(i)*s
			if lo >= limit {
				corrupt(pbn, "tree node", fmt.Errorf("%w: entry %d maps logical block %d past the end (%d blocks)", format.ErrInvalid, i, lo, limit))
				continue
			}
			if level > 0 {
				walk(c, level-1, lo, limit)
				continue
			}
			if !p.rc.valid(c) {
				corrupt(pbn, "tree node", fmt.Errorf("%w: entry %d points outside the data region (%d)", format.ErrInvalid, i, c))
				continue
			}
			if rc.nodes[c] {
				corrupt(pbn, "tree node", fmt.Errorf("%w: entry %d maps tree node %d as data", format.ErrInvalid, i, c))
			}
			if rc.refs[c] == 0 {
				rc.dataBlocks++
			}
			rc.refs[c]++
		}
	}
	root := func(t tree, size uint64) {
		if t.root != 0 {
			walk(t.root, int(t.height)-1, 0, p.blocksFor(size))
		}
	}
	for _, v := range p.vols {
		if p.heightFor(p.blocksFor(v.size)) > v.t.height {
			rc.corrupt = append(rc.corrupt, fmt.Errorf("%w: volume %d of %d bytes has a tree of height %d", ErrCorrupt, v.id, v.size, v.t.height))
			continue
		}
		root(v.t, v.size)
	}
	for _, s := range p.snaps {
		root(s.t, s.size)
	}
	for _, b := range p.catalogBlocks {
		rc.refs[b]++
		if !fromDisk {
			continue
		}
		if _, err := p.f.ReadAt(buf, int64(b)*int64(p.bs)); err != nil {
			rc.corrupt = append(rc.corrupt, fmt.Errorf("read catalog block %d: %w", b, err))
		} else if _, _, err := format.DecodeCatalogBlock(buf, b); err != nil {
			corrupt(b, "catalog block", err)
		}
	}
	return rc
}

// checkDurableRefcounts compares the durable refcount pages with memory (they must agree right
// after a checkpoint). REQUIRES p.mu.
func (p *Pool) checkDurableRefcounts(rep *CheckReport) error {
	buf := make([]byte, p.bs)
	counts := make([]uint32, p.rc.perPage)
	for pg := range p.rc.pages {
		slot := p.rc.slot[pg]
		n := p.pageLen(pg)
		clear(counts)
		if slot != noSlot {
			blk := p.geo.RCStart + 2*uint64(pg) + uint64(slot)
			if _, err := p.f.ReadAt(buf, int64(blk)*int64(p.bs)); err != nil {
				return fmt.Errorf("blockstore: read refcount page %d: %w", pg, err)
			}
			if _, ok, err := format.DecodeRCPage(buf, uint32(pg), counts[:n]); err != nil || !ok {
				if err == nil {
					err = fmt.Errorf("%w: slot is empty", format.ErrInvalid)
				}
				rep.Corrupt = append(rep.Corrupt, &CorruptionError{Block: blk, What: "refcount page", Err: err})
				continue
			}
		}
		for off := 0; off < n; off++ {
			want := uint32(0)
			if pp := p.rc.pages[pg]; pp != nil {
				want = pp.counts[off]
			} else if p.rc.used[pg] != 0 {
				want = counts[off] // not resident: memory is what is on disk
			}
			if want > maxRefs {
				want = 0
			}
			if counts[off] != want {
				rep.RefcountErrors = append(rep.RefcountErrors, fmt.Sprintf("block %d: durable refcount %d, in memory %d",
					p.rc.base+uint64(pg*p.rc.perPage+off), counts[off], want))
			}
		}
	}
	return nil
}
