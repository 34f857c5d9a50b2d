package blockstore_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

// What survives the death of the process and what survives a power loss (journal.go): the
// journal records of the writes no Flush covered are in the page cache, which a process kill
// leaves and a power loss does not; recovery tells the two apart by the boot.

// unflushed is a pool on a faultfs file with checkpointed data and, after it, writes that no
// Flush covered: new blocks (a map record), an overwrite in place (no record) and a discard (an
// unmap record).
type unflushed struct {
	f        *faultfs.File
	p        *blockstore.Pool // left open, as by a process that dies
	id       blockstore.VolumeID
	flushed  []byte // the volume at the checkpoint
	written  []byte // after the writes
	inPlace  int64  // the block overwritten in place
	nRecords int    // records of the writes after the Flush
}

func newUnflushed(t *testing.T) *unflushed {
	u := &unflushed{f: faultfs.New(16 << 20), inPlace: 2, nRecords: 2}
	var err error
	u.p, err = blockstore.CreateOn(u.f, blockstore.Options{})
	require.NoError(t, err)
	info, err := u.p.CreateVolume("v", 64*modelBS)
	require.NoError(t, err)
	u.id = info.ID
	vol, err := u.p.Volume(u.id)
	require.NoError(t, err)
	u.flushed = make([]byte, 64*modelBS)
	copy(u.flushed, pattern(1, 16*modelBS))
	_, err = vol.WriteAt(u.flushed[:16*modelBS], 0)
	require.NoError(t, err)
	mustCheck(t, u.p) // a checkpoint: the journal holds only what follows

	u.written = bytes.Clone(u.flushed)
	for _, w := range []struct {
		lbn  int64
		data []byte
	}{{32, pattern(2, 8*modelBS)}, {u.inPlace, pattern(3, modelBS)}} {
		_, err := vol.WriteAt(w.data, w.lbn*modelBS)
		require.NoError(t, err)
		copy(u.written[w.lbn*modelBS:], w.data)
	}
	require.NoError(t, vol.Discard(8*modelBS, 4*modelBS))
	clear(u.written[8*modelBS : 12*modelBS])
	return u
}

func (u *unflushed) open(t *testing.T, f *faultfs.File) (*blockstore.Pool, []byte) {
	t.Helper()
	p, err := blockstore.OpenOn(f, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	mustCheck(t, p)
	vol, err := p.Volume(u.id)
	require.NoError(t, err)
	return p, mustRead(t, vol, 0, len(u.flushed))
}

// A process that dies after its writes returned, before any Flush: under the same boot,
// recovery replays every record it wrote, and its checkpoint makes them durable.
func TestUnflushedWritesSurviveProcessKill(t *testing.T) {
	u := newUnflushed(t)
	f := u.f.AfterKill()
	p, got := u.open(t, f)
	rec := p.Recovery()
	require.True(t, rec.SameBoot, "%+v", rec)
	require.Equal(t, u.nRecords, rec.Records, "%+v", rec)
	require.Zero(t, rec.Dropped)
	mustEqual(t, got, u.written, "after the kill")

	_, got = u.open(t, f.Restart(rand.New(rand.NewPCG(1, 2)), faultfs.Loss{}))
	mustEqual(t, got, u.written, "after the recovery checkpoint and a power loss")
}

// A power loss before any Flush: whatever of the writes reached the disk, the records no
// commit covered are not replayed, since their data may be missing.
func TestPowerLossDropsUncommittedRecords(t *testing.T) {
	for _, c := range []struct {
		name string
		data bool // whether the data pages reached the disk too
	}{{"records without their data", false}, {"records and their data", true}} {
		t.Run(c.name, func(t *testing.T) {
			u := newUnflushed(t)
			sb := readFaultSuperblock(t, u.f)
			journal := func(off int64) bool {
				return off >= int64(sb.JournalStart*uint64(sb.BlockSize)) && off < int64(sb.RCStart*uint64(sb.BlockSize))
			}
			f := u.f.RestartKeeping(func(off int64) bool { return c.data || journal(off) })
			p, got := u.open(t, f)
			rec := p.Recovery()
			require.False(t, rec.SameBoot, "%+v", rec)
			require.Zero(t, rec.Records, "%+v", rec)
			require.Equal(t, u.nRecords, rec.Dropped, "%+v", rec)
			want := bytes.Clone(u.flushed)
			if c.data { // written in place: no record to drop
				copy(want[u.inPlace*modelBS:], u.written[u.inPlace*modelBS:(u.inPlace+1)*modelBS])
			}
			mustEqual(t, got, want, "after the power loss")
		})
	}
}

// A pool whose fdatasync failed may have lost pages the kernel could not write back: it
// forgets its boot, and recovery under the same boot replays only what commits covered.
func TestFailedPoolForgetsBoot(t *testing.T) {
	u := newUnflushed(t)
	u.f.FailAfter(0) // the Flush's first operation: its fdatasync
	require.ErrorIs(t, u.p.Flush(), blockstore.ErrFailed)
	kind, _ := u.f.Injected()
	require.Equal(t, "sync", kind)
	require.Zero(t, readFaultSuperblock(t, u.f).Boot, "the failed pool's superblock names no boot")

	p, got := u.open(t, u.f.AfterKill())
	rec := p.Recovery()
	require.False(t, rec.SameBoot, "%+v", rec)
	// The failed fdatasync left each sector of the journal's tail block on the disk or not:
	// some of the records may be gone, and none of those left is replayed.
	require.Zero(t, rec.Records, "%+v", rec)
	// The block written in place may hold either version, sector by sector; the rest is what
	// was flushed.
	at := u.inPlace * modelBS
	mustEqual(t, got[:at], u.flushed[:at], "before the block written in place")
	mustEqual(t, got[at+modelBS:], u.flushed[at+modelBS:], "after the block written in place")
}
