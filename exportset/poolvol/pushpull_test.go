package poolvol_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/internal/exporttest"
)

const (
	chunk    = exportset.DefaultChunkSize
	baseSize = 16*chunk + 12<<10 // 17 chunks, the last of 12 KiB
)

// dataChunks are the chunks of the base image that hold data (chunk 10 is written with zeros,
// 7 to 9 and 11 not at all).
var dataChunks = []int64{0, 1, 2, 3, 4, 5, 6, 12, 13, 14, 15, 16}

// makeBase writes the base image: whole chunks of page data, half a chunk, a chunk of zeros,
// the short last chunk.
func makeBase(t testing.TB, n *exporttest.Node, seed uint64) blockstore.SnapshotID {
	rng := rand.New(rand.NewPCG(seed, 1))
	return n.Image("base", 0, baseSize, func(v *blockstore.Volume) {
		exporttest.Write(t, v, exporttest.PageData(rng, 6*chunk), 0)
		exporttest.Write(t, v, exporttest.PageData(rng, chunk/2), 6*chunk)
		exporttest.Write(t, v, make([]byte, chunk), 10*chunk)
		exporttest.Write(t, v, exporttest.PageData(rng, 4*chunk+12<<10), 12*chunk)
	})
}

func TestPushPullWhole(t *testing.T) {
	exporttest.ForEachTarget(t, func(t *testing.T, tg exportset.Target) {
		ctx := context.Background()
		c := &exporttest.Counter{Target: tg}
		r := exportset.New(c, exportset.Options{})
		a := exporttest.NewNode(t)
		base := makeBase(t, a, 1)

		res, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(base), Image: exporttest.Image("base"), Name: "base"})
		require.NoError(t, err)
		require.False(t, res.Incremental)
		require.Equal(t, len(dataChunks), res.Chunks)
		require.Equal(t, len(dataChunks), res.Uploaded)
		require.Equal(t, c.PutBytes.Load(), res.UploadedBytes)
		m, raw, err := r.Manifest(ctx, res.Digest)
		require.NoError(t, err)
		require.Equal(t, res.Manifest, raw)
		var idx []int64
		for _, ch := range m.Chunks {
			idx = append(idx, ch.Index)
			require.Len(t, ch.Objects, 1)
			require.False(t, ch.Objects[0].Patch)
		}
		require.Equal(t, dataChunks, idx, "zero and unmapped chunks are omitted")
		require.Equal(t, int64(12<<10), m.Chunks[len(m.Chunks)-1].Objects[0].Length)
		require.Less(t, res.UploadedBytes, int64(len(dataChunks))*chunk*3/4, "objects are compressed")

		// The same image again: the same manifest, nothing uploaded.
		c.Reset()
		again, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(base), Image: exporttest.Image("base"), Name: "base"})
		require.NoError(t, err)
		require.Equal(t, res.Digest, again.Digest)
		require.Zero(t, again.Uploaded)
		require.Zero(t, c.Puts.Load())
		require.Equal(t, len(dataChunks), again.Present)

		// Pulled by name onto another node: the same bytes, and no more space than its data.
		b := exporttest.NewNode(t)
		before := b.Used()
		pulled, snap, err := b.Pull(ctx, r, "base", "base")
		require.NoError(t, err)
		require.Equal(t, res.Digest, pulled.Digest)
		require.Empty(t, pulled.Base)
		require.Equal(t, int64(len(dataChunks)), int64(pulled.Fetched))
		exporttest.RequireSame(t, a.Pool, base, b.Pool, snap)
		data := int64(6*chunk + chunk/2 + 4*chunk + 12<<10)
		require.Equal(t, data, pulled.WrittenBytes, "zero blocks are not written")
		grown := b.Used() - before
		require.GreaterOrEqual(t, grown, data)
		require.Less(t, grown, data+data/50, "pool growth: %d for %d bytes of data", grown, data)
		require.Empty(t, b.Pool.Volumes(), "the pull's volume is gone")

		// By digest too; List shows the name.
		_, snap2, err := b.Pull(ctx, r, string(res.Digest), "base-again")
		require.NoError(t, err)
		exporttest.RequireSame(t, a.Pool, base, b.Pool, snap2)
		list, err := r.List(ctx)
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Equal(t, []string{"base"}, list[0].Names)
		require.Equal(t, "base", list[0].Manifest.Image.Name)
	})
}

// changeBlocks writes random data into about frac of the blocks of v, at random places
// (also in chunks that held nothing), and returns the new contents of the blocks it changed.
func changeBlocks(t testing.TB, rng *rand.Rand, v *blockstore.Volume, frac float64) [][]byte {
	blocks := v.Size() / exporttest.BlockSize
	var changed [][]byte
	seen := map[int64]bool{}
	for len(changed) < int(float64(blocks)*frac) {
		blk := rng.Int64N(blocks)
		if seen[blk] {
			continue
		}
		seen[blk] = true
		b := exporttest.PageData(rng, exporttest.BlockSize)
		exporttest.Write(t, v, b, blk*exporttest.BlockSize)
		changed = append(changed, b)
	}
	return changed
}

func compressedSize(t testing.TB, blocks [][]byte) int64 {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	require.NoError(t, err)
	return int64(len(enc.EncodeAll(slices.Concat(blocks...), nil)))
}

// TestIncremental pushes a child whose parent is in the registry, and pulls it onto a node that
// holds the parent: both move what changed, and the pulled child costs the pool what the same
// change cost where it was made.
func TestIncremental(t *testing.T) {
	exporttest.ForEachTarget(t, func(t *testing.T, tg exportset.Target) {
		ctx := context.Background()
		c := &exporttest.Counter{Target: tg}
		r := exportset.New(c, exportset.Options{})
		a, b := exporttest.NewNode(t), exporttest.NewNode(t)
		base := makeBase(t, a, 2)
		pushed, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(base), Image: exporttest.Image("base")})
		require.NoError(t, err)
		_, bBase, err := b.Pull(ctx, r, string(pushed.Digest), "base")
		require.NoError(t, err)

		// The child: 1% of the blocks rewritten, 1 MiB discarded, 4 MiB more at the end.
		rng := rand.New(rand.NewPCG(3, 3))
		var changed [][]byte
		before := a.Used()
		child := a.Image("child", base, baseSize+chunk, func(v *blockstore.Volume) {
			changed = changeBlocks(t, rng, v, 0.01)
			require.NoError(t, v.Discard(2*chunk+4096, 1<<20))
		})
		localGrowth := a.Used() - before
		changedBytes := int64(len(changed)) * exporttest.BlockSize

		c.Reset()
		res, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(child), Image: exporttest.Image("child"), Name: "child",
			Parent: &exportset.Parent{Digest: pushed.Digest, Source: a.Source(base)}})
		require.NoError(t, err)
		require.True(t, res.Incremental)
		require.LessOrEqual(t, res.ReadBytes, changedBytes+1<<20, "reads what the diff says changed")
		comp := compressedSize(t, changed)
		t.Logf("push: %d blocks changed (%d bytes, %d compressed); uploaded %d objects, %d bytes (%.2fx)",
			len(changed), changedBytes, comp, c.Puts.Load(), c.PutBytes.Load(), float64(c.PutBytes.Load())/float64(comp))
		require.LessOrEqual(t, c.PutBytes.Load(), comp*12/10, "bytes uploaded / changed bytes (compressed)")
		m, _, err := r.Manifest(ctx, res.Digest)
		require.NoError(t, err)
		require.Equal(t, pushed.Digest, m.Parent)
		require.Equal(t, int64(baseSize+chunk), m.Size)
		pm, _, err := r.Manifest(ctx, pushed.Digest)
		require.NoError(t, err)
		for _, ch := range pm.Chunks {
			// Every chunk of the parent changed a little: its objects, and a patch.
			got := m.Chunks[slices.IndexFunc(m.Chunks, func(c exportset.Chunk) bool { return c.Index == ch.Index })]
			require.Len(t, got.Objects, 2, "chunk %d", ch.Index)
			require.Equal(t, ch.Objects[0], got.Objects[0])
			require.True(t, got.Objects[1].Patch)
		}

		// Pulled onto b, which holds the base.
		c.Reset()
		before = b.Used()
		pulled, bChild, err := b.Pull(ctx, r, "child", "child")
		require.NoError(t, err)
		require.Equal(t, pushed.Digest, pulled.Base)
		exporttest.RequireSame(t, a.Pool, child, b.Pool, bChild)
		pullGrowth := b.Used() - before
		t.Logf("pull: downloaded %d bytes in %d objects; wrote %d bytes; pool growth %d (the change made locally: %d)",
			c.GetBytes.Load(), c.Gets.Load(), pulled.WrittenBytes, pullGrowth, localGrowth)
		require.LessOrEqual(t, c.GetBytes.Load(), comp*12/10, "bytes downloaded / changed bytes (compressed)")
		// Only the changed blocks are written (some of them fell in the discarded range).
		require.LessOrEqual(t, pulled.WrittenBytes, changedBytes)
		require.Greater(t, pulled.WrittenBytes, changedBytes*9/10)
		require.LessOrEqual(t, pullGrowth, localGrowth+localGrowth/10, "the pulled child shares the rest with its parent")
		require.LessOrEqual(t, pullGrowth, changedBytes*13/10)
		exporttest.RequireSame(t, a.Pool, base, b.Pool, bBase)

		// Onto a node without the base: whole, the same bytes.
		c2 := exporttest.NewNode(t)
		full, c2Child, err := c2.Pull(ctx, r, "child", "child")
		require.NoError(t, err)
		require.Empty(t, full.Base)
		exporttest.RequireSame(t, a.Pool, child, c2.Pool, c2Child)
	})
}

// TestPullCorrupt: a chunk whose object is damaged (a byte flipped in its stored bytes,
// another payload in a well-formed frame) or missing fails the pull, naming the chunk, the
// object and the image, and leaves nothing in the pool.
func TestPullCorrupt(t *testing.T) {
	exporttest.ForEachTarget(t, func(t *testing.T, tg exportset.Target) {
		ctx := context.Background()
		r := exportset.New(tg, exportset.Options{})
		a := exporttest.NewNode(t)
		base := makeBase(t, a, 4)
		res, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(base), Image: exporttest.Image("base"), Name: "base"})
		require.NoError(t, err)
		m, _, err := r.Manifest(ctx, res.Digest)
		require.NoError(t, err)
		victim := m.Chunks[3]
		key := "chunks/sha256/" + victim.Objects[0].Digest.Hex()
		good, err := tg.Get(ctx, key, 64<<20)
		require.NoError(t, err)

		b := exporttest.NewNode(t)
		enc, err := zstd.NewWriter(nil)
		require.NoError(t, err)
		for _, tc := range []struct {
			name   string
			damage func()
			is     error
		}{
			{"flipped byte", func() {
				bad := slices.Clone(good)
				bad[len(bad)/2] ^= 0x40
				require.NoError(t, tg.Put(ctx, key, bad))
			}, exportset.ErrCorrupt},
			{"other payload", func() {
				require.NoError(t, tg.Put(ctx, key, enc.EncodeAll(exporttest.PageData(rand.New(rand.NewPCG(7, 7)), chunk), nil)))
			}, exportset.ErrCorrupt},
			{"missing", func() { require.NoError(t, tg.Delete(ctx, key)) }, exportset.ErrNotFound},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tc.damage()
				defer func() { require.NoError(t, tg.Put(ctx, key, good)) }()
				before := b.Used()
				_, _, err := b.Pull(ctx, r, "base", "base")
				require.ErrorIs(t, err, tc.is)
				var ce *exportset.ChunkError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, victim.Index, ce.Index)
				require.Equal(t, victim.Objects[0].Digest, ce.Object)
				require.Equal(t, res.Digest, ce.Image)
				require.Equal(t, "base", ce.Name)
				require.ErrorContains(t, err, fmt.Sprintf("image %s (base): chunk %d (offset %d): object %s", res.Digest, victim.Index, victim.Index*chunk, victim.Objects[0].Digest))
				require.Empty(t, b.Pool.Volumes(), "a failed pull leaves no volume")
				require.Empty(t, b.Pool.Snapshots(), "and no image")
				require.Equal(t, before, b.Used(), "and no space taken")
			})
		}
		_, snap, err := b.Pull(ctx, r, "base", "base")
		require.NoError(t, err, "once the object is whole again")
		exporttest.RequireSame(t, a.Pool, base, b.Pool, snap)

		// A damaged manifest fails before anything is made.
		mkey := "manifests/sha256/" + res.Digest.Hex()
		raw, err := tg.Get(ctx, mkey, 1<<20)
		require.NoError(t, err)
		require.NoError(t, tg.Put(ctx, mkey, append(raw[:len(raw)-1:len(raw)-1], ' ')))
		c := exporttest.NewNode(t)
		_, _, err = c.Pull(ctx, r, string(res.Digest), "base")
		require.ErrorIs(t, err, exportset.ErrCorrupt)
		require.ErrorContains(t, err, "the manifest of image "+string(res.Digest))
		require.Empty(t, c.Pool.Volumes())
	})
}

// TestGenerations pushes a line of images, each a few blocks away from the one before: a
// chunk's patches pile up to MaxChain objects and then start over whole; a node that holds an
// older generation pulls the newest from it (the lineage is walked past the parent); a parent
// that is not in the registry makes a whole push that still records the lineage; Whole pushes
// no patch.
func TestGenerations(t *testing.T) {
	ctx := context.Background()
	tg := exporttest.DirTarget(t)
	r := exportset.New(tg, exportset.Options{})
	a, b := exporttest.NewNode(t), exporttest.NewNode(t)
	rng := rand.New(rand.NewPCG(11, 11))
	snap := a.Image("g0", 0, 2*chunk, func(v *blockstore.Volume) { exporttest.Write(t, v, exporttest.PageData(rng, 2*chunk), 0) })
	res, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(snap), Image: exporttest.Image("g0")})
	require.NoError(t, err)
	_, _, err = b.Pull(ctx, r, string(res.Digest), "g0")
	require.NoError(t, err)
	chains := []int{1}
	for g := 1; g <= exportset.MaxChain+1; g++ {
		name := fmt.Sprintf("g%d", g)
		next := a.Image(name, snap, 2*chunk, func(v *blockstore.Volume) {
			exporttest.Write(t, v, exporttest.PageData(rng, 2*exporttest.BlockSize), int64(g)*8*exporttest.BlockSize)
		})
		pushed, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(next), Image: exporttest.Image(name),
			Parent: &exportset.Parent{Digest: res.Digest, Source: a.Source(snap)}})
		require.NoError(t, err)
		m, _, err := r.Manifest(ctx, pushed.Digest)
		require.NoError(t, err)
		require.Equal(t, res.Digest, m.Parent)
		chains = append(chains, len(m.Chunks[0].Objects))
		require.Equal(t, 1, len(m.Chunks[1].Objects), "chunk 1 never changed")
		snap, res = next, pushed
	}
	require.Equal(t, []int{1, 2, 3, 4, 5, 6, 7, 8, 1, 2}, chains, "patches pile up to MaxChain, then the chunk is whole again")

	// b holds g0 only: the newest generation is pulled from it, nine generations up.
	c := &exporttest.Counter{Target: tg}
	rc := exportset.New(c, exportset.Options{})
	pulled, bSnap, err := b.Pull(ctx, rc, string(res.Digest), "newest")
	require.NoError(t, err)
	require.NotEmpty(t, pulled.Base)
	exporttest.RequireSame(t, a.Pool, snap, b.Pool, bSnap)
	require.Less(t, c.GetBytes.Load(), int64(chunk), "chunk 1 is not fetched, chunk 0 is")

	// A parent the registry does not hold: whole push, lineage kept.
	orphan := a.Image("orphan", snap, 2*chunk, func(v *blockstore.Volume) { exporttest.Write(t, v, []byte("x"), 0) })
	missing := exportset.DigestOf([]byte("not pushed"))
	op, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(orphan), Image: exporttest.Image("orphan"),
		Parent: &exportset.Parent{Digest: missing, Source: a.Source(snap)}})
	require.NoError(t, err)
	require.False(t, op.Incremental)
	m, _, err := r.Manifest(ctx, op.Digest)
	require.NoError(t, err)
	require.Equal(t, missing, m.Parent)

	// Whole: no patch, though the parent is there.
	wp, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(orphan), Image: exporttest.Image("orphan"), Whole: true,
		Parent: &exportset.Parent{Digest: res.Digest, Source: a.Source(snap)}})
	require.NoError(t, err)
	require.False(t, wp.Incremental)
	m, _, err = r.Manifest(ctx, wp.Digest)
	require.NoError(t, err)
	for _, ch := range m.Chunks {
		require.Len(t, ch.Objects, 1)
		require.False(t, ch.Objects[0].Patch)
	}
}
