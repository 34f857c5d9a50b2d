package fusedev

// A connection is opened with O_CLOEXEC and mounted here with mount(2), never through fusermount:
// the descriptor exists in this process only (and in the holder, which receives a copy by
// SCM_RIGHTS), so no process this one starts (mkfs, mount, a database server and its backends)
// inherits it. A FUSE connection lives while any descriptor of it is open: an inherited one would
// keep a dead server's connection alive with nobody serving it, and every I/O on it would hang.

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FSType is the file system type of the mounts made by Mount (fuse.<subtype>).
const FSType = "fuse.dataimage"

// Mount opens a new FUSE connection, close-on-exec, and mounts it at dir with the given source
// (what /proc/self/mountinfo shows). maxRead bounds the kernel's read requests (the mount's
// max_read option). It returns the connection's descriptor: the caller owns it, and Init must run
// on it before anything else (the kernel holds every request on the mount until then).
func Mount(dir, source string, maxRead int) (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/fuse", Err: err}
	}
	// The options the kernel requires (fs/fuse/inode.c), as fusermount passes them.
	data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=%d,group_id=%d,max_read=%d",
		fd, unix.S_IFDIR, os.Geteuid(), os.Getegid(), maxRead)
	if err := unix.Mount(source, dir, FSType, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		unix.Close(fd)
		return -1, &os.PathError{Op: "mount " + FSType, Path: dir, Err: err}
	}
	return fd, nil
}

// fuseDevIocClone is FUSE_DEV_IOC_CLONE: _IOR(229, 0, uint32_t).
const fuseDevIocClone = 0x8004e500

// Clone returns a new descriptor of the connection of fd (FUSE_DEV_IOC_CLONE), close-on-exec. A
// clone has its own queue of requests being processed, so servers read and answer on it without
// contending with the other descriptors' (the input queue stays shared). A request is answered on
// the descriptor it was read from.
//
// When the last copy of a clone closes, the kernel ends the requests read from it and not yet
// answered with ECONNABORTED: a server that is to survive its own death has every descriptor of
// the connection held elsewhere too (see package holder).
func Clone(fd int) (int, error) {
	nfd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/fuse", Err: err}
	}
	if err := unix.IoctlSetPointerInt(nfd, fuseDevIocClone, fd); err != nil {
		unix.Close(nfd)
		return -1, fmt.Errorf("FUSE_DEV_IOC_CLONE: %w", err)
	}
	return nfd, nil
}
