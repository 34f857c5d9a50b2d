// Package faultfs is an in-memory file for testing the block store under power loss: it keeps
// what was synced apart from what was merely written, can stop working at a chosen operation
// (the machine "loses power"), and then yields the file a restarted machine would find: the
// synced contents plus any subset of the unsynced writes, torn at block granularity.
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

// Unit is the granularity at which unsynced writes survive or vanish independently.
const Unit = 4096

type write struct {
	off  int64
	data []byte
}

// File is an in-memory File. It is safe for concurrent use.
type File struct {
	mu         sync.Mutex
	durable    []byte  // contents as of the last Sync
	cur        []byte  // contents including unsynced writes
	pending    []write // writes since the last Sync, in order
	crashAfter int     // operations (writes, syncs, punches) left before power loss; < 0: never
	failAfter  int     // operations left before one fails with ErrInjected; < 0: never
	crashed    bool
	closed     bool
	ops        int
	syncs      int
}

// New returns a zero-filled file of size bytes.
func New(size int64) *File {
	return &File{durable: make([]byte, size), cur: make([]byte, size), crashAfter: -1, failAfter: -1}
}

// CrashAfter makes the file lose power after n more mutating operations: the n+1th and every
// later operation fail with ErrCrashed and change nothing.
func (f *File) CrashAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashAfter = n
}

// FailAfter makes the n+1th mutating operation from now fail once with ErrInjected.
func (f *File) FailAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAfter = n
}

// Ops returns the number of mutating operations (writes, syncs, punches) so far.
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

// mutate counts an operation and reports the error it must fail with, if any.
// REQUIRES f.mu.
func (f *File) mutate() error {
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
	if f.failAfter == 0 {
		f.failAfter = -1
		return ErrInjected
	}
	if f.failAfter > 0 {
		f.failAfter--
	}
	f.ops++
	return nil
}

// ReadAt reads the current contents (unsynced writes included, as a page cache would).
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

// WriteAt writes to the current contents; the write is durable after the next Sync.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.mutate(); err != nil {
		return 0, err
	}
	if off < 0 || off+int64(len(p)) > int64(len(f.cur)) {
		return 0, fmt.Errorf("faultfs: write of %d bytes at %d past the end of a %d-byte file", len(p), off, len(f.cur))
	}
	copy(f.cur[off:], p)
	f.pending = append(f.pending, write{off: off, data: append([]byte(nil), p...)})
	return len(p), nil
}

// Sync makes every write so far durable.
func (f *File) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.mutate(); err != nil {
		return err
	}
	for _, w := range f.pending {
		copy(f.durable[w.off:], w.data)
	}
	f.pending = f.pending[:0]
	f.syncs++
	return nil
}

// PunchHole zeroes the range (durable after the next Sync, like a write).
func (f *File) PunchHole(off, length int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.mutate(); err != nil {
		return err
	}
	if off < 0 || off+length > int64(len(f.cur)) {
		return fmt.Errorf("faultfs: punch of %d bytes at %d past the end", length, off)
	}
	z := make([]byte, length)
	copy(f.cur[off:], z)
	f.pending = append(f.pending, write{off: off, data: z})
	return nil
}

// Size returns the file size.
func (f *File) Size() (int64, error) { return int64(len(f.cur)), nil }

// Close marks the file closed; Reopen or Restart gives a new handle.
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
	nf := &File{durable: append([]byte(nil), f.cur...), cur: f.cur, crashAfter: -1, failAfter: -1}
	f.cur, f.durable, f.closed = nil, nil, true
	return nf
}

// Restart returns the file a machine finds after losing power now. Unsynced writes reach the
// disk the way a page cache writes them back: each Unit-sized page touched since the last Sync
// holds either its synced contents or its contents as they were after one of the writes to it
// (a page is written back whole, at some moment). keep is the chance that a page holds a later
// version rather than the synced one: 0 drops every unsynced write, 1 keeps them all (what a
// process kill leaves, since the page cache survives it).
func (f *File) Restart(rng *rand.Rand, keep float64) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := append([]byte(nil), f.durable...)
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
		switch {
		case keep >= 1:
			copy(img[pg*Unit:], vs[len(vs)-1])
		case keep > 0 && rng.Float64() < keep:
			copy(img[pg*Unit:], vs[rng.IntN(len(vs))])
		}
	}
	return &File{durable: img, cur: append([]byte(nil), img...), crashAfter: -1, failAfter: -1}
}
