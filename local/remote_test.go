package local

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
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
	before := b.pool.Stats().UsedBytes
	bChild, err := b.PullImage(ctx, PullRequest{Ref: "child", Remote: Remote{URL: registry}}, nil)
	require.NoError(t, err)
	require.Equal(t, "base", bChild.Parent, "pulled on top of the base")
	grown := b.pool.Stats().UsedBytes - before
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
}
