package blockstore

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// The journal and the commit order.
//
// Every change to volumes, snapshots and mappings is first applied in memory and described by a
// logical redo record (format.Record) with the next log position (LSN). Records wait in p.jbuf
// until a commit; tree nodes and refcount pages changed since the last checkpoint stay in memory.
//
// The journal is divided into epochs: epoch G holds the records committed after the checkpoint
// of generation G, and every record carries its epoch. A checkpoint starts a new epoch (the
// journal restarts at its first block), and so does every Open (but the one within CreateOn,
// whose journal holds only zeros).
//
// Commit (Flush), in this order:
//  1. fdatasync: data blocks written so far are durable (a record's data is always written
//     before the record is appended);
//  2. the waiting records, tagged with the current epoch, are written to the journal region
//     after the last committed ones, packed into whole blocks (a record never straddles a
//     block), each with its CRC-32C;
//  3. fdatasync: the records are durable; Flush returns.
//  4. data blocks freed by the committed records become reusable.
//
// A failed write or fdatasync of a commit or a checkpoint fails the pool (ErrFailed): after a
// failed fdatasync nothing is known of what reached the disk, so nothing is acknowledged any
// more; reopening recovers the last acknowledged state. (A failed data write fails its WriteAt
// only: the blocks it covers hold old or new data.)
//
// Checkpoint (checkpoint.go), when the journal or the dirty metadata grows large and at Close:
//  1. new blocks for the catalog; dirty tree nodes, catalog blocks and dirty refcount pages
//     (each to the slot that does not hold its durable copy) are written;
//  2. fdatasync;
//  3. the superblock, generation+1 with the checkpoint's LSN, is written to the other slot;
//  4. fdatasync: the checkpoint is durable;
//  5. the journal restarts at its first block, in epoch generation+1; blocks the previous
//     checkpoint referenced and every pending free become reusable.
//
// Recovery (Open) first drops the file's clean cached pages (osFile.DropCache), so that it
// reads what the disk holds. It loads the superblock with the highest valid generation G, its
// refcount pages and catalog, then replays journal records from the first journal block for as
// long as each record is intact (its checksum holds), belongs to epoch G and has the LSN that
// follows the previous one. Then it takes a checkpoint, always: that starts epoch G+1, so
// whatever the journal holds past the last record replayed (the rest of a commit cut short,
// whose blocks reached the disk in any order and any subset) stays in an old epoch and is never
// replayed, however later commits of the new epoch come to lie next to it. Within one epoch the
// journal is only appended to, and a commit starts only after the previous one is durable, so
// replay stops exactly at the end of the last durable commit: a torn or lost block of the
// commit cut short fails its checksum or holds an older epoch's records (or none). A record of
// a newer epoch than G means the superblock that started it was lost: Open fails with
// ErrCorrupt rather than go back to an older checkpoint. Recovery writes nothing before its
// checkpoint, and the checkpoint commits with its superblock, so a crash during recovery leaves
// the durable state as it was: the next Open recovers the same way.
//
// A pool of format version 1 (records without epochs) is replayed by LSN alone, as that version
// was, and its first checkpoint makes it version 2.

// appendRecord assigns the next LSN to r and queues it for the next commit. During replay it
// only advances the LSN. REQUIRES p.mu.
func (p *Pool) appendRecord(r format.Record) uint64 {
	if p.replaying {
		return r.LSN
	}
	p.lsn++
	r.LSN = p.lsn
	p.jbuf = append(p.jbuf, r)
	return r.LSN
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

// commitLocked commits the waiting records. REQUIRES p.commitMu, and none of p.writeGate,
// p.ioGate, p.mu: it holds p.mu to take the records and to publish the commit, not across its
// writes and syncs, and p.ioGate exclusively at the end only when the commit frees blocks.
//
// A commit becomes a checkpoint when the records do not fit in the journal, or when
// needCheckpoint asks for one; if that checkpoint fails for lack of space (ErrNoSpace,
// ErrHostFull: nothing durable changed) and the records fit, they are committed to the journal.
func (p *Pool) commitLocked() error {
	var recs []format.Record
	var npend int
	var blocks []byte
	for attempt := 0; ; attempt++ {
		p.mu.Lock()
		if err := p.checkLocked(); err != nil {
			p.mu.Unlock()
			return err
		}
		recs = p.jbuf
		npend = len(p.pendingCommit)
		blocks = encodeRecords(recs, p.generation, p.bs)
		fits := uint64(len(blocks)/p.bs) <= p.geo.JournalBlocks-p.jpos
		if fits && (attempt > 0 || !p.needCheckpoint()) {
			break // p.mu held
		}
		p.mu.Unlock()
		err := p.checkpoint()
		if err == nil || !fits || attempt > 0 || !errors.Is(err, ErrNoSpace) {
			return err
		}
		p.log.Warn("checkpoint failed for lack of space; committing to the journal", "err", err)
	}
	p.jbuf = nil
	pos := p.jpos
	p.cutSeq++
	seq := p.cutSeq
	p.mu.Unlock()

	// Data written since the last sync (every record's data was written before the record was
	// appended, so before the cut above, so before this Swap) becomes durable first.
	if p.wrote.Swap(false) {
		if err := p.f.Sync(); err != nil {
			return p.failLocking(fmt.Errorf("sync data: %w", err))
		}
	}
	if len(recs) == 0 {
		p.mu.Lock()
		p.markDurable(seq)
		p.mu.Unlock()
		return nil
	}
	off := int64(p.geo.JournalStart+pos) * int64(p.bs)
	if _, err := p.f.WriteAt(blocks, off); err != nil {
		return p.failLocking(fmt.Errorf("write journal: %w", err))
	}
	if err := p.f.Sync(); err != nil {
		return p.failLocking(fmt.Errorf("sync journal: %w", err))
	}
	if npend > 0 { // a read may still be reading a block freed by a write's copy-on-write
		p.ioGate.Lock()
		defer p.ioGate.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.jpos = pos + uint64(len(blocks)/p.bs)
	p.durableLSN = recs[len(recs)-1].LSN
	p.markDurable(seq)
	if npend > 0 {
		p.release(p.pendingCommit[:npend])
		p.pendingCommit = slices.Clone(p.pendingCommit[npend:]) // not the old backing array
	}
	return nil
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
		len(p.rc.dirty) > max(p.rc.maxResident/2, 64) ||
		uint64(len(p.jbuf)) > p.geo.JournalBlocks*16 ||
		p.dirtyNodes > max(p.maxCleanNodes/2, 4096) ||
		len(p.pendingCheckpoint) > int(p.rc.n/8)+1024
}

// encodeRecords packs records of the given epoch into whole blocks.
func encodeRecords(recs []format.Record, epoch uint64, bs int) []byte {
	if len(recs) == 0 {
		return nil
	}
	var out []byte
	blockStart := 0
	for i := range recs {
		mark := len(out)
		recs[i].Epoch = epoch
		out = format.AppendRecord(out, &recs[i])
		if len(out)-blockStart > bs {
			// Does not fit: pad the block and start the record in the next one.
			rec := append([]byte(nil), out[mark:]...)
			out = out[:mark]
			out = append(out, make([]byte, blockStart+bs-mark)...)
			blockStart += bs
			out = append(out, rec...)
		}
	}
	pad := (bs - len(out)%bs) % bs
	return append(out, make([]byte, pad)...)
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
			if err := p.apply(&r); err != nil {
				return fmt.Errorf("blockstore: replay %s record at LSN %d: %w", r.Type, r.LSN, err)
			}
			p.lsn = r.LSN
		}
		p.replaying = false
		p.reserved = nil
		p.durableLSN = p.lsn
		p.recovery.Records = len(recs)
		p.recovery.LastLSN = p.lsn
		p.recovery.Duration = time.Since(start)
		p.log.Info("journal replayed", "records", len(recs), "fromLSN", p.ckptLSN+1, "toLSN", p.lsn, "duration", p.recovery.Duration)
	}
	// A new epoch, also with nothing replayed, so that no record left past the end of the
	// replay can ever be taken for one of the commits that follow (see the top of this file).
	// A pool just formatted has nothing past it.
	if fresh && len(recs) == 0 && len(p.recovery.DamagedRefcountPages) == 0 {
		return nil
	}
	if err := p.recoveryCheckpoint(); err != nil {
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
	buf := make([]byte, chunk*uint64(p.bs))
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
					return recs, nil // the end of the last durable commit
				}
				if err := p.checkEpoch(&r, want, p.geo.JournalStart+b+i); err != nil {
					return nil, err
				}
				if (p.geo.Version > 1 && r.Epoch != p.generation) || r.LSN != want {
					return recs, nil // an older epoch's record: the end of the last durable commit
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
