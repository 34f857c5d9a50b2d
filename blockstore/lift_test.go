package blockstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
)

// TestFullPoolLiftLeaksNothing: growing a tree by more than one level (a grow, a clone larger
// than its snapshot, a revert to a snapshot of a smaller size) allocates one new root per level.
// When the pool is full (data up to its reserve, the rest held so that one tree node fits), the
// operation fails with ErrNoSpace and leaves nothing behind: Check without repair finds no leak,
// the space used is as before, and once space is freed the same operation succeeds.
func TestFullPoolLiftLeaksNothing(t *testing.T) {
	const small = 4 * modelBS  // one leaf of fanout 4: a tree of height 1
	const large = 64 * modelBS // height 3: lifting a height-1 tree takes two new nodes
	for _, tc := range []struct {
		name string
		op   func(p *blockstore.Pool, vol blockstore.VolumeID, snap blockstore.SnapshotID) error
	}{
		{"grow", func(p *blockstore.Pool, vol blockstore.VolumeID, _ blockstore.SnapshotID) error {
			return p.GrowVolume(vol, large)
		}},
		{"clone", func(p *blockstore.Pool, _ blockstore.VolumeID, snap blockstore.SnapshotID) error {
			_, err := p.Clone(snap, "clone", large)
			return err
		}},
		{"clone volume", func(p *blockstore.Pool, vol blockstore.VolumeID, _ blockstore.SnapshotID) error {
			_, err := p.CloneVolume(vol, "clone", large)
			return err
		}},
		{"revert", func(p *blockstore.Pool, vol blockstore.VolumeID, snap blockstore.SnapshotID) error {
			return p.Revert(vol, snap)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts blockstore.Options
			blockstore.SetTestFanout(&opts, 4)
			opts.OverProvisionRatio = 100
			p, _ := mustCreate(t, 4<<20, opts)
			info, err := p.CreateVolume("v", small)
			require.NoError(t, err)
			vol, err := p.Volume(info.ID)
			require.NoError(t, err)
			data := pattern(7, small)
			_, err = vol.WriteAt(data, 0)
			require.NoError(t, err)
			snap, err := p.CreateSnapshot(info.ID, "s")
			require.NoError(t, err)
			if tc.name == "revert" {
				// The volume outgrows its snapshot, which a revert must lift to its height.
				require.NoError(t, p.GrowVolume(info.ID, large))
				_, err = vol.WriteAt(pattern(8, modelBS), large-modelBS)
				require.NoError(t, err)
			}
			// Fill the pool with data until it is full, then hold what is left for tree nodes
			// but one block.
			fill, err := p.CreateVolume("fill", 1024*modelBS)
			require.NoError(t, err)
			fv, err := p.Volume(fill.ID)
			require.NoError(t, err)
			for off := int64(0); ; off += 16 * modelBS {
				_, err := fv.WriteAt(pattern(9, 16*modelBS), off)
				if err != nil {
					require.ErrorIs(t, err, blockstore.ErrNoSpace)
					break
				}
				require.Less(t, off, int64(1024*modelBS), "the pool never filled up")
			}
			mustCheck(t, p)
			before := p.Stats()

			release := blockstore.HoldNodeBlocks(p, 1)
			err = tc.op(p, info.ID, snap.ID)
			release()
			require.ErrorIs(t, err, blockstore.ErrNoSpace, "room for one new node, two needed")
			rep := mustCheck(t, p) // no leak: fails on a node left allocated
			require.Zero(t, rep.LeakedBlocks)
			after := p.Stats()
			require.Equal(t, before.UsedBytes, after.UsedBytes, "the failed operation holds no block")
			require.Equal(t, before.Volumes, after.Volumes)
			vi, err := p.VolumeInfo(info.ID)
			require.NoError(t, err)
			want := pattern(7, small)
			if tc.name == "revert" {
				require.EqualValues(t, large, vi.Size)
				mustEqual(t, mustRead(t, vol, large-modelBS, modelBS), pattern(8, modelBS), "not reverted")
			} else {
				require.EqualValues(t, small, vi.Size, "not grown")
			}
			mustEqual(t, mustRead(t, vol, 0, small), want, "volume")

			// With space back, the same operation works.
			require.NoError(t, p.DeleteVolume(fill.ID))
			require.NoError(t, tc.op(p, info.ID, snap.ID))
			mustCheck(t, p)
		})
	}
}
