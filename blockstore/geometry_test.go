package blockstore_test

import (
	"testing"

	"github.com/dataimage/dataimage/blockstore"
)

// TestGeometry checks the layout a pool reports against what Stats counts and against the trees
// it builds: the regions add up to the pool, and a leaf maps NodeEntries blocks.
func TestGeometry(t *testing.T) {
	for _, bs := range []int{4 << 10, 16 << 10} {
		const size = 64 << 20
		p, _ := mustCreate(t, size, blockstore.Options{BlockSize: bs})
		g := p.Geometry()
		if g.BlockSize != bs || g.Blocks != size/uint64(bs) {
			t.Fatalf("block size %d: geometry %+v: block size or block count wrong", bs, g)
		}
		st := p.Stats()
		data := g.Blocks - g.DataStart
		if st.PhysicalBytes != int64(data)*int64(bs) {
			t.Errorf("block size %d: PhysicalBytes %d, want (Blocks − DataStart) × block size = %d", bs, st.PhysicalBytes, data*uint64(bs))
		}
		if fixed := (2 + g.JournalBlocks + 2*g.RefcountPages) * uint64(bs); st.MetadataBytes != int64(fixed) {
			t.Errorf("block size %d: MetadataBytes of an empty pool %d, want 2 superblocks + journal + 2 slots per refcount page = %d", bs, st.MetadataBytes, fixed)
		}
		if g.DataStart != 2+g.JournalBlocks+2*g.RefcountPages {
			t.Errorf("block size %d: DataStart %d, want 2 + %d + 2 × %d", bs, g.DataStart, g.JournalBlocks, g.RefcountPages)
		}
		if per := uint64(g.RefcountsPerPage); g.RefcountPages*per < data || (g.RefcountPages-1)*per >= data {
			t.Errorf("block size %d: %d refcount pages of %d counts for %d data blocks", bs, g.RefcountPages, per, data)
		}

		// A volume of NodeEntries blocks is one leaf; one more block needs a root above two
		// leaves.
		n := int64(g.NodeEntries)
		for _, c := range []struct {
			blocks, last int64
			nodes        int64
		}{{n, n - 1, 1}, {n + 1, n, 3}} {
			info, err := p.CreateVolume("", c.blocks*int64(bs))
			if err != nil {
				t.Fatal(err)
			}
			vol, err := p.Volume(info.ID)
			if err != nil {
				t.Fatal(err)
			}
			before := p.Stats().MetadataBytes
			for _, lbn := range []int64{0, c.last} {
				if _, err := vol.WriteAt(pattern(byte(lbn), bs), lbn*int64(bs)); err != nil {
					t.Fatal(err)
				}
			}
			if got := (p.Stats().MetadataBytes - before) / int64(bs); got != c.nodes {
				t.Errorf("block size %d: writing blocks 0 and %d of a %d-block volume made %d tree nodes, want %d (NodeEntries %d)", bs, c.last, c.blocks, got, c.nodes, n)
			}
		}
	}
}
