package provision_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/provision"
	"github.com/dataimage/dataimage/internal/nodetest"
)

const mib = 1 << 20

// needTools skips the test (fails it in CI, which installs everything: hack/install-deps.sh)
// unless it runs as root with loop devices and the named tools.
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("CI") == "true" {
		skip = t.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("needs root: loop devices")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		skip("needs loop devices: %v", err)
	}
	for _, tool := range append([]string{"losetup", "blkid"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			skip("needs %s (make deps)", tool)
		}
	}
}

// digest is the SHA-256 of the first and last 2 MiB of the file at path, and its size.
func digest(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	h := sha256.New()
	buf := make([]byte, 2*mib)
	for _, off := range []int64{0, max(fi.Size()-2*mib, 0)} {
		n, err := f.ReadAt(buf, off)
		if !errors.Is(err, io.EOF) {
			require.NoError(t, err)
		}
		h.Write(buf[:n])
	}
	return fmt.Sprintf("%x/%d", h.Sum(nil), fi.Size())
}

// corruptSuperblocks flips a bit of both superblock slots (4 KiB blocks) of the pool in file.
func corruptSuperblocks(t testing.TB, file string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	for _, off := range []int64{20, 4096 + 20} {
		b := make([]byte, 1)
		_, err := f.ReadAt(b, off)
		require.NoError(t, err)
		b[0] ^= 0x04
		_, err = f.WriteAt(b, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
}

// usedPoolOn makes a pool on dev that committed a write, and closes it.
func usedPoolOn(t testing.TB, dev string) {
	t.Helper()
	p, err := blockstore.Create(dev, blockstore.Options{})
	require.NoError(t, err)
	info, err := p.CreateVolume("v", mib)
	require.NoError(t, err)
	vol, err := p.Volume(info.ID)
	require.NoError(t, err)
	_, err = vol.WriteAt(bytes.Repeat([]byte{7}, 8192), 0)
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	require.NoError(t, p.Close())
}

// TestBlankDeviceBecomesPool: a blank device passes Check, becomes a pool only with Create, and
// is opened (not made again) afterwards.
func TestBlankDeviceBecomesPool(t *testing.T) {
	needTools(t)
	dev, _ := nodetest.LoopDevice(t, 64*mib)
	require.NoError(t, provision.Check(dev))
	_, _, err := provision.Open(dev, provision.Options{})
	require.ErrorIs(t, err, provision.ErrNoPool)
	require.ErrorContains(t, err, dev)

	p, created, err := provision.Open(dev, provision.Options{Create: true})
	require.NoError(t, err)
	require.True(t, created)
	info, err := p.CreateVolume("v", mib)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	p, created, err = provision.Open(dev, provision.Options{Create: true})
	require.NoError(t, err)
	require.False(t, created, "an existing pool is opened")
	_, err = p.Volume(info.ID)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	require.ErrorIs(t, provision.Check(dev), provision.ErrNotBlank, "a pool is not blank")
}

// TestNonBlankDevicesAreNeverFormatted: a device with a file system, a partition table, a pool
// whose superblocks are damaged (or zeroed), a mounted one (also with its signature wiped), one
// open in another process, one backing a loop device, and one that fails reads: none is ever
// made a pool, each refusal names the device and what was found. FormatNonBlank overrides what
// a device holds, never a use or a read error.
func TestNonBlankDevicesAreNeverFormatted(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkswap", "sfdisk", "wipefs", "mount", "sleep")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dev, backing string)
		want  []string // substrings of the refusal, besides the device's path
		// inUse: FormatNonBlank does not override the refusal.
		inUse bool
		// probe: Check cannot tell (a read error): never ErrNotBlank.
		probe bool
	}{
		{"ext4", func(t *testing.T, dev, _ string) { mkfsExt4(t, dev) }, []string{"an ext4 file system (UUID="}, false, false},
		{"dos partition table", func(t *testing.T, dev, _ string) {
			sfdisk(t, dev, "label: dos\n,16MiB,L\n")
		}, []string{"a dos partition table"}, false, false},
		{"gpt partition table", func(t *testing.T, dev, _ string) {
			sfdisk(t, dev, "label: gpt\n,16MiB,L\n")
		}, []string{"a gpt partition table"}, false, false},
		{"swap signature", func(t *testing.T, dev, _ string) { nodetest.Run(t, "mkswap", dev) }, []string{"a swap signature"}, false, false},
		{"pool with both superblocks damaged", func(t *testing.T, dev, backing string) {
			usedPoolOn(t, dev)
			corruptSuperblocks(t, dev)
		}, []string{"superblock", "checksum mismatch"}, false, false},
		{"pool with both superblocks zeroed", func(t *testing.T, dev, _ string) {
			usedPoolOn(t, dev)
			f, err := os.OpenFile(dev, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt(make([]byte, 8192), 0)
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}, []string{"a Dataimage pool journal record at byte 8192"}, false, false},
		{"mounted", func(t *testing.T, dev, _ string) {
			mkfsExt4(t, dev)
			mountAt(t, dev)
		}, []string{"an ext4 file system", "mounted at ", "claimed by another user"}, true, false},
		{"mounted, signature wiped", func(t *testing.T, dev, _ string) {
			mkfsExt4(t, dev)
			mountAt(t, dev)
			nodetest.Run(t, "wipefs", "--all", "--force", dev)
			out, _ := exec.Command("blkid", "-p", dev).CombinedOutput()
			require.Empty(t, strings.TrimSpace(string(out)), "blkid finds nothing any more")
		}, []string{"mounted at ", "claimed by another user"}, true, false},
		{"open in another process", func(t *testing.T, dev, _ string) {
			f, err := os.Open(dev)
			require.NoError(t, err)
			cmd := exec.Command("sleep", "600")
			cmd.Stdin = f
			require.NoError(t, cmd.Start())
			f.Close()
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		}, []string{"open in process ", "(sleep)"}, true, false},
		{"backing a loop device", func(t *testing.T, dev, _ string) {
			upper := strings.TrimSpace(nodetest.Run(t, "losetup", "--find", "--show", dev))
			t.Cleanup(func() { nodetest.Run(t, "losetup", "--detach", upper) })
		}, []string{"the backing file of loop device /dev/loop"}, true, false},
		{"read errors past 8 MiB", func(t *testing.T, dev, backing string) {
			// The loop device keeps its size; reads past the backing file's end fail (EIO).
			require.NoError(t, os.Truncate(backing, 8*mib))
		}, []string{"read ", "input/output error"}, false, true},
		{"read errors everywhere", func(t *testing.T, dev, backing string) {
			require.NoError(t, os.Truncate(backing, 0))
		}, []string{"input/output error"}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, backing := nodetest.LoopDevice(t, 64*mib)
			tc.setup(t, dev, backing)
			before := digest(t, backing)
			tracesBefore := traces(t, backing)

			err := provision.Check(dev)
			require.Error(t, err)
			t.Logf("Check: %v", err)
			if tc.probe {
				require.ErrorIs(t, err, provision.ErrProbe)
				require.NotErrorIs(t, err, provision.ErrNotBlank)
			} else {
				require.ErrorIs(t, err, provision.ErrNotBlank)
				require.Equal(t, tc.inUse, errors.Is(err, provision.ErrInUse), "in use")
			}
			require.ErrorContains(t, err, dev)
			for _, w := range tc.want {
				require.Contains(t, strings.ToLower(err.Error()), strings.ToLower(w))
			}

			for _, force := range []bool{false, true} {
				p, created, err := provision.Open(dev, provision.Options{Create: true, FormatNonBlank: force})
				if force && !tc.inUse && !tc.probe {
					require.NoError(t, err, "FormatNonBlank formats over what the device holds")
					require.True(t, created)
					require.NoError(t, p.Close())
					continue
				}
				require.Error(t, err, "FormatNonBlank %v", force)
				require.False(t, created)
				require.ErrorContains(t, err, dev)
				t.Logf("Open (FormatNonBlank %v): %v", force, err)
				require.Equal(t, before, digest(t, backing), "the device is unchanged (FormatNonBlank %v)", force)
				require.Equal(t, tracesBefore, traces(t, backing))
			}
		})
	}
}

// mkfsExt4 makes an ext4 file system on dev that initializes everything at once: no lazy
// initialization writes to it later, while it is mounted.
func mkfsExt4(t testing.TB, dev string) {
	t.Helper()
	nodetest.Run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
}

func sfdisk(t testing.TB, dev, script string) {
	t.Helper()
	cmd := exec.Command("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", dev)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "sfdisk: %s", out)
}

// mountAt mounts dev read-only (nothing writes to it meanwhile) on a new directory until
// cleanup.
func mountAt(t testing.TB, dev string) {
	t.Helper()
	mnt := t.TempDir()
	nodetest.Run(t, "mount", "-o", "ro", dev, mnt)
	t.Cleanup(func() {
		for i := 0; ; i++ {
			err := syscall.Unmount(mnt, 0)
			if err == nil || i == 50 {
				require.NoError(t, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// traces returns what the file at path holds of a pool (by the device's backing file, which
// fails no reads up to its end).
func traces(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	tr, err := blockstore.Traces(f)
	require.NoError(t, err)
	return tr
}

// TestPoolFiles: a missing file becomes a pool (with Create and a size); an existing file that
// is not a pool is never overwritten, whatever it holds, FormatNonBlank or not; a pool file whose
// superblocks are damaged is an error, not "not a pool".
func TestPoolFiles(t *testing.T) {
	needTools(t, "mkfs.ext4")
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "pool")
	_, _, err := provision.Open(path, provision.Options{})
	require.ErrorIs(t, err, provision.ErrNoPool)
	_, _, err = provision.Open(path, provision.Options{Create: true})
	require.ErrorIs(t, err, blockstore.ErrInvalidArgument, "a size is needed")
	p, created, err := provision.Open(path, provision.Options{Create: true, Pool: blockstore.Options{Size: 64 * mib}})
	require.NoError(t, err)
	require.True(t, created)
	require.NoError(t, p.Close())
	p, created, err = provision.Open(path, provision.Options{Create: true, Pool: blockstore.Options{Size: 64 * mib}})
	require.NoError(t, err)
	require.False(t, created)
	require.NoError(t, p.Close())

	ext4 := filepath.Join(dir, "ext4.img")
	require.NoError(t, os.WriteFile(ext4, nil, 0o600))
	require.NoError(t, os.Truncate(ext4, 64*mib))
	nodetest.Run(t, "mkfs.ext4", "-q", "-F", ext4)
	junk := filepath.Join(dir, "junk")
	require.NoError(t, os.WriteFile(junk, bytes.Repeat([]byte("x"), mib), 0o600))
	zeros := filepath.Join(dir, "zeros")
	require.NoError(t, os.WriteFile(zeros, nil, 0o600))
	require.NoError(t, os.Truncate(zeros, 64*mib))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	damaged := filepath.Join(dir, "damaged")
	p, err = blockstore.Create(damaged, blockstore.Options{Size: 64 * mib})
	require.NoError(t, err)
	require.NoError(t, p.Close())
	corruptSuperblocks(t, damaged)

	for _, tc := range []struct {
		path string
		want string
		is   error
	}{
		{ext4, "an ext4 file system", blockstore.ErrNotPool},
		{junk, "1048576 bytes, no signature", blockstore.ErrNotPool},
		{zeros, "67108864 bytes, no signature", blockstore.ErrNotPool},
		{empty, "it is empty", blockstore.ErrNotPool},
		{damaged, "superblock", blockstore.ErrCorrupt},
	} {
		before := digest(t, tc.path)
		for _, force := range []bool{false, true} {
			_, _, err := provision.Open(tc.path, provision.Options{Create: true, FormatNonBlank: force, Pool: blockstore.Options{Size: 64 * mib}})
			require.ErrorIs(t, err, tc.is, tc.path)
			require.ErrorContains(t, err, tc.path)
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, before, digest(t, tc.path), "%s is unchanged", tc.path)
			t.Logf("FormatNonBlank %v: %v", force, err)
		}
	}
}
