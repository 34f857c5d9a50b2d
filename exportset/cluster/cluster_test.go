package cluster_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/cluster"
	"github.com/dataimage/dataimage/exportset/remote"
)

func dirTarget(t *testing.T) exportset.Target {
	d, err := remote.NewDir(filepath.Join(t.TempDir(), "registry"))
	require.NoError(t, err)
	return d
}

// TestPlacementsAndReports: what is written reads back (nodes sorted and unique); a listing
// skips what is not a placement or report and names what does not decode; deletes are
// idempotent.
func TestPlacementsAndReports(t *testing.T) {
	ctx := context.Background()
	tg := dirTarget(t)
	created := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	p := cluster.Placement{Handle: "ds-1a2b3c4d-0000000000000007-0badcafe", Nodes: []string{"node-b", "node-a", "node-b"},
		Image: exportset.Image{Name: "team-a/sales", Engine: "postgres", Created: created}}
	require.NoError(t, cluster.PutPlacement(ctx, tg, p))
	got, err := cluster.GetPlacement(ctx, tg, p.Handle)
	require.NoError(t, err)
	require.Equal(t, []string{"node-a", "node-b"}, got.Nodes)
	require.Equal(t, "team-a/sales", got.Image.Name)
	require.True(t, got.Image.Created.Equal(created))

	require.NoError(t, cluster.PutPlacement(ctx, tg, cluster.Placement{Handle: "ds-00000000-0000000000000001"}))
	require.NoError(t, tg.Put(ctx, "cluster/placements/ds-00000000-0000000000000002", []byte(`{"handle":"x","future":1}`)))
	require.NoError(t, tg.Put(ctx, "cluster/placements/sub/dir", []byte(`{}`)))
	ps, bad, err := cluster.Placements(ctx, tg)
	require.NoError(t, err)
	require.Len(t, ps, 2)
	require.Equal(t, "ds-00000000-0000000000000001", ps[0].Handle)
	require.Len(t, bad, 1)
	require.ErrorIs(t, bad[0], exportset.ErrInvalid)
	require.Contains(t, bad[0].Error(), "ds-00000000-0000000000000002")

	r := cluster.NodeReport{Node: "node-a", Updated: created, Images: []cluster.ImageState{
		{Handle: p.Handle, Digest: exportset.DigestOf([]byte("m")), State: cluster.StateHeld, Pushed: true}}}
	require.NoError(t, cluster.PutReport(ctx, tg, r))
	rs, bad, err := cluster.Reports(ctx, tg)
	require.NoError(t, err)
	require.Empty(t, bad)
	require.Len(t, rs, 1)
	s, ok := rs[0].Image(p.Handle)
	require.True(t, ok)
	require.Equal(t, r.Images[0], s)
	_, ok = rs[0].Image("ds-00000000-0000000000000001")
	require.False(t, ok)

	require.NoError(t, cluster.DeletePlacement(ctx, tg, p.Handle))
	require.NoError(t, cluster.DeletePlacement(ctx, tg, p.Handle))
	_, err = cluster.GetPlacement(ctx, tg, p.Handle)
	require.ErrorIs(t, err, exportset.ErrNotFound)
	require.NoError(t, cluster.DeleteReport(ctx, tg, "node-a"))
	rs, _, err = cluster.Reports(ctx, tg)
	require.NoError(t, err)
	require.Empty(t, rs)
}

// TestKeysRefused: handles and node names that are not object names are refused by name,
// before anything is written.
func TestKeysRefused(t *testing.T) {
	ctx := context.Background()
	tg := dirTarget(t)
	for _, bad := range []string{"", "../x", "a/b", ".hidden", "-lead", "trail-", string(make([]byte, 300))} {
		err := cluster.PutPlacement(ctx, tg, cluster.Placement{Handle: bad})
		require.ErrorIs(t, err, exportset.ErrInvalid, "%q", bad)
		require.Contains(t, err.Error(), "placement handle")
		err = cluster.PutReport(ctx, tg, cluster.NodeReport{Node: bad})
		require.ErrorIs(t, err, exportset.ErrInvalid, "%q", bad)
		require.Contains(t, err.Error(), "report node")
	}
	err := cluster.PutPlacement(ctx, tg, cluster.Placement{Handle: "ok", Nodes: []string{"a/b"}})
	require.ErrorIs(t, err, exportset.ErrInvalid)
	require.Contains(t, err.Error(), "placement node")
	var n int
	require.NoError(t, tg.List(ctx, "", func(exportset.ObjectInfo) error { n++; return nil }))
	require.Zero(t, n, "a refused write left something")
	require.False(t, errors.Is(err, exportset.ErrNotFound))
}
