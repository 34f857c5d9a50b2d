package blockstore_test

// Corruption detection: damage metadata on disk (tree nodes, superblock slots, catalog blocks,
// refcount pages, the journal tail) and check that the pool reports it as a *CorruptionError
// naming the damaged block, or recovers from a redundant copy, and that no read ever returns
// wrong data without an error.
//
// The tests find the blocks to damage by parsing the pool file with the on-disk format package.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// ---- a File that can crash ----

var errSimulatedCrash = errors.New("test: simulated crash")

// crashableFile is a blockstore.File on an *os.File that can simulate a crash: once crashed, every
// write, sync and punch fails without touching the file, as if the process had died at that
// moment. Everything written before stays (the tests never drop the page cache), so Sync skips
// fdatasync, which also keeps tests that commit often fast on a busy machine.
type crashableFile struct {
	f       *os.File
	noPunch bool // PunchHole keeps the old contents (allowed by the File contract)

	// writeDelay, when set, delays every write before it reaches the file, widening the window
	// between a write's decision on where its data goes and the data landing there.
	writeDelay time.Duration

	mu      sync.Mutex
	crashed bool
	// beforeWrite, when set, sees every write first. It may return different bytes to write
	// (a torn write) and ask for a crash right after this write.
	beforeWrite func(p []byte, off int64) (data []byte, crashAfter bool)
}

func newCrashableFile(t *testing.T, size int64) (*crashableFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pool")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	return &crashableFile{f: f}, path
}

func (ff *crashableFile) crash() {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	ff.crashed = true
}

func (ff *crashableFile) ReadAt(p []byte, off int64) (int, error) { return ff.f.ReadAt(p, off) }

func (ff *crashableFile) WriteAt(p []byte, off int64) (int, error) {
	if ff.writeDelay > 0 {
		time.Sleep(ff.writeDelay)
	}
	ff.mu.Lock()
	if ff.crashed {
		ff.mu.Unlock()
		return 0, errSimulatedCrash
	}
	crashAfter := false
	if ff.beforeWrite != nil {
		var data []byte
		data, crashAfter = ff.beforeWrite(p, off)
		if data != nil {
			p = data
		}
	}
	ff.mu.Unlock()
	n, err := ff.f.WriteAt(p, off) // outside the lock: concurrent writes stay concurrent
	if crashAfter {
		ff.crash()
	}
	return n, err
}

func (ff *crashableFile) Sync() error {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if ff.crashed {
		return errSimulatedCrash
	}
	return nil // nothing is lost in these tests: no need to pay for fdatasync
}

func (ff *crashableFile) PunchHole(off, length int64) error {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if ff.crashed {
		return errSimulatedCrash
	}
	if ff.noPunch {
		return nil
	}
	return unix.Fallocate(int(ff.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (ff *crashableFile) Size() (int64, error) {
	fi, err := ff.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (ff *crashableFile) Close() error { return ff.f.Close() }

// ---- reading and damaging the pool file ----

// diskLayout is what the tests need to know of a closed pool file.
type diskLayout struct {
	bs        int
	slots     [2]*format.Superblock // nil: the slot does not decode
	newest    int                   // slot with the highest valid generation
	sb        *format.Superblock    // slots[newest]
	catBlocks []uint64              // the catalog chain of sb
	cat       *format.Catalog
}

func readDiskBlock(t *testing.T, path string, pbn uint64, bs int) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, bs)
	_, err = f.ReadAt(b, int64(pbn)*int64(bs))
	require.NoError(t, err)
	return b
}

// flipDiskBit inverts one bit of the pool file at byte offset off.
func flipDiskBit(t *testing.T, path string, off int64, bit uint) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 1 << (bit % 8)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

func readDiskLayout(t *testing.T, path string) *diskLayout {
	t.Helper()
	l := &diskLayout{newest: -1}
	first := readDiskBlock(t, path, 0, format.MinBlockSize)
	sb0, err0 := format.DecodeSuperblock(first)
	l.bs = format.DefaultBlockSize
	if err0 == nil {
		l.slots[0] = sb0
		l.bs = int(sb0.BlockSize)
	}
	sb1, err1 := format.DecodeSuperblock(readDiskBlock(t, path, 1, l.bs))
	if err1 == nil {
		l.slots[1] = sb1
	}
	for s, sb := range l.slots {
		if sb != nil && (l.newest < 0 || sb.Generation > l.slots[l.newest].Generation) {
			l.newest = s
		}
	}
	require.GreaterOrEqual(t, l.newest, 0, "no valid superblock: %v, %v", err0, err1)
	l.sb = l.slots[l.newest]
	var payload []byte
	for b := l.sb.CatalogHead; b != 0; {
		part, next, err := format.DecodeCatalogBlock(readDiskBlock(t, path, b, l.bs), b)
		require.NoError(t, err, "catalog block %d", b)
		l.catBlocks = append(l.catBlocks, b)
		payload = append(payload, part...)
		b = next
	}
	if len(payload) > 0 {
		var err error
		l.cat, err = format.DecodeCatalog(payload)
		require.NoError(t, err)
	}
	return l
}

func (l *diskLayout) volume(t *testing.T, id blockstore.VolumeID) format.VolumeEntry {
	t.Helper()
	for _, v := range l.cat.Volumes {
		if v.ID == uint64(id) {
			return v
		}
	}
	t.Fatalf("volume %d not in the catalog", id)
	return format.VolumeEntry{}
}

// treeNodes returns the node blocks of the tree at root by level (0: leaves).
func (l *diskLayout) treeNodes(t *testing.T, path string, root uint64, height uint8) map[int][]uint64 {
	t.Helper()
	out := make(map[int][]uint64)
	var walk func(pbn uint64, level int)
	walk = func(pbn uint64, level int) {
		lv, ent, err := format.DecodeNode(readDiskBlock(t, path, pbn, l.bs), pbn, nil)
		require.NoError(t, err, "node %d", pbn)
		require.Equal(t, level, int(lv), "node %d", pbn)
		out[level] = append(out[level], pbn)
		if level == 0 {
			return
		}
		for _, c := range ent {
			if c != 0 {
				walk(c, level-1)
			}
		}
	}
	if root != 0 {
		walk(root, int(height)-1)
	}
	return out
}

// newestRCSlot returns the block holding the durable copy of refcount page pg and how many of
// the page's two slots hold a valid copy.
func (l *diskLayout) newestRCSlot(t *testing.T, path string, pg uint64) (blk uint64, valid int) {
	t.Helper()
	counts := make([]uint32, format.RCPerPage(l.bs))
	bestGen := uint64(0)
	for s := range uint64(2) {
		b := l.sb.RCStart + 2*pg + s
		gen, ok, err := format.DecodeRCPage(readDiskBlock(t, path, b, l.bs), uint32(pg), counts)
		require.NoError(t, err)
		if !ok || gen > l.sb.Generation {
			continue
		}
		valid++
		if gen >= bestGen {
			blk, bestGen = b, gen
		}
	}
	require.NotZero(t, blk, "refcount page %d has no valid slot", pg)
	return blk, valid
}

// ---- checking what a damaged pool returns ----

// blockReader is a volume or a snapshot view.
type blockReader interface {
	ReadAt([]byte, int64) (int, error)
}

// checkReadsRightOrCorrupt reads r block by block and compares with want: a read must return the right data
// or fail with a *CorruptionError (ErrCorrupt); never wrong data without an error. It returns how
// many blocks failed and the blocks named by the errors.
func checkReadsRightOrCorrupt(t *testing.T, what string, r blockReader, want []byte, bs int) (failed int, named map[uint64]bool) {
	t.Helper()
	named = make(map[uint64]bool)
	buf := make([]byte, bs)
	wrong := 0
	for off := 0; off < len(want); off += bs {
		n, err := r.ReadAt(buf, int64(off))
		if err != nil {
			failed++
			assert.ErrorIs(t, err, blockstore.ErrCorrupt, "%s: read at %d", what, off)
			var ce *blockstore.CorruptionError
			if assert.ErrorAs(t, err, &ce, "%s: read at %d", what, off) {
				named[ce.Block] = true
			}
			continue
		}
		if n != bs || !bytes.Equal(buf, want[off:off+bs]) {
			wrong++
			if wrong <= 5 {
				t.Errorf("%s: read at %d returned wrong data without an error", what, off)
			}
		}
	}
	if wrong > 5 {
		t.Errorf("%s: %d blocks in all returned wrong data without an error", what, wrong)
	}
	return failed, named
}

// corruptionNamed reports whether err (or the Corrupt list of rep) holds a *CorruptionError for
// block blk.
func corruptionNamed(err error, rep *blockstore.CheckReport, blk uint64) bool {
	errs := []error{err}
	if rep != nil {
		errs = append(errs, rep.Corrupt...)
	}
	for _, e := range errs {
		if e == nil {
			continue
		}
		// errors.As finds only the first CorruptionError in a tree; walk the joined ones.
		var stack = []error{e}
		for len(stack) > 0 {
			e := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			var ce *blockstore.CorruptionError
			if c, ok := e.(*blockstore.CorruptionError); ok {
				ce = c
			}
			if ce != nil && ce.Block == blk {
				return true
			}
			switch u := e.(type) {
			case interface{ Unwrap() []error }:
				stack = append(stack, u.Unwrap()...)
			case interface{ Unwrap() error }:
				if w := u.Unwrap(); w != nil {
					stack = append(stack, w)
				}
			}
		}
	}
	return false
}

// withoutPanic runs fn and turns a panic into an error: the store must report corruption, not panic.
func withoutPanic(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return fn()
}

// ---- the damaged pool's history ----

const corruptPoolSize = 16 << 20

// corruptFixture is a closed pool on disk: volume vol (1 MiB, fanout 4, so a tree of height 4),
// snapshot snap of its first contents, then a quarter of the volume overwritten.
type corruptFixture struct {
	path     string
	vol      blockstore.VolumeID
	snap     blockstore.SnapshotID
	wantVol  []byte
	wantSnap []byte
}

func fixtureOptions() blockstore.Options {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	return opts
}

// buildFixture writes the fixture's history on p; checkpoints says whether to take a checkpoint
// (Check) between the first write and the snapshot, so that the last one (Close) is not the
// first one.
func buildFixture(t *testing.T, p *blockstore.Pool, checkpoint bool) *corruptFixture {
	t.Helper()
	fx := &corruptFixture{}
	info, err := p.CreateVolume("vol", 1<<20)
	require.NoError(t, err)
	fx.vol = info.ID
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	a := pattern(1, 1<<20)
	_, err = vol.WriteAt(a, 0)
	require.NoError(t, err)
	if checkpoint {
		rep, err := p.Check(false)
		require.NoError(t, err)
		require.True(t, rep.OK(), "%v", rep)
	}
	snap, err := p.CreateSnapshot(info.ID, "snap")
	require.NoError(t, err)
	fx.snap = snap.ID
	b := pattern(2, 256<<10)
	_, err = vol.WriteAt(b, 0)
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	fx.wantSnap = a
	fx.wantVol = append(append([]byte(nil), b...), a[len(b):]...)
	return fx
}

func newCorruptFixture(t *testing.T, checkpoint bool) *corruptFixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pool")
	opts := fixtureOptions()
	opts.Size = corruptPoolSize
	p, err := blockstore.Create(path, opts)
	require.NoError(t, err)
	fx := buildFixture(t, p, checkpoint)
	fx.path = path
	require.NoError(t, p.Close())
	return fx
}

// verifyFixture checks that an opened pool holds exactly the fixture's contents.
func verifyFixture(t *testing.T, p *blockstore.Pool, fx *corruptFixture) {
	t.Helper()
	vol, err := p.Volume(fx.vol)
	require.NoError(t, err)
	mustEqual(t, mustRead(t, vol, 0, len(fx.wantVol)), fx.wantVol, "volume")
	sv, err := p.SnapshotView(fx.snap)
	require.NoError(t, err, "the snapshot was durable before the damage")
	mustEqual(t, mustRead(t, sv, 0, len(fx.wantSnap)), fx.wantSnap, "snapshot")
	rep, err := p.Check(false)
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v %v", rep, rep.RefcountErrors)
}

// ---- (a) tree nodes ----

func TestCorruptTreeNode(t *testing.T) {
	cases := []struct {
		name  string
		level int // level of the damaged node in the volume's tree (3 is the root)
		index int // which node of that level, in walk order
		off   int // byte offset in the node block to damage
	}{
		// A leaf under the part of the tree that the volume still shares with the snapshot:
		// damage one of its data block numbers, which would misdirect reads if unnoticed.
		{"shared leaf entry", 0, 20, format.NodeHeaderSize + 8 + 1},
		// A leaf that only the volume holds (rewritten after the snapshot).
		{"private leaf entry", 0, 0, format.NodeHeaderSize + 2},
		// An inner node: its header (level byte).
		{"inner node header", 2, 1, 8},
		// The root, in the unused tail of the block (still covered by the checksum).
		{"root tail", 3, 0, 3000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx := newCorruptFixture(t, true)
			l := readDiskLayout(t, fx.path)
			ve := l.volume(t, fx.vol)
			nodes := l.treeNodes(t, fx.path, ve.Root, ve.Height)
			require.Equal(t, uint8(4), ve.Height, "fanout 4 and 256 blocks: a tree of height 4")
			require.Greater(t, len(nodes[tc.level]), tc.index)
			blk := nodes[tc.level][tc.index]
			flipDiskBit(t, fx.path, int64(blk)*int64(l.bs)+int64(tc.off), 2)

			p, err := blockstore.Open(fx.path, blockstore.Options{})
			require.NoError(t, err, "tree nodes are read on demand: the pool opens")
			defer func() { assert.NoError(t, withoutPanic(func() error { p.Close(); return nil })) }()

			vol, err := p.Volume(fx.vol)
			require.NoError(t, err)
			failed, named := checkReadsRightOrCorrupt(t, "volume", vol, fx.wantVol, l.bs)
			assert.Positive(t, failed, "reads under the damaged node %d must fail", blk)
			assert.Equal(t, map[uint64]bool{blk: true}, named, "read errors must name the damaged node")
			sv, err := p.SnapshotView(fx.snap)
			require.NoError(t, err)
			_, snapNamed := checkReadsRightOrCorrupt(t, "snapshot", sv, fx.wantSnap, l.bs)
			for b := range snapNamed {
				assert.Equal(t, blk, b, "snapshot read errors must name the damaged node")
			}

			// A write under the damaged node must not go through either.
			_, werr := vol.WriteAt(make([]byte, l.bs), int64(firstUnreadable(t, vol, len(fx.wantVol), l.bs)))
			assert.ErrorIs(t, werr, blockstore.ErrCorrupt)

			var rep *blockstore.CheckReport
			perr := withoutPanic(func() error { rep, err = p.Check(false); return nil })
			require.NoError(t, perr)
			require.ErrorIs(t, err, blockstore.ErrCorrupt)
			var ce *blockstore.CorruptionError
			require.ErrorAs(t, err, &ce)
			require.NotNil(t, rep)
			assert.False(t, rep.OK())
			assert.True(t, corruptionNamed(err, rep, blk), "Check must name block %d: %v", blk, err)
		})
	}
}

// firstUnreadable returns the offset of the first block of r that fails to read.
func firstUnreadable(t *testing.T, r blockReader, size, bs int) int {
	t.Helper()
	buf := make([]byte, bs)
	for off := 0; off < size; off += bs {
		if _, err := r.ReadAt(buf, int64(off)); err != nil {
			return off
		}
	}
	t.Fatal("no block fails to read")
	return 0
}

// ---- (b) superblock slots ----

// A crash while the newest superblock is being written (a torn write) must leave the pool
// opening from the other slot, with everything flushed before intact: the reason for two slots.
func TestCorruptSuperblockTornWriteAtCheckpoint(t *testing.T) {
	ff, path := newCrashableFile(t, corruptPoolSize)
	opts := fixtureOptions()
	p, err := blockstore.CreateOn(ff, opts)
	require.NoError(t, err)
	fx := buildFixture(t, p, true)
	fx.path = path
	bs := p.BlockSize()

	// Tear the next superblock write (Close's checkpoint), then crash.
	torn := false
	ff.mu.Lock()
	ff.beforeWrite = func(b []byte, off int64) ([]byte, bool) {
		if off >= 2*int64(bs) || off%int64(bs) != 0 || len(b) != bs {
			return nil, false
		}
		torn = true
		d := append([]byte(nil), b...)
		clear(d[format.SuperblockSize/2:]) // the second half of the superblock never made it
		return d, true
	}
	ff.mu.Unlock()
	require.Error(t, p.Close(), "the crash interrupts Close")
	require.True(t, torn, "Close wrote a superblock")

	l := readDiskLayout(t, path)
	require.Nil(t, l.slots[1-l.newest], "the torn slot must not decode")
	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err, "the older slot is intact")
	defer func() { assert.NoError(t, p.Close()) }()
	verifyFixture(t, p, fx)
}

// Bit rot in the newest superblock of a cleanly closed pool: the pool must open from the older
// slot with what was flushed, or fail with an error that says the superblock is damaged.
func TestCorruptNewestSuperblock(t *testing.T) {
	for _, keep := range []bool{false, true} {
		name := "punching storage"
		if keep {
			name = "storage keeping freed contents"
		}
		t.Run(name, func(t *testing.T) {
			ff, path := newCrashableFile(t, corruptPoolSize)
			ff.noPunch = keep
			p, err := blockstore.CreateOn(ff, fixtureOptions())
			require.NoError(t, err)
			fx := buildFixture(t, p, true)
			fx.path = path
			require.NoError(t, p.Close())

			l := readDiskLayout(t, path)
			require.NotNil(t, l.slots[1-l.newest], "two checkpoints were taken: both slots are valid")
			older := l.slots[1-l.newest]
			t.Logf("newest slot %d: generation %d, catalog at %d; older slot %d: generation %d, catalog at %d",
				l.newest, l.sb.Generation, l.sb.CatalogHead, 1-l.newest, older.Generation, older.CatalogHead)
			flipDiskBit(t, path, int64(l.newest)*int64(l.bs)+88, 0) // CatalogHead

			p, err = blockstore.Open(path, blockstore.Options{})
			if err != nil {
				assert.ErrorIs(t, err, blockstore.ErrCorrupt)
				assert.Contains(t, err.Error(), "superblock",
					"the newest superblock (block %d) failed its checksum and the older slot (generation %d) could not be used: the error must say so", l.newest, older.Generation)
				return
			}
			defer func() { assert.NoError(t, withoutPanic(p.Close)) }()
			verifyFixture(t, p, fx)
		})
	}
}

// Bit rot in the newest superblock after the pool went on committing past it (and then crashed):
// the older slot's checkpoint is two epochs old and the journal after it has been overwritten by
// the newer epoch. Opening from it must not silently roll back flushed writes and a durable
// snapshot: the pool must open with everything flushed, or fail naming the superblock.
func TestCorruptNewestSuperblockAfterLaterCommits(t *testing.T) {
	for _, keep := range []bool{false, true} {
		name := "punching storage"
		if keep {
			name = "storage keeping freed contents"
		}
		t.Run(name, func(t *testing.T) {
			ff, path := newCrashableFile(t, corruptPoolSize)
			ff.noPunch = keep
			p, err := blockstore.CreateOn(ff, fixtureOptions())
			require.NoError(t, err)
			fx := buildFixture(t, p, true) // checkpoint, snapshot, overwrite, flush
			fx.path = path
			rep, err := p.Check(false) // a second checkpoint
			require.NoError(t, err)
			require.True(t, rep.OK())
			// More flushed writes after it: their journal records overwrite the older epoch's.
			vol, err := p.Volume(fx.vol)
			require.NoError(t, err)
			c := pattern(3, 256<<10)
			_, err = vol.WriteAt(c, 512<<10)
			require.NoError(t, err)
			require.NoError(t, p.Flush())
			copy(fx.wantVol[512<<10:], c)
			ff.crash()
			require.Error(t, p.Close())

			l := readDiskLayout(t, path)
			require.NotNil(t, l.slots[1-l.newest])
			t.Logf("newest slot %d: generation %d, checkpoint LSN %d; older: generation %d, checkpoint LSN %d",
				l.newest, l.sb.Generation, l.sb.CheckpointLSN, l.slots[1-l.newest].Generation, l.slots[1-l.newest].CheckpointLSN)
			flipDiskBit(t, path, int64(l.newest)*int64(l.bs)+88, 0)

			p, err = blockstore.Open(path, blockstore.Options{})
			if err != nil {
				assert.ErrorIs(t, err, blockstore.ErrCorrupt)
				assert.Contains(t, err.Error(), "superblock", "the error must say that the newest superblock is damaged")
				return
			}
			defer func() { assert.NoError(t, withoutPanic(p.Close)) }()
			t.Logf("opened from the older slot: recovery %+v", p.Recovery())
			vol, err = p.Volume(fx.vol)
			require.NoError(t, err)
			checkReadsRightOrCorrupt(t, "volume", vol, fx.wantVol, l.bs)
			sv, err := p.SnapshotView(fx.snap)
			if assert.NoError(t, err, "snapshot %d was durable before the damage", fx.snap) {
				checkReadsRightOrCorrupt(t, "snapshot", sv, fx.wantSnap, l.bs)
			}
		})
	}
}

func TestCorruptBothSuperblocks(t *testing.T) {
	fx := newCorruptFixture(t, true)
	flipDiskBit(t, fx.path, 20, 1)
	flipDiskBit(t, fx.path, format.DefaultBlockSize+20, 1)
	p, err := blockstore.Open(fx.path, blockstore.Options{})
	if err == nil {
		p.Close()
		t.Fatal("a pool with no valid superblock opened")
	}
	assert.ErrorIs(t, err, blockstore.ErrCorrupt, "damaged superblocks are a damaged pool, not \"not a pool\"")
	assert.NotErrorIs(t, err, blockstore.ErrNotPool)
	assert.Contains(t, err.Error(), "superblock")
}

// ---- (c) catalog blocks ----

func TestCorruptCatalogBlock(t *testing.T) {
	t.Run("single block", func(t *testing.T) {
		fx := newCorruptFixture(t, true)
		l := readDiskLayout(t, fx.path)
		require.Len(t, l.catBlocks, 1)
		blk := l.catBlocks[0]
		flipDiskBit(t, fx.path, int64(blk)*int64(l.bs)+format.CatalogHeaderSize+3, 5)
		p, err := blockstore.Open(fx.path, blockstore.Options{})
		requireCorruptOpen(t, p, err, blk)
	})
	t.Run("second block of a chain", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "pool")
		opts := fixtureOptions()
		opts.Size = corruptPoolSize
		p, err := blockstore.Create(path, opts)
		require.NoError(t, err)
		// 40 volumes with 200-byte names: the catalog needs more than one block.
		for i := range 40 {
			name := fmt.Sprintf("%03d-%s", i, bytes.Repeat([]byte{'v'}, 196))
			_, err := p.CreateVolume(name, 64<<10)
			require.NoError(t, err)
		}
		require.NoError(t, p.Close())
		l := readDiskLayout(t, path)
		require.GreaterOrEqual(t, len(l.catBlocks), 2)
		blk := l.catBlocks[1]
		flipDiskBit(t, path, int64(blk)*int64(l.bs)+int64(l.bs)/2, 0)
		p, err = blockstore.Open(path, blockstore.Options{})
		requireCorruptOpen(t, p, err, blk)
	})
}

func requireCorruptOpen(t *testing.T, p *blockstore.Pool, err error, blk uint64) {
	t.Helper()
	if err == nil {
		p.Close()
		t.Fatalf("the pool opened with catalog block %d damaged", blk)
	}
	require.ErrorIs(t, err, blockstore.ErrCorrupt)
	var ce *blockstore.CorruptionError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, blk, ce.Block, "%v", err)
	assert.Contains(t, ce.What, "catalog")
}

// ---- (d) refcount pages ----

// A damaged refcount page must be reported, naming its block: at Open (as an error, or in
// Recovery().DamagedRefcountPages once the refcounts were rebuilt) or by Check. No read may ever
// return wrong data, also after a write that allocates blocks the damaged page counted, Check and
// Close must not panic, and a repair must hold across a reopen.
func TestCorruptRefcountPage(t *testing.T) {
	for _, tc := range []struct {
		name       string
		checkpoint bool // two checkpoints: both slots of page 0 hold a copy
		slots      string
	}{
		{"newest of two copies", true, "newest"},
		{"older of two copies", true, "older"},
		{"both copies", true, "both"},
		{"only copy", false, "newest"},
	} {
		for _, writeFirst := range []bool{false, true} {
			name := tc.name + "/check first"
			if writeFirst {
				name = tc.name + "/write first"
			}
			t.Run(name, func(t *testing.T) {
				fx := newCorruptFixture(t, tc.checkpoint)
				l := readDiskLayout(t, fx.path)
				newest, valid := l.newestRCSlot(t, fx.path, 0)
				older := 2*l.sb.RCStart + 1 - newest // the other slot of page 0
				if tc.checkpoint {
					require.Equal(t, 2, valid)
				} else {
					require.Equal(t, 1, valid)
				}
				var damaged []uint64
				switch tc.slots {
				case "newest":
					damaged = []uint64{newest}
				case "older":
					damaged = []uint64{older}
				case "both":
					damaged = []uint64{newest, older}
				}
				for _, blk := range damaged {
					flipDiskBit(t, fx.path, int64(blk)*int64(l.bs)+format.RCHeaderSize+4*5+1, 3)
				}

				p, err := blockstore.Open(fx.path, blockstore.Options{})
				if err != nil {
					require.ErrorIs(t, err, blockstore.ErrCorrupt)
					for _, blk := range damaged {
						assert.True(t, corruptionNamed(err, nil, blk), "Open must name refcount block %d: %v", blk, err)
					}
					return
				}
				closed := false
				defer func() {
					if !closed {
						assert.NoError(t, withoutPanic(p.Close), "Close")
					}
				}()
				reported := errors.Join(p.Recovery().DamagedRefcountPages...)
				for _, e := range p.Recovery().DamagedRefcountPages {
					assert.ErrorIs(t, e, blockstore.ErrCorrupt)
					var ce *blockstore.CorruptionError
					assert.ErrorAs(t, e, &ce)
				}

				if writeFirst {
					// A little new data in a new volume: allocation must not hand out blocks
					// still in use.
					info, err := p.CreateVolume("new", 1<<20)
					require.NoError(t, err)
					nv, err := p.Volume(info.ID)
					require.NoError(t, err)
					fresh := pattern(99, 4*l.bs)
					if _, err := nv.WriteAt(fresh, 0); err == nil {
						checkReadsRightOrCorrupt(t, "new volume", nv, fresh, l.bs)
					}
				}
				vol, err := p.Volume(fx.vol)
				require.NoError(t, err)
				checkReadsRightOrCorrupt(t, "volume", vol, fx.wantVol, l.bs)
				sv, err := p.SnapshotView(fx.snap)
				require.NoError(t, err)
				checkReadsRightOrCorrupt(t, "snapshot", sv, fx.wantSnap, l.bs)

				var rep *blockstore.CheckReport
				require.NoError(t, withoutPanic(func() error { rep, err = p.Check(false); return nil }), "Check must not panic")
				for _, blk := range damaged {
					if corruptionNamed(reported, nil, blk) {
						// Reported and repaired at Open: the pool must be consistent now.
						if assert.NoError(t, err, "Check after the repair") {
							assert.True(t, rep.OK(), "Check after the repair: %v %v", rep, rep.RefcountErrors)
						}
						continue
					}
					assert.True(t, corruptionNamed(err, rep, blk),
						"refcount block %d is damaged: Open (Recovery) or Check must name it: recovery %v, check err %v, report %v", blk, reported, err, rep)
				}
				if t.Failed() {
					return
				}

				// The repair holds across a reopen.
				closed = true
				require.NoError(t, p.Close())
				p, err = blockstore.Open(fx.path, blockstore.Options{})
				require.NoError(t, err)
				closed = false
				assert.Empty(t, p.Recovery().DamagedRefcountPages, "refcount pages rewritten by the repair")
				verifyFixture(t, p, fx)
			})
		}
	}
}

// ---- the journal tail ----

// Damage the last journal block written before a crash: the pool reopens, replay stops at the
// last commit before the damaged record (the records of the commit it belongs to are lost:
// their RecCommit record is past it), and Check is clean.
func TestCorruptJournalTail(t *testing.T) {
	ff, path := newCrashableFile(t, corruptPoolSize)
	p, err := blockstore.CreateOn(ff, fixtureOptions())
	require.NoError(t, err)
	bs := p.BlockSize()
	info, err := p.CreateVolume("vol", 1<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	_, err = vol.WriteAt(pattern(1, 128<<10), 0)
	require.NoError(t, err)
	rep, err := p.Check(false) // checkpoint: the journal starts over
	require.NoError(t, err)
	require.True(t, rep.OK())

	// Commits of one write each, then one commit of five writes. Every write maps blocks never
	// mapped before (one map record each).
	want := make([]byte, 1<<20)
	copy(want, pattern(1, 128<<10))
	type write struct {
		off  int64
		data []byte
	}
	var writes []write
	for i := range 8 {
		w := write{off: int64(256<<10) + int64(i)*int64(64<<10), data: pattern(byte(10+i), 3*bs)}
		_, err := vol.WriteAt(w.data, w.off)
		require.NoError(t, err)
		writes = append(writes, w)
		if i < 3 {
			require.NoError(t, p.Flush())
		}
	}
	require.NoError(t, p.Flush())
	ff.crash()
	require.Error(t, p.Close())

	// Find the journal's records and the block of the last commit.
	l := readDiskLayout(t, path)
	type recAt struct {
		r   format.Record
		blk uint64 // journal block (absolute block number)
		off int    // offset in the block
	}
	var recs []recAt
	wantLSN := l.sb.CheckpointLSN + 1
scan:
	for b := l.sb.JournalStart; b < l.sb.JournalStart+l.sb.JournalBlocks; b++ {
		blk := readDiskBlock(t, path, b, l.bs)
		n := 0
		for off := 0; off < len(blk); {
			r, k, end, err := format.DecodeRecord(blk[off:])
			if end || err != nil || r.LSN != wantLSN {
				break
			}
			recs = append(recs, recAt{r, b, off})
			wantLSN++
			off += k
			n++
		}
		if n == 0 {
			break scan
		}
	}
	var maps []recAt // the other records are the commits' RecCommit records
	for _, r := range recs {
		if r.r.Type == format.RecMap {
			maps = append(maps, r)
		}
	}
	require.Len(t, maps, len(writes), "one map record per write")
	tail := maps[len(maps)-5:]
	require.Equal(t, tail[0].blk, tail[4].blk, "the last commit's five map records share a block")
	damaged := tail[2]
	flipDiskBit(t, path, int64(damaged.blk)*int64(l.bs)+int64(damaged.off)+format.RecordHeaderSize+1, 4)

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	defer func() { assert.NoError(t, p.Close()) }()
	rec := p.Recovery()
	assert.Equal(t, maps[2].r.LSN, rec.LastLSN, "replay stops at the last commit before the damaged record")
	assert.Equal(t, 3, rec.Records, "the three writes committed alone")
	vol, err = p.Volume(info.ID)
	require.NoError(t, err)
	for i, w := range writes {
		got := mustRead(t, vol, w.off, len(w.data))
		if i < 3 {
			mustEqual(t, got, w.data, fmt.Sprintf("write %d (committed before the damaged record)", i))
		} else {
			mustEqual(t, got, make([]byte, len(w.data)), fmt.Sprintf("write %d (its commit is past the damaged record)", i))
		}
	}
	mustEqual(t, mustRead(t, vol, 0, 128<<10), want[:128<<10], "checkpointed data")
	mustCheck(t, p)
}
