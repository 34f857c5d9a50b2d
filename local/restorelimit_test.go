package local

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// bombMembers is the member limit of the tar bomb test's daemon.
const bombMembers = 5000

// TestRestoreLimits builds images from tar bombs through the daemon, on a real pool: a base
// backup with a sparse member of 1 TiB (more than the 2 GiB volume) and one with more members
// than the limit. Each build fails at the restore step, naming the limit and the archive; no
// image or volume is left, the pool has its space back, and another volume of the pool still
// reads what it holds.
func TestRestoreLimits(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	if _, err := exec.LookPath("tar"); err != nil {
		skipOrFail(t, "GNU tar makes the sparse archive: %v", err)
	}
	dir := testDir(t)
	cfg := testConfig(filepath.Join(dir, "home"), testLog(t, dir))
	cfg.MaxArchiveMembers = bombMembers
	d, err := NewDaemon(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAndCheck(t, d, cfg) })
	root := backupDir(t)

	// The sparse bomb: backup_label and PG_VERSION, then base/1/huge, 1 TiB of holes.
	src := filepath.Join(testDir(t), "bomb")
	writeTestFile(t, filepath.Join(src, "backup_label"), "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIME: 2026-12-01 10:00:00 UTC\n")
	writeTestFile(t, filepath.Join(src, "PG_VERSION"), strings.Split(eng.Version(), ".")[0]+"\n")
	huge := filepath.Join(src, "base", "1", "huge")
	writeTestFile(t, huge, "")
	require.NoError(t, os.Truncate(huge, 1<<40))
	out, err := exec.Command("tar", "--sparse", "--format=gnu", "-cf", filepath.Join(root, "sparse.tar"), "-C", src, "backup_label", "PG_VERSION", "base").CombinedOutput()
	require.NoError(t, err, "tar: %s", out)
	st, err := os.Stat(filepath.Join(root, "sparse.tar"))
	require.NoError(t, err)
	require.Less(t, st.Size(), int64(1<<20), "the sparse archive is small")

	// The member bomb: more tiny files than the limit.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name, body string) {
		require.NoError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: int64(len(body))}))
		_, err := tw.Write([]byte(body))
		require.NoError(t, err)
	}
	add("backup_label", "START TIME: 2026-12-01 10:00:00 UTC\n")
	add("PG_VERSION", strings.Split(eng.Version(), ".")[0]+"\n")
	for i := range bombMembers {
		add(fmt.Sprintf("base/1/%05d", i), "x")
	}
	require.NoError(t, tw.Close())
	writeTestFile(t, filepath.Join(root, "members.tar"), buf.String())

	// Another volume of the pool, with data on it, written and read through its block device
	// (O_DIRECT: from the data plane, not the page cache).
	ctx := context.Background()
	keep, err := d.store.CreateVolume(ctx, "test/keep", 64<<20)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.store.DeleteVolume(ctx, keep.ID) })
	kexp, err := d.store.Export(ctx, dataplane.ExportSpec{ID: "test-keep", Volume: keep.ID})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, d.store.Unexport(ctx, "test-keep")) })
	kv, err := os.OpenFile(kexp.Device, os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { kv.Close() })
	data := nodetest.AlignedBuf(16 << 20)
	_, err = rand.Read(data)
	require.NoError(t, err)
	_, err = kv.WriteAt(data, 8<<20)
	require.NoError(t, err)
	require.NoError(t, kv.Sync())
	used := func() int64 {
		st, err := d.store.Stats(ctx)
		require.NoError(t, err)
		return st.UsedBytes
	}
	names, usedBefore := poolNames(t, d), used()

	for _, tc := range []struct {
		backup string
		want   []string
	}{
		{"sparse.tar", []string{"the backup's files would take more than 2147483648 bytes, the restore's byte limit", `"base/1/huge": its 1099511627776 bytes`}},
		{"members.tar", []string{fmt.Sprintf("the backup has more than %d members", bombMembers), fmt.Sprintf(`member %d "base/1/%05d"`, bombMembers+1, bombMembers-2)}},
	} {
		t.Run(tc.backup, func(t *testing.T) {
			def := pgDefinition(eng, "bomb", "sourceType: backup\nbackups:\n  - path: "+tc.backup+"\n    format: basebackup-tar\n")
			_, steps, err := tryBuild(d, def, root)
			require.ErrorIs(t, err, ErrBuildFailed)
			require.ErrorContains(t, err, "local: build image bomb failed at step restore: ")
			require.ErrorContains(t, err, "engine: backup exceeds the restore's limits")
			require.ErrorContains(t, err, filepath.Join(root, tc.backup))
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			require.NotContains(t, steps, "start", "the build stopped at the restore")
			_, err = d.Image(context.Background(), "bomb")
			require.ErrorIs(t, err, ErrNotFound)
			require.Equal(t, names, poolNames(t, d), "the build volume is deleted")
			require.Equal(t, usedBefore, used(), "the pool has its space back")
			got := nodetest.AlignedBuf(len(data))
			_, err = kv.ReadAt(got, 8<<20)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got), "the other volume reads what it holds")
		})
	}
}
