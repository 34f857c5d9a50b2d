package blockstore_test

// What the pool's locks hold back, and what they must not (pool.go): a durable change holds
// back I/O only while it applies in memory, not across its commit; a checkpoint holds back
// writes, not reads; and a change that makes blocks private is not trusted by an in-place
// overwrite before it is durable. Run with -race.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

// holdFile is a File that can hold one call (the next Sync, or the next write that a predicate
// picks) until the test releases it.
type holdFile struct {
	blockstore.File
	mu        sync.Mutex
	syncHold  *hold
	writeHold *hold
	writeWhen func(off int64) bool
}

type hold struct {
	entered  chan struct{}
	released chan func() // what to do before the held call goes on (nil: nothing)
}

func newHold() *hold { return &hold{entered: make(chan struct{}), released: make(chan func(), 1)} }

// wait is run by the held call.
func (h *hold) wait() {
	close(h.entered)
	if then := <-h.released; then != nil {
		then()
	}
}

// release lets the held call go on after running then (nil: nothing); only the first call
// counts.
func (h *hold) release(then func()) {
	select {
	case h.released <- then:
	default:
	}
}

// holdNextSync makes the next Sync wait for release.
func (f *holdFile) holdNextSync() *hold {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncHold = newHold()
	return f.syncHold
}

// holdNextWrite makes the next write at an offset that when picks wait for release.
func (f *holdFile) holdNextWrite(when func(off int64) bool) *hold {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeHold, f.writeWhen = newHold(), when
	return f.writeHold
}

func (f *holdFile) Sync() error {
	f.mu.Lock()
	h := f.syncHold
	f.syncHold = nil
	f.mu.Unlock()
	if h != nil {
		h.wait()
	}
	return f.File.Sync()
}

func (f *holdFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	h := f.writeHold
	if h != nil && f.writeWhen(off) {
		f.writeHold = nil
	} else {
		h = nil
	}
	f.mu.Unlock()
	if h != nil {
		h.wait()
	}
	return f.File.WriteAt(p, off)
}

// within runs fn and fails the test if it does not return within d.
func within(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		require.NoError(t, err, what)
	case <-time.After(d):
		t.Fatalf("%s did not complete within %v", what, d)
	}
}

// A durable change with a barrier waits for the I/O in flight and applies in memory, then
// commits like Flush: while its commit is in an fdatasync, reads and writes of other volumes
// go on, and Flush waits for it.
func TestChangeCommitHoldsNoIO(t *testing.T) {
	f := &holdFile{File: faultfs.New(64 << 20)}
	p, err := blockstore.CreateOn(f, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	bs := p.BlockSize()
	ai, err := p.CreateVolume("a", 8<<20)
	require.NoError(t, err)
	a, _ := p.Volume(ai.ID)
	bi, err := p.CreateVolume("b", 8<<20)
	require.NoError(t, err)
	b, _ := p.Volume(bi.ID)
	want := pattern(1, 1<<20)
	_, err = a.WriteAt(want, 0)
	require.NoError(t, err)
	_, err = b.WriteAt(pattern(2, 1<<20), 0)
	require.NoError(t, err)
	require.NoError(t, p.Flush())

	var snap blockstore.SnapshotInfo
	var clone blockstore.VolumeInfo
	changes := []struct {
		name string
		do   func() error
	}{
		{"CreateSnapshot", func() (err error) { snap, err = p.CreateSnapshot(bi.ID, "s"); return err }},
		{"CloneVolume", func() (err error) { clone, err = p.CloneVolume(bi.ID, "c", 0); return err }},
		{"Revert", func() error { return p.Revert(bi.ID, snap.ID) }},
		{"DeleteVolume", func() error { return p.DeleteVolume(clone.ID) }},
		{"DeleteSnapshot", func() error { return p.DeleteSnapshot(snap.ID) }},
	}
	for i, c := range changes {
		h := f.holdNextSync()
		t.Cleanup(func() { h.release(nil) }) // before the pool's cleanup, should the test fail
		done := make(chan error, 1)
		go func() { done <- c.do() }()
		select {
		case <-h.entered:
		case err := <-done:
			t.Fatalf("%s returned without a sync: %v", c.name, err)
		}
		within(t, 10*time.Second, "I/O on another volume while "+c.name+" commits", func() error {
			got := make([]byte, len(want))
			if _, err := a.ReadAt(got, 0); err != nil {
				return err
			}
			if !bytes.Equal(got, want) {
				return errors.New("volume a reads other data")
			}
			data := pattern(byte(10+i), bs)
			if _, err := a.WriteAt(data, int64(2+i)*int64(bs)<<4); err != nil {
				return err
			}
			copy(want[(2+i)*bs<<4:], data)
			return nil
		})
		flushed := make(chan error, 1)
		go func() { flushed <- p.Flush() }()
		select {
		case err := <-flushed:
			t.Fatalf("Flush returned while %s's commit was in its fdatasync: %v", c.name, err)
		case <-time.After(100 * time.Millisecond):
		}
		h.release(nil)
		require.NoError(t, <-done, c.name)
		require.NoError(t, <-flushed)
	}
	mustEqual(t, mustRead(t, a, 0, len(want)), want, "volume a at the end")
}

// A checkpoint holds back writes, not reads: while it is between its writes (held at its
// superblock's), reads of every volume, Stats and a read-only view go on, and a write waits
// until it is done.
func TestCheckpointHoldsBackWritesNotReads(t *testing.T) {
	f := &holdFile{File: faultfs.New(64 << 20)}
	// A journal of 4 blocks: a commit past half of it is a checkpoint.
	p, err := blockstore.CreateOn(f, blockstore.Options{JournalSize: 16 << 10})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	bs := int64(p.BlockSize())
	ai, err := p.CreateVolume("a", 8<<20)
	require.NoError(t, err)
	a, _ := p.Volume(ai.ID)
	want := pattern(3, 2<<20)
	_, err = a.WriteAt(want, 0)
	require.NoError(t, err)
	bi, err := p.CreateVolume("b", 8<<20)
	require.NoError(t, err)
	b, _ := p.Volume(bi.ID)
	require.NoError(t, p.Flush())
	snap, err := p.CreateSnapshot(ai.ID, "s")
	require.NoError(t, err)
	sv, err := p.SnapshotView(snap.ID)
	require.NoError(t, err)

	for round := range 3 {
		ckpt := p.Stats().CheckpointLSN
		h := f.holdNextWrite(func(off int64) bool { return off < 2*bs }) // a superblock: only checkpoints write one
		t.Cleanup(func() { h.release(nil) })
		loop := make(chan error, 1)
		go func() {
			// Writes and flushes until one of them runs a checkpoint.
			for i := 0; i < 1000; i++ {
				if _, err := b.WriteAt(pattern(byte(i), int(bs)), int64(i%512)*bs*4); err != nil {
					loop <- err
					return
				}
				if err := p.Flush(); err != nil {
					loop <- err
					return
				}
				if p.Stats().CheckpointLSN != ckpt {
					loop <- nil
					return
				}
			}
			loop <- errors.New("no checkpoint after 1000 flushes")
		}()
		select {
		case <-h.entered:
		case err := <-loop:
			t.Fatalf("round %d: the writes ended before a checkpoint wrote its superblock: %v", round, err)
		}
		within(t, 10*time.Second, "reads while a checkpoint is held at its superblock", func() error {
			for off := int64(0); off < int64(len(want)); off += 256 << 10 {
				got := make([]byte, 256<<10)
				if _, err := a.ReadAt(got, off); err != nil {
					return err
				}
				if !bytes.Equal(got, want[off:off+256<<10]) {
					return fmt.Errorf("volume a at %d reads other data", off)
				}
				if _, err := sv.ReadAt(got, off); err != nil {
					return err
				}
			}
			_ = p.Stats()
			return p.Health()
		})
		wrote := make(chan error, 1)
		data := pattern(byte(40+round), int(bs))
		go func() {
			_, err := a.WriteAt(data, 4<<20)
			wrote <- err
		}()
		select {
		case err := <-wrote:
			t.Fatalf("round %d: a write completed while a checkpoint was between its writes: %v", round, err)
		case <-time.After(100 * time.Millisecond):
		}
		h.release(nil)
		require.NoError(t, <-wrote)
		require.NoError(t, <-loop)
		mustEqual(t, mustRead(t, a, 4<<20, int(bs)), data, "the write that waited")
	}
	mustEqual(t, mustRead(t, sv, 0, len(want)), want, "the snapshot")
}

// A change that leaves a tree node or block to one holder (deleting a snapshot or a clone that
// shared it) makes it private only once it is durable: a write into it before then goes
// elsewhere. Here the change's commit loses power in its fdatasync after such a write reached
// the disk: the snapshot or clone comes back, and reads what it held.
func TestPrivateOnlyOnceDurable(t *testing.T) {
	for _, c := range []struct {
		name  string
		share func(p *blockstore.Pool, vol blockstore.VolumeID) (view func(q *blockstore.Pool) (readerAt, error), drop func() error, err error)
	}{
		{"DeleteSnapshot", func(p *blockstore.Pool, vol blockstore.VolumeID) (func(*blockstore.Pool) (readerAt, error), func() error, error) {
			s, err := p.CreateSnapshot(vol, "s")
			return func(q *blockstore.Pool) (readerAt, error) { return q.SnapshotView(s.ID) },
				func() error { return p.DeleteSnapshot(s.ID) }, err
		}},
		{"DeleteVolume of a clone", func(p *blockstore.Pool, vol blockstore.VolumeID) (func(*blockstore.Pool) (readerAt, error), func() error, error) {
			c, err := p.CloneVolume(vol, "c", 0)
			return func(q *blockstore.Pool) (readerAt, error) { return q.Volume(c.ID) },
				func() error { return p.DeleteVolume(c.ID) }, err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ff := faultfs.New(32 << 20)
			f := &holdFile{File: ff}
			p, err := blockstore.CreateOn(f, blockstore.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { p.Close() }) // it failed: what it held is released
			bs := p.BlockSize()
			info, err := p.CreateVolume("v", 64<<10) // one leaf: the root
			require.NoError(t, err)
			vol, _ := p.Volume(info.ID)
			old := pattern(1, 64<<10)
			_, err = vol.WriteAt(old, 0)
			require.NoError(t, err)
			require.NoError(t, p.Flush())
			view, drop, err := c.share(p, info.ID)
			require.NoError(t, err)

			h := f.holdNextSync()
			t.Cleanup(func() { h.release(nil) })
			dropped := make(chan error, 1)
			go func() { dropped <- drop() }()
			select {
			case <-h.entered:
			case err := <-dropped:
				t.Fatalf("the change returned without a sync: %v", err)
			}
			// The write completes while the change commits: written in place, it would land in
			// the block the snapshot or clone still holds on disk.
			within(t, 10*time.Second, "a write while the change commits", func() error {
				_, err := vol.WriteAt(pattern(2, bs), 0)
				return err
			})
			h.release(func() { ff.CrashAtSync(0) })
			require.Error(t, <-dropped, "the change's commit lost power")

			// The data written reached the disk, the journal block of the change did not.
			dataStart := int64(p.Geometry().DataStart) * int64(bs)
			q, err := blockstore.OpenOn(ff.RestartKeeping(func(off int64) bool { return off >= dataStart }), blockstore.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { mustCheckClose(t, q) })
			r, err := view(q)
			require.NoError(t, err, "the change was not durable: what it dropped is back")
			mustEqual(t, mustRead(t, r, 0, len(old)), old, "the snapshot or clone after the crash")
			qv, err := q.Volume(info.ID)
			require.NoError(t, err)
			mustEqual(t, mustRead(t, qv, 0, len(old)), old, "the volume after the crash (its write was not flushed)")
		})
	}
}

type readerAt interface {
	ReadAt([]byte, int64) (int, error)
}

// Readers and writers on several volumes while snapshots, clones and deletes commit and
// checkpoints run often (those a small journal makes commits take, and more taken in a loop):
// readers see exactly what is there (a stable volume, and on the written ones only versions
// that were written), the data is what the writers wrote, and Check is clean, also after a
// reopen. Run with -race.
func TestConcurrentIODuringCheckpoints(t *testing.T) {
	f, path := newCrashableFile(t, 64<<20)
	f.writeDelay = 50 * time.Microsecond // data lands a little after the write decided where
	p, err := blockstore.CreateOn(f, blockstore.Options{JournalSize: 16 << 10, NodeCacheBytes: 256 << 10})
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			mustCheckClose(t, p)
		}
	})
	bs := p.BlockSize()
	seed := concSeed(t)
	const blocks = 256 // per volume
	stable, err := p.CreateVolume("stable", blocks*int64(bs))
	require.NoError(t, err)
	sv, _ := p.Volume(stable.ID)
	stableData := randomBytes(rand.New(rand.NewPCG(seed, 7)), blocks*bs)
	_, err = sv.WriteAt(stableData, 0)
	require.NoError(t, err)
	const writers = 2
	var wvols [writers]*blockstore.Volume
	var last [writers][]uint64 // per block: the last version written (0: none)
	for w := range writers {
		info, err := p.CreateVolume(fmt.Sprintf("w%d", w), blocks*int64(bs))
		require.NoError(t, err)
		wvols[w], _ = p.Volume(info.ID)
		last[w] = make([]uint64, blocks)
	}
	require.NoError(t, p.Flush())

	// isVersion reports whether b is zeros or a version that versionBlock makes for (vol, lbn).
	isVersion := func(b []byte, vol, lbn uint64) bool {
		if binary.LittleEndian.Uint64(b) != versionMagic {
			return bytes.Equal(b, make([]byte, len(b)))
		}
		want := make([]byte, len(b))
		versionBlock(want, vol, lbn, binary.LittleEndian.Uint64(b[24:]))
		return bytes.Equal(b, want)
	}
	var stop atomic.Bool
	run := 3 * time.Second
	if testing.Short() {
		run = time.Second
	}
	timer := time.AfterFunc(run, func() { stop.Store(true) })
	defer timer.Stop()
	read := func(r readerAt, n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := r.ReadAt(b, 0)
		return b, err
	}
	var checkpoints atomic.Int64 // checkpoints seen (a lower bound: two between looks count once)
	work := []func(rng *rand.Rand) error{
		func(*rand.Rand) error { // an observer: Stats stay in bounds, checkpoints are counted
			last := p.Stats().CheckpointLSN
			for !stop.Load() {
				st := p.Stats()
				if st.UsedBytes > st.PhysicalBytes || st.FreeBytes < 0 {
					return fmt.Errorf("stats out of bounds: %+v", st)
				}
				if st.CheckpointLSN != last {
					checkpoints.Add(1)
					last = st.CheckpointLSN
				}
				time.Sleep(200 * time.Microsecond)
			}
			return nil
		},
		func(*rand.Rand) error { // checkpoints, as commits take them when the journal fills
			for !stop.Load() {
				if err := blockstore.Checkpoint(p); err != nil {
					return err
				}
				time.Sleep(time.Millisecond)
			}
			return nil
		},
		func(rng *rand.Rand) error { // reader of the stable volume
			buf := make([]byte, 16*bs)
			for !stop.Load() {
				lbn := rng.IntN(blocks - 16)
				if _, err := sv.ReadAt(buf, int64(lbn*bs)); err != nil {
					return err
				}
				if !bytes.Equal(buf, stableData[lbn*bs:(lbn+16)*bs]) {
					return fmt.Errorf("stable volume: blocks %d-%d read other data", lbn, lbn+15)
				}
			}
			return nil
		},
		func(rng *rand.Rand) error { // reader of the written volumes
			buf := make([]byte, 8*bs)
			for !stop.Load() {
				w, lbn := rng.IntN(writers), rng.IntN(blocks-8)
				if _, err := wvols[w].ReadAt(buf, int64(lbn*bs)); err != nil {
					return err
				}
				for i := range 8 {
					if !isVersion(buf[i*bs:(i+1)*bs], uint64(w), uint64(lbn+i)) {
						return fmt.Errorf("volume w%d: block %d holds something never written", w, lbn+i)
					}
				}
			}
			return nil
		},
		func(rng *rand.Rand) error { // snapshots, clones, deletes, flushes
			for i := 0; !stop.Load(); i++ {
				w := rng.IntN(writers)
				s, err := p.CreateSnapshot(wvols[w].ID(), "")
				if err != nil {
					return err
				}
				view, err := p.SnapshotView(s.ID)
				if err != nil {
					return err
				}
				first, err := read(view, blocks*bs)
				if err != nil {
					return err
				}
				for lbn := range blocks {
					if !isVersion(first[lbn*bs:(lbn+1)*bs], uint64(w), uint64(lbn)) {
						return fmt.Errorf("snapshot of w%d: block %d holds something never written", w, lbn)
					}
				}
				c, err := p.Clone(s.ID, "", 0)
				if err != nil {
					return err
				}
				cv, _ := p.Volume(c.ID)
				if _, err := cv.WriteAt(pattern(byte(i), bs), int64(rng.IntN(blocks)*bs)); err != nil {
					return err
				}
				if err := p.DeleteVolume(c.ID); err != nil {
					return err
				}
				if again, err := read(view, blocks*bs); err != nil || !bytes.Equal(again, first) {
					return fmt.Errorf("snapshot of w%d changed (%v)", w, err)
				}
				if err := p.DeleteSnapshot(s.ID); err != nil {
					return err
				}
				if err := p.Flush(); err != nil {
					return err
				}
			}
			return nil
		},
	}
	for w := range writers {
		work = append(work, func(rng *rand.Rand) error { // writer of its own volume
			buf := make([]byte, 4*bs)
			for seq := uint64(1); !stop.Load(); seq++ {
				n := 1 + rng.IntN(4)
				lbn := rng.IntN(blocks - n)
				for i := range n {
					versionBlock(buf[i*bs:(i+1)*bs], uint64(w), uint64(lbn+i), seq)
				}
				if _, err := wvols[w].WriteAt(buf[:n*bs], int64(lbn*bs)); err != nil {
					return err
				}
				for i := range n {
					last[w][lbn+i] = seq
				}
			}
			return nil
		})
	}
	err = runWorkers(len(work), func(i int) error {
		err := work[i](rand.New(rand.NewPCG(seed, uint64(i))))
		if err != nil {
			stop.Store(true)
		}
		return err
	})
	require.NoError(t, err)
	t.Logf("at least %d checkpoints during the I/O", checkpoints.Load())
	require.Positive(t, checkpoints.Load(), "no checkpoint ran during the I/O")

	verify := func(p *blockstore.Pool) {
		t.Helper()
		v, err := p.Volume(stable.ID)
		require.NoError(t, err)
		mustEqual(t, mustRead(t, v, 0, blocks*bs), stableData, "stable volume")
		for w := range writers {
			want := make([]byte, blocks*bs)
			for lbn, seq := range last[w] {
				if seq > 0 {
					versionBlock(want[lbn*bs:(lbn+1)*bs], uint64(w), uint64(lbn), seq)
				}
			}
			mustEqual(t, mustRead(t, wvols[w], 0, blocks*bs), want, fmt.Sprintf("volume w%d", w))
		}
	}
	verify(p)
	mustCheck(t, p)
	closed = true
	require.NoError(t, p.Close())
	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	for w := range writers {
		wvols[w], err = p.Volume(wvols[w].ID())
		require.NoError(t, err)
	}
	verify(p)
}
