package export

// The FUSE mount of an export is made here, not by go-fuse: go-fuse v2.12.1 opens /dev/fuse
// without O_CLOEXEC when it mounts itself (fuse/mount_linux.go, mountDirect), so every process
// this one starts afterwards (mkfs, mount, a clone's database server and all its backends)
// inherited the connection's descriptor. A FUSE connection lives while any descriptor of it is
// open: when this process died, the inheritors kept the connection alive with nobody serving it,
// and every I/O on the export (and umount, and rm of its files) blocked in D state until the
// connection was aborted by hand through fusectl. With the descriptor in this process only, the
// kernel aborts the connection the moment this process dies, and I/O on the export fails (EIO)
// instead of hanging.
//
// So: /dev/fuse is opened with O_CLOEXEC (at open, atomically: a fork+exec in another goroutine
// between an open and a later fcntl would still inherit it), mount(2) is called here, and go-fuse
// gets the descriptor through its "/dev/fd/N" mount point form, which makes it serve that
// descriptor as it is and never run fusermount. go-fuse skips its poll probe for that form, so
// it is done here (pollProbe), with O_CLOEXEC as well. Splicing is off (MountOptions.DisableSplice):
// the Disk's reads are byte slices, which go-fuse would still push through a pipe and drain into
// a /dev/null it opens without O_CLOEXEC.
//
// A later data plane that adopts a live connection after a restart takes the same seam: whoever
// holds the descriptor is the one place that opens and mounts.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

const (
	// fuseFSType is the file system type of the exports' FUSE mounts (fuse.<subtype>).
	fuseFSType = "fuse.dataimage"
	// fusePollProbe is the file go-fuse answers for in every file system it serves, so that
	// opening and polling it makes the kernel ask FUSE_POLL once (go-fuse's WaitMount "poll
	// hack", fuse/poll.go). Were the name to change in go-fuse, the probe's open fails with
	// ENOENT and so does every Export: loud, not a silent hang.
	fusePollProbe = ".go-fuse-epoll-hack"
)

// fuseSource is the source of an export's FUSE mount, as /proc/self/mountinfo shows it.
func fuseSource(id string) string { return "dataimage:" + id }

// serveFUSE mounts a FUSE file system with root at dir and serves it until it is unmounted. On
// failure nothing is left mounted.
func serveFUSE(dir, id string, root fs.InodeEmbedder, log *slog.Logger) (*fuse.Server, error) {
	fd, err := mountFUSE(dir, fuseSource(id))
	if err != nil {
		return nil, err
	}
	zero, entry := time.Duration(0), time.Hour
	// go-fuse owns fd from here on: it closes it when NewServer fails and when serving ends.
	srv, err := fs.Mount("/dev/fd/"+strconv.Itoa(fd), root, &fs.Options{
		MountOptions: fuse.MountOptions{
			MaxWrite:          fuseMaxWrite,
			MaxBackground:     fuseMaxBackground,
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			DisableXAttrs:     true,
			DisableSplice:     true,
			Logger:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		// The size changes behind the kernel's back (Resize): no attribute caching.
		AttrTimeout:     &zero,
		EntryTimeout:    &entry,
		NegativeTimeout: &zero,
	})
	if err != nil {
		_, uerr := unmount(dir)
		return nil, errors.Join(fmt.Errorf("serve FUSE: %w", err), uerr)
	}
	if err := pollProbe(dir); err != nil {
		_, uerr := unmount(dir)
		if uerr == nil {
			srv.Wait()
		}
		return nil, errors.Join(err, uerr)
	}
	return srv, nil
}

// mountFUSE opens a new FUSE connection, close-on-exec, and mounts it at dir. It returns the
// connection's descriptor.
func mountFUSE(dir, source string) (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/fuse", Err: err}
	}
	// The options the kernel requires (fs/fuse/inode.c), as fusermount passes them; max_read
	// bounds the kernel's read requests to what the server's buffers take.
	data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=%d,group_id=%d,max_read=%d",
		fd, unix.S_IFDIR, os.Geteuid(), os.Getegid(), fuseMaxWrite)
	if err := unix.Mount(source, dir, fuseFSType, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		unix.Close(fd)
		return -1, &os.PathError{Op: "mount " + fuseFSType, Path: dir, Err: err}
	}
	return fd, nil
}

// pollProbe opens and polls go-fuse's poll probe file in the file system mounted at dir. go-fuse
// answers the FUSE_POLL with ENOSYS, and the kernel never asks again: otherwise the first file
// this process opens there (the loop device's backing file) would be polled when the Go runtime
// registers it with epoll, a call that holds its thread's P while it waits for this very server.
func pollProbe(dir string) error {
	path := filepath.Join(dir, fusePollProbe)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open poll probe", Path: path, Err: err}
	}
	defer unix.Close(fd)
	// The result does not matter: the request is what tells the kernel.
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return nil
}
