package export_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

const mib = 1 << 20

// A block store volume is a Disk, and zeroes without the detour through Discard.
var (
	_ export.Disk        = (*blockstore.Volume)(nil)
	_ export.WriteZeroer = (*blockstore.Volume)(nil)
)

// TestFilesystems makes ext4 and xfs on an exported volume, writes files, and finds them again
// through a second export of the same volume after the first is closed. fsync in the mounted
// file system reaches Disk.Flush.
func TestFilesystems(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			needRoot(t, "mkfs."+fsType)
			p, _ := newPool(t, 2048*mib)
			vol := newVolume(t, p, "v", 512*mib) // mkfs.xfs wants at least 300 MiB
			e, _ := newExporter(t)
			disk := &countingDisk{Disk: vol}
			dev, err := e.Export("pvc-"+fsType, disk)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(dev.Path(), "/dev/loop"), dev.Path())
			assert.Equal(t, "1", sysLoop(t, dev.Path(), "loop/dio"), "loop direct I/O")
			assert.Equal(t, "4096", sysLoop(t, dev.Path(), "queue/logical_block_size"))

			if fsType == "xfs" {
				run(t, "mkfs.xfs", "-q", "-f", dev.Path())
			} else {
				run(t, "mkfs.ext4", "-q", "-F", dev.Path())
			}
			files := map[string][]byte{
				"big":   make([]byte, 8*mib+12345),
				"small": []byte("hello, data image\n"),
			}
			_, err = rand.Read(files["big"])
			require.NoError(t, err)

			mnt := t.TempDir()
			run(t, "mount", dev.Path(), mnt)
			for name, data := range files {
				require.NoError(t, os.WriteFile(filepath.Join(mnt, name), data, 0o644))
			}
			before := disk.flushes.Load()
			f, err := os.OpenFile(filepath.Join(mnt, "fsynced"), os.O_CREATE|os.O_WRONLY, 0o644)
			require.NoError(t, err)
			_, err = f.Write([]byte("durable"))
			require.NoError(t, err)
			require.NoError(t, f.Sync())
			require.NoError(t, f.Close())
			assert.Greater(t, disk.flushes.Load(), before, "fsync in the file system reached Disk.Flush")
			files["fsynced"] = []byte("durable")

			// Busy while mounted: Close fails and changes nothing.
			require.ErrorIs(t, dev.Close(), export.ErrBusy)
			_, err = os.ReadFile(filepath.Join(mnt, "small"))
			require.NoError(t, err)

			run(t, "umount", mnt)
			require.NoError(t, dev.Close())
			require.NoError(t, dev.Close(), "Close is idempotent")

			// The data is in the volume: export it again and read the files back.
			dev2, err := e.Export("pvc-"+fsType, vol)
			require.NoError(t, err)
			run(t, "mount", "-o", "ro", dev2.Path(), mnt)
			for name, want := range files {
				got, err := os.ReadFile(filepath.Join(mnt, name))
				require.NoError(t, err)
				require.True(t, bytes.Equal(want, got), "file %s differs after re-export", name)
			}
			run(t, "umount", mnt)
			require.NoError(t, dev2.Close())
		})
	}
}

// TestIOThroughDevice writes with O_DIRECT through the device and reads through the volume, and
// the other way round, at the start, the middle and the last block.
func TestIOThroughDevice(t *testing.T) {
	needRoot(t)
	p, _ := newPool(t, 256*mib)
	vol := newVolume(t, p, "v", 64*mib)
	e, _ := newExporter(t)
	dev, err := e.Export("io", vol)
	require.NoError(t, err)
	defer func() { require.NoError(t, dev.Close()) }()

	f, err := os.OpenFile(dev.Path(), os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	for i, off := range []int64{0, 31 * mib, 64*mib - 4096} {
		n := min(2*mib, int(64*mib-off))
		data := pattern(byte(i+1), n)
		_, err := f.WriteAt(data, off)
		require.NoError(t, err)
		require.Equal(t, data, readVolume(t, vol, off, n), "device write at %d read through the volume", off)

		data = pattern(byte(i+100), n)
		_, err = vol.WriteAt(data, off)
		require.NoError(t, err)
		got := alignedBuf(n)
		_, err = f.ReadAt(got, off)
		require.NoError(t, err)
		require.Equal(t, data, got, "volume write at %d read through the device", off)
	}
	size := run(t, "blockdev", "--getsize64", dev.Path())
	require.Equal(t, strconv.Itoa(64*mib), strings.TrimSpace(size))
}

// TestDiscard: blkdiscard reaches Disk.Discard (fallocate PUNCH_HOLE), blkdiscard --zeroout
// reaches WriteZeroes (fallocate ZERO_RANGE or WRITE_ZEROES), and both read as zeros after.
func TestDiscard(t *testing.T) {
	needRoot(t, "blkdiscard")
	p, _ := newPool(t, 256*mib)
	vol := newVolume(t, p, "v", 64*mib)
	e, _ := newExporter(t)
	disk := zeroingDisk{countingDisk: &countingDisk{Disk: vol}, vol: vol}
	dev, err := e.Export("discard", disk)
	require.NoError(t, err)
	defer func() { require.NoError(t, dev.Close()) }()
	require.NotEqual(t, "0", sysLoop(t, dev.Path(), "queue/discard_max_bytes"), "discard enabled")

	_, err = vol.WriteAt(pattern(1, 16*mib), 0)
	require.NoError(t, err)
	require.NoError(t, vol.Flush())
	used := p.Stats()

	run(t, "blkdiscard", "--offset", strconv.Itoa(4*mib), "--length", strconv.Itoa(8*mib), dev.Path())
	assert.Positive(t, disk.discards.Load(), "blkdiscard reached Discard")
	require.True(t, isZero(readVolume(t, vol, 4*mib, 8*mib)), "discarded range reads as zeros")
	require.Equal(t, pattern(1, 16*mib)[:4*mib], readVolume(t, vol, 0, 4*mib), "data before the range kept")
	require.NoError(t, vol.Flush())
	assert.Less(t, p.Stats().UsedBytes, used.UsedBytes, "discard freed pool space")

	run(t, "blkdiscard", "--zeroout", "--offset", strconv.Itoa(12*mib), "--length", strconv.Itoa(mib), dev.Path())
	assert.Positive(t, disk.zeroes.Load()+disk.discards.Load(), "zeroout reached the disk")
	require.True(t, isZero(readVolume(t, vol, 12*mib, mib)), "zeroed range reads as zeros")
	t.Logf("disk calls: %d discards, %d write-zeroes", disk.discards.Load(), disk.zeroes.Load())
	require.Equal(t, pattern(1, 16*mib)[13*mib:], readVolume(t, vol, 13*mib, 3*mib), "data after the range kept")
}

// TestResize grows the volume under an exported device; Resize shows the new size.
func TestResize(t *testing.T) {
	needRoot(t, "blockdev")
	p, _ := newPool(t, 256*mib)
	vol := newVolume(t, p, "v", 32*mib)
	e, _ := newExporter(t)
	dev, err := e.Export("resize", vol)
	require.NoError(t, err)
	defer func() { require.NoError(t, dev.Close()) }()

	require.NoError(t, p.GrowVolume(vol.ID(), 96*mib))
	require.NoError(t, dev.Resize())
	size := run(t, "blockdev", "--getsize64", dev.Path())
	require.Equal(t, strconv.Itoa(96*mib), strings.TrimSpace(size))

	// The new end is usable.
	f, err := os.OpenFile(dev.Path(), os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	data := pattern(7, mib)
	_, err = f.WriteAt(data, 95*mib)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.Equal(t, data, readVolume(t, vol, 95*mib, mib))

	// A disk whose size is not a multiple of the logical block size cannot be shown whole.
	odd := &growingDisk{}
	odd.size.Store(mib)
	dev2, err := e.Export("odd", odd)
	require.NoError(t, err)
	odd.size.Store(2*mib + 512)
	require.ErrorIs(t, dev2.Resize(), export.ErrInvalid, "size not a multiple of the block size")
	require.NoError(t, dev2.Close())
}

// growingDisk is a zeroDisk whose size can change under an export.
type growingDisk struct {
	zeroDisk
	size atomic.Int64
}

func (g *growingDisk) Size() int64 { return g.size.Load() }

// TestConcurrentExports exports, writes and closes several volumes at once.
func TestConcurrentExports(t *testing.T) {
	needRoot(t)
	p, _ := newPool(t, 512*mib)
	e, _ := newExporter(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	vols := make([]export.Disk, n)
	for i := range n {
		vols[i] = newVolume(t, p, fmt.Sprint("v", i), 32*mib)
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = func() error {
				dev, err := e.Export(fmt.Sprint("c", i), vols[i])
				if err != nil {
					return err
				}
				f, err := os.OpenFile(dev.Path(), os.O_RDWR|unix.O_DIRECT, 0)
				if err != nil {
					dev.Close()
					return err
				}
				_, err = f.WriteAt(pattern(byte(i), 4*mib), mib)
				if err == nil {
					err = f.Sync()
				}
				f.Close()
				if cerr := dev.Close(); err == nil {
					err = cerr
				}
				return err
			}()
		}()
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i], "export %d", i)
		require.Equal(t, pattern(byte(i), 4*mib), readVolume(t, vols[i], mib, 4*mib))
	}
}

func TestExportErrors(t *testing.T) {
	needRoot(t)
	p, _ := newPool(t, 64*mib)
	vol := newVolume(t, p, "v", 16*mib)
	e, _ := newExporter(t)
	for _, id := range []string{"", ".hidden", "a/b", "..", "with space", strings.Repeat("x", 201)} {
		_, err := e.Export(id, vol)
		require.ErrorIs(t, err, export.ErrInvalid, "id %q", id)
	}
	_, err := e.Export("odd", zeroDisk{size: 16*mib + 512})
	require.ErrorIs(t, err, export.ErrInvalid)

	dev, err := e.Export("dup", vol)
	require.NoError(t, err)
	_, err = e.Export("dup", vol)
	require.ErrorIs(t, err, export.ErrExists)
	require.ErrorIs(t, e.Cleanup("dup"), export.ErrExists, "Cleanup of an id this process serves")
	var xe *export.Error
	require.ErrorAs(t, err, &xe)
	assert.Equal(t, "dup", xe.ID)
	require.NoError(t, dev.Close())
	require.NoError(t, e.Cleanup("dup"), "nothing left is not an error")

	_, err = export.Detect(export.Options{Method: "nbd"})
	require.ErrorIs(t, err, export.ErrInvalid)
	_, err = export.Detect(export.Options{StateDir: "relative"})
	require.ErrorIs(t, err, export.ErrInvalid)
	_, err = export.Detect(export.Options{BlockSize: 8192})
	require.ErrorIs(t, err, export.ErrInvalid)
}

// sysLoop reads /sys/block/loopN/<name>.
func sysLoop(t testing.TB, dev, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), name))
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}
