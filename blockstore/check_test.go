package blockstore_test

// Check: the read-only mode (verifies the last checkpoint, writes nothing, runs while I/O goes
// on) and the memory budget (the recount streams over windows of the data region).

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
)

// recordingFile is a blockstore.File on a real file that counts the operations that change
// it, and can hold the next read until released.
type recordingFile struct {
	f                      *os.File
	writes, syncs, punches atomic.Int64

	mu       sync.Mutex
	hold     bool          // the next read waits for released
	entered  chan struct{} // closed when that read arrived
	released chan struct{}
}

func newRecordingFile(t *testing.T, size int64) (*recordingFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pool")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	return &recordingFile{f: f}, path
}

// holdNextRead makes the next read wait until the returned release is called; entered is
// closed when it arrives.
func (rf *recordingFile) holdNextRead() (entered <-chan struct{}, release func()) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	rf.hold, rf.entered, rf.released = true, make(chan struct{}), make(chan struct{})
	var once sync.Once
	return rf.entered, func() { once.Do(func() { close(rf.released) }) }
}

func (rf *recordingFile) mutations() int64 {
	return rf.writes.Load() + rf.syncs.Load() + rf.punches.Load()
}

func (rf *recordingFile) ReadAt(p []byte, off int64) (int, error) {
	rf.mu.Lock()
	hold, released := rf.hold, rf.released
	if hold {
		rf.hold = false
		close(rf.entered)
	}
	rf.mu.Unlock()
	if hold {
		<-released
	}
	return rf.f.ReadAt(p, off)
}

func (rf *recordingFile) WriteAt(p []byte, off int64) (int, error) {
	rf.writes.Add(1)
	return rf.f.WriteAt(p, off)
}

func (rf *recordingFile) Sync() error {
	rf.syncs.Add(1)
	return unix.Fdatasync(int(rf.f.Fd()))
}

func (rf *recordingFile) PunchHole(off, length int64) error {
	rf.punches.Add(1)
	return unix.Fallocate(int(rf.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (rf *recordingFile) Size() (int64, error) {
	fi, err := rf.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (rf *recordingFile) Close() error { return rf.f.Close() }

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return [32]byte(h.Sum(nil))
}

var readOnly = blockstore.CheckOptions{ReadOnly: true}

// A read-only Check verifies the last checkpoint and changes nothing in the pool file: no
// write, sync or punch, the same bytes after. The exclusive Check (the only one before)
// checkpoints first, so it writes, and sees what changed since.
func TestCheckReadOnlyWritesNothing(t *testing.T) {
	rf, path := newRecordingFile(t, 64<<20)
	p, err := blockstore.CreateOn(rf, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	info, err := p.CreateVolume("v", 8<<20)
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	_, err = vol.WriteAt(pattern(1, 2<<20), 0)
	require.NoError(t, err)
	snap, err := p.CreateSnapshot(info.ID, "s")
	require.NoError(t, err)
	clone, err := p.Clone(snap.ID, "c", 0)
	require.NoError(t, err)
	gen := mustCheck(t, p).Generation

	// Changes after that checkpoint: committed to the journal only, and a leak in memory.
	cv, _ := p.Volume(clone.ID)
	_, err = cv.WriteAt(pattern(2, 256<<10), 1<<20)
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	st := p.Stats()
	require.Greater(t, st.LSN, st.CheckpointLSN, "the journal holds commits after the checkpoint")
	leaked := blockstore.LeakBlock(p)

	before, sum := rf.mutations(), fileSum(t, path)
	rep, err := p.CheckWith(readOnly)
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v %v", rep, rep.RefcountErrors)
	require.True(t, rep.ReadOnly)
	require.Equal(t, gen, rep.Generation, "the last checkpoint, not a new one")
	require.Equal(t, 2, rep.Volumes)
	require.Equal(t, before, rf.mutations(), "a read-only Check writes, syncs or punches nothing")
	require.Equal(t, sum, fileSum(t, path), "the pool file is unchanged")
	require.Equal(t, st.CheckpointLSN, p.Stats().CheckpointLSN)

	// The exclusive Check takes a checkpoint (so it writes) and then sees the leak.
	rep, err = p.Check(false)
	require.NoError(t, err)
	require.Equal(t, gen+1, rep.Generation)
	require.Equal(t, []uint64{leaked}, rep.Leaked)
	require.Greater(t, rf.mutations(), before)
	require.NotEqual(t, sum, fileSum(t, path))
	// Now durable, the leak is what a read-only Check finds too.
	rep, err = p.CheckWith(readOnly)
	require.NoError(t, err)
	require.Equal(t, []uint64{leaked}, rep.Leaked)
	_, err = p.Check(true)
	require.NoError(t, err)
}

// CheckWith refuses options that make no sense.
func TestCheckOptionsValidation(t *testing.T) {
	p, _ := mustCreate(t, 16<<20, blockstore.Options{})
	_, err := p.CheckWith(blockstore.CheckOptions{ReadOnly: true, Repair: true})
	require.ErrorIs(t, err, blockstore.ErrInvalidArgument)
	require.ErrorContains(t, err, "Repair")
	_, err = p.CheckWith(blockstore.CheckOptions{MemoryBytes: -1})
	require.ErrorIs(t, err, blockstore.ErrInvalidArgument)
	require.ErrorContains(t, err, "MemoryBytes")
}

// With a memory budget far below what a map of every used block takes, Check streams the
// recount over windows of the data region (one pass each), finds the same leak and refcount
// error as in one pass, and allocates about its budget, not in proportion to what is mapped.
func TestCheckMemoryBudget(t *testing.T) {
	const bs = 4096
	p, path := mustCreate(t, 256<<20, blockstore.Options{})
	info, err := p.CreateVolume("v", 224<<20)
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	chunk := pattern(3, 1<<20)
	for off := int64(0); off < 200<<20; off += 1 << 20 {
		_, err := vol.WriteAt(chunk, off)
		require.NoError(t, err)
	}
	snap, err := p.CreateSnapshot(info.ID, "s")
	require.NoError(t, err)
	clone, err := p.Clone(snap.ID, "c", 0)
	require.NoError(t, err)
	cv, _ := p.Volume(clone.ID)
	// One block into each of a few leaves: the clone copies them, and the other blocks of
	// those leaves become referenced twice.
	for lbn := int64(0); lbn < 40000; lbn += 5000 {
		_, err := cv.WriteAt(pattern(4, bs), lbn*bs)
		require.NoError(t, err)
	}
	shared := blockstore.MappedBlock(p, clone.ID, 5001) // in a copied leaf, not rewritten
	require.Equal(t, shared, blockstore.MappedBlock(p, info.ID, 5001))
	leaked := blockstore.LeakBlock(p)
	blockstore.SetRefcount(p, shared, 1) // referenced by two leaves
	require.NoError(t, p.Close())        // both made durable
	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })

	wantErr := fmt.Sprintf("block %d: refcount 1, referenced 2 times", shared)
	one, err := p.CheckWith(readOnly)
	require.NoError(t, err)
	require.Equal(t, 1, one.Passes)
	require.Equal(t, []uint64{leaked}, one.Leaked)
	require.Equal(t, []string{wantErr}, one.RefcountErrors)
	require.Greater(t, one.DataBlocks, uint64(51000))

	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	small, err := p.CheckWith(blockstore.CheckOptions{ReadOnly: true, MemoryBytes: 1})
	runtime.ReadMemStats(&m1)
	require.NoError(t, err)
	alloc := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("budget 1 byte: %d passes, %d bytes of recount memory, %d bytes allocated; one pass: %d bytes", small.Passes, small.MemoryBytes, alloc, one.MemoryBytes)
	require.Greater(t, small.Passes, 10, "one refcount page per window")
	require.Equal(t, one.Leaked, small.Leaked)
	require.Equal(t, one.RefcountErrors, small.RefcountErrors)
	require.Equal(t, one.Nodes, small.Nodes)
	require.Equal(t, one.DataBlocks, small.DataBlocks)
	require.Equal(t, one.UsedBlocks, small.UsedBlocks)
	// A map of every used block needs more than 12 bytes (key and count) per block; the
	// streamed recount allocates a fraction of that.
	mapBytes := small.UsedBlocks * 12
	require.Less(t, alloc, mapBytes/4, "allocated %d bytes; a map of the %d used blocks needs more than %d", alloc, small.UsedBlocks, mapBytes)
	require.Less(t, small.MemoryBytes, one.MemoryBytes)

	// The exclusive mode streams the same way, and repairs what it can.
	rep, err := p.CheckWith(blockstore.CheckOptions{Repair: true, MemoryBytes: 1})
	require.NoError(t, err)
	require.Greater(t, rep.Passes, 10)
	require.Equal(t, 1, rep.Repaired)
	require.Equal(t, []string{wantErr}, rep.RefcountErrors)
	// The refcount that is too low is not repaired (freeing on it could lose data); put it
	// back for the final Check.
	blockstore.SetRefcount(p, shared, 2)
}

// A read-only Check does not stop I/O: while it is held at its first read, writes and a Flush
// complete (they read nothing: whole blocks, tree nodes cached). It holds back checkpoints
// meanwhile: an exclusive Check (which checkpoints) waits for it, and then finds the pool
// consistent. The exclusive Check, the only one before, holds the pool while it reads.
func TestCheckReadOnlyDoesNotStopIO(t *testing.T) {
	rf, _ := newRecordingFile(t, 64<<20)
	p, err := blockstore.CreateOn(rf, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	info, err := p.CreateVolume("v", 8<<20)
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	_, err = vol.WriteAt(pattern(1, 1<<20), 0)
	require.NoError(t, err)
	gen := mustCheck(t, p).Generation

	entered, release := rf.holdNextRead()
	defer release()
	type result struct {
		rep *blockstore.CheckReport
		err error
	}
	ro := make(chan result, 1)
	go func() {
		rep, err := p.CheckWith(readOnly)
		ro <- result{rep, err}
	}()
	select {
	case <-entered:
	case r := <-ro:
		t.Fatalf("the Check ended without reading the pool file: %v %v", r.rep, r.err)
	}

	ioDone := make(chan error, 1)
	go func() {
		for i := range 32 {
			if _, err := vol.WriteAt(pattern(byte(10+i), 64<<10), int64(i)*(128<<10)); err != nil {
				ioDone <- err
				return
			}
		}
		ioDone <- p.Flush()
	}()
	select {
	case err := <-ioDone:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("writes and Flush did not complete while a read-only Check ran")
	}

	full := make(chan result, 1)
	go func() {
		rep, err := p.Check(false)
		full <- result{rep, err}
	}()
	select {
	case r := <-full:
		t.Fatalf("an exclusive Check completed while a read-only Check held the last checkpoint: %v %v", r.rep, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	r := <-ro
	require.NoError(t, r.err)
	require.True(t, r.rep.OK(), "%v %v", r.rep, r.rep.RefcountErrors)
	require.Equal(t, gen, r.rep.Generation)
	r = <-full
	require.NoError(t, r.err)
	require.True(t, r.rep.OK(), "%v %v", r.rep, r.rep.RefcountErrors)
	require.Equal(t, gen+1, r.rep.Generation)
	for i := range 32 {
		mustEqual(t, mustRead(t, vol, int64(i)*(128<<10), 64<<10), pattern(byte(10+i), 64<<10), "write made during the check")
	}
}

// Read-only Checks in a loop while writers write, discard, flush, snapshot and delete on a
// pool whose small journal fills often, which forces checkpoints: every Check finds the
// checkpoint it reads consistent (nothing it reads is reused under it), checkpoints still
// happen between Checks, and the data is what the writers wrote. Run with -race.
func TestCheckReadOnlyWhileWriting(t *testing.T) {
	seed := concSeed(t)
	const (
		bs      = 4096
		writers = 3
		blocks  = 512 // per volume
		ops     = 1500
	)
	p, _ := mustCreate(t, 48<<20, blockstore.Options{JournalSize: 4 * bs}) // a few hundred records
	type model struct {
		vol *blockstore.Volume
		seq map[uint64]uint64 // lbn -> version written (0: zeros)
	}
	models := make([]*model, writers)
	for w := range models {
		info, err := p.CreateVolume(fmt.Sprintf("w%d", w), blocks*bs)
		require.NoError(t, err)
		vol, _ := p.Volume(info.ID)
		models[w] = &model{vol: vol, seq: map[uint64]uint64{}}
	}

	var stop atomic.Bool
	var checks, gens atomic.Int64
	checkErr := make(chan error, 1)
	go func() {
		defer close(checkErr)
		last := uint64(0)
		for !stop.Load() {
			rep, err := p.CheckWith(readOnly)
			if err == nil && !rep.OK() {
				err = fmt.Errorf("read-only check of generation %d: %v: %v %v", rep.Generation, rep, rep.Corrupt, rep.RefcountErrors)
			}
			if err != nil {
				checkErr <- err
				return
			}
			checks.Add(1)
			if rep.Generation != last {
				gens.Add(1)
				last = rep.Generation
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			m := models[w]
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			buf := make([]byte, bs)
			for i := 1; i <= ops; i++ {
				lbn := rng.Uint64N(blocks)
				var err error
				switch r := rng.IntN(100); {
				case r < 80:
					seq := uint64(i)
					versionBlock(buf, uint64(w), lbn, seq)
					if _, err = m.vol.WriteAt(buf, int64(lbn)*bs); err == nil {
						m.seq[lbn] = seq
					}
				case r < 88:
					if err = m.vol.Discard(int64(lbn)*bs, bs); err == nil {
						m.seq[lbn] = 0
					}
				case r < 96:
					err = m.vol.Flush()
				default:
					var s blockstore.SnapshotInfo
					if s, err = p.CreateSnapshot(m.vol.ID(), fmt.Sprintf("w%d-%d", w, i)); err == nil {
						err = p.DeleteSnapshot(s.ID)
					}
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d op %d: %w", w, i, err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	stop.Store(true)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := <-checkErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d read-only checks over %d checkpoint generations", checks.Load(), gens.Load())
	require.Greater(t, checks.Load(), int64(1))
	require.Greater(t, gens.Load(), int64(1), "checkpoints happened between the checks")

	want, got := make([]byte, bs), make([]byte, bs)
	for w, m := range models {
		for lbn := range uint64(blocks) {
			if seq := m.seq[lbn]; seq != 0 {
				versionBlock(want, uint64(w), lbn, seq)
			} else {
				clear(want)
			}
			_, err := m.vol.ReadAt(got, int64(lbn)*bs)
			require.NoError(t, err)
			if !assert.Equal(t, want, got, "writer %d block %d", w, lbn) {
				return
			}
		}
	}
	rep, err := p.CheckWith(readOnly)
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v", rep)
}

// A read-only Check of a closed pool is refused; the check of a pool whose last checkpoint is
// damaged on disk reports the damage.
func TestCheckReadOnlyErrors(t *testing.T) {
	p, path := mustCreate(t, 16<<20, blockstore.Options{})
	info, err := p.CreateVolume("v", 1<<20)
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	_, err = vol.WriteAt(pattern(1, 64<<10), 0)
	require.NoError(t, err)
	gen := mustCheck(t, p).Generation

	// Damage the superblock slot of that checkpoint behind the pool's back.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	off := int64(gen%2) * int64(p.BlockSize())
	junk := make([]byte, 16)
	_, err = f.WriteAt(junk, off+64)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	rep, err := p.CheckWith(readOnly)
	require.ErrorIs(t, err, blockstore.ErrCorrupt)
	var ce *blockstore.CorruptionError
	require.True(t, errors.As(err, &ce), "%v", err)
	require.Equal(t, gen%2, ce.Block)
	require.Equal(t, "superblock", ce.What)
	require.False(t, rep.OK())
	mustCheck(t, p) // a new checkpoint writes the other slot; the damaged one is then old
	rep, err = p.CheckWith(readOnly)
	require.NoError(t, err)
	require.True(t, rep.OK())

	require.NoError(t, p.Close())
	_, err = p.CheckWith(readOnly)
	require.ErrorIs(t, err, blockstore.ErrClosed)
}
