package blockstore_test

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
)

// A diff costs what changed, not the volume's size: on a volume with thousands of mapped leaves,
// three changed blocks are found by comparing a few nodes per changed path.
func TestDiffCostsWhatChanged(t *testing.T) {
	p, _ := mustCreate(t, 256<<20, blockstore.Options{OverProvisionRatio: 1000})
	const bs = 4096
	info, err := p.CreateVolume("big", 64<<30)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	block := pattern(5, bs)
	const stride = 2 << 20 // one block per leaf (508 entries of 4 KiB cover ~2 MiB)
	var mapped []blockstore.Extent
	for off := int64(0); off < 8<<30; off += stride {
		_, err := vol.WriteAt(block, off)
		require.NoError(t, err)
		mapped = append(mapped, blockstore.Extent{Offset: off, Length: bs})
	}
	a, err := p.CreateSnapshot(info.ID, "a")
	require.NoError(t, err)

	changed := []int64{3 * stride, 1000*stride + 8*bs, 60 << 30} // an existing block, a new one nearby, one far away
	for _, off := range changed {
		_, err := vol.WriteAt(pattern(6, bs), off)
		require.NoError(t, err)
	}
	b, err := p.CreateSnapshot(info.ID, "b")
	require.NoError(t, err)
	want := []blockstore.Extent{{Offset: changed[0], Length: bs}, {Offset: changed[1], Length: bs}, {Offset: changed[2], Length: bs}}

	before := blockstore.DiffVisits(p)
	got, err := p.DiffSnapshots(a.ID, b.ID)
	require.NoError(t, err)
	require.Equal(t, want, got)
	visits := blockstore.DiffVisits(p) - before
	t.Logf("diff of %d mapped leaves with 3 changes compared %d nodes", len(mapped), visits)
	require.LessOrEqual(t, visits, uint64(3*4), "at most the changed paths (height 4) are compared")

	got, err = p.DiffVolume(a.ID, info.ID)
	require.NoError(t, err)
	require.Equal(t, want, got)
	got, err = p.DiffSnapshots(b.ID, a.ID)
	require.NoError(t, err)
	require.Equal(t, want, got, "a diff is symmetric")

	alloc, err := p.AllocatedExtents(b.ID)
	require.NoError(t, err)
	wantAlloc := append(slices.Clone(mapped), want[1], want[2])
	slices.SortFunc(wantAlloc, func(x, y blockstore.Extent) int { return int(x.Offset>>12 - y.Offset>>12) })
	require.Equal(t, wantAlloc, alloc)
}

// Diffs between trees of different heights: a clone grown past its snapshot's size.
func TestDiffAcrossHeights(t *testing.T) {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	p, _ := mustCreate(t, 32<<20, opts)
	info, err := p.CreateVolume("v", 16*4096) // height 2
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	_, err = vol.WriteAt(pattern(1, 16*4096), 0)
	require.NoError(t, err)
	snap, err := p.CreateSnapshot(info.ID, "")
	require.NoError(t, err)
	clone, err := p.Clone(snap.ID, "", 300*4096) // height 5
	require.NoError(t, err)
	cv, _ := p.Volume(clone.ID)
	got, err := p.DiffVolume(snap.ID, clone.ID)
	require.NoError(t, err)
	require.Empty(t, got, "a fresh clone, grown, equals its snapshot")
	_, err = cv.WriteAt(pattern(2, 4096), 5*4096)
	require.NoError(t, err)
	_, err = cv.WriteAt(pattern(3, 2*4096), 290*4096)
	require.NoError(t, err)
	got, err = p.DiffVolume(snap.ID, clone.ID)
	require.NoError(t, err)
	require.Equal(t, []blockstore.Extent{{Offset: 5 * 4096, Length: 4096}, {Offset: 290 * 4096, Length: 2 * 4096}}, got)
}

// Check finds a leaked block and, asked to, frees it.
func TestCheckRepairsLeaks(t *testing.T) {
	p, path := mustCreate(t, 16<<20, blockstore.Options{})
	info, err := p.CreateVolume("v", 1<<20)
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	_, err = vol.WriteAt(pattern(1, 64<<10), 0)
	require.NoError(t, err)
	mustCheck(t, p) // a checkpoint: the catalog has its blocks
	used := p.Stats().UsedBytes
	leaked := blockstore.LeakBlock(p)

	rep, err := p.Check(false)
	require.NoError(t, err)
	require.False(t, rep.OK())
	require.Equal(t, 1, rep.LeakedBlocks)
	require.Equal(t, []uint64{leaked}, rep.Leaked)
	require.Zero(t, rep.Repaired, "not without repair")

	rep, err = p.Check(true)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Repaired)
	require.Equal(t, used, p.Stats().UsedBytes)
	require.NoError(t, p.Close())

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { mustCheckClose(t, p) })
	mustCheck(t, p) // the repair is durable
	vol, _ = p.Volume(info.ID)
	mustEqual(t, mustRead(t, vol, 0, 64<<10), pattern(1, 64<<10), "data after repair")
}
