package tarx

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/stretchr/testify/require"
)

// member is one archive member for buildTar: a header and, for a regular file, its contents.
type member struct {
	hdr  tar.Header
	body string
}

// testTime is the modification time of members built by the helpers below.
var testTime = time.Date(2024, 3, 1, 12, 30, 45, 0, time.UTC)

func file(name, body string, mode int64) member {
	return member{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: testTime}, body: body}
}

func dir(name string, mode int64) member {
	return member{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: testTime}}
}

func symlink(name, target string) member {
	return member{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: testTime}}
}

func hardlink(name, target string) member {
	return member{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: testTime}}
}

func special(typ byte, name string) member {
	return member{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o600, Devmajor: 1, Devminor: 3, ModTime: testTime}}
}

// buildTar returns a tar archive of members, gzip-compressed when gz is set.
func buildTar(t testing.TB, gz bool, members ...member) []byte {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, m := range members {
		hdr := m.hdr
		require.NoError(t, tw.WriteHeader(&hdr), "header %q", hdr.Name)
		_, err := tw.Write([]byte(m.body))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	if !gz {
		return tb.Bytes()
	}
	return gzipBytes(t, tb.Bytes())
}

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, err := zw.Write(b)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return zb.Bytes()
}

// compressBytes compresses b as pg_basebackup does for the file name suffix z: "" (none),
// "gz", "zst" or "lz4" (frame format).
func compressBytes(t testing.TB, z string, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	var w io.WriteCloser
	switch z {
	case "":
		return b
	case "gz":
		return gzipBytes(t, b)
	case "zst":
		zw, err := zstd.NewWriter(&out)
		require.NoError(t, err)
		w = zw
	case "lz4":
		w = lz4.NewWriter(&out)
	default:
		t.Fatalf("unknown compression %q", z)
	}
	_, err := w.Write(b)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return out.Bytes()
}

// sandbox is a temporary directory holding the destination and an empty sibling that an escape
// would write to.
type sandbox struct {
	base, dest, outside string
}

// newSandbox makes base/dest and base/outside. Its cleanup makes every directory under base
// writable again, so that t.TempDir can remove what a test left read-only.
func newSandbox(t testing.TB) sandbox {
	t.Helper()
	base := t.TempDir()
	s := sandbox{base: base, dest: filepath.Join(base, "dest"), outside: filepath.Join(base, "outside")}
	require.NoError(t, os.Mkdir(s.dest, 0o755))
	require.NoError(t, os.Mkdir(s.outside, 0o755))
	t.Cleanup(func() {
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(p, 0o700)
			}
			return nil
		})
	})
	return s
}

// assertUntouched checks that base holds only dest and the empty outside directory.
func (s sandbox) assertUntouched(t testing.TB) {
	t.Helper()
	names := readDirNames(t, s.base)
	require.Equal(t, []string{"dest", "outside"}, names, "entries next to the destination")
	require.Empty(t, readDirNames(t, s.outside), "entries in the sibling directory")
}

func readDirNames(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	slices.Sort(names)
	return names
}

// extract runs Extract on data into s.dest.
func (s sandbox) extract(t testing.TB, data []byte, opts Options) (Stats, error) {
	t.Helper()
	return Extract(context.Background(), bytes.NewReader(data), s.dest, opts)
}
