package dataimage

import (
	"context"
	"strings"
	"testing"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/remote"
)

// TestRegistryGC: a collection deletes the objects no manifest names (the chunks of a
// withdrawn image) and counts them; while a push holds a live lease it deletes nothing and says
// so (busy), and the next collection does the work.
func TestRegistryGC(t *testing.T) {
	ctx := context.Background()
	dir, err := remote.NewDir(t.TempDir())
	require.NoError(t, err)
	orphan := "chunks/sha256/" + strings.Repeat("ab", 32)
	require.NoError(t, dir.Put(ctx, orphan, []byte("the chunk of a withdrawn image")))
	gc := &registryGC{reg: exportset.New(dir, exportset.Options{}), interval: 1, log: testr.New(t)}

	// A push in progress: its lease, just written, is live.
	require.NoError(t, dir.Put(ctx, "leases/push-1", []byte(`{"what":"push"}`)))
	busy := testutil.ToFloat64(metricRegistryGC.WithLabelValues("busy"))
	require.ErrorIs(t, gc.collect(ctx), exportset.ErrBusy)
	require.Equal(t, busy+1, testutil.ToFloat64(metricRegistryGC.WithLabelValues("busy")))
	_, err = dir.Stat(ctx, orphan)
	require.NoError(t, err, "a collection that gave up deleted an object")

	require.NoError(t, dir.Delete(ctx, "leases/push-1"))
	done := testutil.ToFloat64(metricRegistryGC.WithLabelValues("done"))
	deleted := testutil.ToFloat64(metricRegistryGCDeletedBytes)
	require.NoError(t, gc.collect(ctx))
	require.Equal(t, done+1, testutil.ToFloat64(metricRegistryGC.WithLabelValues("done")))
	require.Greater(t, testutil.ToFloat64(metricRegistryGCDeletedBytes), deleted)
	_, err = dir.Stat(ctx, orphan)
	require.ErrorIs(t, err, exportset.ErrNotFound, "the orphan object is still there")
}
