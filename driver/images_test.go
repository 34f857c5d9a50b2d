package driver

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/cluster"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/dataimage/dataimage/nodevolume"
)

// The registry tests run two plugins on two pools (two nodes) against one registry: a
// directory, and a bucket of the real S3 server (SeaweedFS, s3test).

// slowTarget counts the chunk objects read through it and can delay each read.
type slowTarget struct {
	exportset.Target
	delay     atomic.Int64 // nanoseconds per chunk read
	chunkGets atomic.Int64
}

func (s *slowTarget) Get(ctx context.Context, key string, limit int64) ([]byte, error) {
	if strings.HasPrefix(key, "chunks/") {
		s.chunkGets.Add(1)
		if d := time.Duration(s.delay.Load()); d > 0 {
			time.Sleep(d)
		}
	}
	return s.Target.Get(ctx, key, limit)
}

// forEachTarget runs f on a directory registry and on an S3 bucket.
func forEachTarget(t *testing.T, f func(t *testing.T, tg *slowTarget)) {
	t.Run("file", func(t *testing.T) {
		d, err := remote.NewDir(filepath.Join(t.TempDir(), "registry"))
		require.NoError(t, err)
		f(t, &slowTarget{Target: d})
	})
	t.Run("s3", func(t *testing.T) {
		s3srv.Need(t)
		s, err := remote.NewS3(remote.S3Config{Bucket: s3srv.Bucket(t), Prefix: "images", Endpoint: s3srv.Endpoint, PathStyle: true,
			Credentials: remote.Credentials{AccessKeyID: s3srv.AccessKey, SecretAccessKey: s3srv.SecretKey}})
		require.NoError(t, err)
		f(t, &slowTarget{Target: s})
	})
}

// regNode is a plugin with a registry on a pool of its own, with real exports.
type regNode struct {
	name string
	pool *blockstore.Pool
	c    *controllerServer
	im   *images
	reg  *exportset.Registry
}

func newRegNode(t *testing.T, name string, tg exportset.Target) *regNode {
	t.Helper()
	needKernel(t)
	pool := mustOpenPool(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "export")
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	t.Cleanup(func() { nodetest.RequireNothingLeft(t, dir, stateDir) })
	reg := exportset.New(tg, exportset.Options{})
	srv, err := NewServer(context.Background(), Config{NodeID: name, Version: "test", Registry: reg}, storeOf(t, pool, exp))
	require.NoError(t, err)
	require.NoError(t, srv.RegisterNode(context.Background(), NodeConfig{}))
	require.NotNil(t, srv.images)
	t.Cleanup(srv.images.running.Wait) // runs first: no transfer outlives the pool
	return &regNode{name: name, pool: pool, c: srv.controller, im: srv.images, reg: reg}
}

const imageSize = 16 * mib

// makeImage makes a volume with data in three of its four chunks, snapshots it and returns
// the snapshot handle and the image's bytes.
func (n *regNode) makeImage(t *testing.T, name string, seed uint64) (string, []byte) {
	t.Helper()
	vol := mustCreateVolume(t, n.c, name, imageSize)
	id, err := n.c.ids.parseVolumeID(vol.GetVolumeId())
	require.NoError(t, err)
	v, err := n.pool.Volume(id)
	require.NoError(t, err)
	want := make([]byte, imageSize)
	rng := rand.New(rand.NewPCG(seed, 1))
	for _, r := range [][2]int64{{0, 4 * mib}, {5 * mib, mib}, {12*mib + 8192, 2 * mib}} {
		for i := r[0]; i < r[0]+r[1]; i += 8 {
			v := rng.Uint64()
			for j := range int64(8) {
				want[i+j] = byte(v >> (8 * j))
			}
		}
		_, err := v.WriteAt(want[r[0]:r[0]+r[1]], r[0])
		require.NoError(t, err)
	}
	require.NoError(t, v.Flush())
	return mustCreateSnapshot(t, n.c, name+"-snap", vol.GetVolumeId()).GetSnapshotId(), want
}

// place writes the placement of handle (as the DataImage controller does), with nodes.
func place(t *testing.T, reg *exportset.Registry, handle string, nodes ...string) {
	t.Helper()
	require.NoError(t, cluster.PutPlacement(context.Background(), reg.Target(),
		cluster.Placement{Handle: handle, Image: exportset.Image{Name: "default/" + handle}, Nodes: nodes}))
}

// syncAll syncs, waits for what it started, and syncs again: the report then says where the
// transfers ended.
func (n *regNode) syncAll(t *testing.T) cluster.NodeReport {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, n.im.sync(ctx))
	n.im.running.Wait()
	require.NoError(t, n.im.sync(ctx))
	reps, bad, err := cluster.Reports(ctx, n.reg.Target())
	require.NoError(t, err)
	require.Empty(t, bad)
	for _, r := range reps {
		if r.Node == n.name {
			return r
		}
	}
	t.Fatalf("no report of node %s", n.name)
	return cluster.NodeReport{}
}

// pushed makes an image on n, places it, and syncs n until its push is done.
func (n *regNode) pushed(t *testing.T, name string, seed uint64, nodes ...string) (string, []byte, exportset.Digest) {
	t.Helper()
	handle, want := n.makeImage(t, name, seed)
	place(t, n.reg, handle, nodes...)
	rep := n.syncAll(t)
	s, ok := rep.Image(handle)
	require.True(t, ok, "report %+v", rep)
	require.Equal(t, cluster.StateHeld, s.State, "%+v", s)
	require.True(t, s.Pushed)
	d, err := n.reg.Resolve(context.Background(), handle)
	require.NoError(t, err)
	require.Equal(t, d, s.Digest)
	return handle, want, d
}

func cloneReq(name, handle string) *csi.CreateVolumeRequest {
	req := createReq(name, imageSize)
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: handle}}}
	return req
}

// requireVolume checks that the volume volID of n reads want.
func (n *regNode) requireVolume(t *testing.T, volID string, want []byte) {
	t.Helper()
	id, err := n.c.ids.parseVolumeID(volID)
	require.NoError(t, err)
	v, err := n.pool.Volume(id)
	require.NoError(t, err)
	got := make([]byte, len(want))
	_, err = v.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "volume %s does not read the image's bytes", volID)
}

// TestCloneOnAnotherNode: a snapshot made and pushed on node A is cloned on node B, which
// pulls it first; a second clone on B uses the pulled image (no chunk read); a repeated
// CreateVolume is the same volume.
func TestCloneOnAnotherNode(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *slowTarget) {
		a := newRegNode(t, testNode, tg)
		b := newRegNode(t, otherNode, tg)
		handle, want, d := a.pushed(t, "img", 1)
		ctx := context.Background()

		tg.chunkGets.Store(0)
		resp, err := b.c.CreateVolume(ctx, cloneReq("clone-1", handle))
		require.NoError(t, err)
		b.requireVolume(t, resp.GetVolume().GetVolumeId(), want)
		require.Equal(t, int64(3), tg.chunkGets.Load(), "the image has three chunks with data")
		pulled, err := b.pool.LookupSnapshot(pulledName(d))
		require.NoError(t, err, "the pulled image is a snapshot named after its digest")

		again, err := b.c.CreateVolume(ctx, cloneReq("clone-1", handle))
		require.NoError(t, err)
		require.Equal(t, resp.GetVolume().GetVolumeId(), again.GetVolume().GetVolumeId())

		resp2, err := b.c.CreateVolume(ctx, cloneReq("clone-2", handle))
		require.NoError(t, err)
		require.Equal(t, int64(3), tg.chunkGets.Load(), "a second clone pulls nothing")
		info, err := b.pool.LookupVolume("clone-2")
		require.NoError(t, err)
		require.Equal(t, pulled.ID, info.Origin)
		b.requireVolume(t, resp2.GetVolume().GetVolumeId(), want)

		// The node's report lists the image as held.
		s, ok := b.syncAll(t).Image(handle)
		require.True(t, ok)
		require.Equal(t, cluster.StateHeld, s.State)
		require.Equal(t, d, s.Digest)

		// A handle that names nothing in the registry: UNAVAILABLE, naming it.
		_, err = b.c.CreateVolume(ctx, cloneReq("clone-3", "ds-00000000-00000000000000aa"))
		requireCode(t, codes.Unavailable, err)
		require.Contains(t, err.Error(), "ds-00000000-00000000000000aa")
	})
}

// TestPlacementPrePulls: a placement that names node B makes B pull the image in its sync;
// a clone there then reads nothing from the registry.
func TestPlacementPrePulls(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *slowTarget) {
		a := newRegNode(t, testNode, tg)
		b := newRegNode(t, otherNode, tg)
		handle, want, d := a.pushed(t, "img", 2, otherNode)
		s, ok := b.syncAll(t).Image(handle)
		require.True(t, ok)
		require.Equal(t, cluster.StateHeld, s.State, "%+v", s)
		require.Equal(t, d, s.Digest)

		tg.chunkGets.Store(0)
		resp, err := b.c.CreateVolume(context.Background(), cloneReq("clone", handle))
		require.NoError(t, err)
		require.Zero(t, tg.chunkGets.Load())
		b.requireVolume(t, resp.GetVolume().GetVolumeId(), want)

		// A node the placement does not name pulls nothing and reports nothing of the image.
		c := newRegNode(t, "node-c", tg)
		_, ok = c.syncAll(t).Image(handle)
		require.False(t, ok)
		require.Zero(t, tg.chunkGets.Load())
	})
}

// TestConcurrentClonesJoinOnePull: CreateVolumes of several clones of one image on a node
// that lacks it, at once: one pull, every clone made.
func TestConcurrentClonesJoinOnePull(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *slowTarget) {
		a := newRegNode(t, testNode, tg)
		b := newRegNode(t, otherNode, tg)
		handle, want, _ := a.pushed(t, "img", 3)
		tg.chunkGets.Store(0)
		tg.delay.Store(int64(50 * time.Millisecond))
		var wg sync.WaitGroup
		ids := make([]string, 6)
		errs := make([]error, len(ids))
		for i := range ids {
			wg.Go(func() {
				resp, err := b.c.CreateVolume(context.Background(), cloneReq("clone-"+string(rune('a'+i)), handle))
				errs[i] = err
				ids[i] = resp.GetVolume().GetVolumeId()
			})
		}
		wg.Wait()
		for i := range ids {
			require.NoError(t, errs[i])
			b.requireVolume(t, ids[i], want)
		}
		require.Equal(t, int64(3), tg.chunkGets.Load(), "one pull of three chunks")
	})
}

// TestPullPastDeadline: a pull slower than the caller's deadline answers ABORTED with its
// progress and goes on; the retry finds the image.
func TestPullPastDeadline(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *slowTarget) {
		a := newRegNode(t, testNode, tg)
		b := newRegNode(t, otherNode, tg)
		handle, want, d := a.pushed(t, "img", 4)
		tg.chunkGets.Store(0)
		tg.delay.Store(int64(time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := b.c.CreateVolume(ctx, cloneReq("clone", handle))
		requireCode(t, codes.Aborted, err)
		require.Less(t, time.Since(start), 300*time.Millisecond, "the answer comes before the deadline")
		require.Contains(t, status.Convert(err).Message(), "pull of image "+string(d))
		require.Contains(t, status.Convert(err).Message(), "in progress: ")
		_, lerr := b.pool.LookupVolume("clone")
		require.ErrorIs(t, lerr, blockstore.ErrNotFound, "no volume before the image is pulled")

		b.im.running.Wait() // the pull went on without its caller
		resp, err := b.c.CreateVolume(context.Background(), cloneReq("clone", handle))
		require.NoError(t, err)
		require.Equal(t, int64(3), tg.chunkGets.Load(), "the retry found the image the first pull made")
		b.requireVolume(t, resp.GetVolume().GetVolumeId(), want)
	})
}

// TestCorruptChunk: a chunk whose object is damaged in the registry fails the clone with
// DATA_LOSS naming the chunk and the image, and leaves nothing in the pool; once the object is
// repaired, a retry pulls again and succeeds.
func TestCorruptChunk(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg *slowTarget) {
		a := newRegNode(t, testNode, tg)
		b := newRegNode(t, otherNode, tg)
		handle, want, d := a.pushed(t, "img", 5)
		ctx := context.Background()
		var key string
		require.NoError(t, tg.List(ctx, "chunks/", func(o exportset.ObjectInfo) error { key = o.Key; return nil }))
		require.NotEmpty(t, key)
		good, err := tg.Target.Get(ctx, key, 64<<20)
		require.NoError(t, err)
		require.NoError(t, tg.Put(ctx, key, []byte("not a zstd frame")))
		volsBefore, snapsBefore := b.pool.Volumes(), b.pool.Snapshots()

		_, err = b.c.CreateVolume(ctx, cloneReq("clone", handle))
		requireCode(t, codes.DataLoss, err)
		var ce *exportset.ChunkError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, d, ce.Image)
		msg := status.Convert(err).Message()
		require.Contains(t, msg, "chunk ")
		require.Contains(t, msg, string(d))
		require.Contains(t, msg, strings.TrimPrefix(key, "chunks/sha256/"))
		require.Equal(t, volsBefore, b.pool.Volumes(), "a failed pull leaves no volume")
		require.Equal(t, snapsBefore, b.pool.Snapshots(), "a failed pull leaves no image")

		// The node's report says why.
		s, ok := b.syncAll(t).Image(handle)
		require.True(t, ok)
		require.Equal(t, cluster.StateFailed, s.State)
		require.Contains(t, s.Message, "chunk")

		require.NoError(t, tg.Put(ctx, key, good))
		resp, err := b.c.CreateVolume(ctx, cloneReq("clone", handle))
		require.NoError(t, err)
		b.requireVolume(t, resp.GetVolume().GetVolumeId(), want)
	})
}

// TestPushAfterInterruption: what a push killed half-way leaves (its source clone, and the
// device an earlier version's push read it through) does not stop the next push of the image.
func TestPushAfterInterruption(t *testing.T) {
	tg, err := remote.NewDir(filepath.Join(t.TempDir(), "registry"))
	require.NoError(t, err)
	a := newRegNode(t, testNode, &slowTarget{Target: tg})
	handle, _ := a.makeImage(t, "img", 6)
	ref, err := a.c.ids.parseSnapshotHandle(handle)
	require.NoError(t, err)
	left, err := a.pool.Clone(ref.id, pushPrefix+handle, 0)
	require.NoError(t, err)
	// An earlier version's push read through a device: it is left attached too.
	_, err = a.im.devs.vols.Attach(context.Background(), nodevolume.Spec{ID: pushPrefix + handle, Volume: left.ID})
	require.NoError(t, err)
	place(t, a.reg, handle)
	s, ok := a.syncAll(t).Image(handle)
	require.True(t, ok)
	require.Equal(t, cluster.StateHeld, s.State, "%+v", s)
	require.True(t, s.Pushed)
	_, err = a.pool.LookupVolume(pushPrefix + handle)
	require.ErrorIs(t, err, blockstore.ErrNotFound, "the push's clone is deleted after it")
}

// TestUnplacedPulledImageDropped: once its placement is withdrawn (its DataImage's snapshot
// deleted), a node's sync deletes the image it pulled; the clone made of it keeps its data;
// the image's own node keeps its snapshot (the CSI snapshot, not the node's to delete).
func TestUnplacedPulledImageDropped(t *testing.T) {
	tg, err := remote.NewDir(filepath.Join(t.TempDir(), "registry"))
	require.NoError(t, err)
	st := &slowTarget{Target: tg}
	a := newRegNode(t, testNode, st)
	b := newRegNode(t, otherNode, st)
	handle, want, d := a.pushed(t, "img", 7, otherNode)
	kept, _, _ := a.pushed(t, "img2", 8, otherNode)
	b.syncAll(t)
	resp, err := b.c.CreateVolume(context.Background(), cloneReq("clone", handle))
	require.NoError(t, err)
	_, err = b.pool.LookupSnapshot(pulledName(d))
	require.NoError(t, err)

	require.NoError(t, cluster.DeletePlacement(context.Background(), tg, handle))
	b.syncAll(t)
	_, err = b.pool.LookupSnapshot(pulledName(d))
	require.ErrorIs(t, err, blockstore.ErrNotFound, "the unplaced pulled image is deleted")
	b.requireVolume(t, resp.GetVolume().GetVolumeId(), want)
	dk, err := b.reg.Resolve(context.Background(), kept)
	require.NoError(t, err)
	_, err = b.pool.LookupSnapshot(pulledName(dk))
	require.NoError(t, err, "a placed image stays")
	a.syncAll(t)
	_, err = a.c.GetSnapshot(context.Background(), &csi.GetSnapshotRequest{SnapshotId: handle})
	require.NoError(t, err)
}

// TestCleanupLeftovers: the volumes of pulls and pushes an earlier plugin left, and the devices
// an earlier version attached for them, are deleted when the registry loop starts (a pull's
// once it is older than keptPullAge: until then the next pull of its image resumes it); other
// volumes stay.
func TestCleanupLeftovers(t *testing.T) {
	tg, err := remote.NewDir(filepath.Join(t.TempDir(), "registry"))
	require.NoError(t, err)
	a := newRegNode(t, testNode, &slowTarget{Target: tg})
	ctx := context.Background()
	keep := mustCreateVolume(t, a.c, "pull-me-not", mib)
	for _, name := range []string{pullPrefix + strings.Repeat("ab", 32), pushPrefix + "ds-00000000-0000000000000001"} {
		v, err := a.pool.CreateVolume(name, mib)
		require.NoError(t, err)
		_, err = a.im.devs.vols.Attach(ctx, nodevolume.Spec{ID: name, Volume: v.ID}) // as earlier versions did
		require.NoError(t, err)
	}
	a.im.cleanup(ctx)
	var names []string
	for _, v := range a.pool.Volumes() {
		names = append(names, v.Name)
	}
	require.ElementsMatch(t, []string{"pull-me-not", pullPrefix + strings.Repeat("ab", 32)}, names, "a recent pull's volume is kept")
	a.im.now = func() time.Time { return time.Now().Add(keptPullAge + time.Minute) }
	a.im.cleanup(ctx)
	vols := a.pool.Volumes()
	require.Len(t, vols, 1)
	require.Equal(t, "pull-me-not", vols[0].Name)
	_, err = a.c.ids.parseVolumeID(keep.GetVolumeId())
	require.NoError(t, err)
}
