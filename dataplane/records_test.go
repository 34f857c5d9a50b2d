package dataplane

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestRecords: an export is recorded (volume, attrs) from before it is made until it is torn
// down, and again when its attrs change; a failed export leaves no record. At start, records
// with no kernel state left are removed, and files that are not records are left alone.
func TestRecords(t *testing.T) {
	nodetest.Need(t)
	dir := t.TempDir()
	pool := nodetest.Pool(t, filepath.Join(dir, "pool"), 256<<20)
	stateDir := filepath.Join(dir, "export")
	t.Cleanup(func() { nodetest.RequireNothingLeft(t, dir, stateDir) })
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	l := NewLocal(pool, exp, nil)
	l.recs = records{dir: filepath.Join(dir, "records")}
	ctx := context.Background()
	v, err := pool.CreateVolume("v", 16<<20)
	require.NoError(t, err)

	loaded := func() map[string]record {
		t.Helper()
		recs, bad, err := l.recs.load()
		require.NoError(t, err)
		require.Empty(t, bad)
		return recs
	}
	require.Empty(t, loaded(), "no record before any export")
	_, err = l.Export(ctx, ExportSpec{ID: "missing", Volume: v.ID + 100})
	require.Error(t, err)
	require.Empty(t, loaded(), "a failed export leaves no record")

	_, err = l.Export(ctx, ExportSpec{ID: "v", Volume: v.ID, Attrs: map[string]string{"mnt": "/a"}})
	require.NoError(t, err)
	require.Equal(t, map[string]record{"v": {ID: "v", Volume: uint64(v.ID), Attrs: map[string]string{"mnt": "/a"}}}, loaded())
	_, err = l.Export(ctx, ExportSpec{ID: "v", Volume: v.ID, Attrs: map[string]string{"mnt": "/b"}})
	require.NoError(t, err)
	require.Equal(t, "/b", loaded()["v"].Attrs["mnt"], "the attrs changed with the export's")
	fi, err := os.Stat(l.recs.path("v"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// A start with records of exports that are gone (and a file that is not a record).
	require.NoError(t, l.recs.put(ExportSpec{ID: "gone", Volume: 7}))
	require.NoError(t, os.WriteFile(filepath.Join(l.recs.dir, ".gone.json.tmp-1"), []byte("{"), 0o600))
	fresh := NewLocal(pool, nil, nil) // no exporter: nothing of the kernel's left
	fresh.recs = l.recs
	require.NoError(t, startExports(ctx, fresh, l.log))
	recs, bad, err := l.recs.load()
	require.NoError(t, err)
	require.Empty(t, recs, "the records of exports that are gone are removed")
	require.Equal(t, []string{".gone.json.tmp-1"}, bad)

	require.NoError(t, l.recs.put(ExportSpec{ID: "v", Volume: v.ID}))
	require.NoError(t, l.Unexport(ctx, "v"))
	_, err = os.Stat(l.recs.path("v"))
	require.ErrorIs(t, err, os.ErrNotExist, "the record goes with the export")
}
