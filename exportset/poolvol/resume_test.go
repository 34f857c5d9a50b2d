package poolvol_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/internal/exporttest"
	"github.com/dataimage/dataimage/exportset/poolvol"
)

// failingTarget fails every Get of an object after the first ok ones, with an error that is
// neither a corrupt nor a missing object: a lost connection.
type failingTarget struct {
	exportset.Target
	ok   int64
	gets atomic.Int64
}

var errConnectionLost = errors.New("read: connection reset by peer")

func (f *failingTarget) Get(ctx context.Context, key string, limit int64) ([]byte, error) {
	if exporttest.IsObject(key) && f.gets.Add(1) > f.ok {
		return nil, errConnectionLost
	}
	return f.Target.Get(ctx, key, limit)
}

// TestPullResumes: a pull that loses its connection half-way keeps its volume (a Sink with
// Resume), and the next pull of the image resumes it: the chunks found written and verified are
// not downloaded again, one whose bytes were damaged meanwhile is, and the image reads as the
// one pushed. A pull that finds a corrupt object still leaves nothing.
func TestPullResumes(t *testing.T) {
	ctx := context.Background()
	tg := exporttest.DirTarget(t)
	a, b := exporttest.NewNode(t), exporttest.NewNode(t)
	base := makeBase(t, a, 5)
	pushed, err := exportset.New(tg, exportset.Options{}).Push(ctx, exportset.PushRequest{Source: a.Source(base), Image: exporttest.Image("base")})
	require.NoError(t, err)
	m, err := exportset.DecodeManifest(pushed.Manifest)
	require.NoError(t, err)
	objects := len(m.Chunks)
	require.Greater(t, objects, 6)

	sink := func() *poolvol.Sink {
		return &poolvol.Sink{Node: b.PV, Lookup: b.Lookup, Volume: "pull/" + pushed.Digest.Hex(), ID: "pull", Snapshot: "image/base", Resume: true}
	}
	// One worker: the chunks before the failure are written, in order.
	const ok = 5
	ft := &failingTarget{Target: tg, ok: ok}
	_, err = exportset.New(ft, exportset.Options{Workers: 1}).Pull(ctx, exportset.PullRequest{Ref: string(pushed.Digest), Sink: sink()})
	require.ErrorIs(t, err, errConnectionLost)
	left, err := b.Pool.LookupVolume("pull/" + pushed.Digest.Hex())
	require.NoError(t, err, "the failed pull kept its volume")

	// A torn write: the first chunk's last block is not what the pull wrote.
	v, err := b.Pool.Volume(left.ID)
	require.NoError(t, err)
	_, err = v.WriteAt([]byte("torn"), chunk-4096)
	require.NoError(t, err)

	c := &exporttest.Counter{Target: tg}
	s := sink()
	res, err := exportset.New(c, exportset.Options{}).Pull(ctx, exportset.PullRequest{Ref: string(pushed.Digest), Sink: s})
	require.NoError(t, err)
	require.True(t, res.Resumed)
	require.Equal(t, ok-1, res.Kept, "the chunks written before the failure, but the damaged one")
	require.Equal(t, int64(objects-(ok-1)), c.Gets.Load(), "objects downloaded by the resumed pull")
	snap, committed := s.Committed()
	require.True(t, committed)
	exporttest.RequireSame(t, a.Pool, base, b.Pool, snap.ID)
	_, err = b.Pool.LookupVolume("pull/" + pushed.Digest.Hex())
	require.ErrorIs(t, err, blockstore.ErrNotFound, "the volume became the image")
	require.NoError(t, b.Pool.DeleteSnapshot(snap.ID))

	// A corrupt or missing object fails the pull and leaves nothing, resumable or not.
	key := "chunks/sha256/" + m.Chunks[3].Objects[0].Digest.Hex()
	good, err := tg.Get(ctx, key, 64<<20)
	require.NoError(t, err)
	for _, tc := range []struct {
		damage func()
		is     error
	}{
		{func() { require.NoError(t, tg.Put(ctx, key, []byte("not the object"))) }, exportset.ErrCorrupt},
		{func() { require.NoError(t, tg.Delete(ctx, key)) }, exportset.ErrNotFound},
	} {
		tc.damage()
		_, err = exportset.New(tg, exportset.Options{Workers: 1}).Pull(ctx, exportset.PullRequest{Ref: string(pushed.Digest), Sink: sink()})
		require.ErrorIs(t, err, tc.is)
		_, err = b.Pool.LookupVolume("pull/" + pushed.Digest.Hex())
		require.ErrorIs(t, err, blockstore.ErrNotFound, "nothing left of a pull that found a bad object")
		require.NoError(t, tg.Put(ctx, key, good))
	}
}
