// Package faultfs is an in-memory file for testing the block store under power loss and I/O
// errors. It keeps what the disk holds apart from what reads return (the page cache) and from
// the writes not yet synced (dirty pages); it can lose power at a chosen operation, fail a chosen
// operation, and then yield the file that a restarted process or machine would find.
//
// What it models:
//
//   - Power loss (Restart): the disk keeps what was synced; each page written since the last
//     Sync holds its synced contents or its contents as they were after one of the writes to it
//     (a page is written back whole, at some moment). With Loss.Torn, each 512-byte sector of
//     such a page is written back on its own: a page may hold a mix of versions, sector by
//     sector, as on a drive that only guarantees sector atomicity.
//   - A process kill (AfterKill): the page cache survives, dirty pages included.
//   - A failed write (FailAfter on a WriteAt): the call fails, and each sector it covers may or
//     may not hold the new bytes (as after a partially completed write).
//   - A failed fsync (FailAfter on a Sync): the call fails and the error is then forgotten, as on
//     Linux: each sector written since the last Sync may or may not have reached the disk, the
//     dirty pages are dropped from the write-back list (a later Sync does not write them), and
//     each such page is either kept in the cache marked clean, still showing the new bytes that
//     the disk may not have (ext4), or evicted, so reads return what the disk holds.
//     DropCache evicts clean pages, as posix_fadvise(POSIX_FADV_DONTNEED) does.
package faultfs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
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

type write struct {
	off  int64
	data []byte
}

// File is an in-memory File. It is safe for concurrent use.
type File struct {
	mu         sync.Mutex
	durable    []byte     // what the disk holds
	cur        []byte     // what reads return: the disk as the page cache shows it
	pending    []write    // writes since the last Sync (dirty data), in order
	rng        *rand.Rand // outcomes of injected failures
	crashAfter int        // operations (writes, syncs, punches) left before power loss; < 0: never
	failAfter  int        // operations left before one fails with ErrInjected; < 0: never
	injected   string     // the kind of operation that failed with ErrInjected, "" if none
	crashed    bool
	closed     bool
	ops        int
	syncs      int
}

// New returns a zero-filled file of size bytes.
func New(size int64) *File {
	return newFile(make([]byte, size), make([]byte, size))
}

func newFile(durable, cur []byte) *File {
	return &File{durable: durable, cur: cur, crashAfter: -1, failAfter: -1, rng: rand.New(rand.NewPCG(1, 2))}
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

// FailAfter makes the n+1th mutating operation from now fail once with ErrInjected, with the
// effects described in the package comment.
func (f *File) FailAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAfter = n
}

// Injected returns the kind of operation ("write", "sync" or "punch") that failed with
// ErrInjected, or "" if none did yet.
func (f *File) Injected() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected
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

// mutate counts an operation of the given kind and reports the error it must fail with, if
// any. REQUIRES f.mu.
func (f *File) mutate(kind string) error {
	if f.closed {
		return errors.New("faultfs: file closed")
	}
	if f.crashed {
		return ErrCrashed
	}
	if f.crashAfter == 0 {
		f.crashed = true
		return ErrCrashed
	}
	if f.crashAfter > 0 {
		f.crashAfter--
	}
	f.ops++
	if f.failAfter == 0 {
		f.failAfter = -1
		f.injected = kind
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
	if off < 0 || off > int64(len(f.cur)) {
		return 0, fmt.Errorf("faultfs: read at %d of a %d-byte file", off, len(f.cur))
	}
	n := copy(p, f.cur[off:])
	if n < len(p) {
		return n, fmt.Errorf("faultfs: read past the end at %d", off+int64(n))
	}
	return n, nil
}

// WriteAt writes to the page cache; the write is durable after the next Sync.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.mutate("write")
	if err != nil && !errors.Is(err, ErrInjected) {
		return 0, err
	}
	if off < 0 || off+int64(len(p)) > int64(len(f.cur)) {
		return 0, fmt.Errorf("faultfs: write of %d bytes at %d past the end of a %d-byte file", len(p), off, len(f.cur))
	}
	if err == nil {
		f.apply(p, off)
		return len(p), nil
	}
	// A failed write: each sector it covers may or may not hold the new bytes.
	for lo := int64(0); lo < int64(len(p)); {
		hi := min(int64(len(p)), (off+lo)/Sector*Sector+Sector-off)
		if f.rng.IntN(2) == 0 {
			f.apply(p[lo:hi], off+lo)
		}
		lo = hi
	}
	return 0, err
}

// apply writes p at off into the cache and queues it for write-back. REQUIRES f.mu.
func (f *File) apply(p []byte, off int64) {
	copy(f.cur[off:], p)
	f.pending = append(f.pending, write{off: off, data: append([]byte(nil), p...)})
}

// Sync makes every write so far durable. An injected failure leaves each sector written since
// the last Sync on the disk or not, and forgets the dirty pages (see the package comment).
func (f *File) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.mutate("sync")
	if err != nil && !errors.Is(err, ErrInjected) {
		return err
	}
	if err == nil {
		for _, w := range f.pending {
			copy(f.durable[w.off:], w.data)
		}
		f.pending = f.pending[:0]
		f.syncs++
		return nil
	}
	pages := f.writeBack(f.rng, Loss{Keep: 0.5, Torn: true})
	f.pending = f.pending[:0]
	for _, pg := range pages {
		lo, hi := pg*Unit, min((pg+1)*Unit, int64(len(f.cur)))
		if f.rng.IntN(2) == 0 {
			copy(f.cur[lo:hi], f.durable[lo:hi]) // evicted: reads go to the disk
		}
	}
	return err
}

// writeBack writes the pending writes to f.durable as a power loss leaves them (see Loss) and
// returns the pages they touch, in order. It leaves f.pending alone. REQUIRES f.mu.
func (f *File) writeBack(rng *rand.Rand, loss Loss) []int64 {
	// Replay the unsynced writes on a scratch copy, recording each page's versions.
	scratch := append([]byte(nil), f.durable...)
	versions := map[int64][][]byte{}
	for _, w := range f.pending {
		copy(scratch[w.off:], w.data)
		for pg := w.off / Unit; pg <= (w.off+int64(len(w.data))-1)/Unit; pg++ {
			lo, hi := pg*Unit, min((pg+1)*Unit, int64(len(scratch)))
			versions[pg] = append(versions[pg], append([]byte(nil), scratch[lo:hi]...))
		}
	}
	pages := make([]int64, 0, len(versions))
	for pg := range versions {
		pages = append(pages, pg)
	}
	slices.Sort(pages) // map order is random: keep runs reproducible from the seed
	for _, pg := range pages {
		vs := versions[pg]
		if loss.Keep >= 1 {
			copy(f.durable[pg*Unit:], vs[len(vs)-1])
			continue
		}
		if loss.Keep <= 0 {
			continue
		}
		if !loss.Torn {
			if rng.Float64() < loss.Keep {
				copy(f.durable[pg*Unit:], vs[rng.IntN(len(vs))])
			}
			continue
		}
		for s := 0; s < len(vs[0]); s += Sector {
			if rng.Float64() < loss.Keep {
				v := vs[rng.IntN(len(vs))]
				copy(f.durable[pg*Unit+int64(s):], v[s:min(s+Sector, len(v))])
			}
		}
	}
	return pages
}

// PunchHole zeroes the range (durable after the next Sync, like a write). An injected failure
// changes nothing.
func (f *File) PunchHole(off, length int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.mutate("punch"); err != nil {
		return err
	}
	if off < 0 || off+length > int64(len(f.cur)) {
		return fmt.Errorf("faultfs: punch of %d bytes at %d past the end", length, off)
	}
	f.apply(make([]byte, length), off)
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
	copy(f.cur, f.durable)
	for _, w := range f.pending {
		copy(f.cur[w.off:], w.data)
	}
	return nil
}

// Size returns the file size.
func (f *File) Size() (int64, error) { return int64(len(f.cur)), nil }

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
	nf := newFile(append([]byte(nil), f.cur...), f.cur)
	f.cur, f.durable, f.closed = nil, nil, true
	return nf
}

// AfterKill returns the file a process finds after the one using f was killed: the disk and the
// page cache as they are, dirty pages included (they still reach the disk at the next Sync).
// The old file must not be used any more.
func (f *File) AfterKill() *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	nf := newFile(f.durable, f.cur)
	nf.pending = f.pending
	f.cur, f.durable, f.pending, f.closed = nil, nil, nil, true
	return nf
}

// Restart returns the file a machine finds after losing power now: the disk as it was after
// the last Sync, plus what loss says of the writes since. f itself is left as it is.
func (f *File) Restart(rng *rand.Rand, loss Loss) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	durable := f.durable
	f.durable = append([]byte(nil), durable...)
	f.writeBack(rng, loss)
	img := f.durable
	f.durable = durable
	return newFile(img, append([]byte(nil), img...))
}

// RestartKeeping is Restart with the choice made by keep: each page (by its offset) written
// since the last Sync holds its last version if keep says so, else its synced contents.
func (f *File) RestartKeeping(keep func(pageOff int64) bool) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := append([]byte(nil), f.durable...)
	scratch := append([]byte(nil), f.durable...)
	touched := map[int64]bool{}
	for _, w := range f.pending {
		copy(scratch[w.off:], w.data)
		for pg := w.off / Unit; pg <= (w.off+int64(len(w.data))-1)/Unit; pg++ {
			touched[pg] = true
		}
	}
	for pg := range touched {
		if keep(pg * Unit) {
			lo, hi := pg*Unit, min((pg+1)*Unit, int64(len(img)))
			copy(img[lo:hi], scratch[lo:hi])
		}
	}
	return newFile(img, append([]byte(nil), img...))
}
