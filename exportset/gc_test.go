package exportset_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/internal/exporttest"
)

const chunk = exportset.DefaultChunkSize

// objects returns the keys of the target's objects.
func objects(t *testing.T, tg exportset.Target) map[string]bool {
	out := map[string]bool{}
	require.NoError(t, tg.List(context.Background(), "chunks/", func(o exportset.ObjectInfo) error {
		out[o.Key] = true
		return nil
	}))
	return out
}

// named returns the keys of the objects image d's manifest names.
func named(t *testing.T, r *exportset.Registry, d exportset.Digest) map[string]bool {
	m, _, err := r.Manifest(context.Background(), d)
	require.NoError(t, err)
	out := map[string]bool{}
	for _, c := range m.Chunks {
		for _, o := range c.Objects {
			out["chunks/sha256/"+o.Digest.Hex()] = true
		}
	}
	return out
}

// TestGC deletes images and collects: exactly the objects no remaining manifest names go, and
// the remaining images still pull whole, also a child whose patches sit on the deleted
// parent's objects.
func TestGC(t *testing.T) {
	exporttest.ForEachTarget(t, func(t *testing.T, tg exportset.Target) {
		ctx := context.Background()
		r := exportset.New(tg, exportset.Options{})
		a := exporttest.NewNode(t)
		rng := rand.New(rand.NewPCG(1, 2))
		base := a.Image("base", 0, 4*chunk, func(v *exporttest.Volume) { exporttest.Write(t, v, exporttest.PageData(rng, 4*chunk), 0) })
		pb, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(base), Image: exporttest.Image("base"), Name: "base"})
		require.NoError(t, err)
		// The child rewrites chunk 0 whole and patches chunk 1: it keeps base's objects of
		// chunks 1 to 3, not of chunk 0.
		child := a.Image("child", base, 4*chunk, func(v *exporttest.Volume) {
			exporttest.Write(t, v, exporttest.PageData(rng, chunk), 0)
			exporttest.Write(t, v, exporttest.PageData(rng, 8192), chunk+4096)
		})
		pc, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(child), Image: exporttest.Image("child"), Name: "child",
			Parent: &exportset.Parent{Digest: pb.Digest, Source: a.Source(base)}})
		require.NoError(t, err)
		other := a.Image("other", 0, chunk, func(v *exporttest.Volume) { exporttest.Write(t, v, exporttest.PageData(rng, chunk), 0) })
		po, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(other), Image: exporttest.Image("other"), Name: "other"})
		require.NoError(t, err)

		nothing, err := r.GC(ctx)
		require.NoError(t, err)
		require.Zero(t, nothing.Deleted, "nothing is garbage while every image is there")

		d, deleted, err := r.Delete(ctx, "base")
		require.NoError(t, err)
		require.True(t, deleted)
		require.Equal(t, pb.Digest, d)
		_, err = r.Resolve(ctx, "base")
		require.ErrorIs(t, err, exportset.ErrNotFound)
		want := named(t, r, pc.Digest)
		for k := range named(t, r, po.Digest) {
			want[k] = true
		}
		before := objects(t, tg)
		res, err := r.GC(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, res.Manifests)
		require.Equal(t, len(before)-len(want), res.Deleted)
		require.Equal(t, 1, res.Deleted, "base's object of chunk 0, which the child rewrote")
		require.Equal(t, want, objects(t, tg))

		b := exporttest.NewNode(t)
		_, bChild, err := b.Pull(ctx, r, "child", "child")
		require.NoError(t, err)
		exporttest.RequireSame(t, a.Pool, child, b.Pool, bChild)

		// Deleting by digest removes the name too; then everything goes.
		_, _, err = r.Delete(ctx, string(pc.Digest))
		require.NoError(t, err)
		_, err = r.Resolve(ctx, "child")
		require.ErrorIs(t, err, exportset.ErrNotFound)
		_, _, err = r.Delete(ctx, "other")
		require.NoError(t, err)
		_, err = r.GC(ctx)
		require.NoError(t, err)
		require.Empty(t, objects(t, tg))
		list, err := r.List(ctx)
		require.NoError(t, err)
		require.Empty(t, list)
		_, _, err = r.Delete(ctx, "other")
		require.ErrorIs(t, err, exportset.ErrNotFound)
	})
}

// TestGCAndPushExclude shows both sides of the protocol: a collection gives up while a push
// holds its lease, and a push waits while a collection runs.
func TestGCAndPushExclude(t *testing.T) {
	exporttest.ForEachTarget(t, func(t *testing.T, tg exportset.Target) {
		ctx := context.Background()
		r := exportset.New(tg, exportset.Options{LeaseTTL: 4 * time.Second})
		a := exporttest.NewNode(t)
		rng := rand.New(rand.NewPCG(3, 4))
		img := a.Image("img", 0, 2*chunk, func(v *exporttest.Volume) { exporttest.Write(t, v, exporttest.PageData(rng, 2*chunk), 0) })

		// A push that is moving chunks holds its lease: the collection gives up.
		moving, resume := make(chan struct{}), make(chan struct{})
		var once sync.Once
		done := make(chan error, 1)
		go func() {
			_, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(img), Image: exporttest.Image("img"), Progress: func(p exportset.Progress) {
				if p.Phase == exportset.PhaseTransfer {
					once.Do(func() { close(moving); <-resume })
				}
			}})
			done <- err
		}()
		<-moving
		_, err := r.GC(ctx)
		require.ErrorIs(t, err, exportset.ErrBusy)
		require.ErrorContains(t, err, "leases/")
		close(resume)
		require.NoError(t, <-done)
		_, err = r.GC(ctx)
		require.NoError(t, err)

		// A collection's marker makes a push wait until it is gone.
		require.NoError(t, tg.Put(ctx, "gc/running", []byte("{}")))
		waiting := make(chan struct{})
		var wonce sync.Once
		var finished atomic.Bool
		go func() {
			_, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(img), Image: exporttest.Image("img"), Progress: func(p exportset.Progress) {
				if p.Phase == exportset.PhaseWaiting {
					wonce.Do(func() { close(waiting) })
				}
			}})
			finished.Store(true)
			done <- err
		}()
		<-waiting
		time.Sleep(300 * time.Millisecond)
		require.False(t, finished.Load(), "the push waits for the collection")
		require.NoError(t, tg.Delete(ctx, "gc/running"))
		require.NoError(t, <-done)
	})
}

// TestGCStale: a lease or a marker that was not renewed for the TTL (its process died) blocks
// nothing, and the next collection deletes it.
func TestGCStale(t *testing.T) {
	exporttest.ForEachTarget(t, func(t *testing.T, tg exportset.Target) {
		ctx := context.Background()
		const ttl = 3 * time.Second
		r := exportset.New(tg, exportset.Options{LeaseTTL: ttl})
		a := exporttest.NewNode(t)
		img := a.Image("img", 0, chunk, func(v *exporttest.Volume) { exporttest.Write(t, v, []byte("data"), 0) })
		require.NoError(t, tg.Put(ctx, "leases/dead", []byte("{}")))
		require.NoError(t, tg.Put(ctx, "gc/dead", []byte("{}")))
		_, err := r.GC(ctx)
		require.ErrorIs(t, err, exportset.ErrBusy, "a fresh lease is live")

		time.Sleep(ttl + 1500*time.Millisecond) // S3 times have whole seconds
		var waited atomic.Bool
		_, err = r.Push(ctx, exportset.PushRequest{Source: a.Source(img), Image: exporttest.Image("img"), Progress: func(p exportset.Progress) {
			if p.Phase == exportset.PhaseWaiting {
				waited.Store(true)
			}
		}})
		require.NoError(t, err)
		require.False(t, waited.Load(), "a stale marker does not make a push wait")
		res, err := r.GC(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, res.StaleLeases)
		for _, k := range []string{"leases/dead", "gc/dead"} {
			_, err := tg.Stat(ctx, k)
			require.ErrorIs(t, err, exportset.ErrNotFound, k)
		}
	})
}

// slowManifests delays the writes of manifests, widening the window between a push's look at
// the objects it relies on and its manifest.
type slowManifests struct {
	exportset.Target
	delay time.Duration
}

func (s *slowManifests) Put(ctx context.Context, key string, data []byte) error {
	if strings.HasPrefix(key, "manifests/") {
		time.Sleep(s.delay)
	}
	return s.Target.Put(ctx, key, data)
}

// TestGCRace runs a push loop and a collection loop at once: each push pushes the same image
// again (so it finds its objects present, garbage since the last delete) and checks that
// every object its manifest names is there, then deletes the image. With the protocol no
// object is ever missing; without it (exportset.Unprotected) the same loops lose objects,
// which shows that the test can fail.
func TestGCRace(t *testing.T) {
	exporttest.ForEachTarget(t, func(t *testing.T, tg exportset.Target) {
		ctx := context.Background()
		// A short TTL: a push that waits for a collection looks again every TTL/20.
		r := exportset.New(&slowManifests{Target: tg, delay: 50 * time.Millisecond}, exportset.Options{LeaseTTL: 4 * time.Second})
		a := exporttest.NewNode(t)
		rng := rand.New(rand.NewPCG(5, 6))
		img := a.Image("img", 0, 8*chunk, func(v *exporttest.Volume) { exporttest.Write(t, v, exporttest.PageData(rng, 8*chunk), 0) })
		src := a.Source(img)

		race := func(iterations int, stopAtLoss bool) (lost, collected int) {
			var wg sync.WaitGroup
			stop := make(chan struct{})
			var gcErr error
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					res, err := r.GC(ctx)
					switch {
					case errors.Is(err, exportset.ErrBusy):
					case err != nil:
						gcErr = err
						return
					default:
						collected += res.Deleted
					}
				}
			})
			for i := 0; i < iterations && !(stopAtLoss && lost > 0); i++ {
				res, err := r.Push(ctx, exportset.PushRequest{Source: src, Image: exporttest.Image("img"), Name: "x"})
				require.NoError(t, err)
				for k := range named(t, r, res.Digest) {
					if _, err := tg.Stat(ctx, k); errors.Is(err, exportset.ErrNotFound) {
						lost++
					} else {
						require.NoError(t, err)
					}
				}
				_, _, err = r.Delete(ctx, "x")
				require.NoError(t, err)
				time.Sleep(30 * time.Millisecond) // a gap for the collector
			}
			close(stop)
			wg.Wait()
			require.NoError(t, gcErr)
			return lost, collected
		}

		lost, collected := race(20, false)
		t.Logf("with the protocol: %d objects collected by concurrent collections, %d lost", collected, lost)
		require.Zero(t, lost, "a manifest names an object that a concurrent collection deleted")
		require.Positive(t, collected, "the collections ran between the pushes")

		restore := exportset.Unprotected()
		defer restore()
		lost, _ = race(100, true)
		t.Logf("without the protocol: %d objects lost", lost)
		require.Positive(t, lost, "without the protocol the race loses objects")
	})
}
