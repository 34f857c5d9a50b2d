package blockstore

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// Volume is a handle for I/O on one volume. It reads and writes like a disk: ReadAt and WriteAt
// follow the io.ReaderAt and io.WriterAt contracts and may be called concurrently, also for
// overlapping ranges (whose outcome is then any interleaving of whole blocks, as on a disk).
// A write or discard that returned survives the death of the process (journal.go); it survives
// a power loss once Flush returns.
type Volume struct {
	p *Pool
	v *volState
}

// ID returns the volume's ID.
func (vol *Volume) ID() VolumeID { return vol.v.id }

// Info returns the volume's description.
func (vol *Volume) Info() (VolumeInfo, error) { return vol.p.VolumeInfo(vol.v.id) }

// Size returns the volume's size in bytes (0 once deleted).
func (vol *Volume) Size() int64 {
	vol.p.mu.Lock()
	defer vol.p.mu.Unlock()
	if vol.v.deleted {
		return 0
	}
	return int64(vol.v.size)
}

// Flush makes every completed write durable (the whole pool's, in fact).
func (vol *Volume) Flush() error { return vol.p.Flush() }

// stateLocked returns the volume's tree and size, or why it cannot be used. REQUIRES p.mu.
func (vol *Volume) stateLocked() error {
	if vol.p.closed {
		return ErrClosed
	}
	if vol.v.deleted {
		return fmt.Errorf("%w: volume %d was deleted", ErrNotFound, vol.v.id)
	}
	return nil
}

// ReadAt reads len(b) bytes at offset off. Unmapped blocks read as zeros. At the end of the
// volume it returns fewer bytes with io.EOF.
func (vol *Volume) ReadAt(b []byte, off int64) (int, error) {
	v := vol.v
	return vol.p.readTree(func() (tree, uint64, error) {
		if err := vol.stateLocked(); err != nil {
			return tree{}, 0, err
		}
		return v.t, v.size, nil
	}, b, off, func() string { return fmt.Sprintf("volume %d", v.id) })
}

// readTree reads from the tree of a volume or snapshot, which state returns (called with p.mu
// held). Readers share p.mu as long as the tree nodes they need are cached; a miss retries with
// p.mu held exclusively to load them.
func (p *Pool) readTree(state func() (tree, uint64, error), b []byte, off int64, what func() string) (int, error) {
	if off < 0 {
		return 0, invalidf("read of %s at offset %d: negative offset", what(), off)
	}
	p.ioGate.RLock()
	defer p.ioGate.RUnlock()
	var pbns []uint64
	var first uint64
	var eof error
	for shared := true; ; shared = false {
		if shared {
			p.mu.RLock()
		} else {
			p.mu.Lock()
		}
		t, size, err := state()
		if err == nil && uint64(off) >= size {
			err = io.EOF
		}
		if err != nil {
			p.unlockMu(shared)
			if err == io.EOF && len(b) == 0 {
				return 0, nil
			}
			return 0, err
		}
		if uint64(off)+uint64(len(b)) > size {
			b = b[:size-uint64(off)]
			eof = io.EOF
		}
		if len(b) == 0 {
			p.unlockMu(shared)
			return 0, nil
		}
		bs := uint64(p.bs)
		first = uint64(off) / bs
		last := (uint64(off) + uint64(len(b)) - 1) / bs
		if cap(pbns) < int(last-first+1) {
			pbns = make([]uint64, last-first+1)
		}
		pbns = pbns[:last-first+1]
		clear(pbns)
		if shared {
			ok := p.mapCached(t.root, int(t.height)-1, 0, first, last+1, pbns)
			p.mu.RUnlock()
			if ok {
				break
			}
			continue
		}
		err = p.walkMapped(&t, first, last+1, func(lbn, pbn uint64) error {
			pbns[lbn-first] = pbn
			return nil
		})
		p.mu.Unlock()
		if err != nil {
			return 0, err
		}
		break
	}
	n, err := p.readBlocks(b, off, first, pbns, what)
	if err != nil {
		return n, err
	}
	return n, eof
}

func (p *Pool) unlockMu(shared bool) {
	if shared {
		p.mu.RUnlock()
	} else {
		p.mu.Unlock()
	}
}

// mapCached fills pbns[lbn-from] for the mapped blocks of [from, to) under the node at pbn,
// using cached nodes only; it reports false when a node is not cached. REQUIRES p.mu, shared
// or exclusive: it changes nothing but atomic CLOCK bits.
func (p *Pool) mapCached(pbn uint64, level int, base, from, to uint64, pbns []uint64) bool {
	if pbn == 0 {
		return true
	}
	n, ok := p.nodes[pbn]
	if !ok {
		return false
	}
	n.ref.Store(true)
	s := p.span(uint8(level))
	i := 0
	if from > base {
		i = int((from - base) / s)
	}
	for ; i < len(n.ent); i++ {
		lo := base + uint64(i)*s
		if lo >= to {
			break
		}
		c := n.ent[i]
		if c == 0 {
			continue
		}
		if level == 0 {
			pbns[lo-from] = c
		} else if !p.mapCached(c, level-1, lo, from, to, pbns) {
			return false
		}
	}
	return true
}

// readBlocks reads b (volume bytes [off, off+len(b))) from the physical blocks pbns of logical
// blocks first, first+1, ...; 0 reads as zeros. REQUIRES p.ioGate shared.
func (p *Pool) readBlocks(b []byte, off int64, first uint64, pbns []uint64, what func() string) (int, error) {
	bs := uint64(p.bs)
	// b[i] is byte off+i; block lbn covers volume bytes [lbn*bs, (lbn+1)*bs).
	for i := 0; i < len(pbns); {
		lbn := first + uint64(i)
		lo := max(lbn*bs, uint64(off)) - uint64(off) // range of b within this block
		hi := min((lbn+1)*bs, uint64(off)+uint64(len(b))) - uint64(off)
		inner := (uint64(off) + lo) % bs
		if pbns[i] == 0 {
			clear(b[lo:hi])
			i++
			continue
		}
		if hi-lo < bs {
			buf := p.blockBuf()
			_, err := p.f.ReadAt(buf, int64(pbns[i]*bs))
			copy(b[lo:hi], buf[inner:])
			p.putBlockBuf(buf)
			if err != nil {
				return 0, fmt.Errorf("blockstore: read %s block %d: %w", what(), lbn, err)
			}
			i++
			continue
		}
		// A run of whole blocks at consecutive physical blocks: one read.
		j := i + 1
		for j < len(pbns) && pbns[j] == pbns[j-1]+1 && (first+uint64(j)+1)*bs <= uint64(off)+uint64(len(b)) {
			j++
		}
		end := lo + uint64(j-i)*bs
		if _, err := p.f.ReadAt(b[lo:end], int64(pbns[i]*bs)); err != nil {
			return 0, fmt.Errorf("blockstore: read %s block %d: %w", what(), lbn, err)
		}
		i = j
	}
	return len(b), nil
}

// WriteAt writes len(b) bytes at offset off. A write that would reach past the end of the
// volume writes nothing and fails with ErrOutOfRange; a full pool fails it with ErrNoSpace.
// When WriteAt fails, the blocks it covers hold old or new data. When it returns, the write
// survives the death of the process (its data and journal records are in the kernel's hands);
// it survives a power loss once Flush returns.
func (vol *Volume) WriteAt(b []byte, off int64) (int, error) {
	if err := vol.checkRange(off, int64(len(b)), "write"); err != nil || len(b) == 0 {
		return 0, err
	}
	err := vol.p.settled(vol.p.retryNoSpace(func() error { return vol.write(b, off) }))
	if err != nil {
		return 0, err
	}
	vol.p.maybeCheckpoint()
	return len(b), nil
}

func (vol *Volume) checkRange(off, n int64, op string) error {
	if off < 0 || n < 0 {
		return invalidf("%s of %d bytes at offset %d of volume %d: negative offset or length", op, n, off, vol.v.id)
	}
	vol.p.mu.RLock()
	err := vol.stateLocked()
	size := int64(vol.v.size)
	vol.p.mu.RUnlock()
	if err != nil {
		return err
	}
	if off+n > size || off+n < off {
		return fmt.Errorf("%w: %s of %d bytes at offset %d of volume %d (%d bytes)", ErrOutOfRange, op, n, off, vol.v.id, size)
	}
	return nil
}

// retryNoSpace runs fn and, if the pool was full, makes pending frees reusable and tries once
// more. If the file system under the pool was full, a commit frees the blocks waiting for one
// and punches their space out of the pool file (a checkpoint would need space to write).
func (p *Pool) retryNoSpace(fn func() error) error {
	err := fn()
	if !errors.Is(err, ErrNoSpace) {
		return err
	}
	host := errors.Is(err, ErrHostFull)
	p.mu.Lock()
	pending := len(p.pendingCommit)
	if !host {
		pending += len(p.pendingCheckpoint)
	}
	p.mu.Unlock()
	if pending == 0 {
		return err
	}
	p.commitMu.Lock()
	var cerr error
	if host {
		cerr = p.commitLocked()
	} else {
		cerr = p.checkpoint()
	}
	p.commitMu.Unlock()
	if cerr != nil {
		return cerr
	}
	return fn()
}

// maybeCheckpoint takes a checkpoint when enough metadata has changed since the last one.
func (p *Pool) maybeCheckpoint() {
	p.mu.RLock()
	need := p.needCheckpoint() && p.failed == nil && !p.closed
	p.mu.RUnlock()
	if !need {
		return
	}
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	p.mu.Lock()
	need = p.needCheckpoint()
	p.mu.Unlock()
	if need {
		if err := p.checkpoint(); err != nil {
			p.log.Error("checkpoint failed", "err", err)
		}
	}
}

// lockStripes locks the write stripes of logical blocks [first, last] in index order.
func (v *volState) lockStripes(first, last uint64) (unlock func()) {
	var set [numStripes]bool
	if last-first >= numStripes<<stripeShift {
		for i := range set {
			set[i] = true
		}
	} else {
		for s := first >> stripeShift; s <= last>>stripeShift; s++ {
			set[s%numStripes] = true
		}
	}
	for i := range set {
		if set[i] {
			v.stripes[i].Lock()
		}
	}
	return func() {
		for i := range set {
			if set[i] {
				v.stripes[i].Unlock()
			}
		}
	}
}

// write performs one WriteAt: blocks the volume owns alone are overwritten in place; the others
// (unmapped, or shared with a snapshot or clone) go to new blocks, which are then mapped.
func (vol *Volume) write(b []byte, off int64) error {
	p, v := vol.p, vol.v
	bs := uint64(p.bs)
	first := uint64(off) / bs
	last := (uint64(off) + uint64(len(b)) - 1) / bs
	nblk := int(last - first + 1)

	p.writeGate.RLock()
	defer p.writeGate.RUnlock()
	p.ioGate.RLock()
	defer p.ioGate.RUnlock()
	defer v.lockStripes(first, last)()

	p.mu.Lock()
	if err := vol.stateLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	if err := p.checkLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	if uint64(off)+uint64(len(b)) > v.size {
		p.mu.Unlock()
		return fmt.Errorf("%w: write past the end of volume %d", ErrOutOfRange, v.id)
	}
	old := make([]uint64, nblk)    // mapped block before the write
	target := make([]uint64, nblk) // block the data goes to
	fresh := make([]bool, nblk)    // target is newly allocated
	need := 0
	for i := range nblk {
		pbn, owned, err := p.lookup(&v.t, first+uint64(i))
		if err != nil {
			p.mu.Unlock()
			return err
		}
		old[i] = pbn
		if owned {
			target[i] = pbn
		} else {
			fresh[i] = true
			need++
		}
	}
	// Room for the tree nodes that mapping the new blocks may copy or create.
	var metaNeed uint64
	for l, k := uint8(0), uint64(need); l < v.t.height; l++ {
		k = k/uint64(p.fanout) + 1
		metaNeed += k + 1
	}
	for i := 0; need > 0; {
		for !fresh[i] {
			i++
		}
		start, n, err := p.allocRun(need, allocData, metaNeed)
		if err != nil {
			p.freeFresh(target, fresh)
			p.mu.Unlock()
			return err
		}
		for k := 0; k < n; i++ {
			if fresh[i] {
				target[i] = start + uint64(k)
				k++
			}
		}
		need -= n
	}
	p.mu.Unlock()

	if err := p.writeBlocks(b, off, first, old, target, fresh); err != nil {
		p.mu.Lock()
		p.freeFresh(target, fresh)
		if errors.Is(err, ErrHostFull) {
			p.hostFull = true
		}
		p.mu.Unlock()
		return err
	}

	return p.journaled(p.mapFresh(vol, first, target, fresh))
}

// mapFresh maps the blocks a write wrote to new blocks and appends their records; it returns
// the LSN of the last one (0 if none). REQUIRES p.writeGate and p.ioGate shared, the write's
// stripes.
func (p *Pool) mapFresh(vol *Volume, first uint64, target []uint64, fresh []bool) (uint64, error) {
	v := vol.v
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := vol.stateLocked(); err != nil {
		p.freeFresh(target, fresh)
		return 0, err
	}
	if p.hostFull && slices.Contains(fresh, true) {
		p.hostFull = false // new blocks found room in the file system again
	}
	var rec format.Record
	var last uint64
	flushRec := func() {
		if rec.C > 0 {
			last = p.appendRecord(rec)
			rec.C = 0
		}
	}
	for i := range target {
		if !fresh[i] {
			continue
		}
		lbn := first + uint64(i)
		prev, err := p.setEntry(&v.t, lbn, target[i])
		if err != nil {
			flushRec()
			for j := i; j < len(target); j++ {
				if fresh[j] {
					p.decref(target[j], 0)
				}
			}
			return last, err
		}
		if prev != 0 {
			p.decref(prev, pendingCommit)
		}
		if rec.C > 0 && rec.A+rec.C == lbn && rec.B+rec.C == target[i] {
			rec.C++
			continue
		}
		flushRec()
		rec = format.Record{Type: format.RecMap, Vol: uint64(v.id), A: lbn, B: target[i], C: 1}
	}
	flushRec()
	return last, nil
}

// freeFresh frees blocks allocated for a write that will not map them. REQUIRES p.mu.
func (p *Pool) freeFresh(target []uint64, fresh []bool) {
	for i, f := range fresh {
		if f && target[i] != 0 {
			p.decref(target[i], 0)
			target[i] = 0
		}
	}
}

// writeBlocks writes the data of one WriteAt to its target blocks. Partial blocks are merged
// with the old contents (read from old, or zeros) unless written in place.
func (p *Pool) writeBlocks(b []byte, off int64, first uint64, old, target []uint64, fresh []bool) error {
	// After the writes complete (a commit that swaps the flag before then does not cover them).
	defer p.wrote.Store(true)
	bs := uint64(p.bs)
	end := uint64(off) + uint64(len(b))
	for i := 0; i < len(target); {
		lbn := first + uint64(i)
		lo := max(lbn*bs, uint64(off)) - uint64(off)
		hi := min((lbn+1)*bs, end) - uint64(off)
		inner := (uint64(off) + lo) % bs
		if hi-lo < bs {
			buf := p.blockBuf()
			var err error
			switch {
			case !fresh[i] && (!p.direct || (inner%directAlign == 0 && (hi-lo)%directAlign == 0)):
				// In place, just the bytes written (direct I/O needs 4 KiB alignment).
				_, err = p.f.WriteAt(b[lo:hi], int64(target[i]*bs+inner))
				p.putBlockBuf(buf)
				if err != nil {
					return writeError(target[i], err)
				}
				i++
				continue
			case old[i] != 0:
				_, err = p.f.ReadAt(buf, int64(old[i]*bs))
			default:
				clear(buf)
			}
			if err != nil {
				p.putBlockBuf(buf)
				return fmt.Errorf("blockstore: write block %d: read block %d to merge: %w", target[i], old[i], err)
			}
			copy(buf[inner:], b[lo:hi])
			_, err = p.f.WriteAt(buf, int64(target[i]*bs))
			p.putBlockBuf(buf)
			if err != nil {
				return writeError(target[i], err)
			}
			i++
			continue
		}
		j := i + 1
		for j < len(target) && target[j] == target[j-1]+1 && (first+uint64(j)+1)*bs <= end {
			j++
		}
		hiRun := lo + uint64(j-i)*bs
		if _, err := p.f.WriteAt(b[lo:hiRun], int64(target[i]*bs)); err != nil {
			return writeError(target[i], err)
		}
		i = j
	}
	return nil
}

// writeError describes a failed write of data to block pbn. The write mapped nothing, so the
// pool stays healthy whatever the error; a file system without space or quota left for the
// block (a hole of a sparse pool file) makes it ErrHostFull, which ends once space is freed.
func writeError(pbn uint64, err error) error {
	if isHostFull(err) {
		return fmt.Errorf("%w: write block %d: %w", ErrHostFull, pbn, err)
	}
	return fmt.Errorf("blockstore: write block %d: %w", pbn, err)
}

// Discard unmaps the range: afterwards it reads as zeros, and blocks no one else holds are
// freed (and their space returned to the pool file). Partial blocks at the edges are zeroed.
func (vol *Volume) Discard(off, length int64) error {
	if err := vol.checkRange(off, length, "discard"); err != nil || length == 0 {
		return err
	}
	p := vol.p
	bs := int64(p.bs)
	firstFull := (off + bs - 1) / bs
	lastFull := (off+length)/bs - 1
	if firstFull > lastFull {
		return vol.zeroPartial(off, length)
	}
	if head := firstFull*bs - off; head > 0 {
		if err := vol.zeroPartial(off, head); err != nil {
			return err
		}
	}
	if tail := off + length - (lastFull+1)*bs; tail > 0 {
		if err := vol.zeroPartial((lastFull+1)*bs, tail); err != nil {
			return err
		}
	}
	err := p.retryNoSpace(func() error { return vol.unmap(uint64(firstFull), uint64(lastFull)) })
	if err != nil {
		return err
	}
	p.maybeCheckpoint()
	return nil
}

// WriteZeroes makes the range read as zeros, unmapping whole blocks.
func (vol *Volume) WriteZeroes(off, length int64) error { return vol.Discard(off, length) }

func (vol *Volume) zeroPartial(off, n int64) error {
	z := make([]byte, n)
	return vol.p.settled(vol.p.retryNoSpace(func() error { return vol.write(z, off) }))
}

// unmap unmaps logical blocks [first, last], in chunks so that p.mu is not held for long.
func (vol *Volume) unmap(first, last uint64) error {
	p, v := vol.p, vol.v
	const chunk = 1 << 16
	for lo := first; lo <= last; lo += chunk {
		hi := min(lo+chunk-1, last)
		if err := p.settled(func() error {
			p.writeGate.RLock()
			defer p.writeGate.RUnlock()
			p.ioGate.RLock()
			defer p.ioGate.RUnlock()
			defer v.lockStripes(lo, hi)()
			return p.journaled(func() (uint64, error) {
				p.mu.Lock()
				defer p.mu.Unlock()
				if err := vol.stateLocked(); err != nil {
					return 0, err
				}
				if err := p.checkLocked(); err != nil {
					return 0, err
				}
				done, err := p.unmapRange(&v.t, lo, hi+1)
				if done > lo {
					return p.appendRecord(format.Record{Type: format.RecUnmap, Vol: uint64(v.id), A: lo, C: done - lo}), err
				}
				return 0, err
			}())
		}()); err != nil {
			return err
		}
	}
	return nil
}

// unmapRange unmaps the mapped blocks of t in [from, to). It returns how far it got: every
// block below done is unmapped. REQUIRES p.mu.
func (p *Pool) unmapRange(t *tree, from, to uint64) (done uint64, err error) {
	var lbns []uint64
	if err := p.walkMapped(t, from, to, func(lbn, _ uint64) error {
		lbns = append(lbns, lbn)
		return nil
	}); err != nil {
		return from, err
	}
	for _, lbn := range lbns {
		old, err := p.setEntry(t, lbn, 0)
		if err != nil {
			return lbn, err
		}
		if old != 0 {
			p.decref(old, p.dataFreeMark())
		}
	}
	return to, nil
}
