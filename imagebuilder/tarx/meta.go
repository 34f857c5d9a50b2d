package tarx

import (
	"archive/tar"
	"errors"
	"path"
	"time"

	"golang.org/x/sys/unix"
)

// meta restores the owner, then the mode (not for a symbolic link), then the times of name.
// hdr is nil for a parent directory the archive did not list: only the owner is set, and only
// when Options.Owner is set.
//
// It works through the parent directory, opened through the root, with the *at system calls:
// fchownat and utimensat with AT_SYMLINK_NOFOLLOW; fchmodat, which follows a link, is never
// called on one. The owner comes first because chown clears the setuid and setgid bits.
func (x *extractor) meta(name string, hdr *tar.Header, k kind) error {
	dir, base := path.Dir(name), path.Base(name)
	if err := x.openParent(dir); err != nil {
		return x.fail("opening parent directory", err)
	}
	fd := int(x.parent.Fd())
	if uid, gid, ok := x.owner(hdr); ok {
		if err := unix.Fchownat(fd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return x.fail("setting owner", err)
		}
	}
	if hdr == nil {
		return nil
	}
	if k != kindSymlink {
		if err := unix.Fchmodat(fd, base, x.mode(hdr), 0); err != nil {
			return x.fail("setting mode", err)
		}
	}
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{timespec(atime), timespec(hdr.ModTime)}
	if err := unix.UtimesNanoAt(fd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return x.fail("setting times", err)
	}
	return nil
}

// openParent makes x.parent the directory dir, a cleaned name whose components are known
// directories.
func (x *extractor) openParent(dir string) error {
	if x.parent != nil && x.parentName == dir {
		return nil
	}
	if x.parent != nil {
		_ = x.parent.Close() // read-only directory handle: nothing to lose
		x.parent = nil
	}
	f, err := x.root.Open(dir)
	if err != nil {
		return err
	}
	x.parent, x.parentName = f, dir
	return nil
}

// owner returns the owner to give a member with header hdr (nil for an unlisted parent), and
// whether to change it at all.
func (x *extractor) owner(hdr *tar.Header) (int, int, bool) {
	switch {
	case x.opts.Owner != nil:
		return x.opts.Owner.UID, x.opts.Owner.GID, true
	case x.asRoot && hdr != nil && hdr.Uid >= 0 && hdr.Gid >= 0:
		return hdr.Uid, hdr.Gid, true
	}
	return 0, 0, false
}

// mode returns the permission bits to give a member: its mode's permission and sticky bits,
// and its setuid and setgid bits when Options.AllowSetID is set.
func (x *extractor) mode(hdr *tar.Header) uint32 {
	m := uint32(hdr.Mode) & 0o7777
	if !x.opts.AllowSetID {
		m &^= unix.S_ISUID | unix.S_ISGID
	}
	return m
}

func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// isNotDir reports whether err is ENOTDIR: a path runs through a non-directory.
func isNotDir(err error) bool { return errors.Is(err, unix.ENOTDIR) }
