package tarx

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pgLike is a small archive shaped like a pg_basebackup base.tar, with every supported member
// kind, parents the archive does not list, odd modes and "./" prefixes.
func pgLike() []member {
	m := []member{
		dir("./", 0o700),
		file("PG_VERSION", "16\n", 0o600),
		file("backup_label", "START WAL LOCATION: 0/2000028\n", 0o600),
		dir("base/", 0o700),
		dir("base/1/", 0o700),
		file("base/1/1259", strings.Repeat("page", 2048), 0o600),
		file("global/pg_control", "control", 0o600), // global/ is not listed
		dir("pg_wal/", 0o700),
		symlink("pg_wal/current", "../base/1/1259"),
		symlink("dangling", "not/there"),
		hardlink("base/1/1259.link", "./base/1/1259"),
		file("bin/tool", "#!/bin/sh\n", 0o4755), // setuid, cleared by default
		dir("shared/", 0o1777),                  // sticky, kept
		dir("ro/", 0o500),                       // read-only, filled before its mode is set
		file("ro/inside", "x", 0o400),
	}
	m[5].hdr.ModTime = time.Date(2023, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	m[5].hdr.Format = tar.FormatPAX // ustar has whole seconds only
	m[8].hdr.ModTime = time.Date(2022, 6, 7, 8, 9, 10, 0, time.UTC)
	return m
}

func TestExtractHappyPath(t *testing.T) {
	for _, z := range []string{"", "gz", "zst", "lz4"} {
		t.Run("tar"+map[bool]string{false: "", true: "."}[z != ""]+z, func(t *testing.T) {
			s := newSandbox(t)
			st, err := s.extract(t, compressBytes(t, z, buildTar(t, false, pgLike()...)), Options{})
			require.NoError(t, err)
			assert.Equal(t, Stats{Files: 6, Dirs: 6, Links: 3, Bytes: 3 + 30 + 8192 + 7 + 10 + 1, Members: 15}, st)
			s.assertUntouched(t)

			d := s.dest
			assertFile(t, filepath.Join(d, "PG_VERSION"), "16\n", 0o600, testTime)
			assertFile(t, filepath.Join(d, "base/1/1259"), strings.Repeat("page", 2048), 0o600,
				time.Date(2023, 1, 2, 3, 4, 5, 600_000_000, time.UTC))
			assertFile(t, filepath.Join(d, "global/pg_control"), "control", 0o600, testTime)
			assertFile(t, filepath.Join(d, "bin/tool"), "#!/bin/sh\n", 0o755, testTime)
			assertFile(t, filepath.Join(d, "ro/inside"), "x", 0o400, testTime)

			assertDir(t, d, 0o700, testTime)
			assertDir(t, filepath.Join(d, "base"), 0o700, testTime)
			assertDir(t, filepath.Join(d, "shared"), 0o1777, testTime)
			assertDir(t, filepath.Join(d, "ro"), 0o500, testTime)
			fi, err := os.Lstat(filepath.Join(d, "global"))
			require.NoError(t, err)
			assert.Equal(t, fs.ModeDir|0o700, fi.Mode(), "unlisted parent")

			target, err := os.Readlink(filepath.Join(d, "pg_wal/current"))
			require.NoError(t, err)
			assert.Equal(t, "../base/1/1259", target)
			fi, err = os.Lstat(filepath.Join(d, "pg_wal/current"))
			require.NoError(t, err)
			assert.True(t, fi.ModTime().Equal(time.Date(2022, 6, 7, 8, 9, 10, 0, time.UTC)), "symlink mtime %v", fi.ModTime())
			target, err = os.Readlink(filepath.Join(d, "dangling"))
			require.NoError(t, err)
			assert.Equal(t, "not/there", target)

			a, err := os.Stat(filepath.Join(d, "base/1/1259"))
			require.NoError(t, err)
			b, err := os.Stat(filepath.Join(d, "base/1/1259.link"))
			require.NoError(t, err)
			assert.True(t, os.SameFile(a, b), "hard link shares the inode")
		})
	}
}

func assertFile(t *testing.T, p, body string, mode fs.FileMode, mtime time.Time) {
	t.Helper()
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, body, string(got), p)
	fi, err := os.Lstat(p)
	require.NoError(t, err)
	assert.Equal(t, mode, fi.Mode(), p)
	assert.True(t, fi.ModTime().Equal(mtime), "%s: mtime %v, want %v", p, fi.ModTime(), mtime)
}

func assertDir(t *testing.T, p string, perm fs.FileMode, mtime time.Time) {
	t.Helper()
	fi, err := os.Lstat(p)
	require.NoError(t, err)
	want := fs.ModeDir | perm&fs.ModePerm
	if perm&0o1000 != 0 {
		want |= fs.ModeSticky
	}
	assert.Equal(t, want, fi.Mode(), p)
	assert.True(t, fi.ModTime().Equal(mtime), "%s: mtime %v, want %v", p, fi.ModTime(), mtime)
}

func TestExtractAllowSetID(t *testing.T) {
	s := newSandbox(t)
	_, err := s.extract(t, buildTar(t, false, file("suid", "x", 0o4755), file("sgid", "x", 0o2750)), Options{AllowSetID: true})
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(s.dest, "suid"))
	require.NoError(t, err)
	assert.Equal(t, fs.ModeSetuid|0o755, fi.Mode())
	fi, err = os.Stat(filepath.Join(s.dest, "sgid"))
	require.NoError(t, err)
	assert.Equal(t, fs.ModeSetgid|0o750, fi.Mode())
}

func TestExtractOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	t.Run("override", func(t *testing.T) {
		s := newSandbox(t)
		members := pgLike()
		for i := range members {
			members[i].hdr.Uid, members[i].hdr.Gid = 1234, 5678
		}
		_, err := s.extract(t, buildTar(t, true, members...), Options{Owner: &Owner{UID: 65534, GID: 65534}})
		require.NoError(t, err)
		n := 0
		require.NoError(t, filepath.WalkDir(s.dest, func(p string, _ fs.DirEntry, err error) error {
			require.NoError(t, err)
			fi, err := os.Lstat(p)
			require.NoError(t, err)
			sys := fi.Sys().(*syscall.Stat_t)
			assert.Equal(t, [2]uint32{65534, 65534}, [2]uint32{sys.Uid, sys.Gid}, p)
			n++
			return nil
		}))
		assert.Equal(t, 17, n, "paths checked, the destination and the unlisted global/ included")
		fi, err := os.Stat(filepath.Join(s.dest, "bin/tool"))
		require.NoError(t, err)
		assert.Equal(t, fs.FileMode(0o755), fi.Mode(), "mode after chown")
	})
	t.Run("destination without a ./ member", func(t *testing.T) {
		s := newSandbox(t)
		_, err := s.extract(t, buildTar(t, false, file("PG_VERSION", "16\n", 0o600)), Options{Owner: &Owner{UID: 65534, GID: 65534}})
		require.NoError(t, err)
		for _, p := range []string{s.dest, filepath.Join(s.dest, "PG_VERSION")} {
			fi, err := os.Lstat(p)
			require.NoError(t, err)
			sys := fi.Sys().(*syscall.Stat_t)
			assert.Equal(t, [2]uint32{65534, 65534}, [2]uint32{sys.Uid, sys.Gid}, p)
		}
		fi, err := os.Lstat(s.dest)
		require.NoError(t, err)
		assert.Equal(t, fs.ModeDir|0o755, fi.Mode(), "mode of the destination kept")
	})
	t.Run("from headers", func(t *testing.T) {
		s := newSandbox(t)
		f := file("f", "x", 0o640)
		f.hdr.Uid, f.hdr.Gid = 1234, 5678
		l := symlink("l", "f")
		l.hdr.Uid, l.hdr.Gid = 4321, 8765
		_, err := s.extract(t, buildTar(t, false, f, l), Options{})
		require.NoError(t, err)
		for p, want := range map[string][2]uint32{"f": {1234, 5678}, "l": {4321, 8765}} {
			fi, err := os.Lstat(filepath.Join(s.dest, p))
			require.NoError(t, err)
			sys := fi.Sys().(*syscall.Stat_t)
			assert.Equal(t, want, [2]uint32{sys.Uid, sys.Gid}, p)
		}
	})
}

func TestExtractDuplicates(t *testing.T) {
	s := newSandbox(t)
	d2 := dir("d/", 0o750)
	d2.hdr.ModTime = testTime.Add(time.Hour)
	_, err := s.extract(t, buildTar(t, false,
		file("f", "first", 0o600), file("f", "second", 0o640), // the later file wins
		dir("d/", 0o700), file("d/x", "x", 0o600), d2, // directories merge, the later header wins
		file("target", "keep", 0o600), symlink("l", "target"), file("l", "replaced", 0o600), // no write-through
		symlink("s", "target"), symlink("s", "f"),
	), Options{})
	require.NoError(t, err)
	assertFile(t, filepath.Join(s.dest, "f"), "second", 0o640, testTime)
	assertDir(t, filepath.Join(s.dest, "d"), 0o750, testTime.Add(time.Hour))
	assertFile(t, filepath.Join(s.dest, "d/x"), "x", 0o600, testTime)
	assertFile(t, filepath.Join(s.dest, "target"), "keep", 0o600, testTime)
	assertFile(t, filepath.Join(s.dest, "l"), "replaced", 0o600, testTime)
	got, err := os.Readlink(filepath.Join(s.dest, "s"))
	require.NoError(t, err)
	assert.Equal(t, "f", got)
	s.assertUntouched(t)
}

func TestExtractLongNames(t *testing.T) {
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("e", 120) + "/" + strings.Repeat("f", 150)
	for _, format := range []tar.Format{tar.FormatPAX, tar.FormatGNU} {
		t.Run(format.String(), func(t *testing.T) {
			s := newSandbox(t)
			f := file(long, "long", 0o600)
			f.hdr.Format = format
			l := symlink("l", long)
			l.hdr.Linkname = strings.Repeat("./", 60) + long
			l.hdr.Format = format
			_, err := s.extract(t, buildTar(t, true, f, l), Options{})
			require.NoError(t, err)
			assertFile(t, filepath.Join(s.dest, long), "long", 0o600, testTime)
			got, err := os.ReadFile(filepath.Join(s.dest, "l"))
			require.NoError(t, err)
			assert.Equal(t, "long", string(got))
		})
	}
}

func TestExtractSkipsGlobalHeader(t *testing.T) {
	s := newSandbox(t)
	global := member{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": "3f2c1e0"}}} // as git archive writes
	st, err := s.extract(t, buildTar(t, true, global, file("a", "a", 0o600), symlink("/abs", "a")), Options{})
	require.ErrorIs(t, err, ErrUnsafeMember)
	assertMemberError(t, err, 3, "/abs") // the global header counts
	assert.Equal(t, Stats{Files: 1, Bytes: 1, Members: 3}, st)
}

func TestExtractKeepsExistingContent(t *testing.T) {
	s := newSandbox(t)
	require.NoError(t, os.Mkdir(filepath.Join(s.dest, "lost+found"), 0o700))
	_, err := s.extract(t, buildTar(t, false, dir("./", 0o750), file("a", "a", 0o600)), Options{})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "lost+found"}, readDirNames(t, s.dest))
	assertDir(t, s.dest, 0o750, testTime)
}

func TestExtractMaxBytes(t *testing.T) {
	t.Run("third file", func(t *testing.T) {
		s := newSandbox(t)
		body := strings.Repeat("x", 100)
		st, err := s.extract(t, buildTar(t, false, file("a", body, 0o600), file("b", body, 0o600), file("c", body, 0o600)),
			Options{MaxBytes: 250})
		require.ErrorIs(t, err, ErrTooLarge)
		assertMemberError(t, err, 3, "c")
		assert.Equal(t, `tarx: member 3 "c": its 100 bytes would take the restored files past the limit of 250 bytes (MaxBytes; 200 already restored)`, err.Error())
		assert.Equal(t, int64(200), st.Bytes)
		assert.NoFileExists(t, filepath.Join(s.dest, "c"))
	})
	t.Run("gzip bomb", func(t *testing.T) {
		s := newSandbox(t)
		data := buildTar(t, true, file("zeros", string(make([]byte, 8<<20)), 0o600))
		require.Less(t, len(data), 1<<20, "compresses well")
		_, err := s.extract(t, data, Options{MaxBytes: 1 << 20})
		require.ErrorIs(t, err, ErrTooLarge)
		assertMemberError(t, err, 1, "zeros")
		assert.NoFileExists(t, filepath.Join(s.dest, "zeros"))
	})
	for _, z := range []string{"zst", "lz4"} {
		t.Run(z+" bomb", func(t *testing.T) {
			s := newSandbox(t)
			data := compressBytes(t, z, buildTar(t, false, file("zeros", string(make([]byte, 8<<20)), 0o600)))
			require.Less(t, len(data), 1<<20, "compresses well")
			_, err := s.extract(t, data, Options{MaxBytes: 1 << 20})
			require.ErrorIs(t, err, ErrTooLarge)
			assertMemberError(t, err, 1, "zeros")
			assert.NoFileExists(t, filepath.Join(s.dest, "zeros"))
		})
	}
	t.Run("exactly at the limit", func(t *testing.T) {
		s := newSandbox(t)
		_, err := s.extract(t, buildTar(t, false, file("a", "12345", 0o600), file("b", "67890", 0o600)), Options{MaxBytes: 10})
		require.NoError(t, err)
	})
	t.Run("shared with earlier archives", func(t *testing.T) {
		s := newSandbox(t)
		_, err := s.extract(t, buildTar(t, false, file("a", "12345", 0o600)), Options{MaxBytes: 10, Restored: Stats{Bytes: 6}})
		require.ErrorIs(t, err, ErrTooLarge)
		assert.Equal(t, `tarx: member 1 "a": its 5 bytes would take the restored files past the limit of 10 bytes (MaxBytes; 6 already restored)`, err.Error())
	})
}

func TestExtractMaxMembers(t *testing.T) {
	t.Run("many tiny members", func(t *testing.T) {
		s := newSandbox(t)
		var members []member
		for i := range 50 {
			members = append(members, file(fmt.Sprintf("f%02d", i), "", 0o600))
		}
		data := buildTar(t, true, members...)
		st, err := s.extract(t, data, Options{MaxMembers: 20})
		require.ErrorIs(t, err, ErrTooManyMembers)
		assertMemberError(t, err, 21, "f20")
		assert.Equal(t, `tarx: member 21 "f20": the archive has more members than the limit of 20 (MaxMembers; 0 restored before this archive)`, err.Error())
		assert.Equal(t, int64(20), st.Files)
		assert.Equal(t, int64(20), st.Members)
		assert.NoFileExists(t, filepath.Join(s.dest, "f20"))
	})
	t.Run("directories and links count", func(t *testing.T) {
		s := newSandbox(t)
		_, err := s.extract(t, buildTar(t, false, dir("d", 0o700), file("d/a", "x", 0o600), symlink("l", "d/a")), Options{MaxMembers: 2})
		require.ErrorIs(t, err, ErrTooManyMembers)
		assertMemberError(t, err, 3, "l")
	})
	t.Run("exactly at the limit, shared", func(t *testing.T) {
		s := newSandbox(t)
		st, err := s.extract(t, buildTar(t, false, file("a", "1", 0o600), file("b", "2", 0o600)), Options{MaxMembers: 5, Restored: Stats{Members: 3}})
		require.NoError(t, err)
		assert.Equal(t, int64(2), st.Members)
		_, err = newSandbox(t).extract(t, buildTar(t, false, file("a", "1", 0o600)), Options{MaxMembers: 5, Restored: Stats{Members: 5}})
		require.ErrorIs(t, err, ErrTooManyMembers)
	})
}

// cancelReader cancels a context once more than after bytes have been read through it.
type cancelReader struct {
	r      io.Reader
	n      int64
	after  int64
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.after {
		c.cancel()
	}
	return n, err
}

func TestExtractCancel(t *testing.T) {
	random := make([]byte, 16<<20)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(random)
	data := buildTar(t, false, file("a", "a", 0o600), file("big", string(random), 0o600), file("z", "z", 0o600))

	t.Run("before", func(t *testing.T) {
		s := newSandbox(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		st, err := Extract(ctx, bytes.NewReader(data), s.dest, Options{})
		require.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, Stats{}, st)
		assert.Empty(t, readDirNames(t, s.dest))
	})
	t.Run("during a file", func(t *testing.T) {
		s := newSandbox(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r := &cancelReader{r: bytes.NewReader(data), after: 4 << 20, cancel: cancel}
		st, err := Extract(ctx, r, s.dest, Options{})
		require.ErrorIs(t, err, context.Canceled)
		assertMemberError(t, err, 2, "big")
		assert.Equal(t, `tarx: member 2 "big": copying contents: context canceled`, err.Error())
		assert.Less(t, st.Bytes, int64(8<<20), "stopped promptly")
		assert.Less(t, r.n, int64(8<<20), "stopped reading promptly")
		assert.NoFileExists(t, filepath.Join(s.dest, "z"))
	})
	t.Run("sparse holes", func(t *testing.T) {
		// A sparse member's holes come from memory, not the input: the copy loop checks ctx.
		s := newSandbox(t)
		sparse := tarWithGNU(t, "--format=gnu", func(dir string) {
			f, err := os.Create(filepath.Join(dir, "huge"))
			require.NoError(t, err)
			require.NoError(t, f.Truncate(1<<40))
			require.NoError(t, f.Close())
		})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Extract(ctx, bytes.NewReader(sparse), s.dest, Options{})
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 5*time.Second)
	})
}

func TestExtractProgress(t *testing.T) {
	random := make([]byte, 4<<20)
	rng := rand.NewChaCha8([32]byte{2})
	_, _ = rng.Read(random)
	data := buildTar(t, true, file("a", string(random), 0o600), file("b", "b", 0o600))
	check := func(t *testing.T, calls [][2]int64, wantTotal int64) {
		t.Helper()
		require.Greater(t, len(calls), 2, "ProgressEvery 1ns: a call per read")
		for i := 1; i < len(calls); i++ {
			require.GreaterOrEqual(t, calls[i][0], calls[i-1][0], "call %d: done decreased", i)
		}
		last := calls[len(calls)-1]
		assert.Equal(t, [2]int64{int64(len(data)), int64(len(data))}, last, "last call: done == total == input size")
		for _, c := range calls[:len(calls)-1] {
			require.Equal(t, wantTotal, c[1])
		}
	}
	t.Run("unknown size", func(t *testing.T) {
		s := newSandbox(t)
		var calls [][2]int64
		_, err := s.extract(t, data, Options{ProgressEvery: time.Nanosecond, Progress: func(done, total int64) {
			calls = append(calls, [2]int64{done, total})
		}})
		require.NoError(t, err)
		check(t, calls, -1)
	})
	t.Run("InputSize", func(t *testing.T) {
		s := newSandbox(t)
		var calls [][2]int64
		_, err := s.extract(t, data, Options{InputSize: int64(len(data)), ProgressEvery: time.Nanosecond,
			Progress: func(done, total int64) { calls = append(calls, [2]int64{done, total}) }})
		require.NoError(t, err)
		check(t, calls, int64(len(data)))
	})
	t.Run("file", func(t *testing.T) {
		s := newSandbox(t)
		p := filepath.Join(t.TempDir(), "base.tar.gz")
		require.NoError(t, os.WriteFile(p, data, 0o600))
		f, err := os.Open(p)
		require.NoError(t, err)
		defer f.Close()
		var calls [][2]int64
		_, err = Extract(context.Background(), f, s.dest, Options{ProgressEvery: time.Nanosecond,
			Progress: func(done, total int64) { calls = append(calls, [2]int64{done, total}) }})
		require.NoError(t, err)
		check(t, calls, int64(len(data)))
	})
	t.Run("rate limited", func(t *testing.T) {
		s := newSandbox(t)
		var calls [][2]int64
		_, err := s.extract(t, data, Options{ProgressEvery: time.Hour,
			Progress: func(done, total int64) { calls = append(calls, [2]int64{done, total}) }})
		require.NoError(t, err)
		assert.Equal(t, [][2]int64{{64 << 10, -1}, {int64(len(data)), int64(len(data))}}, calls, "the first read, then the end")
	})
}

func TestExtractInvalidInput(t *testing.T) {
	good := buildTar(t, false, file("a", "a", 0o600))
	goodGz := gzipBytes(t, good)
	corrupt := bytes.Clone(goodGz)
	corrupt[len(corrupt)-8] ^= 0xff // CRC-32
	big := buildTar(t, false, file("a", strings.Repeat("0123456789abcdef", 8192), 0o600))
	goodZst, goodLz4 := compressBytes(t, "zst", big), compressBytes(t, "lz4", big)
	for _, tc := range []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrInvalidArchive, "tarx: invalid archive: empty input"},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0, 0}, ErrUnsupported, "tarx: unsupported compression: input is xz-compressed; only gzip, zstd, lz4 and plain tar are supported"},
		{"bad zstd frame", []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0}, ErrInvalidArchive, ""},
		{"truncated zstd", goodZst[:len(goodZst)/2], ErrInvalidArchive, ""},
		{"bad lz4 frame", []byte{0x04, 0x22, 0x4d, 0x18, 0, 0, 0}, ErrInvalidArchive, ""},
		{"truncated lz4", goodLz4[:len(goodLz4)/2], ErrInvalidArchive, ""},
		{"bzip2", []byte("BZh91AY&SY"), ErrUnsupported, ""},
		{"garbage", bytes.Repeat([]byte("not a tar archive "), 100), ErrInvalidArchive, ""},
		{"truncated tar", good[:700], ErrInvalidArchive, ""},
		{"cut at a member boundary", good[:1024], ErrInvalidArchive,
			"tarx: invalid archive: input ends after member 1 without the end-of-archive marker (truncated?)"},
		{"one zero block", good[:1024+512], ErrInvalidArchive, ""},
		{"not a tar", []byte("hello"), ErrInvalidArchive, ""},
		{"truncated gzip", goodGz[:len(goodGz)-10], ErrInvalidArchive, ""},
		{"gzip checksum", corrupt, ErrInvalidArchive, "tarx: invalid archive: gzip: invalid checksum"},
		{"bad gzip header", []byte{0x1f, 0x8b, 0xff, 0, 0, 0, 0, 0, 0, 0}, ErrInvalidArchive, ""},
		{"concatenated", append(bytes.Clone(good), buildTar(t, false, file("b", "b", 0o600))...), ErrInvalidArchive,
			"tarx: invalid archive: data after the end-of-archive marker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := s.extract(t, tc.data, Options{})
			require.ErrorIs(t, err, tc.want)
			if tc.msg != "" {
				assert.Equal(t, tc.msg, err.Error())
			}
			s.assertUntouched(t)
		})
	}
	t.Run("padding", func(t *testing.T) {
		s := newSandbox(t)
		_, err := s.extract(t, append(bytes.Clone(good), make([]byte, 20<<10)...), Options{})
		require.NoError(t, err)
	})
	t.Run("only the end marker", func(t *testing.T) {
		s := newSandbox(t)
		st, err := s.extract(t, make([]byte, 1024), Options{})
		require.NoError(t, err)
		assert.Equal(t, Stats{}, st)
	})
	t.Run("reader error", func(t *testing.T) {
		s := newSandbox(t)
		boom := errors.New("boom")
		_, err := Extract(context.Background(), io.MultiReader(bytes.NewReader(good[:600]), errReader{boom}), s.dest, Options{})
		require.ErrorIs(t, err, boom)
		assert.NotErrorIs(t, err, ErrInvalidArchive)
	})
	t.Run("missing destination", func(t *testing.T) {
		_, err := Extract(context.Background(), bytes.NewReader(good), filepath.Join(t.TempDir(), "nope"), Options{})
		require.ErrorIs(t, err, fs.ErrNotExist)
	})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// assertMemberError checks that err is a *MemberError for the member at index named name.
func assertMemberError(t *testing.T, err error, index int, name string) *MemberError {
	t.Helper()
	var me *MemberError
	require.ErrorAs(t, err, &me, "error %v", err)
	assert.Equal(t, index, me.Index, "member index in %v", err)
	assert.Equal(t, name, me.Name, "member name in %v", err)
	return me
}
