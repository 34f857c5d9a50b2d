package tarx

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tarWithGNU returns the archive GNU tar writes, with --sparse and the given format option, of
// a directory that populate fills. It skips the test when GNU tar is not installed:
// archive/tar cannot write sparse files.
func tarWithGNU(t *testing.T, format string, populate func(dir string)) []byte {
	t.Helper()
	path, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("tar is not installed")
	}
	if out, err := exec.Command(path, "--version").Output(); err != nil || !strings.Contains(string(out), "GNU tar") {
		t.Skip("tar is not GNU tar")
	}
	src := t.TempDir()
	populate(src)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(path, "--sparse", format, "-C", src, "-cf", "-", ".")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "tar: %s", stderr.String())
	return stdout.Bytes()
}

// writeSparse makes a file of size bytes holding data at each offset in chunks and holes
// elsewhere.
func writeSparse(t *testing.T, p string, size int64, chunks map[int64]string) {
	t.Helper()
	f, err := os.Create(p)
	require.NoError(t, err)
	for off, data := range chunks {
		_, err := f.WriteAt([]byte(data), off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
}

func TestExtractSparse(t *testing.T) {
	const size = 16 << 20
	chunks := map[int64]string{0: "head", 4 << 20: strings.Repeat("middle", 1000), size - 4096: "tail block"}
	// --format=gnu writes old GNU sparse headers (type 'S'); --format=posix writes PAX 1.0.
	for _, format := range []string{"--format=gnu", "--format=posix"} {
		t.Run(format, func(t *testing.T) {
			data := tarWithGNU(t, format, func(dir string) {
				writeSparse(t, filepath.Join(dir, "sparse"), size, chunks)
				writeSparse(t, filepath.Join(dir, "trailing-hole"), 4<<20, map[int64]string{4096: "x"})
			})
			require.Less(t, len(data), 1<<20, "GNU tar stored the holes as holes")
			s := newSandbox(t)
			st, err := s.extract(t, data, Options{})
			require.NoError(t, err)
			assert.Equal(t, int64(size+4<<20), st.Bytes, "logical sizes")

			want := make([]byte, size)
			for off, d := range chunks {
				copy(want[off:], d)
			}
			got, err := os.ReadFile(filepath.Join(s.dest, "sparse"))
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "contents")
			fi, err := os.Stat(filepath.Join(s.dest, "sparse"))
			require.NoError(t, err)
			assert.Less(t, fi.Sys().(*syscall.Stat_t).Blocks*512, int64(1<<20), "holes kept")

			fi, err = os.Stat(filepath.Join(s.dest, "trailing-hole"))
			require.NoError(t, err)
			assert.Equal(t, int64(4<<20), fi.Size())
			assert.Less(t, fi.Sys().(*syscall.Stat_t).Blocks*512, int64(1<<20), "holes kept")
			s.assertUntouched(t)
		})
	}
}

// TestExtractGNUTarTree restores an archive that GNU tar wrote of a real tree (as a backup
// tool would), with hard links, symbolic links, long names and modes, and compares.
func TestExtractGNUTarTree(t *testing.T) {
	mtime := time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)
	long := strings.Repeat("n", 180)
	data := tarWithGNU(t, "--format=gnu", func(dir string) {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "base", "5"), 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "base", "5", long), []byte("rel"), 0o600))
		require.NoError(t, os.Link(filepath.Join(dir, "base", "5", long), filepath.Join(dir, "base", "5", "hl")))
		require.NoError(t, os.Symlink("base/5/hl", filepath.Join(dir, "sl")))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "postgresql.auto.conf"), []byte("# x\n"), 0o640))
		for _, p := range []string{"base/5/" + long, "postgresql.auto.conf", "base/5", "base", "."} {
			require.NoError(t, os.Chtimes(filepath.Join(dir, p), mtime, mtime))
		}
		require.NoError(t, os.Chmod(dir, 0o750))
	})
	s := newSandbox(t)
	st, err := s.extract(t, gzipBytes(t, data), Options{})
	require.NoError(t, err)
	assert.Equal(t, Stats{Files: 2, Dirs: 3, Links: 2, Bytes: 7, Members: 7}, st)
	assertFile(t, filepath.Join(s.dest, "base/5", long), "rel", 0o600, mtime)
	assertFile(t, filepath.Join(s.dest, "postgresql.auto.conf"), "# x\n", 0o640, mtime)
	assertDir(t, filepath.Join(s.dest, "base"), 0o700, mtime)
	assertDir(t, s.dest, 0o750, mtime)
	got, err := os.ReadFile(filepath.Join(s.dest, "sl"))
	require.NoError(t, err)
	assert.Equal(t, "rel", string(got))
}
