package fusedev_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestFileSystem: what the kernel and its users see of the served file system: the one file with
// the Disk's size and the block size, a directory listing, statfs, and the refusals.
func TestFileSystem(t *testing.T) {
	nodetest.Need(t)
	d := newMemDisk(16 * mib)
	m := mountDisk(t, d, fusedev.Config{})
	assert.GreaterOrEqual(t, m.params.Minor, uint32(28))
	t.Logf("negotiated %+v", m.params)

	var st unix.Stat_t
	require.NoError(t, unix.Stat(m.file(), &st))
	assert.Equal(t, int64(16*mib), st.Size)
	assert.Equal(t, uint32(unix.S_IFREG|0o600), st.Mode)
	assert.Equal(t, int64(4096), st.Blksize)
	assert.Equal(t, uint64(2), st.Ino)
	require.NoError(t, unix.Stat(m.dir, &st))
	assert.Equal(t, uint32(unix.S_IFDIR), st.Mode&unix.S_IFMT)

	ents, err := os.ReadDir(m.dir)
	require.NoError(t, err)
	require.Len(t, ents, 1)
	assert.Equal(t, fusedev.FileName, ents[0].Name())
	assert.True(t, ents[0].Type().IsRegular())

	var sf unix.Statfs_t
	require.NoError(t, unix.Statfs(m.dir, &sf))
	assert.Equal(t, int64(4096), sf.Bsize)
	assert.Equal(t, uint64(16*mib/4096), sf.Blocks)

	require.ErrorIs(t, unix.Stat(filepath.Join(m.dir, "nothing"), &st), unix.ENOENT)
	_, err = os.Create(filepath.Join(m.dir, "new"))
	require.ErrorIs(t, err, unix.EPERM, "no other files")
	require.ErrorIs(t, unix.Mkdir(filepath.Join(m.dir, "d"), 0o700), unix.EPERM)
	require.ErrorIs(t, unix.Unlink(m.file()), unix.EPERM)
	require.ErrorIs(t, unix.Truncate(m.file(), 8*mib), unix.EPERM, "the size changes only through the Disk")
	require.NoError(t, unix.Truncate(m.file(), 16*mib), "a truncate to the size changes nothing")
	require.NoError(t, unix.Chmod(m.file(), 0o644), "accepted, not kept")
	_, err = unix.Getxattr(m.file(), "user.x", make([]byte, 16))
	require.ErrorIs(t, err, unix.EOPNOTSUPP)

	// The size follows the Disk once the server invalidates the inode (attributes are not cached,
	// but the loop device reads the inode's size).
	d.grow(20 * mib)
	require.NoError(t, m.srv.InvalidateFile())
	require.NoError(t, unix.Stat(m.file(), &st))
	assert.Equal(t, int64(20*mib), st.Size)
}

// TestReadWrite: direct reads and writes of the file reach the Disk at the right offsets, also
// large ones, in parallel; fsync and close flush the Disk.
func TestReadWrite(t *testing.T) {
	nodetest.Need(t)
	d := newMemDisk(64 * mib)
	m := mountDisk(t, d, fusedev.Config{})
	f := openFile(t, m.file(), unix.O_RDWR|unix.O_DIRECT)

	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range 16 {
		wg.Go(func() {
			size := 4096 << (i % 9) // 4 KiB to 1 MiB
			off := int64(i) * 4 * mib
			data := pattern(byte(i), size)
			if _, err := f.WriteAt(data, off); err != nil {
				errs[i] = err
				return
			}
			got := alignedBuf(size)
			if _, err := f.ReadAt(got, off); err != nil {
				errs[i] = err
				return
			}
			if string(got) != string(data) {
				errs[i] = fmt.Errorf("read back %d bytes at %d: differs", size, off)
			}
			onDisk := make([]byte, size)
			if _, err := d.ReadAt(onDisk, off); err != nil || string(onDisk) != string(data) {
				errs[i] = fmt.Errorf("disk at %d: differs", off)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	before := d.flushes.Load()
	require.NoError(t, f.Sync())
	assert.Greater(t, d.flushes.Load(), before, "fsync reached Disk.Flush")
	before = d.flushes.Load()
	require.NoError(t, f.Close())
	assert.Greater(t, d.flushes.Load(), before, "close reached Disk.Flush")

	// A read at the end returns what there is.
	f = openFile(t, m.file(), unix.O_RDONLY|unix.O_DIRECT)
	n, err := f.ReadAt(alignedBuf(8192), 64*mib-4096)
	require.Equal(t, 4096, n)
	require.ErrorIs(t, err, io.EOF)
}

// TestFallocate: punch-hole reaches Discard, zero-range and write-zeroes reach WriteZeroes (or
// Discard, for a Disk without it), plain allocation is refused with EOPNOTSUPP.
func TestFallocate(t *testing.T) {
	nodetest.Need(t)
	for _, zeroer := range []bool{true, false} {
		t.Run(fmt.Sprint("zeroer=", zeroer), func(t *testing.T) {
			md := newMemDisk(16 * mib)
			var d fusedev.Disk = md
			if zeroer {
				d = zeroingDisk{md}
			}
			copy(md.data, pattern(1, 16*mib))
			m := mountDisk(t, d, fusedev.Config{})
			f := openFile(t, m.file(), unix.O_RDWR)
			fd := int(f.Fd())

			require.NoError(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, mib, mib))
			assert.Equal(t, int64(1), md.discards.Load())
			assert.True(t, isZero(md.at(mib, 2*mib)))
			assert.False(t, isZero(md.at(2*mib, 3*mib)))

			require.NoError(t, unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 4*mib, mib))
			assert.True(t, isZero(md.at(4*mib, 5*mib)))
			if zeroer {
				assert.Equal(t, int64(1), md.zeroes.Load())
			} else {
				assert.Equal(t, int64(2), md.discards.Load())
			}
			// Past the end with KEEP_SIZE: the part inside is discarded.
			require.NoError(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 16*mib-4096, mib))
			assert.True(t, isZero(md.at(16*mib-4096, 16*mib)))

			require.ErrorIs(t, unix.Fallocate(fd, 0, 0, mib), unix.EOPNOTSUPP, "allocation is not promised")
			require.ErrorIs(t, unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 16*mib-4096, mib), unix.EOPNOTSUPP, "growing")
			// EOPNOTSUPP, not ENOSYS: the kernel goes on sending fallocate.
			require.NoError(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096))
		})
	}
}

// TestDiskErrors: a full pool reaches the writer as ENOSPC, an errno as itself, anything else as
// EIO.
func TestDiskErrors(t *testing.T) {
	nodetest.Need(t)
	d := newMemDisk(mib)
	m := mountDisk(t, d, fusedev.Config{})
	f := openFile(t, m.file(), unix.O_RDWR|unix.O_DIRECT)
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{blockstore.ErrNoSpace, unix.ENOSPC},
		{fmt.Errorf("write: %w", unix.EROFS), unix.EROFS},
		{blockstore.ErrFailed, unix.EIO},
	} {
		d.writeErr.Store(&tc.err)
		_, err := f.WriteAt(pattern(1, 4096), 0)
		require.ErrorIs(t, err, tc.want, "disk error %v", tc.err)
	}
	d.writeErr.Store(nil)
	_, err := f.WriteAt(pattern(1, 4096), 0)
	require.NoError(t, err)
}

// A full pool and a full file system under the pool file reach the kernel as ENOSPC (the
// writer sees "No space left on device"), other errors as themselves or EIO.
func TestErrnoMapping(t *testing.T) {
	hostFull := fmt.Errorf("%w: write block 7: %w", blockstore.ErrHostFull, &os.PathError{Op: "write", Path: "pool", Err: syscall.EDQUOT})
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{blockstore.ErrNoSpace, syscall.ENOSPC},
		{hostFull, syscall.ENOSPC},
		{fmt.Errorf("write: %w", syscall.EROFS), syscall.EROFS},
		{blockstore.ErrFailed, syscall.EIO},
		{syscall.Errno(0), syscall.EIO},
	} {
		if got := fusedev.Errno(tc.err); got != tc.want {
			t.Errorf("Errno(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
