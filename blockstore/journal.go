package blockstore

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// The journal and the commit order.
//
// Every change to volumes, snapshots and mappings is applied in memory and described by a
// logical redo record (format.Record) with the next log position (LSN). Tree nodes and refcount
// pages changed since the last checkpoint stay in memory: the records are what makes a change
// findable after a crash.
//
// The journal is divided into epochs: epoch G holds the records appended after the checkpoint
// of generation G, and every record carries its epoch. A checkpoint starts a new epoch (the
// journal restarts at its first block), and so does every Open (but the one within CreateOn,
// whose journal holds only zeros). An epoch is written by one process, so under one boot.
//
// What survives what. A write, discard or other change returns only once its records are in
// the journal region of the pool file, after its data: in the kernel's page cache (also in a
// pool opened with DirectIO, through File.WriteAtCached). The death of the process loses
// nothing it acknowledged. Nothing orders those writes on the disk before an fdatasync,
// though: after a power loss the journal may hold records whose data never reached the disk,
// so only the records a commit covered count there, and a write survives a power loss once a
// Flush returned, as it always did. Recovery tells the two cases apart by the boot of the
// kernel (File.Boot), which every checkpoint records in its superblock.
//
// Records are placed as they are appended (appendRecord, place): packed into the tail block
// (a record never straddles a block), each with its CRC-32C. Before a change returns, its
// writer writes the blocks placed since the last journal write and rewrites the tail block in
// place (writeJournal): one write for the records of every writer waiting at the time. A
// rewrite of the tail block leaves the bytes of the records already in it as they were, so a
// rewrite that a power loss tears, sector by sector, keeps them. Every record leaves room for a
// RecCommit record after it, so a commit can always end with one.
//
// Commit (Flush), in this order:
//  1. cut: the records appended so far are the commit's (up to LSN c);
//  2. if data was written since the last fdatasync: the records up to c that no journal write
//     took yet (those of changes made under p.commitMu) are written, and fdatasync: the data
//     of every record up to c is durable (a record's data is written before it is appended),
//     and so are those records;
//  3. a RecCommit record stating c is appended and written with every record before it;
//  4. fdatasync: the RecCommit record is durable, and so is every record before it; Flush
//     returns;
//  5. data blocks freed by the records up to c become reusable.
//
// Without data written since the last fdatasync, the records up to c become durable with the
// RecCommit record in step 4: replay reaches a RecCommit record only through every record
// before it. A commit without records to cover (none appended since the last commit's
// RecCommit record) is the fdatasync of step 2, or nothing.
//
// A failed write or fdatasync of a commit, a journal write or a checkpoint fails the pool
// (ErrFailed): after a failed fdatasync nothing is known of what reached the disk, so nothing
// is acknowledged any more. The kernel may also have dropped pages it failed to write back, so
// a failing pool rewrites its superblock without the boot (forgetBootLocked): reopening, in
// the same boot or not, recovers what commits covered, as after a power loss. (A failed data
// write fails its WriteAt only: the blocks it covers hold old or new data.)
//
// Checkpoint (checkpoint.go), when the journal or the dirty metadata grows large and at Close:
//  1. new blocks for the catalog; dirty tree nodes, catalog blocks and dirty refcount pages
//     (each to the slot that does not hold its durable copy) are written;
//  2. fdatasync;
//  3. the superblock, generation+1 with the checkpoint's LSN and the current boot, is written
//     to the other slot;
//  4. fdatasync: the checkpoint is durable, and with it every change up to its LSN;
//  5. the journal restarts at its first block, in epoch generation+1; blocks the previous
//     checkpoint referenced and every pending free become reusable.
//
// No journal write is in flight while a checkpoint runs: writers write their records holding
// p.writeGate shared, commits and durable changes hold p.commitMu, and a checkpoint holds both
// from its first step to its last.
//
// Recovery (Open) first drops the file's clean cached pages (osFile.DropCache): it reads what
// the disk holds, and the dirty pages a killed process left (its records and data). It loads
// the superblock with the highest valid generation G, its refcount pages and catalog, then
// reads journal records from the first journal block for as long as each record is intact (its
// checksum holds), belongs to epoch G and has the LSN that follows the previous one. If the
// superblock names the boot that is running, neither a power loss nor a failure of the pool
// came between (the page cache holds every record the last process wrote, and the data written
// before each): every record is replayed.
// Otherwise only the records up to the largest LSN a RecCommit record among them states; those
// after it (Recovery.Dropped) may lack their data. Records replayed past the last RecCommit are
// in no durable state yet: until the recovery checkpoint, the blocks they free are not reused
// and those they unshare are not overwritten in place.
//
// Then recovery takes a checkpoint, always: that starts epoch G+1, so whatever the journal
// holds past the last record replayed (records cut off by a power loss, any subset of whose
// blocks reached the disk) stays in an old epoch and is never replayed, however later records
// of the new epoch come to lie next to it. Within one epoch records are written in LSN order,
// and a RecCommit record is written after the records it covers are durable, so replay finds
// every committed record: a torn or lost block past them fails its checksum, holds an older
// epoch's records (or none), or breaks the LSN sequence. A record of a newer epoch than G means
// the superblock that started it was lost: Open fails with ErrCorrupt rather than go back to
// an older checkpoint. Recovery writes nothing before its checkpoint (but, if it fails, the
// superblock it loaded without the boot), and the checkpoint commits with its superblock, so
// a crash during recovery leaves the durable state as it was: the next Open recovers the same
// way.
//
// A pool of format version 1 or 2 (records written at commit, after their data was durable,
// every one in the journal committed) is replayed as that version was, every record trusted;
// its first checkpoint makes it version 3.

// errJournalFull is what writeJournal reports for a record that did not fit in the journal:
// only a checkpoint makes it durable (settleOverflow).
var errJournalFull = errors.New("blockstore: the journal is full")

// commitRecordSize is the size of the largest RecCommit record.
var commitRecordSize = len(format.AppendRecord(nil, &format.Record{
	Type: format.RecCommit, Epoch: math.MaxUint64, LSN: math.MaxUint64, A: math.MaxUint64}))

// appendRecord assigns the next LSN to r and places it in the journal. During replay it only
// advances the LSN. REQUIRES p.mu.
func (p *Pool) appendRecord(r format.Record) uint64 {
	if p.replaying {
		return r.LSN
	}
	p.lsn++
	r.LSN = p.lsn
	p.place(&r)
	return r.LSN
}

// place encodes r at the tail of the journal, leaving room for a RecCommit record after it
// (unless it is one), or keeps it in p.jover when the journal has no room for that, and every
// record after it: records are written in LSN order. REQUIRES p.mu.
func (p *Pool) place(r *format.Record) {
	p.jmu.Lock()
	defer p.jmu.Unlock()
	if len(p.jover) > 0 || p.jpos >= p.geo.JournalBlocks {
		p.jover = append(p.jover, *r)
		return
	}
	r.Epoch = p.generation
	var tmp [format.MaxRecordSize]byte
	enc := format.AppendRecord(tmp[:0], r)
	pos, used := p.jpos, p.jused
	if used+len(enc) > p.bs {
		pos, used = pos+1, 0
	}
	need := pos + 1 // journal blocks needed
	if r.Type != format.RecCommit && used+len(enc)+commitRecordSize > p.bs {
		need++
	}
	if need > p.geo.JournalBlocks {
		p.jover = append(p.jover, *r)
		return
	}
	if pos > p.jpos {
		p.jpend = append(p.jpend, make([]byte, p.bs)...)
		p.jpos = pos
	}
	copy(p.jpend[len(p.jpend)-p.bs+used:], enc)
	p.jused = used + len(enc)
	p.jlast = r.LSN
}

// restartJournalLocked makes the journal empty, in the current epoch, after a checkpoint (or
// Open) that holds every change up to lsn. REQUIRES p.mu, and no journal write in flight (see
// the top of the file).
func (p *Pool) restartJournalLocked(lsn uint64) {
	p.jmu.Lock()
	defer p.jmu.Unlock()
	p.jpos, p.jused, p.jpendAt = 0, 0, 0
	if cap(p.jpend) >= p.bs {
		p.jpend = p.jpend[:p.bs]
		clear(p.jpend)
	} else {
		p.jpend = make([]byte, p.bs)
	}
	p.jover = nil
	p.jlast = lsn
	p.written.Store(lsn)
	p.committedLSN, p.commitRecLSN = lsn, lsn
}

// writeJournal writes the record at lsn, with every record placed before it, to the journal
// region: then they survive the process (see the top of the file). It fails with
// errJournalFull when that record did not fit in the journal. It does not wait for p.mu, which
// writers hold to look up and map blocks. REQUIRES none of p.mu, and p.writeGate shared or
// p.commitMu (no checkpoint restarts the journal meanwhile).
func (p *Pool) writeJournal(lsn uint64) error {
	if p.written.Load() >= lsn {
		return nil
	}
	p.jw.Lock()
	defer p.jw.Unlock()
	if p.written.Load() >= lsn {
		return nil // written meanwhile, with the records of another writer
	}
	if err := p.Health(); err != nil {
		return err
	}
	p.jmu.Lock()
	if lsn > p.jlast {
		p.jmu.Unlock()
		return errJournalFull
	}
	last, at, n := p.jlast, p.jpendAt, len(p.jpend)
	if cap(p.jwbuf) < n {
		p.jwbuf = alignedBuf(max(n, 2*cap(p.jwbuf)))
	}
	buf := p.jwbuf[:n]
	copy(buf, p.jpend)
	if n > p.bs {
		// The blocks before the tail are full: this is their last write. The tail stays.
		copy(p.jpend, p.jpend[n-p.bs:])
		p.jpend = p.jpend[:p.bs]
		p.jpendAt = p.jpos
	}
	p.jmu.Unlock()
	if _, err := p.jfile.WriteAt(buf, int64(p.geo.JournalStart+at)*int64(p.bs)); err != nil {
		return p.failLocking(fmt.Errorf("write journal: %w", err))
	}
	p.written.Store(last)
	return nil
}

// Flush makes every write and change that completed before it was called durable.
//
// Concurrent Flushes share commits: a Flush that waited for another commit returns at once if a
// commit that started after it was called has completed meanwhile.
func (p *Pool) Flush() error {
	p.mu.RLock()
	target := p.cutSeq + 1 // the first commit to start after this call
	p.mu.RUnlock()
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	p.mu.RLock()
	done := p.durableSeq >= target && p.failed == nil
	p.mu.RUnlock()
	if done {
		return nil
	}
	return p.commitLocked()
}

// commitLocked commits (see the top of the file): every record appended and every data write
// completed before it is durable when it returns. REQUIRES p.commitMu, and none of
// p.writeGate, p.ioGate, p.mu: it holds p.mu to cut and to publish the commit, not across its
// writes and syncs, and p.ioGate exclusively at the end only when the commit frees blocks.
//
// A commit becomes a checkpoint when records did not fit in the journal, or when
// needCheckpoint asks for one; if that checkpoint fails for lack of space (ErrNoSpace,
// ErrHostFull: nothing durable changed) and every record is in the journal, the commit goes on
// without it.
func (p *Pool) commitLocked() error {
	for attempt := 0; ; attempt++ {
		p.mu.Lock()
		if err := p.checkLocked(); err != nil {
			p.mu.Unlock()
			return err
		}
		full := p.journalFullLocked()
		if !full && (attempt > 0 || !p.needCheckpoint()) {
			break // p.mu held
		}
		p.mu.Unlock()
		err := p.checkpoint()
		if err == nil || full || attempt > 0 || !errors.Is(err, ErrNoSpace) {
			return err
		}
		p.log.Warn("checkpoint failed for lack of space; committing to the journal", "err", err)
	}
	cut := p.lsn
	records := p.recordsToCommitLocked()
	npend := len(p.pendingCommit)
	p.cutSeq++
	seq := p.cutSeq
	p.mu.Unlock()

	// Data written since the last sync (every record's data was written before the record was
	// appended, so before the cut above, so before this Swap) becomes durable, with the records.
	if p.wrote.Swap(false) {
		if records {
			if err := p.writeJournal(cut); err != nil {
				return err
			}
		}
		if err := p.f.Sync(); err != nil {
			return p.failLocking(fmt.Errorf("sync: %w", err))
		}
	}
	var at uint64
	if records {
		p.mu.Lock()
		at = p.appendRecord(format.Record{Type: format.RecCommit, A: cut})
		p.mu.Unlock()
		if err := p.writeJournal(at); errors.Is(err, errJournalFull) {
			return p.checkpoint() // place keeps room for it: not seen
		} else if err != nil {
			return err
		}
		if err := p.f.Sync(); err != nil {
			return p.failLocking(fmt.Errorf("sync journal: %w", err))
		}
	}
	if npend > 0 { // a read may still be reading a block freed by a write's copy-on-write
		p.ioGate.Lock()
		defer p.ioGate.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if records {
		p.committedLSN, p.commitRecLSN = cut, at
	}
	p.markDurable(seq)
	if npend > 0 {
		p.release(p.pendingCommit[:npend])
		p.pendingCommit = slices.Clone(p.pendingCommit[npend:]) // not the old backing array
	}
	return nil
}

// recordsToCommitLocked reports whether records were appended since the last commit's cut,
// but for its own RecCommit record. REQUIRES p.mu.
func (p *Pool) recordsToCommitLocked() bool {
	n := p.lsn - p.committedLSN
	if p.commitRecLSN > p.committedLSN {
		n-- // the RecCommit record of the last commit
	}
	return n > 0
}

// journalFullLocked reports whether records wait that only a checkpoint makes durable: they
// did not fit in the journal (or it was left full: recoveryCheckpoint). REQUIRES p.mu.
func (p *Pool) journalFullLocked() bool {
	return len(p.jover) > 0
}

// journaled ends a write or discard that appended records up to lsn (none if 0), whose own
// outcome is err: it is acknowledged only once they are in the kernel's hands, written to the
// journal (see the top of the file). REQUIRES what writeJournal requires.
func (p *Pool) journaled(lsn uint64, err error) error {
	if lsn == 0 {
		return err
	}
	if jerr := p.writeJournal(lsn); err == nil {
		err = jerr
	}
	return err
}

// settled returns err, unless it says that records of the operation that returned it did not
// fit in the journal (errJournalFull): then it makes them durable first (settleOverflow).
// REQUIRES none of the pool's locks.
func (p *Pool) settled(err error) error {
	if errors.Is(err, errJournalFull) {
		return p.settleOverflow()
	}
	return err
}

// settleOverflow makes durable the records that did not fit in the journal: a commit, which
// takes a checkpoint for them. REQUIRES none of the pool's locks.
func (p *Pool) settleOverflow() error {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	p.mu.RLock()
	full := p.journalFullLocked()
	p.mu.RUnlock()
	if !full {
		return nil // a checkpoint took them meanwhile
	}
	return p.commitLocked()
}

// markDurable records that the commit started as seq completed. REQUIRES p.mu.
func (p *Pool) markDurable(seq uint64) {
	p.durableSeq = max(p.durableSeq, seq)
	for pbn, tag := range p.unshared {
		if tag < p.durableSeq {
			delete(p.unshared, pbn)
		}
	}
}

func (p *Pool) failLocking(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fail(err)
}

// needCheckpoint reports whether enough has changed since the last checkpoint that the next
// commit should be a checkpoint. REQUIRES p.mu.
func (p *Pool) needCheckpoint() bool {
	if p.checks > 0 || p.hostFull {
		return false // a read-only Check reads the last one; or no room to write one
	}
	return p.jpos > p.geo.JournalBlocks/2 ||
		len(p.jover) > 0 ||
		len(p.rc.dirty) > max(p.rc.maxResident/2, 64) ||
		p.dirtyNodes > max(p.maxCleanNodes/2, 4096) ||
		len(p.pendingCheckpoint) > int(p.rc.n/8)+1024
}

// recover replays the journal after the checkpoint that was loaded, then takes a checkpoint,
// which starts a new epoch; fresh skips it for a pool just formatted (whose journal holds only
// zeros) unless refcounts were rebuilt. REQUIRES nothing (Open).
func (p *Pool) recover(fresh bool) error {
	start := time.Now()
	recs, err := p.readJournal()
	if err != nil {
		return err
	}
	// Which records to replay (see the top of the file): up to committed, or every one when
	// the kernel that took the journal writes still runs. Versions 1 and 2 wrote records only
	// once their data was durable.
	committed := uint64(math.MaxUint64)
	if p.geo.Version >= 3 {
		committed = p.ckptLSN
		for _, r := range recs {
			if r.Type == format.RecCommit {
				committed = max(committed, r.A)
			}
		}
		p.recovery.SameBoot = p.boot != [16]byte{} && p.boot == p.geo.Boot // geo: the superblock loaded
		if !p.recovery.SameBoot {
			for len(recs) > 0 && recs[len(recs)-1].LSN > committed {
				if recs[len(recs)-1].Type != format.RecCommit {
					p.recovery.Dropped++
				}
				recs = recs[:len(recs)-1]
			}
		}
	}
	p.recovery.CheckpointLSN, p.recovery.LastLSN = p.ckptLSN, p.ckptLSN
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(recs) > 0 {
		p.replaying = true
		p.reserved = make(map[uint64]struct{})
		for _, r := range recs {
			if r.Type == format.RecMap {
				for i := uint64(0); i < r.C; i++ {
					p.reserved[r.B+i] = struct{}{}
				}
			}
		}
		for _, r := range recs {
			p.replayVolatile = r.LSN > committed
			if err := p.apply(&r); err != nil {
				return fmt.Errorf("blockstore: replay %s record at LSN %d: %w", r.Type, r.LSN, err)
			}
			p.lsn = r.LSN
		}
		p.replaying, p.replayVolatile = false, false
		p.reserved = nil
		for _, r := range recs {
			if r.Type != format.RecCommit {
				p.recovery.Records++
			}
		}
		p.recovery.LastLSN = p.lsn
		p.recovery.Duration = time.Since(start)
		p.log.Info("journal replayed", "records", p.recovery.Records, "fromLSN", p.ckptLSN+1, "toLSN", p.lsn,
			"sameBoot", p.recovery.SameBoot, "dropped", p.recovery.Dropped, "duration", p.recovery.Duration)
	} else if p.recovery.Dropped > 0 {
		p.log.Info("journal replayed", "records", 0, "sameBoot", false, "dropped", p.recovery.Dropped)
	}
	// A new epoch, also with nothing replayed, so that no record left past the end of the
	// replay can ever be taken for one of the records that follow (see the top of this file).
	// A pool just formatted has nothing past it.
	if fresh && len(recs) == 0 && len(p.recovery.DamagedRefcountPages) == 0 {
		return nil
	}
	if err := p.recoveryCheckpoint(committed); err != nil {
		return fmt.Errorf("blockstore: checkpoint after recovery: %w", err)
	}
	return nil
}

// readJournal reads the records of the current epoch: from the first journal block, while each
// record is intact, belongs to the epoch and has the next LSN.
func (p *Pool) readJournal() ([]format.Record, error) {
	decode := format.DecodeRecord
	if p.geo.Version == 1 {
		decode = format.DecodeRecordV1
	}
	var recs []format.Record
	want := p.ckptLSN + 1
	chunk := min(256, p.geo.JournalBlocks)
	buf := alignedBuf(int(chunk) * p.bs)
	for b := uint64(0); b < p.geo.JournalBlocks; b += chunk {
		n := min(chunk, p.geo.JournalBlocks-b)
		if _, err := p.f.ReadAt(buf[:n*uint64(p.bs)], int64(p.geo.JournalStart+b)*int64(p.bs)); err != nil {
			return nil, fmt.Errorf("blockstore: read journal: %w", err)
		}
		for i := uint64(0); i < n; i++ {
			blk := buf[i*uint64(p.bs) : (i+1)*uint64(p.bs)]
			sawRecord := false
			for off := 0; off < len(blk); {
				r, k, end, err := decode(blk[off:])
				if end {
					break
				}
				if err != nil {
					return recs, nil // the end of what was written
				}
				if err := p.checkEpoch(&r, want, p.geo.JournalStart+b+i); err != nil {
					return nil, err
				}
				if (p.geo.Version > 1 && r.Epoch != p.generation) || r.LSN != want {
					return recs, nil // an older epoch's record: the end of what was written
				}
				sawRecord = true
				recs = append(recs, r)
				want++
				off += k
			}
			if !sawRecord {
				return recs, nil
			}
		}
	}
	return recs, nil
}

// checkEpoch reports a journal record that only a checkpoint newer than the one loaded can have
// written: the superblock loaded is not the newest durable one. want is the next LSN replay
// expects; blk is the record's block.
func (p *Pool) checkEpoch(r *format.Record, want, blk uint64) error {
	var newer bool
	if p.geo.Version == 1 {
		// Version 1 records have no epoch; later checkpoints restart the journal with later
		// LSNs.
		newer = r.LSN > want
	} else {
		newer = r.Epoch > p.generation
	}
	if !newer {
		return nil
	}
	return fmt.Errorf("%w: journal block %d holds LSN %d of epoch %d, past the checkpoint loaded (generation %d, LSN %d): a newer superblock was lost",
		ErrCorrupt, blk, r.LSN, r.Epoch, p.generation, want-1)
}

// apply performs one record's change on the in-memory state; used both live (after the caller
// validated the request) and in replay. REQUIRES p.mu.
func (p *Pool) apply(r *format.Record) error {
	switch r.Type {
	case format.RecMap:
		v, err := p.volByID(VolumeID(r.Vol))
		if err != nil {
			return err
		}
		for i := uint64(0); i < r.C; i++ {
			if p.replaying {
				pbn := r.B + i
				if c := p.rc.get(pbn); c != 0 || !p.rc.valid(pbn) {
					return fmt.Errorf("%w: block %d mapped by the journal has refcount %d", ErrCorrupt, pbn, c)
				}
				p.rc.set(pbn, 1)
			}
			old, err := p.setEntry(&v.t, r.A+i, r.B+i)
			if err != nil {
				return err
			}
			if old != 0 {
				p.decref(old, p.dataFreeMark())
			}
		}
	case format.RecUnmap:
		v, err := p.volByID(VolumeID(r.Vol))
		if err != nil {
			return err
		}
		if _, err := p.unmapRange(&v.t, r.A, r.A+r.C); err != nil {
			return err
		}
	case format.RecCreateVolume:
		p.addVolume(&volState{id: VolumeID(r.Vol), name: r.Name, size: r.A, created: r.Time,
			t: tree{height: p.heightFor(p.blocksFor(r.A))}})
	case format.RecDeleteVolume:
		v, err := p.volByID(VolumeID(r.Vol))
		if err != nil {
			return err
		}
		if err := p.drop(v.t.root, v.t.height-1); err != nil {
			return err
		}
		p.removeVolume(v)
	case format.RecGrowVolume:
		v, err := p.volByID(VolumeID(r.Vol))
		if err != nil {
			return err
		}
		if err := p.lift(&v.t, p.heightFor(p.blocksFor(r.A))); err != nil {
			return err
		}
		v.size = r.A
	case format.RecCreateSnapshot:
		v, err := p.volByID(VolumeID(r.Vol))
		if err != nil {
			return err
		}
		if v.t.root != 0 {
			if err := p.incref(v.t.root); err != nil {
				return err
			}
		}
		p.addSnapshot(&snapState{id: SnapshotID(r.Snap), name: r.Name, vol: v.id, lsn: r.LSN,
			created: r.Time, size: v.size, t: v.t})
	case format.RecDeleteSnapshot:
		s, err := p.snapByID(SnapshotID(r.Snap))
		if err != nil {
			return err
		}
		if err := p.drop(s.t.root, s.t.height-1); err != nil {
			return err
		}
		p.removeSnapshot(s)
	case format.RecCloneSnapshot, format.RecCloneVolume:
		var src tree
		var origin SnapshotID
		if r.Type == format.RecCloneSnapshot {
			s, err := p.snapByID(SnapshotID(r.Snap))
			if err != nil {
				return err
			}
			src, origin = s.t, s.id
		} else {
			v, err := p.volByID(VolumeID(r.B))
			if err != nil {
				return err
			}
			src, origin = v.t, v.origin
		}
		if src.root != 0 {
			if err := p.incref(src.root); err != nil {
				return err
			}
		}
		nv := &volState{id: VolumeID(r.Vol), name: r.Name, size: r.A, created: r.Time, origin: origin, t: src}
		if err := p.lift(&nv.t, p.heightFor(p.blocksFor(r.A))); err != nil {
			if src.root != 0 {
				p.decref(src.root, 0)
			}
			return err
		}
		p.addVolume(nv)
	case format.RecRevert:
		v, err := p.volByID(VolumeID(r.Vol))
		if err != nil {
			return err
		}
		s, err := p.snapByID(SnapshotID(r.Snap))
		if err != nil {
			return err
		}
		nt := s.t
		if nt.root != 0 {
			if err := p.incref(nt.root); err != nil {
				return err
			}
		}
		if err := p.lift(&nt, v.t.height); err != nil {
			if s.t.root != 0 {
				p.decref(s.t.root, 0)
			}
			return err
		}
		old := v.t
		v.t = nt
		if err := p.drop(old.root, old.height-1); err != nil {
			return err
		}
	case format.RecCommit:
		// Changes nothing: it says how far the journal was durable (see the top of the file).
	default:
		return fmt.Errorf("%w: unknown record type %d", ErrCorrupt, r.Type)
	}
	if r.Vol >= p.nextVol && (r.Type == format.RecCreateVolume || r.Type == format.RecCloneSnapshot || r.Type == format.RecCloneVolume) {
		p.nextVol = r.Vol + 1
	}
	if r.Type == format.RecCreateSnapshot && r.Snap >= p.nextSnap {
		p.nextSnap = r.Snap + 1
	}
	return nil
}

func (p *Pool) blocksFor(size uint64) uint64 { return (size + uint64(p.bs) - 1) / uint64(p.bs) }
