package blockstore_test

// Concurrency: parallel I/O on one volume and on several, sub-block writes racing on one block
// that must be copied, and writers racing snapshots, clones, deletes, flushes and discards. Every
// test ends with a full Check. Run with -race.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
)

var concSeedFlag = flag.Uint64("conc.seed", 0, "seed for the concurrency tests' random choices (0: from the clock)")

// concSeed returns a seed for a test's random choices and logs it (rerun with -conc.seed).
func concSeed(t *testing.T) uint64 {
	seed := *concSeedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (-conc.seed to repeat the choices)", seed)
	return seed
}

// splitmix64 is a small mixing function for generated block contents.
func splitmix64(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

const versionMagic = 0x5645524B4C4F4221 // marks a block written by versionBlock

// versionBlock fills b (one block) with the contents of version seq of logical block lbn of a
// volume: a header naming them, then bytes derived from them.
func versionBlock(b []byte, vol, lbn, seq uint64) {
	binary.LittleEndian.PutUint64(b[0:], versionMagic)
	binary.LittleEndian.PutUint64(b[8:], vol)
	binary.LittleEndian.PutUint64(b[16:], lbn)
	binary.LittleEndian.PutUint64(b[24:], seq)
	x := splitmix64(vol<<48 ^ lbn<<20 ^ seq)
	for i := 32; i+8 <= len(b); i += 8 {
		x = splitmix64(x)
		binary.LittleEndian.PutUint64(b[i:], x)
	}
}

// randomBytes returns n random bytes.
func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, (n+7)/8*8)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}

// runWorkers runs n workers and returns the errors they returned.
func runWorkers(n int, work func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = work(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Many goroutines write, discard and read disjoint ranges of one volume (deep tree: fanout 4, so
// the ranges share tree nodes).
func TestConcurrentDisjointRanges(t *testing.T) {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	p, _ := mustCreate(t, 64<<20, opts)
	const workers, region = 8, 512 << 10
	info, err := p.CreateVolume("v", workers*region)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	seed := concSeed(t)
	ops := 100
	if testing.Short() {
		ops = 40
	}
	err = runWorkers(workers, func(i int) error {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		var fp *blockstore.Pool
		if i == 0 {
			fp = p // one worker also flushes
		}
		if err := regionWorker(vol, fp, int64(i)*region, int64(i+1)*region, ops, rng, nil, nil); err != nil {
			return fmt.Errorf("worker %d: %w", i, err)
		}
		return nil
	})
	require.NoError(t, err)
	mustCheck(t, p)
}

// Goroutines on several volumes at once, two per volume; one volume is a clone of another, so
// they share blocks; then the pool is reopened and read again.
func TestConcurrentVolumes(t *testing.T) {
	p, path := mustCreate(t, 64<<20, blockstore.Options{})
	const volumes, region = 4, 1 << 20
	var vols []*blockstore.Volume
	var ids []blockstore.VolumeID
	for i := range volumes - 1 {
		info, err := p.CreateVolume(fmt.Sprintf("v%d", i), 2*region)
		require.NoError(t, err)
		ids = append(ids, info.ID)
	}
	// The last volume is a clone of the first, once that holds data everywhere.
	v0, err := p.Volume(ids[0])
	require.NoError(t, err)
	base := pattern(5, 2*region)
	_, err = v0.WriteAt(base, 0)
	require.NoError(t, err)
	clone, err := p.CloneVolume(ids[0], "clone", 0)
	require.NoError(t, err)
	ids = append(ids, clone.ID)
	for _, id := range ids {
		v, err := p.Volume(id)
		require.NoError(t, err)
		vols = append(vols, v)
	}
	// Give every region the same starting contents as in volume 0 and its clone.
	for _, v := range vols[1 : volumes-1] {
		_, err := v.WriteAt(base, 0)
		require.NoError(t, err)
	}

	seed := concSeed(t)
	ops := 80
	if testing.Short() {
		ops = 30
	}
	finals := make([][]byte, volumes)
	for i := range finals {
		finals[i] = make([]byte, 2*region)
	}
	err = runWorkers(2*volumes, func(i int) error {
		v, half := vols[i/2], int64(i%2)
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		lo, hi := half*region, (half+1)*region
		// Start from the base contents: the worker's model starts as base too.
		err := regionWorker(v, nil, lo, hi, ops, rng, base[lo:hi], finals[i/2][lo:hi])
		if err != nil {
			return fmt.Errorf("volume %d, half %d: %w", i/2, half, err)
		}
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	mustCheck(t, p)
	require.NoError(t, p.Close())

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	for i, id := range ids {
		v, err := p.Volume(id)
		require.NoError(t, err)
		mustEqual(t, mustRead(t, v, 0, 2*region), finals[i], fmt.Sprintf("volume %d after reopen", i))
	}
}

// regionWorker makes ops random changes to its own region [lo, hi) of a volume: writes of random
// lengths at random offsets (aligned to blocks or not), discards, and, when p is set, flushes. It
// reads back around each change and checks against its model of the region, which starts as
// start (nil: zeros). The final contents go to final when it is not nil.
func regionWorker(vol *blockstore.Volume, p *blockstore.Pool, lo, hi int64, ops int, rng *rand.Rand, start, final []byte) error {
	want := make([]byte, hi-lo)
	copy(want, start)
	got := make([]byte, 64<<10)
	for op := range ops {
		n := 1 + rng.Int64N(min(32<<10, hi-lo))
		if rng.IntN(2) == 0 {
			n = min((n+4095)/4096*4096, hi-lo) // whole blocks, often
		}
		off := rng.Int64N(hi - lo - n + 1)
		if rng.IntN(2) == 0 {
			off &^= 4095
		}
		switch r := rng.IntN(10); {
		case r < 7:
			data := randomBytes(rng, int(n))
			if _, err := vol.WriteAt(data, lo+off); err != nil {
				return fmt.Errorf("op %d: write %d bytes at %d: %w", op, n, lo+off, err)
			}
			copy(want[off:], data)
		case r < 9:
			if err := vol.Discard(lo+off, n); err != nil {
				return fmt.Errorf("op %d: discard %d bytes at %d: %w", op, n, lo+off, err)
			}
			clear(want[off : off+n])
		case p != nil:
			if err := p.Flush(); err != nil {
				return fmt.Errorf("op %d: flush: %w", op, err)
			}
		}
		// Read back from a little before the change.
		off = max(0, off-rng.Int64N(8192))
		n = min(int64(len(got)), hi-lo-off)
		if _, err := vol.ReadAt(got[:n], lo+off); err != nil {
			return fmt.Errorf("op %d: read %d bytes at %d: %w", op, n, lo+off, err)
		}
		if !bytes.Equal(got[:n], want[off:off+n]) {
			return fmt.Errorf("op %d: read %d bytes at %d: wrong data", op, n, lo+off)
		}
	}
	full := make([]byte, hi-lo)
	if _, err := vol.ReadAt(full, lo); err != nil {
		return fmt.Errorf("final read: %w", err)
	}
	if !bytes.Equal(full, want) {
		return fmt.Errorf("final read of [%d, %d): wrong data", lo, hi)
	}
	copy(final, want)
	return nil
}

// sectorData is what the writer of sector s of block b puts there in round r.
func sectorData(r, b, s int) []byte {
	d := make([]byte, 512)
	x := splitmix64(uint64(r)<<32 ^ uint64(b)<<16 ^ uint64(s))
	for i := 0; i < len(d); i += 8 {
		x = splitmix64(x)
		binary.LittleEndian.PutUint64(d[i:], x)
	}
	return d
}

// Eight goroutines write the eight 512-byte sectors of the same blocks at once, while the blocks
// are shared with a snapshot (and a clone) and must be copied, are unmapped, are owned, or were
// shared until a change that is not durable yet (and must still be copied). In every other round
// a goroutine flushes meanwhile. Afterwards every sector holds what its writer wrote, and the
// snapshot or clone still holds the old data.
func TestConcurrentSectorWritesSameBlock(t *testing.T) {
	p, _ := mustCreate(t, 64<<20, blockstore.Options{})
	bs := p.BlockSize()
	const blocks = 4 // the blocks written in each round: 0, 1, 3 (one stripe, one leaf) and 700
	sectors := bs / 512
	info, err := p.CreateVolume("v", 4<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	offsets := []int64{0, int64(bs), int64(3 * bs), int64(700 * bs)}
	seed := concSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))

	const (
		modeSnapshot = iota // shared with a snapshot
		modeClone           // shared with a snapshot and a clone of it, both written
		modeUnmapped        // not mapped
		modeOwned           // owned by the volume alone, durably: overwritten in place
		modeUnshared        // shared with a volume clone until it discarded them, not yet durable
		modes
	)
	rounds := 50
	if testing.Short() {
		rounds = 20
	}
	for r := range rounds {
		mode := r % modes
		old := make([][]byte, blocks)
		for b, off := range offsets {
			old[b] = pattern(byte(r+b), bs)
			if mode == modeUnmapped {
				require.NoError(t, vol.Discard(off, int64(bs)))
				old[b] = make([]byte, bs)
			} else {
				_, err := vol.WriteAt(old[b], off)
				require.NoError(t, err)
			}
		}
		var snap blockstore.SnapshotInfo
		var sv *blockstore.SnapshotView // must keep reading old
		var cv *blockstore.Volume       // written by the writers too (modeClone)
		var kv *blockstore.Volume       // must read zeros at the offsets (modeUnshared)
		switch mode {
		case modeSnapshot, modeClone:
			snap, err = p.CreateSnapshot(info.ID, "")
			require.NoError(t, err)
			sv, err = p.SnapshotView(snap.ID)
			require.NoError(t, err)
			if mode == modeClone {
				ci, err := p.Clone(snap.ID, "", 0)
				require.NoError(t, err)
				cv, err = p.Volume(ci.ID)
				require.NoError(t, err)
			}
		case modeOwned:
			require.NoError(t, p.Flush())
		case modeUnshared:
			ki, err := p.CloneVolume(info.ID, "", 0)
			require.NoError(t, err)
			kv, err = p.Volume(ki.ID)
			require.NoError(t, err)
			// The volume copies the leaves (a write next to the blocks), so that the blocks
			// are held by two leaves; then the clone lets go of them.
			for _, lbn := range []int64{2, 701} {
				_, err := vol.WriteAt(pattern(9, 512), lbn*int64(bs))
				require.NoError(t, err)
			}
			for _, off := range offsets {
				require.NoError(t, kv.Discard(off, int64(bs)))
			}
		}

		// Writer s writes sector s of every block, in its own order; with a clone, writers
		// also write the clone's sectors (with other data).
		start := make(chan struct{})
		orders := make([][]int, sectors)
		for s := range orders {
			orders[s] = rng.Perm(blocks)
		}
		stopFlush := make(chan struct{})
		var flushErr error
		var fwg sync.WaitGroup
		if r%2 == 1 {
			fwg.Go(func() {
				for {
					select {
					case <-stopFlush:
						return
					default:
					}
					if flushErr = p.Flush(); flushErr != nil {
						return
					}
				}
			})
		}
		err = runWorkersStart(sectors, func(s int) error {
			<-start
			for _, b := range orders[s] {
				if _, err := vol.WriteAt(sectorData(r, b, s), offsets[b]+int64(s*512)); err != nil {
					return fmt.Errorf("sector %d of block %d: %w", s, b, err)
				}
				if cv != nil {
					if _, err := cv.WriteAt(sectorData(r+1000, b, s), offsets[b]+int64(s*512)); err != nil {
						return fmt.Errorf("clone: sector %d of block %d: %w", s, b, err)
					}
				}
			}
			return nil
		}, func() { close(start) })
		close(stopFlush)
		fwg.Wait()
		require.NoError(t, err, "round %d (mode %d)", r, mode)
		require.NoError(t, flushErr, "round %d (mode %d)", r, mode)

		for b, off := range offsets {
			got := mustRead(t, vol, off, bs)
			for s := range sectors {
				if want := sectorData(r, b, s); !bytes.Equal(got[s*512:(s+1)*512], want) {
					t.Fatalf("round %d (mode %d): block %d, sector %d lost its writer's data", r, mode, b, s)
				}
			}
			if cv != nil {
				got := mustRead(t, cv, off, bs)
				for s := range sectors {
					if want := sectorData(r+1000, b, s); !bytes.Equal(got[s*512:(s+1)*512], want) {
						t.Fatalf("round %d: clone block %d, sector %d lost its writer's data", r, b, s)
					}
				}
			}
			if sv != nil {
				mustEqual(t, mustRead(t, sv, off, bs), old[b], fmt.Sprintf("round %d: snapshot block %d", r, b))
			}
			if kv != nil {
				mustEqual(t, mustRead(t, kv, off, bs), make([]byte, bs), fmt.Sprintf("round %d: discarded block %d of the volume clone", r, b))
			}
		}
		if cv != nil {
			require.NoError(t, p.DeleteVolume(cv.ID()))
		}
		if kv != nil {
			require.NoError(t, p.DeleteVolume(kv.ID()))
		}
		if sv != nil && r%10 != 0 { // keep a few snapshots around
			require.NoError(t, p.DeleteSnapshot(snap.ID))
		}
	}
	mustCheck(t, p)
}

// runWorkersStart is runWorkers that calls goSignal once every worker has been started.
func runWorkersStart(n int, work func(i int) error, goSignal func()) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = work(i) })
	}
	goSignal()
	wg.Wait()
	return errors.Join(errs...)
}

// ---- writers against snapshots ----

// versioned tracks, for every logical block of a volume that writers change concurrently, the
// versions written so far: entry k is the k-th change (a write of versionBlock(seq), or a discard
// when zero is set). started and completed count the changes begun and finished.
type versioned struct {
	mu        sync.Mutex
	hist      [][]change // per logical block
	started   []int
	completed []int
}

type change struct {
	seq  uint64
	zero bool
}

func newVersioned(blocks int) *versioned {
	return &versioned{hist: make([][]change, blocks), started: make([]int, blocks), completed: make([]int, blocks)}
}

// counts returns a copy of started or completed.
func (v *versioned) counts(started bool) []int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if started {
		return append([]int(nil), v.started...)
	}
	return append([]int(nil), v.completed...)
}

// verifyPointInTime checks the contents of a snapshot taken while writers ran: block lbn must
// hold the version of one of the changes lo[lbn]..hi[lbn] (counts: every change completed before
// the snapshot was requested is in it, none started after it was taken). Change 0 is "never
// written" (zeros).
func (v *versioned) verifyPointInTime(data []byte, volID uint64, bs int, lo, hi []int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	want := make([]byte, bs)
	for lbn := range v.hist {
		got := data[lbn*bs : (lbn+1)*bs]
		ok := false
		for k := lo[lbn]; k <= hi[lbn] && !ok; k++ {
			if k == 0 || v.hist[lbn][k-1].zero {
				ok = allZeroBytes(got)
				continue
			}
			versionBlock(want, volID, uint64(lbn), v.hist[lbn][k-1].seq)
			ok = bytes.Equal(got, want)
		}
		if !ok {
			desc := "garbage"
			if binary.LittleEndian.Uint64(got) == versionMagic {
				desc = fmt.Sprintf("version seq %d of block %d", binary.LittleEndian.Uint64(got[24:]), binary.LittleEndian.Uint64(got[16:]))
			} else if allZeroBytes(got) {
				desc = "zeros"
			}
			return fmt.Errorf("block %d holds %s, not one of changes %d..%d", lbn, desc, lo[lbn], hi[lbn])
		}
	}
	return nil
}

func allZeroBytes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Writers (writes and discards) run on one volume while another goroutine takes snapshots,
// reads them (each must stay exactly as first read, and hold the volume's contents at one point
// between the snapshot's request and its return), clones them, writes to the clones, deletes
// old snapshots and clones, and flushes; a third goroutine flushes and reads stats. At the end
// every snapshot still reads as first read and Check is clean, also after a reopen.
func TestConcurrentWritersAndSnapshots(t *testing.T) {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	// A file whose Sync does nothing: snapshots, clones and deletes commit, and fdatasync on a
	// busy machine would leave time for few rounds.
	f, path := newCrashableFile(t, 64<<20)
	p, err := blockstore.CreateOn(f, opts)
	require.NoError(t, err)
	f.writeDelay = 200 * time.Microsecond // data lands a little after the write decided where
	closed := false
	t.Cleanup(func() {
		if !closed {
			mustCheckClose(t, p)
		}
	})
	bs := p.BlockSize()
	const writers, perWriter = 4, 64 // logical blocks per writer
	blocks := writers * perWriter
	info, err := p.CreateVolume("v", int64(blocks*bs))
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	volID := uint64(info.ID)
	ver := newVersioned(blocks)
	seed := concSeed(t)
	ops := 150
	if testing.Short() {
		ops = 50
	}

	var seqMu sync.Mutex
	nextSeq := uint64(0)
	newSeq := func() uint64 {
		seqMu.Lock()
		defer seqMu.Unlock()
		nextSeq++
		return nextSeq
	}

	done := make(chan struct{})
	type liveSnap struct {
		id    blockstore.SnapshotID
		view  *blockstore.SnapshotView
		first []byte
	}
	var snapsMu sync.Mutex
	var live []liveSnap

	// The writers go on until the snapshotter has done enough rounds (or time is up).
	var roundsDone atomic.Int64
	const minRounds = 40
	began := time.Now()
	var abort atomic.Bool // the snapshotter or the flusher failed: stop early
	more := func(op int) bool {
		if abort.Load() {
			return false
		}
		return op < ops || (roundsDone.Load() < minRounds && time.Since(began) < 10*time.Second)
	}
	writer := func(w int) error {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		first := w * perWriter
		for op := 0; more(op); op++ {
			n := 1 + rng.IntN(8)
			lbn := first + rng.IntN(perWriter-n+1)
			zero := rng.IntN(6) == 0
			seq := newSeq()
			ver.mu.Lock()
			for i := lbn; i < lbn+n; i++ {
				ver.hist[i] = append(ver.hist[i], change{seq: seq, zero: zero})
				ver.started[i]++
			}
			ver.mu.Unlock()
			var err error
			if zero {
				err = vol.Discard(int64(lbn*bs), int64(n*bs))
			} else {
				data := make([]byte, n*bs)
				for i := range n {
					versionBlock(data[i*bs:(i+1)*bs], volID, uint64(lbn+i), seq)
				}
				_, err = vol.WriteAt(data, int64(lbn*bs))
			}
			if err != nil {
				return fmt.Errorf("writer %d, op %d: %w", w, op, err)
			}
			ver.mu.Lock()
			for i := lbn; i < lbn+n; i++ {
				ver.completed[i]++
			}
			ver.mu.Unlock()
		}
		return nil
	}

	rounds := 0
	snapshotter := func() error {
		rng := rand.New(rand.NewPCG(seed, 100))
		var clones []blockstore.VolumeID
		for round := 0; ; round++ {
			select {
			case <-done:
				rounds = round
				return nil
			default:
			}
			lo := ver.counts(false)
			snap, err := p.CreateSnapshot(info.ID, fmt.Sprintf("s%d", round))
			if err != nil {
				return fmt.Errorf("round %d: snapshot: %w", round, err)
			}
			hi := ver.counts(true)
			sv, err := p.SnapshotView(snap.ID)
			if err != nil {
				return err
			}
			first := make([]byte, blocks*bs)
			if _, err := sv.ReadAt(first, 0); err != nil {
				return fmt.Errorf("round %d: read snapshot: %w", round, err)
			}
			if err := ver.verifyPointInTime(first, volID, bs, lo, hi); err != nil {
				return fmt.Errorf("round %d: snapshot %d is not the volume at one point in time: %w", round, snap.ID, err)
			}
			snapsMu.Lock()
			live = append(live, liveSnap{snap.ID, sv, first})
			cur := append([]liveSnap(nil), live...)
			snapsMu.Unlock()

			// Every live snapshot still reads as first read.
			buf := make([]byte, blocks*bs)
			for _, s := range cur {
				if _, err := s.view.ReadAt(buf, 0); err != nil {
					return fmt.Errorf("round %d: reread snapshot %d: %w", round, s.id, err)
				}
				if !bytes.Equal(buf, s.first) {
					return fmt.Errorf("round %d: snapshot %d changed since it was first read", round, s.id)
				}
			}

			// A clone of the new snapshot reads the same, and takes writes of its own.
			ci, err := p.Clone(snap.ID, "", 0)
			if err != nil {
				return fmt.Errorf("round %d: clone: %w", round, err)
			}
			cv, err := p.Volume(ci.ID)
			if err != nil {
				return err
			}
			if _, err := cv.ReadAt(buf, 0); err != nil {
				return fmt.Errorf("round %d: read clone: %w", round, err)
			}
			if !bytes.Equal(buf, first) {
				return fmt.Errorf("round %d: clone %d differs from its snapshot", round, ci.ID)
			}
			lbn := rng.IntN(blocks)
			cdata := pattern(byte(round), bs)
			if _, err := cv.WriteAt(cdata, int64(lbn*bs)); err != nil {
				return fmt.Errorf("round %d: write clone: %w", round, err)
			}
			got := make([]byte, bs)
			if _, err := cv.ReadAt(got, int64(lbn*bs)); err != nil || !bytes.Equal(got, cdata) {
				return fmt.Errorf("round %d: clone write not read back (%v)", round, err)
			}
			clones = append(clones, ci.ID)

			// Keep three snapshots and two clones; delete the oldest.
			snapsMu.Lock()
			var old *liveSnap
			if len(live) > 3 {
				old = &live[0]
				live = live[1:]
			}
			snapsMu.Unlock()
			if old != nil {
				if err := p.DeleteSnapshot(old.id); err != nil {
					return fmt.Errorf("round %d: delete snapshot: %w", round, err)
				}
				if _, err := old.view.ReadAt(buf[:bs], 0); !errors.Is(err, blockstore.ErrNotFound) {
					return fmt.Errorf("round %d: read of deleted snapshot %d: %v, want ErrNotFound", round, old.id, err)
				}
			}
			if len(clones) > 2 {
				if err := p.DeleteVolume(clones[0]); err != nil {
					return fmt.Errorf("round %d: delete clone: %w", round, err)
				}
				clones = clones[1:]
			}
			if err := p.Flush(); err != nil {
				return fmt.Errorf("round %d: flush: %w", round, err)
			}
			roundsDone.Add(1)
		}
	}

	flusher := func() error {
		for {
			select {
			case <-done:
				return nil
			case <-time.After(20 * time.Millisecond):
			}
			if err := p.Flush(); err != nil {
				return fmt.Errorf("flush: %w", err)
			}
			st := p.Stats()
			if st.UsedBytes > st.PhysicalBytes || st.FreeBytes < 0 {
				return fmt.Errorf("stats out of bounds: %+v", st)
			}
		}
	}

	var bg sync.WaitGroup
	var snapErr, flushErr error
	bg.Go(func() {
		if snapErr = snapshotter(); snapErr != nil {
			abort.Store(true)
		}
	})
	bg.Go(func() {
		if flushErr = flusher(); flushErr != nil {
			abort.Store(true)
		}
	})
	werr := runWorkers(writers, writer)
	close(done)
	bg.Wait()
	require.NoError(t, werr)
	require.NoError(t, snapErr)
	require.NoError(t, flushErr)

	// The volume holds every block's last change; the snapshots what they first read.
	all := ver.counts(true)
	final := make([]byte, blocks*bs)
	for lbn, k := range all {
		if k > 0 && !ver.hist[lbn][k-1].zero {
			versionBlock(final[lbn*bs:(lbn+1)*bs], volID, uint64(lbn), ver.hist[lbn][k-1].seq)
		}
	}
	verifyVolSnaps := func(p *blockstore.Pool) {
		t.Helper()
		v, err := p.Volume(info.ID)
		require.NoError(t, err)
		mustEqual(t, mustRead(t, v, 0, len(final)), final, "volume after the writers")
		for _, s := range live {
			sv, err := p.SnapshotView(s.id)
			require.NoError(t, err)
			mustEqual(t, mustRead(t, sv, 0, len(s.first)), s.first, fmt.Sprintf("snapshot %d", s.id))
		}
	}
	verifyVolSnaps(p)
	rep := mustCheck(t, p)
	t.Logf("%d snapshot rounds during the writes; check: %v", rounds, rep)
	assert.Positive(t, rounds)
	closed = true
	require.NoError(t, p.Close())

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	verifyVolSnaps(p)
	assert.True(t, mustCheck(t, p).OK())
}
