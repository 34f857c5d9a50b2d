package blockstore_test

// Space: a full pool (ENOSPC) and how it recovers, over-provisioning limits, Discard returning
// space to the pool and to the pool file, and the validation errors of the API.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
)

// spaceModel is the expected contents of a volume or snapshot.
type spaceModel struct {
	name string
	r    blockReader
	want []byte
}

func verifySpaceModels(t *testing.T, models ...*spaceModel) {
	t.Helper()
	for _, m := range models {
		mustEqual(t, mustRead(t, m.r, 0, len(m.want)), m.want, m.name)
	}
}

// requireNoSpace checks an error from a full pool.
func requireNoSpace(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err, "the pool should be full")
	require.ErrorIs(t, err, blockstore.ErrNoSpace)
	require.ErrorIs(t, err, syscall.ENOSPC)
}

// fillUntilFull writes chunks of decreasing size at increasing offsets of m's volume from *off,
// until even a one-block write fails, and updates the model with what was acknowledged. A write
// that fails must leave each block it covers with its old or its new contents.
func fillUntilFull(t *testing.T, p *blockstore.Pool, vol *blockstore.Volume, m *spaceModel, off *int64) (acked int) {
	t.Helper()
	bs := p.BlockSize()
	for chunk := 64 << 10; chunk >= bs; chunk /= 2 {
		for {
			if *off+int64(chunk) > int64(len(m.want)) {
				t.Fatalf("volume %s filled up before the pool", m.name)
			}
			data := pattern(byte(*off/int64(bs)), chunk)
			_, err := vol.WriteAt(data, *off)
			if err != nil {
				requireNoSpace(t, err)
				// Old or new contents, block by block.
				got := mustRead(t, vol, *off, chunk)
				for b := 0; b < chunk; b += bs {
					old, neu := m.want[*off+int64(b):][:bs], data[b:][:bs]
					if !bytes.Equal(got[b:b+bs], old) && !bytes.Equal(got[b:b+bs], neu) {
						t.Fatalf("%s: failed write left block at %d with neither old nor new data", m.name, *off+int64(b))
					}
				}
				copy(m.want[*off:], got)
				break
			}
			copy(m.want[*off:], data)
			*off += int64(chunk)
			acked++
			if acked%16 == 0 {
				require.NoError(t, p.Flush())
			}
		}
	}
	require.NoError(t, p.Flush(), "Flush on a full pool")
	return acked
}

// A full pool fails writes with ENOSPC, keeps every acknowledged write, stays consistent, and
// takes writes again once a snapshot, a range or a volume is freed; also across a reopen.
func TestSpaceFillAndRecover(t *testing.T) {
	for _, fanout := range []int{0, 4} {
		t.Run(fmt.Sprintf("fanout %d", fanout), func(t *testing.T) {
			var opts blockstore.Options
			if fanout != 0 {
				blockstore.SetTestFanout(&opts, fanout)
			}
			p, path := mustCreate(t, 8<<20, opts)
			bs := p.BlockSize()
			st := p.Stats()
			require.Less(t, st.PhysicalBytes, int64(8<<20))

			// Volumes larger than the pool, within the over-provisioning ratio.
			ia, err := p.CreateVolume("a", 16<<20)
			require.NoError(t, err)
			ib, err := p.CreateVolume("b", 8<<20)
			require.NoError(t, err)
			va, _ := p.Volume(ia.ID)
			vb, _ := p.Volume(ib.ID)
			ma := &spaceModel{name: "a", r: va, want: make([]byte, 16<<20)}
			mb := &spaceModel{name: "b", r: vb, want: make([]byte, 8<<20)}

			// a's first MiB, kept by a snapshot, then rewritten; b's first MiB.
			first := pattern(1, 1<<20)
			_, err = va.WriteAt(first, 0)
			require.NoError(t, err)
			snap, err := p.CreateSnapshot(ia.ID, "a-1")
			require.NoError(t, err)
			sv, err := p.SnapshotView(snap.ID)
			require.NoError(t, err)
			ms := &spaceModel{name: "snapshot", r: sv, want: bytes.Clone(first)}
			copy(ma.want, pattern(2, 1<<20))
			_, err = va.WriteAt(ma.want[:1<<20], 0)
			require.NoError(t, err)
			copy(mb.want, pattern(3, 1<<20))
			_, err = vb.WriteAt(mb.want[:1<<20], 0)
			require.NoError(t, err)

			off := int64(1 << 20)
			fillUntilFull(t, p, va, ma, &off)
			verifySpaceModels(t, ma, mb, ms)
			mustCheck(t, p)
			assert.Less(t, p.Stats().FreeBytes, st.PhysicalBytes/16, "the pool is nearly full")
			_, err = va.WriteAt(make([]byte, bs), off)
			requireNoSpace(t, err)

			// Overwriting blocks the volume owns alone needs no space.
			copy(ma.want[2<<20:], pattern(4, 64<<10))
			_, err = va.WriteAt(ma.want[2<<20:][:64<<10], 2<<20)
			require.NoError(t, err, "in-place overwrite on a full pool")

			// 1. Delete the snapshot: its MiB comes back.
			require.NoError(t, p.DeleteSnapshot(snap.ID))
			acked := fillUntilFull(t, p, va, ma, &off)
			assert.Positive(t, acked, "writes succeed after deleting a snapshot")
			verifySpaceModels(t, ma, mb)
			mustCheck(t, p)

			// 2. Discard a range of a.
			require.NoError(t, va.Discard(1<<20, 1<<20))
			clear(ma.want[1<<20 : 2<<20])
			acked = fillUntilFull(t, p, va, ma, &off)
			assert.Positive(t, acked, "writes succeed after a discard")
			verifySpaceModels(t, ma, mb)
			mustCheck(t, p)

			// 3. Delete volume b.
			require.NoError(t, p.DeleteVolume(ib.ID))
			acked = fillUntilFull(t, p, va, ma, &off)
			assert.Positive(t, acked, "writes succeed after deleting a volume")
			verifySpaceModels(t, ma)
			mustCheck(t, p)

			// Close and reopen a full pool.
			require.NoError(t, p.Close())
			p, err = blockstore.Open(path, blockstore.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { mustCheckClose(t, p) })
			mustCheck(t, p)
			va, err = p.Volume(ia.ID)
			require.NoError(t, err)
			ma.r = va
			verifySpaceModels(t, ma)
			_, err = va.WriteAt(make([]byte, bs), off)
			requireNoSpace(t, err)
			require.NoError(t, va.Discard(0, 1<<20))
			clear(ma.want[:1<<20])
			_, err = va.WriteAt(pattern(5, bs), off)
			require.NoError(t, err, "a write after a discard on the reopened pool")
			copy(ma.want[off:], pattern(5, bs))
			verifySpaceModels(t, ma)
		})
	}
}

// One large write into an unmapped region needs many new tree nodes besides its data blocks. The
// pool must stay usable whatever the size of the write that fills it: after it (acknowledged or
// failed with ENOSPC), Flush, Check, Discard and Close must work and the pool must reopen. The
// writes tried are those around the largest one that fits, with small tree nodes (fanout 4) so
// that the nodes are many.
func TestSpaceLargeWriteKeepsMetadataReserve(t *testing.T) {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	bs := 4096
	prefix := pattern(1, 3<<20)

	// setup returns a pool whose volume holds the prefix, checkpointed, and its free blocks.
	setup := func(t *testing.T) (*blockstore.Pool, *blockstore.Volume, string, int64) {
		path := filepath.Join(t.TempDir(), "pool")
		o := opts
		o.Size = 8 << 20
		p, err := blockstore.Create(path, o)
		require.NoError(t, err)
		info, err := p.CreateVolume("v", 16<<20)
		require.NoError(t, err)
		vol, err := p.Volume(info.ID)
		require.NoError(t, err)
		_, err = vol.WriteAt(prefix, 0)
		require.NoError(t, err)
		mustCheck(t, p)
		return p, vol, path, p.Stats().FreeBytes / int64(bs)
	}
	p, _, _, free := setup(t)
	require.NoError(t, p.Close())

	// The largest write that is acknowledged: the one that fills the pool.
	fits := func(k int64) bool {
		p, vol, _, _ := setup(t)
		defer p.Close()
		_, err := vol.WriteAt(pattern(9, int(k)*bs), 8<<20)
		return err == nil
	}
	lo, hi := int64(1), free // fits(lo), !fits(hi)
	require.True(t, fits(lo))
	require.False(t, fits(hi))
	for hi-lo > 1 {
		if mid := (lo + hi) / 2; fits(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	t.Logf("%d free blocks; the largest write that fits has %d blocks", free, lo)

	for k := lo - 4; k <= lo+4; k++ {
		t.Run(fmt.Sprintf("%d blocks", k), func(t *testing.T) {
			p, vol, path, _ := setup(t)
			closed := false
			defer func() {
				if !closed {
					p.Close()
				}
			}()
			data := pattern(9, int(k)*bs)
			_, werr := vol.WriteAt(data, 8<<20)
			if werr != nil {
				requireNoSpace(t, werr)
			}
			assert.NoError(t, p.Flush(), "Flush after the write (err %v)", werr)
			mustEqual(t, mustRead(t, vol, 0, len(prefix)), prefix, "data written before")
			if werr == nil {
				mustEqual(t, mustRead(t, vol, 8<<20, len(data)), data, "acknowledged write")
			}
			rep, err := p.Check(false)
			if assert.NoError(t, err, "Check after the write (err %v), stats %+v", werr, p.Stats()) {
				assert.True(t, rep.OK(), "%v", rep)
			}
			assert.NoError(t, vol.Discard(0, 64<<10), "Discard on a full pool, stats %+v", p.Stats())
			closed = true
			assert.NoError(t, p.Close(), "Close")
			p, err = blockstore.Open(path, blockstore.Options{})
			require.NoError(t, err, "reopen")
			closed = false
			mustCheck(t, p)
			vol, err = p.Volume(vol.ID())
			require.NoError(t, err)
			mustEqual(t, mustRead(t, vol, 64<<10, len(prefix)-64<<10), prefix[64<<10:], "data written before, after reopen")
		})
	}
}

// ---- over-provisioning ----

func TestOverProvisioning(t *testing.T) {
	p, _ := mustCreate(t, 8<<20, blockstore.Options{})
	bs := int64(p.BlockSize())
	st := p.Stats()
	require.Equal(t, 10.0, st.OverProvisionRatio, "default ratio")
	limit := st.ProvisionLimit
	require.Equal(t, int64(float64(st.PhysicalBytes)*10), limit)

	overLimit := (limit/bs + 1) * bs
	_, err := p.CreateVolume("too-big", overLimit)
	requireOverProvisioned(t, err, overLimit, limit)

	// Exactly up to the limit is allowed, not a block more.
	half := limit / 2 / bs * bs
	ia, err := p.CreateVolume("a", half)
	require.NoError(t, err)
	rest := limit/bs*bs - half
	ib, err := p.CreateVolume("b", rest)
	require.NoError(t, err)
	require.Equal(t, half+rest, p.Stats().ProvisionedBytes)
	_, err = p.CreateVolume("c", bs)
	requireOverProvisioned(t, err, bs, limit)

	err = p.GrowVolume(ia.ID, half+bs)
	requireOverProvisioned(t, err, bs, limit)
	info, err := p.VolumeInfo(ia.ID)
	require.NoError(t, err)
	require.Equal(t, half, info.Size, "a failed grow leaves the size")

	snap, err := p.CreateSnapshot(ia.ID, "")
	require.NoError(t, err)
	_, err = p.Clone(snap.ID, "clone", 0)
	requireOverProvisioned(t, err, half, limit)
	_, err = p.CloneVolume(ia.ID, "clone", 0)
	requireOverProvisioned(t, err, half, limit)
	require.Len(t, p.Volumes(), 2)

	// Room again once b is gone.
	require.NoError(t, p.DeleteVolume(ib.ID))
	_, err = p.Clone(snap.ID, "clone", 0)
	require.NoError(t, err)
	require.Equal(t, 2*half, p.Stats().ProvisionedBytes)
}

func requireOverProvisioned(t *testing.T, err error, requested, limit int64) {
	t.Helper()
	require.ErrorIs(t, err, blockstore.ErrOverProvisioned)
	msg := err.Error()
	assert.Contains(t, msg, strconv.FormatInt(requested, 10), "the error names the requested size")
	assert.Contains(t, msg, strconv.FormatInt(limit, 10), "the error names the limit")
}

// Options.OverProvisionRatio: set at creation, kept across reopen, replaced by a non-zero value
// on Open, and validated.
func TestOverProvisionRatioOption(t *testing.T) {
	p, path := mustCreate(t, 8<<20, blockstore.Options{OverProvisionRatio: 2})
	bs := int64(p.BlockSize())
	st := p.Stats()
	require.Equal(t, 2.0, st.OverProvisionRatio)
	require.Equal(t, int64(float64(st.PhysicalBytes)*2), st.ProvisionLimit)
	big := (st.PhysicalBytes*2/bs + 1) * bs
	_, err := p.CreateVolume("big", big)
	requireOverProvisioned(t, err, big, st.ProvisionLimit)
	_, err = p.CreateVolume("ok", st.PhysicalBytes*2/bs*bs)
	require.NoError(t, err)
	require.NoError(t, p.Close())

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	require.Equal(t, 2.0, p.Stats().OverProvisionRatio, "kept across reopen")
	require.NoError(t, p.Close())

	p, err = blockstore.Open(path, blockstore.Options{OverProvisionRatio: 3})
	require.NoError(t, err)
	require.Equal(t, 3.0, p.Stats().OverProvisionRatio, "replaced on Open")
	_, err = p.CreateVolume("more", st.PhysicalBytes/bs*bs)
	require.NoError(t, err)
	require.NoError(t, p.Close())

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	require.Equal(t, 3.0, p.Stats().OverProvisionRatio, "the replaced ratio is kept")
	require.NoError(t, p.Close())

	// Lowering the ratio below what is provisioned keeps the volumes, refuses new ones.
	p, err = blockstore.Open(path, blockstore.Options{OverProvisionRatio: 1})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	require.Len(t, p.Volumes(), 2)
	_, err = p.CreateVolume("x", bs)
	require.ErrorIs(t, err, blockstore.ErrOverProvisioned)

	for _, bad := range []float64{0.5, -1, 1000.5, math.Inf(1), math.NaN()} {
		_, err := blockstore.Create(filepath.Join(t.TempDir(), "pool"), blockstore.Options{Size: 8 << 20, OverProvisionRatio: bad})
		assert.ErrorIs(t, err, blockstore.ErrInvalidArgument, "Create with ratio %v", bad)
	}
}

// Open validates a ratio like Create does.
func TestOverProvisionRatioInvalidOnOpen(t *testing.T) {
	p, path := mustCreate(t, 8<<20, blockstore.Options{})
	require.NoError(t, p.Close())
	for _, bad := range []float64{0.5, -1, 1000.5, math.Inf(1), math.NaN()} {
		q, err := blockstore.Open(path, blockstore.Options{OverProvisionRatio: bad})
		if err == nil {
			t.Errorf("Open with ratio %v: accepted (limit now %d bytes)", bad, q.Stats().ProvisionLimit)
			require.NoError(t, q.Close())
			continue
		}
		assert.ErrorIs(t, err, blockstore.ErrInvalidArgument, "Open with ratio %v", bad)
	}
}

// The ratio is stored with two decimals (×100): a ratio with two decimals must come back as set.
func TestOverProvisionRatioPrecision(t *testing.T) {
	for _, ratio := range []float64{2.3, 1.15, 4.35} {
		p, path := mustCreate(t, 8<<20, blockstore.Options{OverProvisionRatio: ratio})
		assert.InDelta(t, ratio, p.Stats().OverProvisionRatio, 1e-9, "ratio %v at creation", ratio)
		require.NoError(t, p.Close())
		p, err := blockstore.Open(path, blockstore.Options{})
		require.NoError(t, err)
		assert.InDelta(t, ratio, p.Stats().OverProvisionRatio, 1e-9, "ratio %v after reopen", ratio)
		require.NoError(t, p.Close())
	}
}

// ---- Discard frees space ----

// allocatedBytes returns the bytes the file system has allocated to the file at path.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	st, ok := fi.Sys().(*syscall.Stat_t)
	require.True(t, ok)
	return st.Blocks * 512
}

func TestDiscardFreesSpace(t *testing.T) {
	p, path := mustCreate(t, 64<<20, blockstore.Options{})
	bs := p.BlockSize()
	info, err := p.CreateVolume("v", 32<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	data := pattern(7, 16<<20)
	_, err = vol.WriteAt(data, 0)
	require.NoError(t, err)
	mustCheck(t, p) // checkpoint: every block is durable and accounted for

	used0, file0 := p.Stats().UsedBytes, allocatedBytes(t, path)
	require.GreaterOrEqual(t, used0, int64(16<<20))
	require.GreaterOrEqual(t, file0, int64(16<<20), "the pool file holds the data")

	// Discard 8 MiB (not block-aligned at either end), then Flush.
	require.NoError(t, vol.Discard(1000, 8<<20))
	require.NoError(t, p.Flush())
	used1, file1 := p.Stats().UsedBytes, allocatedBytes(t, path)
	// The whole blocks inside the range, less some slack for tree nodes copied on write (freed
	// only at the next checkpoint) and journal blocks written for the first time.
	freed := int64(8<<20) - 32*int64(bs)
	assert.GreaterOrEqual(t, used0-used1, freed, "UsedBytes goes down by the discarded blocks (%d -> %d)", used0, used1)
	assert.GreaterOrEqual(t, file0-file1, freed, "the pool file's allocation goes down: holes punched (%d -> %d)", file0, file1)

	want := bytes.Clone(data)
	clear(want[1000 : 1000+8<<20])
	mustEqual(t, mustRead(t, vol, 0, len(want)), want, "after discard")
	mustCheck(t, p)
	st := p.Stats()
	assert.Equal(t, st.PhysicalBytes-st.UsedBytes, st.FreeBytes)

	// Blocks a snapshot holds are not freed by a discard, only when the snapshot goes.
	snap, err := p.CreateSnapshot(info.ID, "")
	require.NoError(t, err)
	require.NoError(t, vol.WriteZeroes(12<<20, 4<<20))
	require.NoError(t, p.Flush())
	used2 := p.Stats().UsedBytes
	assert.InDelta(t, float64(used1), float64(used2), float64(64*bs), "a snapshot keeps the discarded blocks")
	sv, err := p.SnapshotView(snap.ID)
	require.NoError(t, err)
	mustEqual(t, mustRead(t, sv, 12<<20, 4<<20), want[12<<20:16<<20], "snapshot after the volume's discard")
	require.NoError(t, p.DeleteSnapshot(snap.ID))
	require.NoError(t, p.Flush())
	used3 := p.Stats().UsedBytes
	assert.GreaterOrEqual(t, used2-used3, int64(4<<20), "deleting the snapshot frees them (%d -> %d)", used2, used3)
	clear(want[12<<20 : 16<<20])
	mustEqual(t, mustRead(t, vol, 0, len(want)), want, "after the second discard")
}

// A discard within one block zeroes just that range.
func TestDiscardPartialBlock(t *testing.T) {
	p, _ := mustCreate(t, 16<<20, blockstore.Options{})
	info, err := p.CreateVolume("v", 1<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	want := pattern(3, 3*4096)
	_, err = vol.WriteAt(want, 0)
	require.NoError(t, err)
	require.NoError(t, vol.Discard(100, 1000))
	clear(want[100:1100])
	require.NoError(t, vol.Discard(4000, 200))
	clear(want[4000:4200])
	mustEqual(t, mustRead(t, vol, 0, len(want)), want, "partial discards")
}

// ---- validation errors ----

func TestValidationErrors(t *testing.T) {
	p, _ := mustCreate(t, 16<<20, blockstore.Options{})
	bs := int64(p.BlockSize())
	ia, err := p.CreateVolume("a", 1<<20)
	require.NoError(t, err)
	ib, err := p.CreateVolume("b", 1<<20)
	require.NoError(t, err)
	va, err := p.Volume(ia.ID)
	require.NoError(t, err)
	content := pattern(1, 1<<20)
	_, err = va.WriteAt(content, 0)
	require.NoError(t, err)
	sa, err := p.CreateSnapshot(ia.ID, "sa")
	require.NoError(t, err)
	sb, err := p.CreateSnapshot(ib.ID, "sb")
	require.NoError(t, err)
	sva, err := p.SnapshotView(sa.ID)
	require.NoError(t, err)
	const noVol, noSnap = blockstore.VolumeID(999), blockstore.SnapshotID(999)
	long := strings.Repeat("n", 256)
	size := int64(1 << 20)

	errOf := func(_ int, err error) error { return err }
	infoErr := func(_ blockstore.VolumeInfo, err error) error { return err }
	snapErr := func(_ blockstore.SnapshotInfo, err error) error { return err }
	extErr := func(_ []blockstore.Extent, err error) error { return err }

	cases := []struct {
		name string
		err  error
		want error
	}{
		// Offsets and ranges.
		{"read at a negative offset", errOf(va.ReadAt(make([]byte, 10), -1)), blockstore.ErrInvalidArgument},
		{"snapshot read at a negative offset", errOf(sva.ReadAt(make([]byte, 10), -bs)), blockstore.ErrInvalidArgument},
		{"write past the end", errOf(va.WriteAt(make([]byte, bs), size-100)), blockstore.ErrOutOfRange},
		{"write starting at the end", errOf(va.WriteAt(make([]byte, 1), size)), blockstore.ErrOutOfRange},
		{"write far past the end", errOf(va.WriteAt(make([]byte, 1), math.MaxInt64)), blockstore.ErrOutOfRange},
		{"discard past the end", va.Discard(size-bs, 2*bs), blockstore.ErrOutOfRange},
		{"discard of a negative length", va.Discard(0, -bs), blockstore.ErrInvalidArgument},
		// Sizes.
		{"unaligned volume size", infoErr(p.CreateVolume("x", bs+1)), blockstore.ErrInvalidArgument},
		{"zero volume size", infoErr(p.CreateVolume("x", 0)), blockstore.ErrInvalidArgument},
		{"negative volume size", infoErr(p.CreateVolume("x", -bs)), blockstore.ErrInvalidArgument},
		{"huge volume size", infoErr(p.CreateVolume("x", bs<<41)), blockstore.ErrInvalidArgument},
		{"unaligned grow", p.GrowVolume(ia.ID, size+1), blockstore.ErrInvalidArgument},
		{"shrinking grow", p.GrowVolume(ia.ID, size-bs), blockstore.ErrInvalidArgument},
		{"negative grow", p.GrowVolume(ia.ID, -bs), blockstore.ErrInvalidArgument},
		{"clone smaller than its snapshot", infoErr(p.Clone(sa.ID, "x", size-bs)), blockstore.ErrInvalidArgument},
		{"clone of unaligned size", infoErr(p.Clone(sa.ID, "x", size+1)), blockstore.ErrInvalidArgument},
		{"clone of negative size", infoErr(p.Clone(sa.ID, "x", -1)), blockstore.ErrInvalidArgument},
		{"volume clone smaller than its source", infoErr(p.CloneVolume(ia.ID, "x", size-bs)), blockstore.ErrInvalidArgument},
		// Names.
		{"volume name too long", infoErr(p.CreateVolume(long, bs)), blockstore.ErrInvalidArgument},
		{"volume name not UTF-8", infoErr(p.CreateVolume("a\xff", bs)), blockstore.ErrInvalidArgument},
		{"snapshot name too long", snapErr(p.CreateSnapshot(ia.ID, long)), blockstore.ErrInvalidArgument},
		{"clone name too long", infoErr(p.Clone(sa.ID, long, 0)), blockstore.ErrInvalidArgument},
		{"volume clone name too long", infoErr(p.CloneVolume(ia.ID, long, 0)), blockstore.ErrInvalidArgument},
		{"duplicate volume name", infoErr(p.CreateVolume("a", bs)), blockstore.ErrExists},
		{"duplicate snapshot name", snapErr(p.CreateSnapshot(ib.ID, "sa")), blockstore.ErrExists},
		{"clone with a taken name", infoErr(p.Clone(sa.ID, "b", 0)), blockstore.ErrExists},
		{"volume clone with a taken name", infoErr(p.CloneVolume(ia.ID, "b", 0)), blockstore.ErrExists},
		// Revert.
		{"revert to another volume's snapshot", p.Revert(ia.ID, sb.ID), blockstore.ErrInvalidArgument},
		// Unknown IDs and names.
		{"Volume", func() error { _, err := p.Volume(noVol); return err }(), blockstore.ErrNotFound},
		{"VolumeInfo", infoErr(p.VolumeInfo(noVol)), blockstore.ErrNotFound},
		{"LookupVolume", infoErr(p.LookupVolume("nope")), blockstore.ErrNotFound},
		{"LookupVolume empty name", infoErr(p.LookupVolume("")), blockstore.ErrNotFound},
		{"DeleteVolume", p.DeleteVolume(noVol), blockstore.ErrNotFound},
		{"GrowVolume", p.GrowVolume(noVol, size), blockstore.ErrNotFound},
		{"CreateSnapshot", snapErr(p.CreateSnapshot(noVol, "")), blockstore.ErrNotFound},
		{"SnapshotInfo", snapErr(p.SnapshotInfo(noSnap)), blockstore.ErrNotFound},
		{"LookupSnapshot", snapErr(p.LookupSnapshot("nope")), blockstore.ErrNotFound},
		{"SnapshotView", func() error { _, err := p.SnapshotView(noSnap); return err }(), blockstore.ErrNotFound},
		{"DeleteSnapshot", p.DeleteSnapshot(noSnap), blockstore.ErrNotFound},
		{"Clone", infoErr(p.Clone(noSnap, "", 0)), blockstore.ErrNotFound},
		{"CloneVolume", infoErr(p.CloneVolume(noVol, "", 0)), blockstore.ErrNotFound},
		{"Revert unknown snapshot", p.Revert(ia.ID, noSnap), blockstore.ErrNotFound},
		{"Revert unknown volume", p.Revert(noVol, sa.ID), blockstore.ErrNotFound},
		{"DiffSnapshots from", extErr(p.DiffSnapshots(noSnap, sa.ID)), blockstore.ErrNotFound},
		{"DiffSnapshots to", extErr(p.DiffSnapshots(sa.ID, noSnap)), blockstore.ErrNotFound},
		{"DiffVolume snapshot", extErr(p.DiffVolume(noSnap, ia.ID)), blockstore.ErrNotFound},
		{"DiffVolume volume", extErr(p.DiffVolume(sa.ID, noVol)), blockstore.ErrNotFound},
		{"AllocatedExtents", extErr(p.AllocatedExtents(noSnap)), blockstore.ErrNotFound},
		{"SnapshotLogBytes", func() error { _, err := p.SnapshotLogBytes(noSnap); return err }(), blockstore.ErrNotFound},
	}
	for _, tc := range cases {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: got %v, want an error wrapping %q", tc.name, tc.err, tc.want)
		}
	}

	// Nothing above changed anything.
	mustEqual(t, mustRead(t, va, 0, len(content)), content, "volume a")
	require.Len(t, p.Volumes(), 2)
	require.Len(t, p.Snapshots(), 2)
	for _, id := range []blockstore.VolumeID{ia.ID, ib.ID} {
		info, err := p.VolumeInfo(id)
		require.NoError(t, err)
		require.Equal(t, size, info.Size)
	}

	// Reads at the end follow io.ReaderAt.
	buf := make([]byte, 100)
	n, err := va.ReadAt(buf, size-10)
	assert.Equal(t, 10, n)
	assert.Equal(t, io.EOF, err)
	n, err = va.ReadAt(buf, size)
	assert.Equal(t, 0, n)
	assert.Equal(t, io.EOF, err)

	// The longest name is fine; names are free again once deleted.
	_, err = p.CreateVolume(long[:255], bs)
	require.NoError(t, err)
	require.NoError(t, p.DeleteSnapshot(sa.ID))
	_, err = p.CreateSnapshot(ib.ID, "sa")
	require.NoError(t, err)

	// Handles of deleted volumes and snapshots.
	vb, err := p.Volume(ib.ID)
	require.NoError(t, err)
	svb, err := p.SnapshotView(sb.ID)
	require.NoError(t, err)
	require.NoError(t, p.DeleteSnapshot(sb.ID))
	require.NoError(t, p.DeleteVolume(ib.ID))
	assert.ErrorIs(t, errOf(vb.ReadAt(buf, 0)), blockstore.ErrNotFound)
	assert.ErrorIs(t, errOf(svb.ReadAt(buf, 0)), blockstore.ErrNotFound)
	assert.ErrorIs(t, p.DeleteVolume(ib.ID), blockstore.ErrNotFound, "second delete")
	_, err = p.CreateVolume("b", bs)
	require.NoError(t, err, "the name of a deleted volume is free")
}

// ErrInvalidArgument is documented for an offset that breaks a rule, and ReadAt returns it for a
// negative offset: writes and discards must say the same, not ErrOutOfRange (which is for I/O
// past the end of the volume).
func TestNegativeOffsetIsInvalidArgument(t *testing.T) {
	p, _ := mustCreate(t, 16<<20, blockstore.Options{})
	info, err := p.CreateVolume("a", 1<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	_, err = vol.ReadAt(make([]byte, 10), -1)
	assert.ErrorIs(t, err, blockstore.ErrInvalidArgument, "ReadAt")
	_, err = vol.WriteAt(make([]byte, 10), -1)
	assert.ErrorIs(t, err, blockstore.ErrInvalidArgument, "WriteAt")
	assert.ErrorIs(t, vol.Discard(-4096, 4096), blockstore.ErrInvalidArgument, "Discard")
}

// I/O through the handle of a deleted volume fails with ErrNotFound, for reads, writes and
// discards alike (the driver maps the sentinel to a gRPC code).
func TestDeletedVolumeHandle(t *testing.T) {
	p, _ := mustCreate(t, 16<<20, blockstore.Options{})
	info, err := p.CreateVolume("a", 1<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	require.NoError(t, p.DeleteVolume(info.ID))
	_, err = vol.ReadAt(make([]byte, 10), 0)
	assert.ErrorIs(t, err, blockstore.ErrNotFound, "ReadAt")
	_, err = vol.WriteAt(make([]byte, 10), 0)
	assert.ErrorIs(t, err, blockstore.ErrNotFound, "WriteAt")
	assert.ErrorIs(t, vol.Discard(0, 4096), blockstore.ErrNotFound, "Discard")
}

func TestClosedPool(t *testing.T) {
	p, _ := mustCreate(t, 16<<20, blockstore.Options{})
	info, err := p.CreateVolume("a", 1<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	snap, err := p.CreateSnapshot(info.ID, "")
	require.NoError(t, err)
	sv, err := p.SnapshotView(snap.ID)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	assert.ErrorIs(t, p.Close(), blockstore.ErrClosed)
	_, err = vol.ReadAt(make([]byte, 10), 0)
	assert.ErrorIs(t, err, blockstore.ErrClosed)
	_, err = vol.WriteAt(make([]byte, 10), 0)
	assert.ErrorIs(t, err, blockstore.ErrClosed)
	_, err = sv.ReadAt(make([]byte, 10), 0)
	assert.ErrorIs(t, err, blockstore.ErrClosed)
	assert.ErrorIs(t, p.Flush(), blockstore.ErrClosed)
	_, err = p.CreateVolume("b", 1<<20)
	assert.ErrorIs(t, err, blockstore.ErrClosed)
	_, err = p.Check(false)
	assert.ErrorIs(t, err, blockstore.ErrClosed)
}

// Large writes into unmapped regions racing for the last free blocks of a pool with deep trees:
// each leaves room for its own tree nodes when it allocates its data, but not for the nodes of
// the writes allocating at the same time. Whatever they return, the pool must stay usable:
// Flush, Check, Discard and Close work, and it reopens clean with every acknowledged write.
func TestSpaceConcurrentLargeWrites(t *testing.T) {
	const writers = 8
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	bs := 4096
	iterations := 12
	if testing.Short() {
		iterations = 4
	}
	for it := range iterations {
		t.Run(fmt.Sprintf("iteration %d", it), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pool")
			o := opts
			o.Size = 8 << 20
			p, err := blockstore.Create(path, o)
			require.NoError(t, err)
			closed := false
			defer func() {
				if !closed {
					p.Close()
				}
			}()
			info, err := p.CreateVolume("v", 64<<20)
			require.NoError(t, err)
			vol, err := p.Volume(info.ID)
			require.NoError(t, err)
			prefix := pattern(1, (1+it%3)<<20)
			_, err = vol.WriteAt(prefix, 0)
			require.NoError(t, err)
			mustCheck(t, p)
			free := int(p.Stats().FreeBytes) / bs
			k := free / (2 + it%4) // each alone fits; together they do not
			data := make([][]byte, writers)
			errs := make([]error, writers)
			var wg sync.WaitGroup
			for w := range writers {
				data[w] = pattern(byte(10+w), k*bs)
				wg.Go(func() { _, errs[w] = vol.WriteAt(data[w], int64(8+6*w)<<20) })
			}
			wg.Wait()
			acked := 0
			for _, err := range errs {
				if err == nil {
					acked++
				} else {
					requireNoSpace(t, err)
				}
			}
			t.Logf("%d free blocks, %d writers of %d blocks: %d acknowledged; %d bytes free now", free, writers, k, acked, p.Stats().FreeBytes)
			assert.NoError(t, p.Flush(), "Flush")
			rep, err := p.Check(false)
			if assert.NoError(t, err, "Check, stats %+v", p.Stats()) {
				assert.True(t, rep.OK(), "%v", rep)
			}
			assert.NoError(t, vol.Discard(0, 64<<10), "Discard on a full pool, stats %+v", p.Stats())
			closed = true
			assert.NoError(t, p.Close(), "Close")
			p, err = blockstore.Open(path, blockstore.Options{})
			require.NoError(t, err, "reopen")
			closed = false
			mustCheck(t, p)
			vol, err = p.Volume(info.ID)
			require.NoError(t, err)
			mustEqual(t, mustRead(t, vol, 64<<10, len(prefix)-64<<10), prefix[64<<10:], "data written before")
			for w := range writers {
				if errs[w] == nil {
					mustEqual(t, mustRead(t, vol, int64(8+6*w)<<20, len(data[w])), data[w], fmt.Sprintf("acknowledged write %d", w))
				}
			}
		})
	}
}

// A thick (preallocated) pool frees discarded blocks for reuse but keeps their space in the file,
// across a reopen too.
func TestThickPoolKeepsFileSpace(t *testing.T) {
	p, path := mustCreate(t, 32<<20, blockstore.Options{Preallocate: true})
	file0 := allocatedBytes(t, path)
	require.GreaterOrEqual(t, file0, int64(32<<20), "preallocated")
	info, err := p.CreateVolume("v", 16<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	_, err = vol.WriteAt(pattern(3, 8<<20), 0)
	require.NoError(t, err)
	mustCheck(t, p)
	used0 := p.Stats().UsedBytes
	require.NoError(t, vol.Discard(0, 8<<20))
	mustCheck(t, p)
	assert.GreaterOrEqual(t, used0-p.Stats().UsedBytes, int64(8<<20)-64*4096, "the blocks are free in the pool")
	assertThick(t, path, file0)
	require.NoError(t, p.Close())

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	vol, err = p.Volume(info.ID)
	require.NoError(t, err)
	_, err = vol.WriteAt(pattern(4, 4<<20), 0)
	require.NoError(t, err)
	require.NoError(t, vol.Discard(0, 4<<20))
	mustCheck(t, p)
	assertThick(t, path, file0)
}

// assertThick asserts that the pool file at path is still fully allocated: no range of it is a
// hole, and it holds at least the bytes it held when preallocated. File systems may add blocks of
// their own (an extent-tree block, say), so the allocation is compared with >=, never exactly.
func assertThick(t *testing.T, path string, preallocated int64) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	covered, err := fiemapCovered(f, fi.Size())
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
		// No FIEMAP (tmpfs, say): there, preallocated ranges are not reported as holes.
		var hole int64
		hole, err = unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
		covered = hole
	}
	require.NoError(t, err)
	assert.Equal(t, fi.Size(), covered, "bytes of the pool file from 0 up to its first hole")
	assert.GreaterOrEqual(t, allocatedBytes(t, path), preallocated, "allocated bytes of the pool file")
}

// fiemapCovered returns how many bytes from the start of f are covered by extents without a gap,
// written or preallocated (FIEMAP: unlike SEEK_HOLE, it reports preallocated unwritten extents,
// which ext4 and xfs show as holes to SEEK_HOLE).
func fiemapCovered(f *os.File, size int64) (int64, error) {
	const (
		fsIocFiemap    = 0xC020660B // _IOWR('f', 11, struct fiemap)
		fiemapFlagSync = 1
		headerSize     = 32
		extentSize     = 56
		extentCount    = 256
		extentLast     = 1
	)
	var covered int64
	for covered < size {
		buf := make([]byte, headerSize+extentCount*extentSize)
		binary.NativeEndian.PutUint64(buf[0:], uint64(covered))
		binary.NativeEndian.PutUint64(buf[8:], uint64(size-covered))
		binary.NativeEndian.PutUint32(buf[16:], fiemapFlagSync)
		binary.NativeEndian.PutUint32(buf[24:], extentCount)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			return 0, errno
		}
		n := binary.NativeEndian.Uint32(buf[20:])
		if n == 0 {
			return covered, nil
		}
		for i := range n {
			e := buf[headerSize+int(i)*extentSize:]
			logical, length := int64(binary.NativeEndian.Uint64(e[0:])), int64(binary.NativeEndian.Uint64(e[16:]))
			if logical > covered {
				return covered, nil // a gap: a hole
			}
			covered = max(covered, logical+length)
			if binary.NativeEndian.Uint32(e[40:])&extentLast != 0 {
				return min(covered, size), nil
			}
		}
	}
	return min(covered, size), nil
}
