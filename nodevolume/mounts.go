package nodevolume

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// IsMountPoint reports whether path is a mount point. A missing path is not; a mount whose
// server is gone (ENOTCONN, ESTALE, EIO: an export an earlier process left) is one, to be
// unmounted.
func (a *Attacher) IsMountPoint(path string) (bool, error) {
	notMnt, err := a.mounter.IsLikelyNotMountPoint(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil && mount.IsCorruptedMnt(err) {
		return true, nil
	}
	return !notMnt, err
}

// BindMount mounts source at target with a bind mount, read-only if asked. target is made
// first: a file when source is a device node (a block volume), a directory otherwise (a
// mounted file system).
func (a *Attacher) BindMount(source, target string, readOnly bool) error {
	fi, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("nodevolume: bind-mount %s: %w", source, err)
	}
	if fi.Mode()&fs.ModeDevice != 0 {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY|unix.O_CLOEXEC, 0o640)
		if err != nil {
			return fmt.Errorf("nodevolume: make the file %s to bind the device %s at: %w", target, source, err)
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("nodevolume: make the directory %s to bind %s at: %w", target, source, err)
	}
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	if err := a.mounter.Mount(source, target, "", opts); err != nil {
		return fmt.Errorf("nodevolume: bind-mount %s at %s: %w", source, target, err)
	}
	return nil
}

// Unmount unmounts what is mounted at path (also a mount whose server is gone) and removes path,
// a directory or a file (a bound device node). A path that does not exist, or is not mounted,
// is removed or left alone without error.
func (a *Attacher) Unmount(path string) error {
	if err := mount.CleanupMountPoint(path, a.mounter, true); err == nil {
		return nil
	}
	// CleanupMountPoint handles directories; a bound device node is a file.
	if err := unix.Unmount(path, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("nodevolume: unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("nodevolume: remove %s: %w", path, err)
	}
	return nil
}

// The Linux file system freeze ioctls (linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120,
// int)); golang.org/x/sys/unix does not define them.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// Freeze freezes the file system mounted at mountPoint (FIFREEZE): the kernel writes every dirty
// block and its journal, and blocks new writes until thaw. A snapshot of the volume taken while
// the file system is frozen holds a clean file system. The caller must call thaw, which reports
// whether the thaw worked.
func Freeze(mountPoint string) (thaw func() error, err error) {
	f, err := os.Open(mountPoint)
	if err != nil {
		return nil, fmt.Errorf("nodevolume: freeze %s: %w", mountPoint, err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), ioctlFIFREEZE, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("nodevolume: freeze the file system at %s (FIFREEZE): %w", mountPoint, err)
	}
	return func() error {
		defer f.Close()
		if err := unix.IoctlSetInt(int(f.Fd()), ioctlFITHAW, 0); err != nil {
			return fmt.Errorf("nodevolume: thaw the file system at %s (FITHAW): %w", mountPoint, err)
		}
		return nil
	}, nil
}

// Thaw thaws the file system mounted at mountPoint (FITHAW), for one that a process that died
// froze: a frozen file system cannot be unmounted. A file system that is not frozen fails with
// EINVAL.
func Thaw(mountPoint string) error {
	f, err := os.Open(mountPoint)
	if err != nil {
		return fmt.Errorf("nodevolume: thaw %s: %w", mountPoint, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), ioctlFITHAW, 0); err != nil {
		return fmt.Errorf("nodevolume: thaw the file system at %s (FITHAW): %w", mountPoint, err)
	}
	return nil
}
