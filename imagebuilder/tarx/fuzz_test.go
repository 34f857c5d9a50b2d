package tarx

import (
	"archive/tar"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzExtract: over arbitrary input, Extract never panics, fails only with this package's
// errors (or a *MemberError carrying a file system error), never creates anything next to the
// destination (even with a link to the sibling directory already in it), restores only
// directories, regular files and symbolic links, never sets setuid or setgid, and, when it
// succeeds, leaves no symbolic link that leads outside the destination.
func FuzzExtract(f *testing.F) {
	small := pgLike()
	small[5] = file("base/1/1259", "page", 0o600) // small seeds minimize fast
	seeds := [][]member{
		small,
		{symlink("link", "../outside"), file("link/evil", "x", 0o600)},
		{dir("d1/d2/", 0o700), symlink("d1/d2/up", "../.."), symlink("t", "d1/d2/up/../outside")},
		{symlink("t", "q/.."), dir("d1/d2/", 0o700), symlink("d1/d2/up", "../.."), symlink("q", "d1/d2/up")},
		{file("a", "x", 0o4755), hardlink("h", "a"), hardlink("g", "../outside/x")},
		{symlink("s", "."), file("s/x", "x", 0o600), file("pre/x", "x", 0o600)},
		{special(tar.TypeChar, "null"), special(tar.TypeFifo, "p")},
		{dir("a/", 0o700), file("a", "x", 0o600), file("/abs", "x", 0o600)},
		{file(strings.Repeat("long/", 40)+"name", "x", 0o600)},
	}
	for _, m := range seeds {
		f.Add(buildTar(f, false, m...))
		f.Add(buildTar(f, true, m...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSandbox(t)
		// A link to the sibling that an archive could try to write through.
		require.NoError(t, os.Symlink("../outside", filepath.Join(s.dest, "pre")))
		_, err := s.extract(t, data, Options{MaxBytes: 1 << 20, MaxMembers: 64})
		if err != nil {
			var me *MemberError
			if !errors.Is(err, ErrUnsafeMember) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrTooManyMembers) &&
				!errors.Is(err, ErrInvalidArchive) && !errors.Is(err, ErrUnsupported) && !errors.As(err, &me) {
				t.Fatalf("unexpected error %#v: %v", err, err)
			}
		}
		s.assertUntouched(t)
		realDest, rerr := filepath.EvalSymlinks(s.dest)
		require.NoError(t, rerr)
		require.NoError(t, filepath.WalkDir(s.dest, func(p string, d fs.DirEntry, werr error) error {
			require.NoError(t, werr)
			fi, ierr := os.Lstat(p)
			require.NoError(t, ierr)
			switch mode := fi.Mode(); {
			case mode&(fs.ModeSetuid|fs.ModeSetgid) != 0:
				t.Fatalf("%s: setuid or setgid: %v", p, mode)
			case mode.IsDir(), mode.IsRegular():
			case mode&fs.ModeSymlink != 0:
				if p == filepath.Join(s.dest, "pre") || err != nil {
					return nil // links are only checked as a whole once extraction succeeds
				}
				target, lerr := os.Readlink(p)
				require.NoError(t, lerr)
				if filepath.IsAbs(target) {
					t.Fatalf("%s: absolute target %q", p, target)
				}
				if resolved, eerr := filepath.EvalSymlinks(p); eerr == nil {
					if resolved != realDest && !strings.HasPrefix(resolved, realDest+"/") {
						t.Fatalf("%s -> %q resolves outside the destination, to %s", p, target, resolved)
					}
				}
			default:
				t.Fatalf("%s: unexpected file type %v", p, mode)
			}
			return nil
		}))
	})
}
