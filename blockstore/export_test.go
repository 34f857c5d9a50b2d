package blockstore

import (
	"fmt"
	"time"
)

// SetTestFanout makes new pools use fewer entries per tree node, so small volumes get deep trees.
func SetTestFanout(o *Options, fanout int) { o.fanout = fanout }

// SetTestClock fixes the pool's clock.
func SetTestClock(o *Options, now func() time.Time) { o.now = now }

// DiffVisits returns how many tree nodes diffs have compared so far.
func DiffVisits(p *Pool) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.diffVisits
}

// Checkpoint takes a checkpoint, as a commit does when the journal fills: while I/O goes on.
func Checkpoint(p *Pool) error {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	return p.checkpoint()
}

// LeakBlock gives a free data block a reference nothing holds, as a lost update would.
func LeakBlock(p *Pool) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := p.allocBlock(allocNode)
	if err != nil {
		panic(err)
	}
	return b
}

// SetRefcount overwrites the refcount of a data-region block, as a lost or doubled update
// would; the next checkpoint makes it durable.
func SetRefcount(p *Pool, pbn uint64, c uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rc.set(pbn, c)
}

// MappedBlock returns the physical block that logical block lbn of a volume maps to (0 if
// unmapped).
func MappedBlock(p *Pool, id VolumeID, lbn uint64) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.volByID(id)
	if err != nil {
		panic(err)
	}
	pbn, _, err := p.lookup(&v.t, lbn)
	if err != nil {
		panic(err)
	}
	return pbn
}

// HoldNodeBlocks allocates free blocks, as new tree nodes would, until exactly leave more can be
// allocated for tree nodes; release frees them again.
func HoldNodeBlocks(p *Pool, leave int) (release func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var held []uint64
	for p.freeBlocks() > p.catalogReserve()+uint64(leave) {
		b, err := p.allocBlock(allocNode)
		if err != nil {
			panic(err)
		}
		held = append(held, b)
	}
	if p.freeBlocks() != p.catalogReserve()+uint64(leave) {
		panic(fmt.Sprintf("blockstore: %d blocks free, %d reserved for the catalog: cannot leave %d", p.freeBlocks(), p.catalogReserve(), leave))
	}
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, b := range held {
			p.decref(b, 0)
		}
	}
}
