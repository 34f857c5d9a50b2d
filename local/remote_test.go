package local

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/poolvol"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/nodevolume"
)

// TestPushPull is the two-machine story on one machine, with two daemons (two homes, two
// pools): an image is built on A, a clone of it changed and made an image of its own; both are
// pushed to a registry (a directory, A's default) and pulled on B, the child incrementally on
// top of the base; a clone of the pulled child answers with the data written on A. The same
// through an S3 server: list, pull by digest under another name, delete (with collection).
func TestPushPull(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	ctx := context.Background()
	registry := "file://" + filepath.Join(testDir(t), "registry")
	a, _ := newTestDaemon(t)
	a.cfg.Remote = Remote{URL: registry}
	b, _ := newTestDaemon(t)

	build(t, a, pgDefinition(eng, "base", "sourceType: empty\ntags: [shared]\n"), "")
	c := createClone(t, a, CloneRequest{Image: "base", Name: "work"})
	sql(t, c, "CREATE TABLE rows AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
	child, err := a.ImageFromClone(ctx, ImageFromCloneRequest{Name: "child", Clone: "work"})
	require.NoError(t, err)
	require.Equal(t, "base", child.Parent)

	// A child pushed before its parent has no lineage to build on: pushed whole.
	var steps []string
	progress := func(ev wire.Event) {
		if len(steps) == 0 || steps[len(steps)-1] != ev.Step {
			steps = append(steps, ev.Step)
		}
	}
	pushedBase, err := a.PushImage(ctx, PushRequest{Image: "base"}, progress)
	require.NoError(t, err)
	require.Equal(t, []string{"push"}, steps)
	require.True(t, exportset.Digest(pushedBase.Digest).Valid(), "%+v", pushedBase)
	pushedChild, err := a.PushImage(ctx, PushRequest{Image: "child"}, nil)
	require.NoError(t, err)
	require.Equal(t, pushedBase.Digest, pushedChild.ParentDigest, "the child's lineage: the base's digest")
	again, err := a.PushImage(ctx, PushRequest{Image: "child"}, nil)
	require.NoError(t, err)
	require.Equal(t, pushedChild.Digest, again.Digest, "the same image pushes to the same digest")

	// B pulls the base, then the child on top of it.
	_, err = b.PullImage(ctx, PullRequest{Ref: "child"}, nil)
	require.ErrorIs(t, err, ErrInvalid, "B has no default registry")
	bBase, err := b.PullImage(ctx, PullRequest{Ref: "base", Remote: Remote{URL: registry}}, nil)
	require.NoError(t, err)
	require.Equal(t, pushedBase.Digest, bBase.Digest)
	require.Equal(t, []string{"shared"}, bBase.Tags)
	require.NotNil(t, bBase.Definition, "the definition travels with the image")
	require.False(t, bBase.Pulled.IsZero())
	used := func(d *Daemon) int64 {
		st, err := d.store.Stats(ctx)
		require.NoError(t, err)
		return st.UsedBytes
	}
	before := used(b)
	bChild, err := b.PullImage(ctx, PullRequest{Ref: "child", Remote: Remote{URL: registry}}, nil)
	require.NoError(t, err)
	require.Equal(t, "base", bChild.Parent, "pulled on top of the base")
	grown := used(b) - before
	t.Logf("child: %d bytes of data; B's pool grew by %d pulling it on top of the base", bChild.DataBytes, grown)
	require.Less(t, grown, bChild.DataBytes/2, "the pulled child shares the base's blocks")

	bc := createClone(t, b, CloneRequest{Image: "child", Name: "reader"})
	require.Equal(t, "20000", sql(t, bc, "SELECT count(*) FROM rows"))
	require.Equal(t, sql(t, c, "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM rows"), sql(t, bc, "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM rows"))

	// Pulling what is here is a no-op; another image under a taken name is refused.
	same, err := b.PullImage(ctx, PullRequest{Ref: "child", Remote: Remote{URL: registry}}, nil)
	require.NoError(t, err)
	require.Equal(t, bChild.Digest, same.Digest)
	_, err = b.PullImage(ctx, PullRequest{Ref: "base", Name: "child", Remote: Remote{URL: registry}}, nil)
	require.ErrorIs(t, err, ErrAlreadyExists)
	_, err = b.PullImage(ctx, PullRequest{Ref: "nothing", Remote: Remote{URL: registry}}, nil)
	require.ErrorIs(t, err, ErrNotFound)

	// The same images through S3, with the credentials in the request.
	s3srv.Need(t)
	s3 := Remote{URL: "s3://" + s3srv.Bucket(t) + "/team", Endpoint: s3srv.Endpoint, PathStyle: true,
		Credentials: remote.Credentials{AccessKeyID: s3srv.AccessKey, SecretAccessKey: s3srv.SecretKey}}
	_, err = a.PushImage(ctx, PushRequest{Image: "base", Remote: s3}, nil)
	require.NoError(t, err)
	viaS3, err := a.PushImage(ctx, PushRequest{Image: "child", Remote: s3}, nil)
	require.NoError(t, err)
	list, err := b.RemoteImages(ctx, s3)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, []string{"base"}, list[0].Names)
	require.Equal(t, []string{"child"}, list[1].Names)
	require.Equal(t, imagebuilder.EnginePostgres, list[1].Engine)
	copyImg, err := b.PullImage(ctx, PullRequest{Ref: viaS3.Digest, Name: "child-copy", Remote: s3}, nil)
	require.NoError(t, err)
	require.Equal(t, viaS3.Digest, copyImg.Digest)
	bad := s3
	bad.Credentials.SecretAccessKey = "wrong"
	_, err = b.RemoteImages(ctx, bad)
	require.ErrorIs(t, err, ErrRemote)

	del, err := a.DeleteRemoteImage(ctx, "child", s3)
	require.NoError(t, err)
	require.True(t, del.Deleted)
	require.Positive(t, del.Collected, "the child's patches go")
	del, err = a.DeleteRemoteImage(ctx, "base", s3)
	require.NoError(t, err)
	require.Positive(t, del.Collected)
	list, err = b.RemoteImages(ctx, s3)
	require.NoError(t, err)
	require.Empty(t, list)
	_, err = a.DeleteRemoteImage(ctx, "base", s3)
	require.ErrorIs(t, err, ErrNotFound)
	require.True(t, strings.HasPrefix(viaS3.Digest, "sha256:"))
	// Nothing is left of the pushes and pulls but the images (no clone, no device).
	for _, d := range []*Daemon{a, b} {
		for _, n := range poolNames(t, d) {
			require.False(t, strings.Contains(n, "push/") || strings.Contains(n, "pull/"), n)
		}
	}
}

// TestPushPullThroughDataPlane drives package poolvol through the daemon's data plane without
// an engine: an image written through its block device, whose child zeroes a chunk (punched
// out of the device; the pull unmaps it) and rewrites another, pushed and pulled back through
// the data plane's API, and read back.
func TestPushPullThroughDataPlane(t *testing.T) {
	d, _ := newTestDaemon(t)
	ctx := context.Background()
	const size = 8 * exportset.DefaultChunkSize
	// image makes a snapshot of a volume (a clone of from, or new) that write changed through
	// its device.
	image := func(name string, from blockstore.SnapshotID, write func(f *os.File)) blockstore.SnapshotID {
		var vol blockstore.VolumeInfo
		var err error
		if from != 0 {
			vol, err = d.store.Clone(ctx, from, "t/"+name, 0)
		} else {
			vol, err = d.store.CreateVolume(ctx, "t/"+name, size)
		}
		require.NoError(t, err)
		at, err := d.vols.Attach(ctx, nodevolume.Spec{ID: "t-" + name, Volume: vol.ID})
		require.NoError(t, err)
		f, err := os.OpenFile(at.DevicePath(), os.O_RDWR, 0)
		require.NoError(t, err)
		write(f)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
		require.NoError(t, d.vols.Detach(ctx, "t-"+name, ""))
		snap, err := d.store.CreateSnapshot(ctx, vol.ID, "t/"+name)
		require.NoError(t, err)
		require.NoError(t, d.store.DeleteVolume(ctx, vol.ID))
		t.Cleanup(func() { require.NoError(t, d.store.DeleteSnapshot(ctx, snap.ID)) })
		return snap.ID
	}
	read := func(snap blockstore.SnapshotID) []byte {
		src, err := d.pv.NewSource(ctx, snap, "t/read", "t-read")
		require.NoError(t, err)
		defer func() { require.NoError(t, src.Close(ctx)) }()
		b := make([]byte, size)
		_, err = src.ReadAt(b, 0)
		require.NoError(t, err)
		return b
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	for i := range data {
		if i%4096 < 64 {
			data[i] = byte(i / 4096)
		}
	}
	base := image("base", 0, func(f *os.File) { _, err := f.WriteAt(data, 0); require.NoError(t, err) })
	child := image("child", base, func(f *os.File) {
		require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, exportset.DefaultChunkSize, exportset.DefaultChunkSize))
		_, err := f.WriteAt([]byte("changed"), 5*exportset.DefaultChunkSize+4096)
		require.NoError(t, err)
	})

	reg := exportset.New(remoteDir(t), exportset.Options{})
	push := func(snap blockstore.SnapshotID, name string, parent *exportset.Parent) exportset.Digest {
		src, err := d.pv.NewSource(ctx, snap, "t/push", "t-push")
		require.NoError(t, err)
		defer func() { require.NoError(t, src.Close(ctx)) }()
		res, err := reg.Push(ctx, exportset.PushRequest{Source: src, Image: exportset.Image{Name: name, Created: d.now()}, Parent: parent})
		require.NoError(t, err)
		return res.Digest
	}
	bd := push(base, "base", nil)
	psrc, err := d.pv.NewSource(ctx, base, "t/parent", "t-parent")
	require.NoError(t, err)
	cd := push(child, "child", &exportset.Parent{Digest: bd, Source: psrc})
	require.NoError(t, psrc.Close(ctx))

	pulled := map[exportset.Digest]blockstore.SnapshotID{}
	pull := func(dg exportset.Digest, name string) (*exportset.PullResult, blockstore.SnapshotID) {
		sink := &poolvol.Sink{Node: d.pv, Volume: "t/pull", ID: "t-pull", Snapshot: "t/pulled-" + name,
			Lookup: func(x exportset.Digest) (blockstore.SnapshotID, bool) { s, ok := pulled[x]; return s, ok }}
		res, err := reg.Pull(ctx, exportset.PullRequest{Ref: string(dg), Sink: sink})
		require.NoError(t, err)
		snap, ok := sink.Committed()
		require.True(t, ok)
		pulled[dg] = snap.ID
		t.Cleanup(func() { require.NoError(t, d.store.DeleteSnapshot(ctx, snap.ID)) })
		return res, snap.ID
	}
	_, pb := pull(bd, "base")
	res, pc := pull(cd, "child")
	require.Equal(t, bd, res.Base)
	require.Equal(t, int64(exportset.DefaultChunkSize), res.ZeroedBytes, "the zeroed chunk is punched out")
	require.Equal(t, int64(4096), res.WrittenBytes, "and the changed block written")
	require.Equal(t, read(base), read(pb))
	want := read(child)
	require.True(t, bytes.Equal(want, read(pc)), "the pulled child reads as the child")
	require.Equal(t, make([]byte, exportset.DefaultChunkSize), want[exportset.DefaultChunkSize:2*exportset.DefaultChunkSize])
	mapped := func(s blockstore.SnapshotID) int64 {
		n, err := d.allocatedBytes(s)
		require.NoError(t, err)
		return n
	}
	require.Equal(t, mapped(child), mapped(pc), "the punched chunk is unmapped, not written with zeros")
}

func remoteDir(t *testing.T) exportset.Target {
	dir, err := remote.NewDir(filepath.Join(testDir(t), "registry"))
	require.NoError(t, err)
	return dir
}

// TestPullResumesAfterCancel: a pull cancelled half-way (the command interrupted) keeps its
// volume, named by the image and its digest; the next pull of the image resumes it, and the
// image it makes is whole (a clone of it answers).
func TestPullResumesAfterCancel(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	ctx := context.Background()
	registry := "file://" + filepath.Join(testDir(t), "registry")
	a, _ := newTestDaemon(t)
	b, _ := newTestDaemon(t)
	build(t, a, pgDefinition(eng, "base", "sourceType: empty\n"), "")
	c := createClone(t, a, CloneRequest{Image: "base", Name: "work"})
	sql(t, c, "CREATE TABLE rows AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g")
	_, err := a.ImageFromClone(ctx, ImageFromCloneRequest{Name: "filled", Clone: "work"})
	require.NoError(t, err)
	pushed, err := a.PushImage(ctx, PushRequest{Image: "filled", Remote: Remote{URL: registry}}, nil)
	require.NoError(t, err)

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	_, err = b.PullImage(cctx, PullRequest{Ref: "filled", Remote: Remote{URL: registry}}, func(ev wire.Event) {
		if ev.Done > 0 {
			cancel() // after the first chunk
		}
	})
	require.ErrorIs(t, err, context.Canceled)
	vol := pullVolume("filled", exportset.Digest(pushed.Digest))
	require.Contains(t, poolNames(t, b), "volume "+vol, "the cancelled pull kept its volume")

	img, err := b.PullImage(ctx, PullRequest{Ref: "filled", Remote: Remote{URL: registry}}, nil)
	require.NoError(t, err)
	require.Equal(t, pushed.Digest, img.Digest)
	require.NotContains(t, poolNames(t, b), "volume "+vol, "the resumed pull's volume became the image")
	clone := createClone(t, b, CloneRequest{Image: "filled", Name: "check"})
	require.Equal(t, "200000", sql(t, clone, "SELECT count(*) FROM rows"))
}
