package blockstore_test

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// failingReads is a File whose reads of the bytes from failAt on fail with EIO, as a disk with
// bad sectors (or a dead export) does.
type failingReads struct {
	blockstore.File
	failAt int64
}

func (f failingReads) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, &fs.PathError{Op: "read", Path: "disk", Err: syscall.EIO}
	}
	return f.File.ReadAt(p, off)
}

// usedPool returns the contents of a closed pool that committed records (so its journal's first
// block holds one).
func usedPool(t *testing.T) *faultfs.File {
	t.Helper()
	ff := faultfs.New(32 << 20)
	p, err := blockstore.CreateOn(ff, blockstore.Options{})
	require.NoError(t, err)
	info, err := p.CreateVolume("v", 1<<20)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	_, err = vol.WriteAt(pattern(3, 8192), 0)
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	require.NoError(t, p.Close())
	return ff.Reopen()
}

// TestOpenReadErrorIsNotNotPool: a read error where the superblocks are is an error that says
// so, never ErrNotPool (which would let a caller make a new pool over the old one); a pool whose
// superblocks are both damaged is ErrCorrupt, never ErrNotPool.
func TestOpenReadErrorIsNotNotPool(t *testing.T) {
	for _, failAt := range []int64{0, format.DefaultBlockSize, 3 * format.DefaultBlockSize} {
		for name, f := range map[string]*faultfs.File{"pool": usedPool(t), "zeros": faultfs.New(32 << 20)} {
			_, err := blockstore.OpenOn(failingReads{File: f.Reopen(), failAt: failAt}, blockstore.Options{})
			require.ErrorIs(t, err, syscall.EIO, "%s, reads failing from byte %d", name, failAt)
			require.NotErrorIs(t, err, blockstore.ErrNotPool, "%s, reads failing from byte %d", name, failAt)
			require.ErrorContains(t, err, "superblock")
		}
	}

	ff := usedPool(t)
	for _, off := range []int64{0, format.DefaultBlockSize} {
		b := make([]byte, 1)
		_, err := ff.ReadAt(b, off+20)
		require.NoError(t, err)
		b[0] ^= 0x10
		_, err = ff.WriteAt(b, off+20)
		require.NoError(t, err)
	}
	_, err := blockstore.OpenOn(ff.Reopen(), blockstore.Options{})
	require.ErrorIs(t, err, blockstore.ErrCorrupt)
	require.NotErrorIs(t, err, blockstore.ErrNotPool)

	_, err = blockstore.OpenOn(faultfs.New(32<<20), blockstore.Options{})
	require.ErrorIs(t, err, blockstore.ErrNotPool, "nothing there")
}

// TestTraces: Traces finds a pool by its superblocks, a pool whose superblocks are both damaged
// by their magic numbers, and one whose superblock blocks were zeroed by its journal; nothing in
// zeros or in a short file; a read error is an error.
func TestTraces(t *testing.T) {
	bs := int64(format.DefaultBlockSize)
	traces := func(r io.ReaderAt) []string {
		t.Helper()
		tr, err := blockstore.Traces(r)
		require.NoError(t, err)
		return tr
	}
	ff := usedPool(t)
	require.NotEmpty(t, traces(ff))
	require.Contains(t, traces(ff)[0], "a Dataimage pool superblock at byte 0")

	for _, off := range []int64{0, bs} {
		b := make([]byte, 1)
		_, err := ff.ReadAt(b, off+20)
		require.NoError(t, err)
		b[0] ^= 0x10
		_, err = ff.WriteAt(b, off+20)
		require.NoError(t, err)
	}
	tr := traces(ff)
	require.Contains(t, tr, "a damaged Dataimage pool superblock at byte 0 (superblock: checksum mismatch)")
	require.Contains(t, tr, "a damaged Dataimage pool superblock at byte 4096 (superblock: checksum mismatch)")

	_, err := ff.WriteAt(make([]byte, 2*bs), 0)
	require.NoError(t, err)
	require.Equal(t, []string{"a Dataimage pool journal record at byte 8192"}, traces(ff))

	require.Empty(t, traces(faultfs.New(32<<20)), "zeros")
	require.Empty(t, traces(bytes.NewReader([]byte("short"))), "a file shorter than a block")
	_, err = blockstore.Traces(failingReads{File: faultfs.New(32 << 20), failAt: 5 * bs})
	require.ErrorIs(t, err, syscall.EIO)
}

// TestCreateFileAtomic: a pool file appears at its path only formatted, Create never replaces
// an existing path, and the temporary file a crashed Create left is replaced.
func TestCreateFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pool")
	require.NoError(t, os.WriteFile(path, []byte("not a pool, not ours to overwrite"), 0o600))
	_, err := blockstore.Create(path, blockstore.Options{Size: 32 << 20})
	require.ErrorIs(t, err, fs.ErrExist)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "not a pool, not ours to overwrite", string(b))
	require.NoError(t, os.Remove(path))

	stale := filepath.Join(dir, ".pool.creating")
	require.NoError(t, os.WriteFile(stale, bytes.Repeat([]byte{1}, 8192), 0o600))
	p, err := blockstore.Create(path, blockstore.Options{Size: 32 << 20})
	require.NoError(t, err)
	mustCheckClose(t, p)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, ents, 1, "only the pool is left: %v", ents)
	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	mustCheckClose(t, p)
}
