package blockstore

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// checkpoint takes a checkpoint. REQUIRES p.commitMu, and neither p.ioGate nor p.mu.
func (p *Pool) checkpoint() error {
	// Wait for read-only Checks without holding ioGate, so that I/O goes on meanwhile; none
	// starts until this checkpoint holds p.mu again.
	p.mu.Lock()
	p.ckptWaiting++
	for p.checks > 0 {
		p.unpinned.Wait()
	}
	p.mu.Unlock()
	p.ioGate.Lock()
	defer p.ioGate.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ckptDone()
	if err := p.checkLocked(); err != nil {
		return err
	}
	return p.checkpointLocked()
}

// checkpointLocked writes every change since the last checkpoint and commits it with a new
// superblock (order: journal.go). REQUIRES p.commitMu (or exclusive use during Open), p.ioGate
// exclusively (no data write is between allocating and mapping its blocks), p.mu.
//
// A write before the superblock's that fails for lack of space in the file system holding the
// pool (a tree node or catalog block going to a hole of a sparse pool file) fails the
// checkpoint with ErrHostFull and leaves the pool working: it wrote only blocks and refcount
// slots that no durable state points at, and its changes in memory are undone. Every other
// write or sync error fails the pool.
func (p *Pool) checkpointLocked() error {
	p.waitChecksLocked()
	// The catalog, in new blocks; the old ones go once this checkpoint is durable.
	payload := format.EncodeCatalog(p.catalog())
	room := p.bs - format.CatalogHeaderSize
	nblk := (len(payload) + room - 1) / room
	newCat := make([]uint64, 0, nblk)
	for range nblk {
		b, err := p.allocBlock(allocCatalog)
		if err != nil {
			for _, c := range newCat {
				p.decref(c, 0)
			}
			return fmt.Errorf("blockstore: checkpoint: allocate catalog block: %w", err)
		}
		newCat = append(newCat, b)
	}
	oldCat, npc := p.catalogBlocks, len(p.pendingCheckpoint)
	for _, b := range oldCat {
		p.decref(b, pendingCheckpoint)
	}
	p.catalogBlocks = newCat
	// failed handles a failed write of this checkpoint before its superblock's.
	failed := func(err error) error {
		if !isHostFull(err) {
			return p.fail(err)
		}
		for _, b := range newCat {
			p.decref(b, 0) // never part of a durable state
		}
		for _, b := range oldCat {
			p.rc.set(b, 1)
		}
		p.pendingCheckpoint = p.pendingCheckpoint[:npc]
		p.catalogBlocks = oldCat
		p.hostFull = true
		return fmt.Errorf("%w: %w", ErrHostFull, err)
	}

	gen := p.generation + 1
	buf := p.blockBuf()
	defer p.putBlockBuf(buf)
	write := func(pbn uint64, what string) error {
		if _, err := p.f.WriteAt(buf, int64(pbn)*int64(p.bs)); err != nil {
			return failed(fmt.Errorf("checkpoint: write %s at block %d: %w", what, pbn, err))
		}
		return nil
	}
	for i, b := range newCat {
		next := uint64(0)
		if i+1 < len(newCat) {
			next = newCat[i+1]
		}
		lo := i * room
		format.EncodeCatalogBlock(buf, b, next, payload[lo:min(lo+room, len(payload))])
		if err := write(b, "catalog block"); err != nil {
			return err
		}
	}
	if err := p.writeDirtyNodes(); err != nil {
		return failed(err)
	}
	counts := make([]uint32, p.rc.perPage)
	type pageSlot struct{ page, slot int }
	written := make([]pageSlot, 0, len(p.rc.dirty))
	// In page order: the writes a checkpoint issues do not depend on map order, so a crash test
	// that cuts it at its nth write reproduces from its seed.
	dirtyPages := make([]int, 0, len(p.rc.dirty))
	for pg := range p.rc.dirty {
		dirtyPages = append(dirtyPages, pg)
	}
	slices.Sort(dirtyPages)
	for _, pg := range dirtyPages {
		clear(counts)
		if src := p.rc.pages[pg]; src != nil {
			for i, c := range src.counts {
				if c <= maxRefs {
					counts[i] = c
				}
			}
		}
		slot := uint64(0)
		if p.rc.slot[pg] == 0 {
			slot = 1
		}
		format.EncodeRCPage(buf, uint32(pg), gen, counts[:p.pageLen(pg)])
		if err := write(p.geo.RCStart+2*uint64(pg)+slot, "refcount page"); err != nil {
			return err
		}
		written = append(written, pageSlot{pg, int(slot)})
	}
	if err := p.f.Sync(); err != nil {
		return p.fail(fmt.Errorf("checkpoint: sync: %w", err))
	}

	sb := p.geo
	sb.Version = format.Version // a pool of an older version is upgraded here
	sb.Generation = gen
	sb.CheckpointLSN = p.lsn
	sb.CatalogHead = 0
	if len(newCat) > 0 {
		sb.CatalogHead = newCat[0]
	}
	sb.NextVolumeID = p.nextVol
	sb.NextSnapID = p.nextSnap
	sb.OverProvision = uint32(math.Round(p.overProv * 100))
	sb.NodeBlocks = p.nodeBlocks
	sb.CatalogBlocks = uint64(len(newCat))
	clear(buf)
	format.EncodeSuperblock(buf, &sb)
	sbBlock := gen % 2
	if _, err := p.f.WriteAt(buf, int64(sbBlock)*int64(p.bs)); err != nil {
		return p.fail(fmt.Errorf("checkpoint: write superblock: %w", err))
	}
	if err := p.f.Sync(); err != nil {
		return p.fail(fmt.Errorf("checkpoint: sync superblock: %w", err))
	}

	// Durable. Everything below only updates memory.
	p.geo.Version = format.Version
	p.generation = gen
	p.hostFull = false
	p.cutSeq++
	p.markDurable(p.cutSeq)
	p.ckptLSN = p.lsn
	p.durableLSN = p.lsn
	p.jbuf = nil
	p.jpos = 0
	for _, w := range written {
		p.rc.slot[w.page] = uint8(w.slot)
	}
	clear(p.rc.dirty)
	for _, n := range p.nodes {
		if n.dirty {
			n.dirty = false
			p.dirtyNodes--
			p.cleanNodes++
		}
	}
	p.release(p.pendingCommit)
	p.release(p.pendingCheckpoint)
	p.pendingCommit, p.pendingCheckpoint = nil, nil // a large delete's lists go with it
	// What the checkpoint made clean now counts against the cache budgets.
	p.evictNodes(nil)
	if p.rc.resident > p.rc.maxResident {
		p.rc.evict()
	}
	p.log.Debug("checkpoint", "generation", gen, "lsn", p.lsn, "catalogBlocks", len(newCat))
	return nil
}

// writeDirtyNodes writes every dirty tree node, in block order, runs of consecutive blocks
// (nodes allocated together) in one write each; the caller handles an error. REQUIRES p.mu.
func (p *Pool) writeDirtyNodes() error {
	dirty := make([]*node, 0, p.dirtyNodes)
	for _, n := range p.nodes {
		if n.dirty {
			dirty = append(dirty, n)
		}
	}
	slices.SortFunc(dirty, func(a, b *node) int { return cmp.Compare(a.pbn, b.pbn) })
	const maxRun = 256
	run := alignedBuf(min(maxRun, max(len(dirty), 1)) * p.bs)
	for i := 0; i < len(dirty); {
		j := i
		for j < len(dirty) && j-i < maxRun && dirty[j].pbn == dirty[i].pbn+uint64(j-i) {
			n := dirty[j]
			format.EncodeNode(run[(j-i)*p.bs:(j-i+1)*p.bs], n.pbn, n.level, n.ent)
			j++
		}
		if _, err := p.f.WriteAt(run[:(j-i)*p.bs], int64(dirty[i].pbn)*int64(p.bs)); err != nil {
			return fmt.Errorf("checkpoint: write %d tree nodes at block %d: %w", j-i, dirty[i].pbn, err)
		}
		i = j
	}
	return nil
}

// pageLen returns how many counts refcount page pg holds (the last page may be partial).
func (p *Pool) pageLen(pg int) int {
	return int(min(uint64(p.rc.perPage), p.rc.n-uint64(pg)*uint64(p.rc.perPage)))
}

// catalog builds the catalog of the in-memory state. REQUIRES p.mu.
func (p *Pool) catalog() *format.Catalog {
	c := &format.Catalog{}
	for _, v := range p.vols {
		c.Volumes = append(c.Volumes, format.VolumeEntry{ID: uint64(v.id), Name: v.name, Size: v.size,
			Root: v.t.root, Height: v.t.height, Created: v.created, Origin: uint64(v.origin)})
	}
	for _, s := range p.snaps {
		c.Snapshots = append(c.Snapshots, format.SnapshotEntry{ID: uint64(s.id), Name: s.name, Volume: uint64(s.vol),
			LSN: s.lsn, Created: s.created, Size: s.size, Root: s.t.root, Height: s.t.height})
	}
	// In ID order: the same state always makes the same catalog bytes.
	slices.SortFunc(c.Volumes, func(a, b format.VolumeEntry) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(c.Snapshots, func(a, b format.SnapshotEntry) int { return cmp.Compare(a.ID, b.ID) })
	return c
}

// loadCatalog loads the catalog chain starting at head: the volumes and snapshots of the
// checkpoint being opened.
func (p *Pool) loadCatalog(head uint64) error {
	c, blocks, err := p.readCatalog(head, p.geo.CatalogBlocks)
	if err != nil {
		return err
	}
	p.catalogBlocks = blocks
	if c == nil {
		return nil
	}
	for _, v := range c.Volumes {
		p.addVolume(&volState{id: VolumeID(v.ID), name: v.Name, size: v.Size, created: v.Created,
			origin: SnapshotID(v.Origin), t: tree{root: v.Root, height: v.Height}})
	}
	for _, s := range c.Snapshots {
		p.addSnapshot(&snapState{id: SnapshotID(s.ID), name: s.Name, vol: VolumeID(s.Volume), lsn: s.LSN,
			created: s.Created, size: s.Size, t: tree{root: s.Root, height: s.Height}})
	}
	return nil
}

// readCatalog reads the catalog chain starting at head, which the superblock says has
// nblocks blocks, from disk: the catalog (nil when head is 0) and its blocks. It uses only
// what is fixed at Open, so read-only Checks call it without p.mu.
func (p *Pool) readCatalog(head, nblocks uint64) (*format.Catalog, []uint64, error) {
	buf := make([]byte, p.bs)
	var payload []byte
	var blocks []uint64
	for b, seen := head, 0; b != 0; seen++ {
		if !p.rc.valid(b) || seen > int(nblocks) {
			return nil, nil, &CorruptionError{Block: b, What: "catalog block", Err: fmt.Errorf("%w: chain leaves the catalog", format.ErrInvalid)}
		}
		if _, err := p.f.ReadAt(buf, int64(b)*int64(p.bs)); err != nil {
			return nil, nil, fmt.Errorf("blockstore: read catalog block %d: %w", b, err)
		}
		part, next, err := format.DecodeCatalogBlock(buf, b)
		if err != nil {
			return nil, nil, &CorruptionError{Block: b, What: "catalog block", Err: err}
		}
		payload = append(payload, part...)
		blocks = append(blocks, b)
		b = next
	}
	if head == 0 {
		return nil, nil, nil
	}
	c, err := format.DecodeCatalog(payload)
	if err != nil {
		return nil, nil, &CorruptionError{Block: head, What: "catalog", Err: err}
	}
	return c, blocks, nil
}
