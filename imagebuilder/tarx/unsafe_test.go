package tarx

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExtractRefusesUnsafeMembers runs every attack against a fresh destination with an empty
// sibling directory "outside": each is refused with ErrUnsafeMember naming the member, its
// index and the rule, and nothing appears next to the destination.
func TestExtractRefusesUnsafeMembers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, s sandbox) // prepares the destination, when set
		members []member
		index   int
		member  string
		rule    string
	}{
		{name: "absolute path",
			members: []member{file("ok", "x", 0o600), file("/tmp/evil", "x", 0o600)},
			index:   2, member: "/tmp/evil", rule: "absolute path"},
		{name: "dot-dot escape",
			members: []member{file("../outside/evil", "x", 0o600)},
			index:   1, member: "../outside/evil", rule: "path escapes the destination"},
		{name: "dot-dot escape after a directory",
			members: []member{dir("a/", 0o700), file("a/../../outside/evil", "x", 0o600)},
			index:   2, member: "a/../../outside/evil", rule: "path escapes the destination"},
		{name: "dot-dot inside",
			members: []member{file("a/../b", "x", 0o600)},
			index:   1, member: "a/../b", rule: `path contains a ".." component`},
		{name: "dot-dot directory",
			members: []member{dir("../", 0o700)},
			index:   1, member: "../", rule: "path escapes the destination"},
		{name: "empty name",
			members: []member{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "", Mode: 0o700}}},
			index:   1, member: "", rule: "empty name"},
		{name: "symlink to parent",
			members: []member{symlink("link", "../outside")},
			index:   1, member: "link", rule: `symbolic link target "../outside" leaves the destination`},
		{name: "symlink deep escape",
			members: []member{dir("a/b/", 0o700), symlink("a/b/link", "../../../outside/x")},
			index:   2, member: "a/b/link", rule: `symbolic link target "../../../outside/x" leaves the destination`},
		{name: "symlink absolute",
			members: []member{symlink("link", "/etc")},
			index:   1, member: "link", rule: `symbolic link target "/etc" is absolute`},
		{name: "symlink absolute inside-looking",
			members: []member{symlink("link", "/")},
			index:   1, member: "link", rule: `symbolic link target "/" is absolute`},
		{name: "symlink empty target",
			members: []member{symlink("link", "")},
			index:   1, member: "link", rule: "symbolic link with an empty target"},
		{name: "symlink then write through",
			members: []member{symlink("link", "../outside"), file("link/evil", "x", 0o600)},
			index:   1, member: "link", rule: `symbolic link target "../outside" leaves the destination`},
		{name: "write through an inside symlink",
			members: []member{dir("d/", 0o700), symlink("link", "d"), file("link/f", "x", 0o600)},
			index:   3, member: "link/f", rule: `path runs through symbolic link "link"`},
		{name: "directory through an inside symlink",
			members: []member{symlink("link", "."), dir("link/sub/", 0o700)},
			index:   2, member: "link/sub/", rule: `path runs through symbolic link "link"`},
		{name: "symlink through an upward symlink",
			// d1/d2/up leads to the destination itself, so d1/d2/up/.. is its parent.
			members: []member{dir("d1/d2/", 0o700), symlink("d1/d2/up", "../.."), symlink("t", "d1/d2/up/../outside")},
			index:   3, member: "t", rule: `symbolic link target "d1/d2/up/../outside" leaves the destination`},
		{name: "symlink made unsafe by a later member",
			// When t is made, q does not exist and t stays inside; q then leads to the
			// destination itself, and t to its parent.
			members: []member{symlink("t", "q/.."), dir("d1/d2/", 0o700), symlink("d1/d2/up", "../.."), symlink("q", "d1/d2/up")},
			index:   1, member: "t", rule: `symbolic link target "q/.." leaves the destination once the archive is restored`},
		{name: "symlink through an absolute symlink",
			members: []member{symlink("abs", "/etc"), symlink("t", "abs/passwd")},
			index:   1, member: "abs", rule: `symbolic link target "/etc" is absolute`},
		{name: "symlink loop",
			members: []member{symlink("a", "b"), symlink("b", "a")},
			index:   1, member: "a", rule: `symbolic link target "b" runs through more than 40 links once the archive is restored`},
		{name: "existing symlink in the destination",
			setup: func(t *testing.T, s sandbox) {
				require.NoError(t, os.Symlink("../outside", filepath.Join(s.dest, "evil")))
			},
			members: []member{file("evil/x", "x", 0o600)},
			index:   1, member: "evil/x", rule: `path runs through symbolic link "evil"`},
		{name: "hard link outside",
			members: []member{hardlink("h", "../outside/x")},
			index:   1, member: "h", rule: `hard link target "../outside/x": path escapes the destination`},
		{name: "hard link absolute",
			members: []member{hardlink("h", "/etc/passwd")},
			index:   1, member: "h", rule: `hard link target "/etc/passwd": absolute path`},
		{name: "hard link to a missing member",
			members: []member{file("a", "x", 0o600), hardlink("h", "b")},
			index:   2, member: "h", rule: `hard link target "b" is not a member restored earlier from this archive`},
		{name: "hard link to a later member",
			members: []member{hardlink("h", "a"), file("a", "x", 0o600)},
			index:   1, member: "h", rule: `hard link target "a" is not a member restored earlier from this archive`},
		{name: "hard link to a directory",
			members: []member{dir("d/", 0o700), hardlink("h", "d")},
			index:   2, member: "h", rule: `hard link target "d" is not a regular file`},
		{name: "hard link to a symlink",
			members: []member{symlink("s", "x"), hardlink("h", "s")},
			index:   2, member: "h", rule: `hard link target "s" is not a regular file`},
		{name: "hard link through a symlink",
			// Inside and a regular file, but only reachable through the link.
			members: []member{dir("d/", 0o700), file("d/f", "x", 0o600), symlink("s", "d"), hardlink("h", "s/f")},
			index:   4, member: "h", rule: `hard link target "s/f" is not a member restored earlier from this archive`},
		{name: "hard link to a pre-existing file",
			setup: func(t *testing.T, s sandbox) {
				require.NoError(t, os.WriteFile(filepath.Join(s.dest, "pre"), []byte("x"), 0o600))
			},
			members: []member{hardlink("h", "pre")},
			index:   1, member: "h", rule: `hard link target "pre" is not a member restored earlier from this archive`},
		{name: "hard link to itself",
			members: []member{file("a", "x", 0o600), hardlink("a", "a")},
			index:   2, member: "a", rule: "hard link to itself"},
		{name: "character device",
			members: []member{dir("dev/", 0o755), special(tar.TypeChar, "dev/null")},
			index:   2, member: "dev/null", rule: "character device node"},
		{name: "block device",
			members: []member{special(tar.TypeBlock, "sda")},
			index:   1, member: "sda", rule: "block device node"},
		{name: "fifo",
			members: []member{special(tar.TypeFifo, "pipe")},
			index:   1, member: "pipe", rule: "FIFO"},
		{name: "unknown type",
			members: []member{{hdr: tar.Header{Typeflag: 'V', Name: "volume", Mode: 0o600}}},
			index:   1, member: "volume", rule: "unsupported member type 'V'"},
		{name: "file replaces a directory",
			members: []member{dir("a/", 0o700), file("a/x", "x", 0o600), file("a", "x", 0o600)},
			index:   3, member: "a", rule: "would replace a directory"},
		{name: "symlink replaces a directory",
			members: []member{dir("a/", 0o700), symlink("a", "b")},
			index:   2, member: "a", rule: "would replace a directory"},
		{name: "directory replaces a file",
			members: []member{file("a", "x", 0o600), dir("a/", 0o700)},
			index:   2, member: "a/", rule: "would replace a non-directory with a directory"},
		{name: "file names the destination",
			members: []member{file(".", "x", 0o600)},
			index:   1, member: ".", rule: "non-directory member names the destination itself"},
		{name: "parent is a file",
			members: []member{file("f", "x", 0o600), file("f/x", "x", 0o600)},
			index:   2, member: "f/x", rule: `path runs through non-directory "f"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, gz := range []bool{false, true} {
				s := newSandbox(t)
				if tc.setup != nil {
					tc.setup(t, s)
				}
				_, err := s.extract(t, buildTar(t, gz, tc.members...), Options{})
				require.ErrorIs(t, err, ErrUnsafeMember)
				me := assertMemberError(t, err, tc.index, tc.member)
				assert.Equal(t, tc.rule, me.Rule)
				assert.True(t, strings.HasPrefix(err.Error(), "tarx: member "), err.Error())
				s.assertUntouched(t)
			}
		})
	}
}

func TestMemberErrorText(t *testing.T) {
	s := newSandbox(t)
	_, err := s.extract(t, buildTar(t, false, symlink("link", "../outside"), file("link/evil", "x", 0o600)), Options{})
	assert.EqualError(t, err, `tarx: member 1 "link": symbolic link target "../outside" leaves the destination`)
}
