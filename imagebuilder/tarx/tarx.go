// Package tarx restores a tar archive, such as the base.tar[.gz] and pg_wal.tar[.gz] written by
// `pg_basebackup -Ft`, into a directory, refusing every member that could write or point outside
// it.
//
// Extract reads plain tar and tar compressed with gzip, zstd or lz4 (frame format): every
// compression pg_basebackup writes, client or server side, told apart by their magic bytes and
// decompressed as a stream. bzip2 and xz are recognised by theirs and refused with
// ErrUnsupported.
//
// # Safety rules
//
// Every file system operation goes through an os.Root opened on the destination, so the kernel
// refuses any path that resolves outside it. On top of that, Extract refuses, with a *MemberError
// that names the member and matches ErrUnsafeMember:
//   - an empty name, a name with a NUL byte, an absolute name, or a name with a ".." component
//     (names are otherwise cleaned: "./a//b/" is "a/b");
//   - a member whose parent path runs through a symbolic link or a non-directory, whether the
//     link came from an earlier member or was already in the destination;
//   - a symbolic link with an absolute target, or a relative target that, resolved from the
//     link's directory and through the links in the destination, leaves it; this is checked when
//     the link is created and again for every link once all members are restored, since a later
//     member can change where an earlier link leads;
//   - a hard link whose target is not a regular file restored earlier from the same archive;
//   - character and block devices, FIFOs, and member types other than regular files (including
//     GNU sparse files), directories, symbolic links and hard links;
//   - a directory member where a non-directory exists, or a non-directory where a directory
//     exists. A non-directory replaces an earlier non-directory (the later member wins, as in
//     tar); a directory member merges with an existing directory.
//
// Regular files are created with O_EXCL after removing what an earlier member left, so a file
// member never writes through a symbolic link.
//
// # Limits
//
// Options.MaxBytes and Options.MaxMembers bound what an archive may make of its destination
// (a tar bomb: a sparse member of a terabyte, millions of tiny members): the member that would
// pass a limit is refused, with ErrTooLarge or ErrTooManyMembers, before anything of it is
// written. Options.Restored makes the archives of one restore share one budget.
//
// # Metadata
//
// Permission bits are restored as in the archive, without setuid and setgid unless
// Options.AllowSetID is set; the sticky bit is kept. Modification times are restored for files,
// directories and symbolic links (access times too when the archive has them). Ownership comes
// from Options.Owner when set; otherwise, when the process runs as root, from the numeric uid and
// gid in each header (user and group names are ignored); otherwise files belong to the caller.
// Directories are created with mode 0700 and get their final owner, mode and times once every
// member is restored. Parent directories that the archive does not list keep mode 0700 and are
// owned by Options.Owner, or the caller.
//
// # Errors and what they leave
//
// Extract stops at the first error. The destination then holds the members restored before the
// failing one (files, links and their metadata as described above), possibly a partial file for
// the failing one, and directories with mode 0700, owned by the caller, without their final
// owner, mode and times. Nothing outside the destination is created or changed. The caller is
// expected to discard the destination.
//
// It must not know engines, backups or the store: it extracts archives under a root, safely.
package tarx

import (
	"context"
	"io"
	"time"
)

// Owner is a numeric user and group.
type Owner struct {
	UID int
	GID int
}

// Options tunes Extract. The zero value restores with no size limit and no progress reports.
type Options struct {
	// Owner, when set, owns every restored file, directory and link, whatever the archive
	// says, and dest itself. The image builder sets it to the postgres user. Needs CAP_CHOWN
	// unless it is the caller's own user. The mode of dest only changes when the archive has
	// a "./" member (PostgreSQL wants 0700 or 0750 on its data directory).
	Owner *Owner
	// AllowSetID keeps the setuid and setgid bits of the archive's modes; they are cleared
	// otherwise.
	AllowSetID bool
	// MaxBytes bounds the total size of the regular files restored (their logical size: a
	// sparse file counts its holes). The member that would pass it is refused with
	// ErrTooLarge before any of it is written. Zero or negative means no limit.
	MaxBytes int64
	// MaxMembers bounds the number of members read (every header but the PAX and GNU
	// long-name headers that belong to a member: files, directories, links, PAX global
	// headers), and so the memory Extract keeps per member and the inodes it makes. The member
	// that would pass it is refused with ErrTooManyMembers before anything of it is written.
	// Zero or negative means no limit.
	MaxMembers int64
	// Restored is what earlier Extract calls of the same restore restored (their Stats,
	// added up): it counts against MaxBytes and MaxMembers, so that the archives of one
	// restore (a base backup and its WAL) share one budget.
	Restored Stats
	// Progress, when set, is called with the bytes of input read from r so far (compressed
	// bytes for a gzip archive) and the input size: InputSize, else the remaining size of r
	// when it is a regular *os.File, else -1. It is called at most once every ProgressEvery
	// and once more after a successful extraction, when the input has been read to its end;
	// that last call has done == total (total is set to done when the size was unknown).
	// done never decreases. Progress runs on the goroutine that called Extract.
	Progress func(done, total int64)
	// ProgressEvery is the least time between two Progress calls; zero means 200ms.
	ProgressEvery time.Duration
	// InputSize is the size of the input in bytes when the caller knows it; zero means
	// unknown.
	InputSize int64
}

// Stats counts what Extract restored.
type Stats struct {
	// Files counts regular-file members, Dirs directory members, and Links symbolic-link and
	// hard-link members. Parent directories created because the archive did not list them
	// are not counted.
	Files, Dirs, Links int64
	// Bytes is the total logical size of the regular files written.
	Bytes int64
	// Members counts the members read, as Options.MaxMembers counts them.
	Members int64
}

// Add returns the sum of s and t.
func (s Stats) Add(t Stats) Stats {
	return Stats{Files: s.Files + t.Files, Dirs: s.Dirs + t.Dirs, Links: s.Links + t.Links, Bytes: s.Bytes + t.Bytes, Members: s.Members + t.Members}
}

// Extract restores the tar archive read from r, plain or compressed (gzip, zstd, lz4), into the existing
// directory dest, following the rules in the package documentation. It returns what it restored,
// also on error. Errors about one member are *MemberError values; errors about the stream match
// ErrInvalidArchive or ErrUnsupported; cancellation returns an error matching ctx.Err().
//
// Extract checks ctx before every read from r and between every chunk it writes, so it stops
// promptly once ctx is done; a Read already blocked in r is not interrupted (close r for that).
// Extract reads r to its end, so that the gzip checksum and the end of the archive are checked:
// an archive cut short, even at a member boundary, lacks its end-of-archive marker and fails with
// ErrInvalidArchive, and at most 1 MiB of zero bytes may follow the marker.
func Extract(ctx context.Context, r io.Reader, dest string, opts Options) (Stats, error) {
	x, err := newExtractor(ctx, r, dest, opts)
	if err != nil {
		return Stats{}, err
	}
	defer x.close()
	err = x.run()
	return x.stats, err
}
