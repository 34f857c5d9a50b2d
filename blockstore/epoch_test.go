package blockstore_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// TestCrashJournalLostFirstBlock: writes whose records span journal blocks 0 and 1 are cut by
// a power loss before any Flush, which drops block 0 and keeps block 1. The records of block 1
// were never committed and can never be replayed (their start is gone), yet they stay in the
// journal. After a reopen, a smaller commit and a second power loss, recovery must replay
// exactly the second commit: neither refuse to open (a record with a higher LSN than expected
// past the new commit) nor replay the lost records over the newer data.
func TestCrashJournalLostFirstBlock(t *testing.T) {
	for _, tc := range []struct {
		name string
		// second returns what the second commit does, given how many of the lost commit's
		// records fit in journal block 0: the indices (into the lost commit's writes) of the
		// blocks it rewrites, and of those it discards.
		second func(perBlock, lost int) (rewrite, discard []int)
	}{
		// One record: the lost commit's block 1 follows with LSNs far past it.
		{"one record", func(_, lost int) ([]int, []int) { return []int{lost - 1}, nil }},
		// As many records as fill block 0: block 1's records continue the LSNs exactly, and
		// they map blocks that the second commit allocated again.
		{"a full block of writes", func(perBlock, lost int) ([]int, []int) { return span(lost-perBlock, lost), nil }},
		// As many smaller records: block 1's records continue the LSNs exactly, and would map
		// again blocks that the second commit discarded.
		{"as many discards", func(perBlock, lost int) ([]int, []int) { return nil, span(perBlock, perBlock+perBlock) }},
	} {
		t.Run(tc.name, func(t *testing.T) { lostFirstJournalBlock(t, tc.second) })
	}
}

func span(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func lostFirstJournalBlock(t *testing.T, second func(perBlock, lost int) (rewrite, discard []int)) {
	const (
		lost  = 200 // single-block writes in the lost commit, one record each
		first = 128 // first logical block written: every LBN and PBN is a 2-byte varint
	)
	opts := blockstore.Options{JournalSize: 128 * modelBS}
	f := faultfs.New(8 << 20)
	p, err := blockstore.CreateOn(f, opts)
	require.NoError(t, err)
	info, err := p.CreateVolume("v", 1024*modelBS)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	// An older epoch's records in the journal, then a checkpoint that restarts it.
	early := pattern(1, 8*modelBS)
	for i := range 4 {
		_, err := vol.WriteAt(early[i*2*modelBS:(i+1)*2*modelBS], int64(i)*2*modelBS)
		require.NoError(t, err)
		require.NoError(t, p.Flush())
	}
	mustCheck(t, p)
	ckptLSN := p.Stats().CheckpointLSN
	lbn := func(i int) int64 { return int64(first + 2*i) } // never adjacent: one record each
	for i := range lost {
		_, err := vol.WriteAt(pattern(byte(50+i), modelBS), lbn(i)*modelBS)
		require.NoError(t, err)
	}
	sb := readFaultSuperblock(t, f)
	// The records are in the journal (in the page cache); power goes before a Flush.
	jblock := func(i uint64) int64 { return int64(sb.JournalStart+i) * int64(sb.BlockSize) }
	f2 := f.RestartKeeping(func(off int64) bool { return off != jblock(0) })

	// Block 1 holds the rest of the lost records.
	blk := make([]byte, sb.BlockSize)
	_, err = f2.ReadAt(blk, jblock(1))
	require.NoError(t, err)
	r, _, end, err := format.DecodeRecord(blk)
	require.NoError(t, err)
	require.False(t, end)
	perBlock := int(r.LSN - ckptLSN - 1) // the lost records that were in block 0
	require.Greater(t, perBlock, lost/2, "block 1 starts with LSN %d after checkpoint LSN %d", r.LSN, ckptLSN)
	require.Less(t, perBlock, lost)

	p2, err := blockstore.OpenOn(f2, opts)
	require.NoError(t, err, "the lost writes were never flushed; the pool opens without them")
	require.Equal(t, 0, p2.Recovery().Records, "nothing of the lost writes is replayed")
	vol2, err := p2.Volume(info.ID)
	require.NoError(t, err)
	want := make([]byte, 1024*modelBS)
	copy(want, early)
	rewrite, discard := second(perBlock, lost)
	for _, i := range rewrite {
		data := pattern(byte(200+i), modelBS)
		_, err := vol2.WriteAt(data, lbn(i)*modelBS)
		require.NoError(t, err)
		copy(want[lbn(i)*modelBS:], data)
	}
	for _, i := range discard {
		require.NoError(t, vol2.Discard(lbn(i)*modelBS, modelBS))
	}
	require.NoError(t, p2.Flush(), "the second commit is acknowledged")

	// A second power loss: the second commit must come back, and nothing else.
	f3 := f2.Restart(rand.New(rand.NewPCG(1, 2)), faultfs.Loss{})
	p3, err := blockstore.OpenOn(f3, opts)
	require.NoError(t, err, "recovery after the second crash")
	defer func() { require.NoError(t, p3.Close()) }()
	vol3, err := p3.Volume(info.ID)
	require.NoError(t, err)
	got := mustRead(t, vol3, 0, len(want))
	for i := 0; i < len(want); i += modelBS {
		mustEqual(t, got[i:i+modelBS], want[i:i+modelBS], fmt.Sprintf("block %d", i/modelBS))
	}
	require.Equal(t, len(rewrite)+len(discard), p3.Recovery().Records, "recovery replays the second commit's records only")
	mustCheck(t, p3)
}

// readFaultSuperblock returns the newest valid superblock of a faultfs file.
func readFaultSuperblock(t *testing.T, f *faultfs.File) *format.Superblock {
	t.Helper()
	var best *format.Superblock
	buf := make([]byte, format.DefaultBlockSize)
	for s := range 2 {
		_, err := f.ReadAt(buf, int64(s)*format.DefaultBlockSize)
		require.NoError(t, err)
		if sb, err := format.DecodeSuperblock(buf); err == nil && (best == nil || sb.Generation > best.Generation) {
			best = sb
		}
	}
	require.NotNil(t, best, "no valid superblock")
	return best
}

// TestOpenOldPools opens pools written by builds of format versions 1 (journal records without
// epochs) and 2 (records written at commit, no commit records); testdata/mkold made them,
// killed after a Flush, so their journals hold records past the last checkpoint: they are
// replayed, the recovery checkpoint upgrades the pool to the current version, and it works on
// from there.
func TestOpenOldPools(t *testing.T) {
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) { openOldPool(t, version) })
	}
}

func openOldPool(t *testing.T, version int) {
	gz, err := os.Open(fmt.Sprintf("testdata/pool-v%d.img.gz", version))
	require.NoError(t, err)
	defer gz.Close()
	zr, err := gzip.NewReader(gz)
	require.NoError(t, err)
	img, err := io.ReadAll(zr)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "pool")
	require.NoError(t, os.WriteFile(path, img, 0o600))
	for s := range 2 {
		sb, err := format.DecodeSuperblock(img[s*format.DefaultBlockSize:])
		require.NoError(t, err)
		require.EqualValues(t, version, sb.Version, "the fixture's version")
	}

	// What mkold wrote.
	wantVol := make([]byte, 64*modelBS)
	copy(wantVol, fill(1, 16*modelBS))
	wantSnap := bytes.Clone(wantVol)
	copy(wantVol[4*modelBS:], fill(2, 8*modelBS))
	copy(wantVol[40*modelBS:], fill(3, 4*modelBS))
	clear(wantVol[12*modelBS : 14*modelBS])

	for round := range 2 {
		p, err := blockstore.Open(path, blockstore.Options{})
		require.NoError(t, err, "round %d", round)
		if round == 0 {
			require.Equal(t, 3, p.Recovery().Records, "two writes and a discard after the last checkpoint")
		} else {
			require.Zero(t, p.Recovery().Records)
		}
		vi, err := p.LookupVolume("v")
		require.NoError(t, err)
		vol, err := p.Volume(vi.ID)
		require.NoError(t, err)
		mustEqual(t, mustRead(t, vol, 0, len(wantVol)), wantVol, "volume")
		si, err := p.LookupSnapshot("s")
		require.NoError(t, err)
		sv, err := p.SnapshotView(si.ID)
		require.NoError(t, err)
		mustEqual(t, mustRead(t, sv, 0, len(wantSnap)), wantSnap, "snapshot")
		mustCheck(t, p)
		// Records of the current format from here on.
		_, err = vol.WriteAt(fill(byte(10+round), modelBS), 60*modelBS)
		require.NoError(t, err)
		copy(wantVol[60*modelBS:], fill(byte(10+round), modelBS))
		require.NoError(t, p.Close())

		disk, err := os.ReadFile(path)
		require.NoError(t, err)
		for s := range 2 {
			if sb, err := format.DecodeSuperblock(disk[s*format.DefaultBlockSize:]); err == nil && sb.Generation > 1 {
				require.EqualValues(t, format.Version, sb.Version, "slot %d, generation %d: upgraded", s, sb.Generation)
			}
		}
	}
}

// fill is the pattern testdata/mkold wrote.
func fill(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}
