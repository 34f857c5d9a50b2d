// Package faultfs is an in-memory file for testing the block store under power loss and I/O
// errors. It keeps what the disk holds apart from what reads return (the page cache) and from
// the writes not yet synced (dirty pages); it can lose power at a chosen operation, fail a chosen
// operation, and then yield the file that a restarted process or machine would find.
//
// What it models:
//
//   - Power loss (Restart): the machine boots again (Boot changes), and the disk keeps what was synced; each page written since the last
//     Sync holds its synced contents or its contents as they were after one of the writes to it
//     (a page is written back whole, at some moment). With Loss.Torn, each 512-byte sector of
//     such a page is written back on its own: a page may hold a mix of versions, sector by
//     sector, as on a drive that only guarantees sector atomicity.
//   - A process kill (AfterKill): the page cache survives, dirty pages included, and the boot
//     stays the same.
//   - A failed write (FailAfter on a WriteAt): the call fails, and each sector it covers may or
//     may not hold the new bytes (as after a partially completed write).
//   - A failed fsync (FailAfter on a Sync): the call fails and the error is then forgotten, as on
//     Linux: each sector written since the last Sync may or may not have reached the disk, the
//     dirty pages are dropped from the write-back list (a later Sync does not write them), and
//     each such page is either kept in the cache marked clean, still showing the new bytes that
//     the disk may not have (ext4), or evicted, so reads return what the disk holds.
//     DropCache evicts clean pages, as posix_fadvise(POSIX_FADV_DONTNEED) does.
//
// It must not know the pool's format: it is a file with faults, nothing more.
package faultfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
)

// ErrCrashed is returned by every operation after the crash point.
var ErrCrashed = errors.New("faultfs: power lost")

// ErrInjected is returned by an operation chosen to fail with FailAfter.
var ErrInjected = errors.New("faultfs: injected I/O error")

// Unit is the page size: the granularity at which the page cache writes back and drops data.
const Unit = 4096

// Sector is the granularity at which a torn write-back survives (Loss.Torn) and at which a
// failed write or fsync may have reached the disk.
const Sector = 512

// Loss describes what a power loss does to the writes not yet synced.
type Loss struct {
	// Keep is the chance that a page (or, with Torn, a sector) holds one of the versions written
	// since the last Sync rather than its synced contents: 0 drops every unsynced write, 1 keeps
	// the last version of each page (what a process kill leaves, since the page cache survives).
	Keep float64
	// Torn writes the sectors of a page back independently of each other.
	Torn bool
}

// File is an in-memory File. It is safe for concurrent use.
//
// Contents are kept as pages of Unit bytes; a stored page is never changed (writes replace it),
// so the disk, the cache and the versions of a page share buffers, and copying a File costs
// what it holds, not its size.
type File struct {
	mu         sync.Mutex
	size       int64
	durable    pages              // what the disk holds
	cur        pages              // what reads return: the disk as the page cache shows it
	dirty      map[int64][][]byte // pages written since the last Sync: their contents after each write
	rng        *rand.Rand         // outcomes of injected failures
	crashAfter int                // operations (writes, syncs, punches) left before power loss; < 0: never
	crashSyncs int                // syncs left before power loss; < 0: never
	failAfter  int                // operations left before one fails with ErrInjected; < 0: never
	injected   string             // the kind of operation that failed with ErrInjected, "" if none
	injectedAt int64              // and its offset (-1 for a sync)
	crashed    bool
	closed     bool
	ops        int
	syncs      int
	boot       [16]byte // the boot of the machine the file is on (Boot)
}

// boots numbers the boots of the machines files are on.
var boots atomic.Uint64

// newBoot returns the identity of a boot no file had before.
func newBoot() [16]byte {
	var b [16]byte
	b[0] = 0xb0
	binary.LittleEndian.PutUint64(b[8:], boots.Add(1))
	return b
}

// pages maps a page number to its contents (Unit bytes); a missing page holds zeros.
type pages map[int64][]byte

func (ps pages) clone() pages {
	c := make(pages, len(ps))
	for pg, b := range ps {
		c[pg] = b
	}
	return c
}

// page returns a new buffer holding page pg.
func (ps pages) page(pg int64) []byte {
	b := make([]byte, Unit)
	copy(b, ps[pg])
	return b
}

// New returns a zero-filled file of size bytes, on a machine just booted.
func New(size int64) *File { return newFile(size, pages{}, pages{}, newBoot()) }

func newFile(size int64, durable, cur pages, boot [16]byte) *File {
	return &File{size: size, durable: durable, cur: cur, dirty: map[int64][][]byte{},
		crashAfter: -1, crashSyncs: -1, failAfter: -1, rng: rand.New(rand.NewPCG(1, 2)), boot: boot}
}

// Boot identifies the boot of the machine the file is on: Restart and RestartKeeping boot it
// again, AfterKill and Reopen do not (see blockstore.File).
func (f *File) Boot() [16]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.boot
}

// Seed makes the outcomes of injected failures (which sectors of a failed write or fsync
// reached the cache or the disk) follow seed.
func (f *File) Seed(seed uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rng = rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
}

// CrashAfter makes the file lose power after n more mutating operations: the n+1th and every
// later operation fail with ErrCrashed and change nothing.
func (f *File) CrashAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashAfter = n
}

// CrashAtSync makes the file lose power at the n+1th Sync from now, before it makes anything
// durable: that Sync and every later operation fail with ErrCrashed.
func (f *File) CrashAtSync(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashSyncs = n
}

// FailAfter makes the n+1th mutating operation from now fail once with ErrInjected, with the
// effects described in the package comment.
func (f *File) FailAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAfter = n
}

// Injected returns the kind of operation ("write", "sync" or "punch") that failed with
// ErrInjected and its offset (-1 for a sync), or "" if none did yet.
func (f *File) Injected() (kind string, off int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected, f.injectedAt
}

// Ops returns the number of mutating operations (writes, syncs, punches) so far, the one that
// failed with ErrInjected included.
func (f *File) Ops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops
}

// Syncs returns the number of successful Sync calls so far.
func (f *File) Syncs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

// Crashed reports whether the crash point was reached.
func (f *File) Crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed
}

// mutate counts an operation of the given kind at off and reports the error it must fail
// with, if any. REQUIRES f.mu.
func (f *File) mutate(kind string, off int64) error {
	if f.closed {
		return errors.New("faultfs: file closed")
	}
	if f.crashed {
		return ErrCrashed
	}
	if f.crashAfter == 0 || (kind == "sync" && f.crashSyncs == 0) {
		f.crashed = true
		return ErrCrashed
	}
	if kind == "sync" && f.crashSyncs > 0 {
		f.crashSyncs--
	}
	if f.crashAfter > 0 {
		f.crashAfter--
	}
	f.ops++
	if f.failAfter == 0 {
		f.failAfter = -1
		f.injected, f.injectedAt = kind, off
		return ErrInjected
	}
	if f.failAfter > 0 {
		f.failAfter--
	}
	return nil
}

// ReadAt reads through the page cache (unsynced writes included).
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return 0, ErrCrashed
	}
	if off < 0 || off > f.size {
		return 0, fmt.Errorf("faultfs: read at %d of a %d-byte file", off, f.size)
	}
	n := int(min(int64(len(p)), f.size-off))
	for i := 0; i < n; {
		pg, inner := (off+int64(i))/Unit, int((off+int64(i))%Unit)
		k := min(Unit-inner, n-i)
		if b := f.cur[pg]; b != nil {
			copy(p[i:i+k], b[inner:])
		} else {
			clear(p[i : i+k])
		}
		i += k
	}
	if n < len(p) {
		return n, fmt.Errorf("faultfs: read past the end at %d", off+int64(n))
	}
	return n, nil
}

// WriteAt writes to the page cache; the write is durable after the next Sync.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.mutate("write", off)
	if err != nil && !errors.Is(err, ErrInjected) {
		return 0, err
	}
	if off < 0 || off+int64(len(p)) > f.size {
		return 0, fmt.Errorf("faultfs: write of %d bytes at %d past the end of a %d-byte file", len(p), off, f.size)
	}
	if err == nil {
		f.apply(p, off, nil)
		return len(p), nil
	}
	// A failed write: each sector it covers may or may not hold the new bytes.
	f.apply(p, off, func() bool { return f.rng.IntN(2) == 0 })
	return 0, err
}

// apply writes p at off into the cache and records the new versions of the pages it changes.
// With keep set, each sector-aligned piece of p is written only if keep says so. REQUIRES f.mu.
func (f *File) apply(p []byte, off int64, keep func() bool) {
	for i := int64(0); i < int64(len(p)); {
		pg, inner := (off+i)/Unit, (off+i)%Unit
		k := min(Unit-inner, int64(len(p))-i)
		var nb []byte
		for lo := inner; lo < inner+k; {
			hi := min(inner+k, lo/Sector*Sector+Sector)
			if keep == nil || keep() {
				if nb == nil {
					nb = f.cur.page(pg)
				}
				copy(nb[lo:hi], p[i+lo-inner:])
			}
			lo = hi
		}
		if nb != nil {
			f.cur[pg] = nb
			f.dirty[pg] = append(f.dirty[pg], nb)
		}
		i += k
	}
}

// Sync makes every write so far durable. An injected failure leaves each sector written since
// the last Sync on the disk or not, and forgets the dirty pages (see the package comment).
func (f *File) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.mutate("sync", -1)
	if err != nil && !errors.Is(err, ErrInjected) {
		return err
	}
	if err == nil {
		for pg, vs := range f.dirty {
			f.durable[pg] = vs[len(vs)-1]
		}
		clear(f.dirty)
		f.syncs++
		return nil
	}
	for _, pg := range f.writeBack(f.durable, f.rng, Loss{Keep: 0.5, Torn: true}) {
		if f.rng.IntN(2) == 0 {
			f.cur[pg] = f.durable[pg] // evicted: reads go to the disk
		}
	}
	clear(f.dirty)
	return err
}

// writeBack writes the dirty pages into dst (a copy of the disk) as a power loss leaves them
// (see Loss) and returns them, in order. REQUIRES f.mu.
func (f *File) writeBack(dst pages, rng *rand.Rand, loss Loss) []int64 {
	dirty := make([]int64, 0, len(f.dirty))
	for pg := range f.dirty {
		dirty = append(dirty, pg)
	}
	slices.Sort(dirty) // map order is random: keep runs reproducible from the seed
	for _, pg := range dirty {
		vs := f.dirty[pg]
		switch {
		case loss.Keep >= 1:
			dst[pg] = vs[len(vs)-1]
		case loss.Keep <= 0:
		case !loss.Torn:
			if rng.Float64() < loss.Keep {
				dst[pg] = vs[rng.IntN(len(vs))]
			}
		default:
			nb := dst.page(pg)
			for s := 0; s < Unit; s += Sector {
				if rng.Float64() < loss.Keep {
					copy(nb[s:s+Sector], vs[rng.IntN(len(vs))][s:])
				}
			}
			dst[pg] = nb
		}
	}
	return dirty
}

// PunchHole zeroes the range (durable after the next Sync, like a write). An injected failure
// changes nothing.
func (f *File) PunchHole(off, length int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.mutate("punch", off); err != nil {
		return err
	}
	if off < 0 || off+length > f.size {
		return fmt.Errorf("faultfs: punch of %d bytes at %d past the end", length, off)
	}
	f.apply(make([]byte, length), off, nil)
	return nil
}

// DropCache evicts every clean page from the cache, as posix_fadvise(POSIX_FADV_DONTNEED)
// does: reads of data not written since the last Sync return what the disk holds.
func (f *File) DropCache() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return ErrCrashed
	}
	f.cur = f.durable.clone()
	for pg, vs := range f.dirty {
		f.cur[pg] = vs[len(vs)-1]
	}
	return nil
}

// Size returns the file size.
func (f *File) Size() (int64, error) { return f.size, nil }

// Close marks the file closed; Reopen, AfterKill or Restart gives a new handle.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// Reopen returns a new file with the current contents, as after a clean shutdown (everything
// written reached the disk). The old file must not be used any more.
func (f *File) Reopen() *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	nf := newFile(f.size, f.cur.clone(), f.cur, f.boot)
	f.cur, f.durable, f.dirty, f.closed = nil, nil, nil, true
	return nf
}

// AfterKill returns the file a process finds after the one using f was killed: the disk and the
// page cache as they are, dirty pages included (they still reach the disk at the next Sync).
// The old file must not be used any more.
func (f *File) AfterKill() *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	nf := newFile(f.size, f.durable, f.cur, f.boot)
	nf.dirty = f.dirty
	f.cur, f.durable, f.dirty, f.closed = nil, nil, nil, true
	return nf
}

// Restart returns the file a machine finds after losing power now: the disk as it was after
// the last Sync, plus what loss says of the writes since. f itself is left as it is.
func (f *File) Restart(rng *rand.Rand, loss Loss) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := f.durable.clone()
	f.writeBack(img, rng, loss)
	return newFile(f.size, img, img.clone(), newBoot())
}

// RestartKeeping is Restart with the choice made by keep: each page (by its offset) written
// since the last Sync holds its last version if keep says so, else its synced contents.
func (f *File) RestartKeeping(keep func(pageOff int64) bool) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := f.durable.clone()
	for pg, vs := range f.dirty {
		if keep(pg * Unit) {
			img[pg] = vs[len(vs)-1]
		}
	}
	return newFile(f.size, img, img.clone(), newBoot())
}
