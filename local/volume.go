package local

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

// fsType is the file system of image volumes. Clones of one image share its UUID, which ext4
// (unlike xfs) mounts without complaint.
const fsType = "ext4"

// newMounter returns a mounter for one call: a mount-utils Mounter caches what it detects
// without a lock, so one shared by concurrent operations races. It runs mount and mkfs without
// systemd scopes: the daemon serves the volumes itself, nothing needs to outlive it.
func newMounter() *mount.SafeFormatAndMount {
	return &mount.SafeFormatAndMount{Interface: mount.NewWithoutSystemd(""), Exec: utilexec.New()}
}

// attach exports a pool volume as a block device (export id) and mounts its file system at mnt,
// making the file system first when format is set (a new build volume). On failure nothing is
// left exported or mounted.
func (d *Daemon) attach(id string, vol blockstore.VolumeID, mnt string, format bool) (export.Device, error) {
	v, err := d.pool.Volume(vol)
	if err != nil {
		return nil, fmt.Errorf("local: volume %d for %s: %w", vol, id, err)
	}
	// An export of this id a previous daemon left is dead; recover cleaned it, but a failed
	// detach of this daemon may have left one too.
	if err := d.exp.Cleanup(id); err != nil {
		return nil, fmt.Errorf("local: clear the old export %s: %w", id, err)
	}
	dev, err := d.exp.Export(id, v)
	if err != nil {
		return nil, fmt.Errorf("local: export volume %d as a block device (%s): %w", vol, id, err)
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, errors.Join(fmt.Errorf("local: make mount point: %w", err), dev.Close())
	}
	start := time.Now()
	if format {
		err = newMounter().FormatAndMount(dev.Path(), mnt, fsType, nil)
	} else {
		err = newMounter().Mount(dev.Path(), mnt, fsType, nil)
	}
	if err != nil {
		what := "mount"
		if format {
			what = "make a file system on and mount"
		}
		err = fmt.Errorf("local: %s %s (volume %d) at %s: %w", what, dev.Path(), vol, mnt, err)
		return nil, errors.Join(err, dev.Close(), removeDir(mnt))
	}
	d.log.Debug("volume attached", "export", id, "device", dev.Path(), "mountPoint", mnt, "format", format, "took", time.Since(start))
	return dev, nil
}

// detach unmounts the file system at mnt (if mounted), removes the mount point and tears the
// export down (dev, or what a failed detach of export id left when dev is nil).
func (d *Daemon) detach(id string, dev export.Device, mnt string) error {
	if err := mount.CleanupMountPoint(mnt, newMounter(), true); err != nil {
		return fmt.Errorf("local: unmount %s: %w", mnt, err)
	}
	if dev != nil {
		if err := dev.Close(); err != nil {
			return fmt.Errorf("local: tear down the export %s (%s): %w", id, dev.Path(), err)
		}
		return nil
	}
	if err := d.exp.Cleanup(id); err != nil {
		return fmt.Errorf("local: tear down the export %s: %w", id, err)
	}
	return nil
}

func removeDir(dir string) error {
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("local: remove %s: %w", dir, err)
	}
	return nil
}

// The Linux file system freeze ioctls (linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120,
// int)); golang.org/x/sys/unix does not define them.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// freeze freezes the file system mounted at mnt (FIFREEZE): the kernel writes every dirty block
// and its journal, and blocks new writes until thaw. A snapshot of the volume taken while the
// file system is frozen holds a clean file system. The caller must call thaw, which reports
// whether the thaw worked.
func freeze(mnt string) (thaw func() error, err error) {
	f, err := os.Open(mnt)
	if err != nil {
		return nil, fmt.Errorf("local: freeze %s: %w", mnt, err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), ioctlFIFREEZE, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("local: freeze the file system at %s (FIFREEZE): %w", mnt, err)
	}
	return func() error {
		defer f.Close()
		if err := unix.IoctlSetInt(int(f.Fd()), ioctlFITHAW, 0); err != nil {
			return fmt.Errorf("local: thaw the file system at %s (FITHAW): %w", mnt, err)
		}
		return nil
	}, nil
}
