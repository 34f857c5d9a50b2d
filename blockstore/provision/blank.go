package provision

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
)

// probeBytes is how much Check reads at each end of a device: the first and the last MiB, where
// file systems, partition tables (GPT keeps a copy at the end), RAID and LVM metadata and the
// pool's own superblocks and journal start live.
const probeBytes = 1 << 20

// Check reports whether path, a block device or a regular file, is blank: whether a pool can be
// made on it without destroying anything. It returns nil for a blank device; a *NotBlankError
// (ErrNotBlank) that says what the device holds and who uses it; or an error wrapping ErrProbe
// when it cannot tell, a read error included (a device that fails reads is never blank).
//
// A device is blank when
//   - its first and last MiB read without error (O_DIRECT: not from the page cache);
//   - nothing there is a Dataimage pool's, valid or damaged (blockstore.Traces);
//   - blkid -p (util-linux's low-level probe, which knows the signatures of file systems,
//     partition tables, RAID, LVM, crypto and swap) finds no signature;
//   - it is not in use: not mounted (itself or a partition of it), not held by device-mapper or
//     md (sysfs holders), not claimed by anyone (an O_EXCL open succeeds), not open in another
//     process, not the backing file of a loop device, not swap.
//
// All zeros is not required (a device wiped with wipefs keeps its other bytes), and the middle of
// the device is not read. For a regular file the checks of use are skipped.
func Check(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProbe, err)
	}
	device := fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
	if !device && !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is neither a block device nor a regular file", ErrProbe, path)
	}
	nb := &NotBlankError{Path: path}
	f, inUse, err := openProbe(path, device)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProbe, err)
	}
	defer f.Close()
	nb.InUse = append(nb.InUse, inUse...)
	head, err := readEnds(f, path, device)
	if err != nil {
		return err
	}
	traces, err := blockstore.Traces(bytes.NewReader(head))
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrProbe, path, err)
	}
	nb.Found = append(nb.Found, traces...)
	sigs, err := blkid(path)
	if err != nil {
		return err
	}
	nb.Found = append(nb.Found, sigs...)
	if device {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrProbe, path, err)
		}
		uses, err := usesOf(path, st.Rdev)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrProbe, path, err)
		}
		nb.InUse = append(nb.InUse, uses...)
	}
	if len(nb.Found) == 0 && len(nb.InUse) == 0 {
		return nil
	}
	return nb
}

// openProbe opens path for the probe's reads: a device with O_DIRECT (a read error must not be
// hidden by the page cache) and O_EXCL, which fails with EBUSY while anyone claims the device (a
// mounted file system, device-mapper, md, swap, an exclusive opener), and keeps others from
// claiming it during the probe. A claimed device is opened again without O_EXCL, so that the
// probe still says what it holds; the claim is returned as a use.
func openProbe(path string, device bool) (*os.File, []string, error) {
	if !device {
		f, err := os.Open(path)
		return f, nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT|unix.O_EXCL, 0)
	if !errors.Is(err, unix.EBUSY) {
		return f, nil, err
	}
	f, err = os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	return f, []string{"claimed by another user (an exclusive open fails with EBUSY: a mounted file system, device-mapper, md, swap or another exclusive opener)"}, err
}

// readEnds reads the first and the last probeBytes of f (all of it when smaller) and returns
// the first.
func readEnds(f *os.File, path string, device bool) ([]byte, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: size: %w", ErrProbe, path, err)
	}
	buf := alignedBuf(probeBytes)
	read := func(off int64) ([]byte, error) {
		n := min(int64(len(buf)), size-off)
		// O_DIRECT wants whole logical blocks: read a whole buffer, and take what the device has.
		got, err := f.ReadAt(buf, off)
		if int64(got) >= n && (err == nil || errors.Is(err, io.EOF)) {
			return buf[:n], nil
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %s: read %d bytes at byte %d: %w", ErrProbe, path, n, off, err)
	}
	head, err := read(0)
	if err != nil {
		return nil, err
	}
	head = bytes.Clone(head)
	if tail := size - probeBytes; tail > 0 {
		if device {
			tail &^= 4095 // O_DIRECT: aligned
		}
		if _, err := read(tail); err != nil {
			return nil, err
		}
	}
	return head, nil
}

func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(4096-uintptr(unsafe.Pointer(&b[0]))%4096) % 4096
	return b[off : off+n]
}

// blkidPaths are where blkid is looked for besides PATH (sbin is not always on it).
var blkidPaths = []string{"/usr/sbin/blkid", "/sbin/blkid"}

// blkid returns the signatures blkid -p finds on path, described.
func blkid(path string) ([]string, error) {
	bin, err := exec.LookPath("blkid")
	if err != nil {
		for _, p := range blkidPaths {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: blkid (util-linux) is needed to tell whether it is blank: %w", ErrProbe, path, err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "-p", "-o", "export", path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return describe(parseExport(stdout.String())), nil
	case errors.As(err, &exit) && exit.ExitCode() == 2: // nothing found
		return nil, nil
	case errors.As(err, &exit) && exit.ExitCode() == 8: // ambivalent: more than one signature
		return []string{"more than one signature (blkid -p: " + strings.TrimSpace(stderr.String()) + "; wipefs " + path + " lists them)"}, nil
	default:
		return nil, fmt.Errorf("%w: %s: blkid -p: %w: %s", ErrProbe, path, err, strings.TrimSpace(stderr.String()))
	}
}

// parseExport parses blkid's export format (KEY=value lines).
func parseExport(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// describe says in words what blkid's tags name.
func describe(tags map[string]string) []string {
	var out []string
	ids := func(keys ...string) string {
		var s []string
		for _, k := range keys {
			if v := tags[k]; v != "" {
				s = append(s, k+"="+v)
			}
		}
		if len(s) == 0 {
			return ""
		}
		return " (" + strings.Join(s, " ") + ")"
	}
	if t := tags["TYPE"]; t != "" {
		what := "signature"
		switch tags["USAGE"] {
		case "filesystem":
			what = "file system"
		case "raid":
			what = "RAID or volume manager member"
		case "crypto":
			what = "encrypted volume"
		case "other":
			what = "signature" // swap, bcache, ...
		}
		out = append(out, article(t)+" "+t+" "+what+ids("UUID", "LABEL"))
	}
	if t := tags["PTTYPE"]; t != "" {
		out = append(out, article(t)+" "+t+" partition table"+ids("PTUUID"))
	}
	if len(out) > 0 {
		return out
	}
	// DEVNAME names the device and PART_ENTRY_* its entry in its parent's partition table: they
	// say nothing of what the device holds. Anything else is a signature.
	var kv []string
	for k, v := range tags {
		if k != "DEVNAME" && !strings.HasPrefix(k, "PART_ENTRY_") {
			kv = append(kv, k+"="+v)
		}
	}
	if len(kv) > 0 {
		sort.Strings(kv)
		out = append(out, "a signature blkid reports as "+strings.Join(kv, " "))
	}
	return out
}

// article is the indefinite article before word (as it is usually read).
func article(word string) string {
	if word != "" && strings.ContainsRune("aeiouAEIOU", rune(word[0])) {
		return "an"
	}
	return "a"
}

// usesOf lists who uses the block device path (device number rdev): mounts of it or of its
// partitions, holders, other processes that have it open, loop devices backed by it, swap.
func usesOf(path string, rdev uint64) ([]string, error) {
	var out []string
	devs := map[uint64]string{rdev: ""} // the device and its partitions, by number
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev))
	ents, err := os.ReadDir(sys)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(sys, e.Name(), "partition")); err != nil {
			continue
		}
		if n, ok := readDevNumber(filepath.Join(sys, e.Name(), "dev")); ok {
			devs[n] = e.Name()
		}
	}
	of := func(part string) string {
		if part == "" {
			return ""
		}
		return "partition " + part + " "
	}
	mounts, err := mountsOf(devs)
	if err != nil {
		return nil, err
	}
	out = append(out, mounts...)
	for n, part := range devs {
		dir := fmt.Sprintf("/sys/dev/block/%d:%d/holders", unix.Major(n), unix.Minor(n))
		hs, _ := os.ReadDir(dir)
		for _, h := range hs {
			name := h.Name()
			if b, err := os.ReadFile(filepath.Join(dir, name, "dm", "name")); err == nil {
				name += " (device-mapper " + strings.TrimSpace(string(b)) + ")"
			}
			out = append(out, of(part)+"held by "+name)
		}
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{real: true}
	for _, part := range devs {
		if part != "" {
			names["/dev/"+part] = true
		}
	}
	out = append(out, openers(names)...)
	// Loop devices report their backing file by the path it was opened at, and swap by the path
	// swapon was given: compared as names (a stat of a loop's backing file could block on a
	// FUSE mount whose server is gone).
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		if backing := strings.TrimSpace(string(b)); names[backing] {
			out = append(out, "the backing file of loop device /dev/"+filepath.Base(filepath.Dir(filepath.Dir(l))))
		}
	}
	if b, err := os.ReadFile("/proc/swaps"); err == nil {
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 0 && names[f[0]] {
				out = append(out, "swap ("+f[0]+")")
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

func readDevNumber(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, false
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), true
}

// mountsOf lists the mounts (in this mount namespace) of the devices devs, by number.
func mountsOf(devs map[uint64]string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		if part, ok := devs[unix.Mkdev(uint32(ma), uint32(mi))]; ok {
			what := "mounted at " + f[4]
			if part != "" {
				what = "partition " + part + " " + what
			}
			out = append(out, what)
		}
	}
	return out, nil
}

// openers lists the other processes that have one of the device nodes names open (their
// descriptors' links name the path they were opened at; reading a link does not touch what it
// names).
func openers(names map[string]bool) []string {
	procs, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	var out []string
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil || p.Name() == self {
			continue
		}
		dir := filepath.Join("/proc", p.Name(), "fd")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && names[target] {
				comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				out = append(out, fmt.Sprintf("open in process %s (%s)", p.Name(), strings.TrimSpace(string(comm))))
				break
			}
		}
	}
	return out
}
