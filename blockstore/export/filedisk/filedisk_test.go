package filedisk_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/blockstore/export/filedisk"
)

var _ export.Disk = (*filedisk.Disk)(nil)

func TestDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	_, err := filedisk.Open(path, 0)
	require.ErrorContains(t, err, "empty")
	require.NoError(t, os.Truncate(path, 1<<20))

	d, err := filedisk.Open(path, 0)
	require.NoError(t, err)
	defer d.Close()
	require.Equal(t, int64(1<<20), d.Size())
	data := bytes.Repeat([]byte("filedisk"), 8192)
	n, err := d.WriteAt(data, 4096)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	require.NoError(t, d.Flush())

	got := make([]byte, len(data))
	_, err = d.ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, data, got)
	tail := make([]byte, 4096)
	n, err = d.ReadAt(tail, 1<<20-4096)
	require.NoError(t, err, "a read that ends at the end of the file is whole")
	require.Equal(t, 4096, n)

	require.NoError(t, d.Discard(4096, 16384))
	_, err = d.ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 16384), got[:16384], "discarded range reads as zeros")
	require.Equal(t, data[16384:], got[16384:])
}
