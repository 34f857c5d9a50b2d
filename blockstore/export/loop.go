package export

// Loop devices through ioctls (golang.org/x/sys/unix) rather than losetup: LOOP_CONFIGURE sets
// the backing file, direct I/O and the logical block size in one step (losetup issues several
// ioctls, and its --find races with other losetup runs the same way LOOP_CTL_GET_FREE does,
// which we retry on EBUSY), errors come back as errnos instead of text, and nothing depends on
// the util-linux version of the node.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loopAttach attaches a free loop device to the file f in direct I/O mode with logical block
// size bs and returns its number. It reports whether direct I/O is in effect.
func loopAttach(f *os.File, bs int) (n int, dio bool, err error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, err
	}
	defer ctl.Close()
	cfg := unix.LoopConfig{Fd: uint32(f.Fd()), Size: uint32(bs)}
	cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], f.Name())
	for try := 0; ; try++ {
		n, err = unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return -1, false, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		lf, err := openLoop(n, os.O_RDWR)
		if err != nil {
			return -1, false, err
		}
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		lf.Close()
		if err == nil {
			break
		}
		// Another process took the device between GET_FREE and CONFIGURE.
		if errors.Is(err, unix.EBUSY) && try < 20 {
			continue
		}
		return -1, false, fmt.Errorf("LOOP_CONFIGURE /dev/loop%d: %w", n, err)
	}
	return n, readSysInt(n, "loop/dio") == 1, nil
}

// openLoop opens /dev/loopN, waiting briefly for devtmpfs or udev to create the node.
func openLoop(n int, flag int) (*os.File, error) {
	path := loopPath(n)
	for i := 0; ; i++ {
		f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
		if err == nil || !errors.Is(err, os.ErrNotExist) || i == 50 {
			return f, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func loopPath(n int) string { return "/dev/loop" + strconv.Itoa(n) }

// loopDetach detaches loop device n unless something holds it exclusively (a mounted file
// system), in which case it fails with ErrBusy and changes nothing. It waits until the kernel has
// let go of the backing file.
func loopDetach(n int) error {
	if loopBacking(n) == "" {
		return nil
	}
	f, err := openLoopExcl(n)
	if err != nil {
		return err
	}
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	f.Close() // the kernel tears down at the last close
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("LOOP_CLR_FD: %w", err)
	}
	// With other (non-exclusive) openers the kernel defers the detach to their last close.
	for i := 0; loopBacking(n) != ""; i++ {
		if i == 200 {
			return fmt.Errorf("%w: %s still open by another process; it detaches at the last close", ErrBusy, loopPath(n))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// openLoopExcl opens loop device n exclusively: ErrBusy while something holds it exclusively
// (a mounted file system).
func openLoopExcl(n int) (*os.File, error) {
	f, err := openLoop(n, os.O_RDWR|unix.O_EXCL)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("%w: %s is held (mounted?)", ErrBusy, loopPath(n))
	}
	return f, err
}

// loopInUse fails with ErrBusy while something holds loop device n exclusively; a device that
// is gone is not in use.
func loopInUse(n int) error {
	f, err := openLoopExcl(n)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// loopSetCapacity makes loop device n re-read its backing file's size.
func loopSetCapacity(n int) error {
	f, err := openLoop(n, os.O_RDONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("LOOP_SET_CAPACITY: %w", err)
	}
	return nil
}

// loopSize returns the size in bytes of loop device n as the block layer sees it.
func loopSize(n int) int64 { return readSysInt(n, "size") * 512 }

// loopBacking returns the backing file of loop device n, or "" when none is attached.
func loopBacking(n int) string {
	b, err := os.ReadFile(filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "loop/backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
}

const sysBlock = "/sys/block"

func readSysInt(n int, name string) int64 {
	b, err := os.ReadFile(filepath.Join(sysBlock, "loop"+strconv.Itoa(n), name))
	if err != nil {
		return -1
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// loopsBacking returns the loop devices (by number) whose backing file lies under dir, with
// their backing files.
func loopsBacking(dir string) (map[int]string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, e := range ents {
		num, ok := strings.CutPrefix(e.Name(), "loop")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil {
			continue
		}
		if b := loopBacking(n); b != "" && under(b, dir) {
			out[n] = b
		}
	}
	return out, nil
}

// under reports whether path lies strictly under dir.
func under(path, dir string) bool {
	return strings.HasPrefix(path, dir+"/") && len(path) > len(dir)+1
}

// Loop records. A loop device names its backing file by the path the kernel finds from the
// file's mount, which is the mount in the namespace of the process that attached the device.
// When that namespace goes (the container of a data plane that restarted, while the mount
// lives on in the host's namespace and the next container's), its copy of the mount is
// detached and the device's backing file reads "/disk": no longer under StateDir. So an
// export records its loop device in StateDir/.ID.loop (a name no export id has): the device's
// number and its diskseq, a number the kernel gives each attach of a block device and never
// gives again within a boot. A device whose diskseq is still the recorded one is the export's,
// whatever path it reports. StateDir is a tmpfs (a reboot ends every loop device, and the
// records with them), so the records are replaced atomically but not synced.

// loopRecordPath is the path of export id's loop record.
func (e *fuseLoop) loopRecordPath(id string) string {
	return filepath.Join(e.opts.StateDir, "."+id+".loop")
}

// recordLoop records loop device n as export id's.
func (e *fuseLoop) recordLoop(id string, n int) error {
	seq := readSysInt(n, "diskseq")
	if seq <= 0 {
		return fmt.Errorf("record %s: no diskseq in %s", loopPath(n), filepath.Join(sysBlock, "loop"+strconv.Itoa(n)))
	}
	path := e.loopRecordPath(id)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", n, seq), 0o600); err != nil {
		return fmt.Errorf("record %s: %w", loopPath(n), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record %s: %w", loopPath(n), err)
	}
	return nil
}

// dropLoopRecord removes export id's loop record; one that is not there is not an error.
func (e *fuseLoop) dropLoopRecord(id string) error {
	err := os.Remove(e.loopRecordPath(id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// recordedLoops returns, by device number, the export ids whose records name a loop device
// that is still the attach they recorded.
func (e *fuseLoop) recordedLoops() (map[int]string, error) {
	ents, err := os.ReadDir(e.opts.StateDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	out := map[int]string{}
	for _, de := range ents {
		name := de.Name()
		id, ok := strings.CutSuffix(strings.TrimPrefix(name, "."), ".loop")
		if !ok || !strings.HasPrefix(name, ".") || !ValidID(id) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(e.opts.StateDir, name))
		if err != nil {
			continue // removed meanwhile
		}
		var n int
		var seq int64
		if _, err := fmt.Sscanf(string(b), "%d %d", &n, &seq); err != nil || n < 0 {
			e.log.Warn("unreadable loop record", "record", name, "content", string(b))
			continue
		}
		if loopBacking(n) != "" && readSysInt(n, "diskseq") == seq {
			out[n] = id
		}
	}
	return out, nil
}
