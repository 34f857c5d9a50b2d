package blockstore

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// A checkpoint runs in three steps, so that it holds p.mu only for work in memory and holds
// back writes, not reads:
//
//  1. prepare (REQUIRES p.mu): allocate and encode the catalog, list the dirty tree nodes and
//     refcount pages, fill in the new superblock;
//  2. write (without p.mu): the catalog blocks, the dirty nodes and the dirty refcount pages,
//     fdatasync, the superblock, fdatasync (the order is in journal.go);
//  3. publish (REQUIRES p.mu, and p.ioGate exclusively): the new generation and journal
//     epoch, the nodes and pages clean, the blocks the old checkpoint held reusable.
//
// From step 1 to step 3 nothing changes what step 2 writes: data writes and discards wait for
// p.writeGate, every other change for p.commitMu, and read-only Checks for ckptWaiting. Reads
// go on: step 2 writes only blocks that no durable state and no tree in memory points at (new
// catalog blocks, the blocks of dirty nodes, the refcount slots not holding a page's durable
// copy, the superblock slot not in use), and copy-on-write never writes a committed block in
// place. Only step 3 waits for the reads in flight, and only for what it frees.

// ckptPlan is what step 1 of a checkpoint decided, for steps 2 and 3.
type ckptPlan struct {
	sb      format.Superblock // the new superblock
	newCat  []uint64          // the catalog's new blocks
	payload []byte            // the encoded catalog
	oldCat  []uint64          // the catalog's blocks in the last checkpoint
	npc     int               // len(p.pendingCheckpoint) before oldCat joined it
	nodes   []*node           // dirty tree nodes, in block order
	pages   []ckptPage        // dirty refcount pages, in page order
}

// ckptPage is a dirty refcount page and the slot it goes to.
type ckptPage struct {
	page int
	slot int
	pp   *rcPage // nil: every count is 0
}

// checkpoint takes a checkpoint while reads go on (see above). REQUIRES p.commitMu, and none
// of p.writeGate, p.ioGate, p.mu.
func (p *Pool) checkpoint() error {
	// Wait for read-only Checks while I/O goes on; none starts until this checkpoint is
	// published or has failed.
	p.mu.Lock()
	p.ckptWaiting++
	for p.checks > 0 {
		p.unpinned.Wait()
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.ckptDone()
		p.mu.Unlock()
	}()

	p.writeGate.Lock()
	defer p.writeGate.Unlock()
	p.mu.Lock()
	err := p.checkLocked()
	var c *ckptPlan
	if err == nil {
		c, err = p.prepareCheckpointLocked()
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if beforeSync, err := p.writeCheckpoint(c); err != nil {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.checkpointFailedLocked(c, err, beforeSync)
	}
	p.ioGate.Lock()
	defer p.ioGate.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.publishCheckpointLocked(c)
	return nil
}

// checkpointLocked takes a checkpoint holding the whole pool. REQUIRES p.commitMu, p.ioGate
// exclusively and p.mu (Close, the exclusive Check), or exclusive use (Open).
//
// A write before the superblock's that fails for lack of space in the file system holding the
// pool (a tree node or catalog block going to a hole of a sparse pool file) fails the
// checkpoint with ErrHostFull and leaves the pool working: it wrote only blocks and refcount
// slots that no durable state points at, and its changes in memory are undone. Every other
// write or sync error fails the pool. (The same holds for checkpoint.)
func (p *Pool) checkpointLocked() error {
	p.waitChecksLocked()
	c, err := p.prepareCheckpointLocked()
	if err != nil {
		return err
	}
	if beforeSync, err := p.writeCheckpoint(c); err != nil {
		return p.checkpointFailedLocked(c, err, beforeSync)
	}
	p.publishCheckpointLocked(c)
	return nil
}

// prepareCheckpointLocked is step 1 of a checkpoint. REQUIRES p.commitMu, p.mu, and writes
// held back (p.writeGate or p.ioGate exclusively).
func (p *Pool) prepareCheckpointLocked() (*ckptPlan, error) {
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
			return nil, fmt.Errorf("blockstore: checkpoint: allocate catalog block: %w", err)
		}
		newCat = append(newCat, b)
	}
	c := &ckptPlan{newCat: newCat, payload: payload, oldCat: p.catalogBlocks, npc: len(p.pendingCheckpoint)}
	for _, b := range c.oldCat {
		p.decref(b, pendingCheckpoint)
	}
	p.catalogBlocks = newCat

	c.nodes = make([]*node, 0, p.dirtyNodes)
	for _, n := range p.nodes {
		if n.dirty {
			c.nodes = append(c.nodes, n)
		}
	}
	slices.SortFunc(c.nodes, func(a, b *node) int { return cmp.Compare(a.pbn, b.pbn) })
	// In page order: the writes a checkpoint issues do not depend on map order, so a crash test
	// that cuts it at its nth write reproduces from its seed.
	c.pages = make([]ckptPage, 0, len(p.rc.dirty))
	for pg := range p.rc.dirty {
		slot := 0
		if p.rc.slot[pg] == 0 {
			slot = 1
		}
		c.pages = append(c.pages, ckptPage{page: pg, slot: slot, pp: p.rc.pages[pg]})
	}
	slices.SortFunc(c.pages, func(a, b ckptPage) int { return cmp.Compare(a.page, b.page) })

	sb := p.geo
	sb.Version = format.Version // a pool of an older version is upgraded here
	sb.Generation = p.generation + 1
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
	sb.Boot = p.boot // the journal of the epoch it starts goes through this kernel's page cache
	c.sb = sb
	return c, nil
}

// writeCheckpoint is step 2 of a checkpoint: it writes what c lists and commits it with the
// superblock. It reads the nodes and pages c lists without p.mu, which nothing changes before
// step 3 (see above). beforeSync reports an error of a write before the first fdatasync, which
// may leave the pool working (checkpointFailedLocked). REQUIRES p.commitMu, and writes held
// back (p.writeGate or p.ioGate exclusively).
func (p *Pool) writeCheckpoint(c *ckptPlan) (beforeSync bool, err error) {
	buf := p.blockBuf()
	defer p.putBlockBuf(buf)
	write := func(pbn uint64, what string) error {
		if _, err := p.f.WriteAt(buf, int64(pbn)*int64(p.bs)); err != nil {
			return fmt.Errorf("checkpoint: write %s at block %d: %w", what, pbn, err)
		}
		return nil
	}
	room := p.bs - format.CatalogHeaderSize
	for i, b := range c.newCat {
		next := uint64(0)
		if i+1 < len(c.newCat) {
			next = c.newCat[i+1]
		}
		lo := i * room
		format.EncodeCatalogBlock(buf, b, next, c.payload[lo:min(lo+room, len(c.payload))])
		if err := write(b, "catalog block"); err != nil {
			return true, err
		}
	}
	if err := p.writeNodes(c.nodes); err != nil {
		return true, err
	}
	counts := make([]uint32, p.rc.perPage)
	for _, w := range c.pages {
		clear(counts)
		if w.pp != nil {
			for i, v := range w.pp.counts {
				if v <= maxRefs { // pending marks are stored as zero
					counts[i] = v
				}
			}
		}
		format.EncodeRCPage(buf, uint32(w.page), c.sb.Generation, counts[:p.pageLen(w.page)])
		if err := write(p.geo.RCStart+2*uint64(w.page)+uint64(w.slot), "refcount page"); err != nil {
			return true, err
		}
	}
	if err := p.f.Sync(); err != nil {
		return false, fmt.Errorf("checkpoint: sync: %w", err)
	}
	clear(buf)
	format.EncodeSuperblock(buf, &c.sb)
	if _, err := p.f.WriteAt(buf, int64(c.sb.Generation%2)*int64(p.bs)); err != nil {
		return false, fmt.Errorf("checkpoint: write superblock: %w", err)
	}
	if err := p.f.Sync(); err != nil {
		return false, fmt.Errorf("checkpoint: sync superblock: %w", err)
	}
	return false, nil
}

// checkpointFailedLocked handles an error of step 2. A write before the first sync that failed
// for lack of space in the file system under the pool (beforeSync, ErrHostFull) undoes step 1
// and leaves the pool working; any other error fails the pool. REQUIRES p.mu, and what
// writeCheckpoint requires.
func (p *Pool) checkpointFailedLocked(c *ckptPlan, err error, beforeSync bool) error {
	if !beforeSync || !isHostFull(err) {
		return p.fail(err)
	}
	for _, b := range c.newCat {
		p.decref(b, 0) // never part of a durable state
	}
	for _, b := range c.oldCat {
		p.rc.set(b, 1)
	}
	p.pendingCheckpoint = p.pendingCheckpoint[:c.npc]
	p.catalogBlocks = c.oldCat
	p.hostFull = true
	return fmt.Errorf("%w: %w", ErrHostFull, err)
}

// publishCheckpointLocked is step 3 of a checkpoint, once it is durable: it only updates
// memory, and punches out the blocks it frees. REQUIRES p.mu, p.ioGate exclusively (freed
// blocks become reusable), and what writeCheckpoint requires.
func (p *Pool) publishCheckpointLocked(c *ckptPlan) {
	gen := c.sb.Generation
	p.geo.Version = format.Version
	p.generation = gen
	p.hostFull = false
	p.cutSeq++
	p.markDurable(p.cutSeq)
	p.ckptLSN = c.sb.CheckpointLSN
	p.restartJournalLocked(c.sb.CheckpointLSN)
	for _, w := range c.pages {
		p.rc.slot[w.page] = uint8(w.slot)
	}
	clear(p.rc.dirty)
	for _, n := range c.nodes {
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
	p.log.Debug("checkpoint", "generation", gen, "lsn", c.sb.CheckpointLSN, "catalogBlocks", len(c.newCat))
}

// writeNodes writes tree nodes (in block order), runs of consecutive blocks (nodes allocated
// together) in one write each. It reads the nodes without p.mu: they must not change meanwhile
// (writeCheckpoint).
func (p *Pool) writeNodes(dirty []*node) error {
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
