package export

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mount is one line of /proc/self/mountinfo, the fields we use.
type mount struct {
	Point  string // mount point, unescaped
	FSType string // e.g. "fuse.dataimage"
	Source string // e.g. "dataimage:pvc-1"
}

// parseMountinfo parses /proc/<pid>/mountinfo (proc(5)); lines it cannot parse are skipped.
func parseMountinfo(r io.Reader) ([]mount, error) {
	var out []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 5 || sep < 0 || sep+2 >= len(f) {
			continue
		}
		out = append(out, mount{Point: unescapeOctal(f[4]), FSType: f[sep+1], Source: unescapeOctal(f[sep+2])})
	}
	return out, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escapes of space, tab, newline and backslash.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (int(s[i+1]-'0')<<6 | int(s[i+2]-'0')<<3 | int(s[i+3]-'0'))
			if v < 256 {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// mountsUnder returns the mounts at or under dir.
func mountsUnder(dir string) ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	all, err := parseMountinfo(f)
	if err != nil {
		return nil, err
	}
	var out []mount
	for _, m := range all {
		if m.Point == dir || under(m.Point, dir) {
			out = append(out, m)
		}
	}
	return out, nil
}

func isMounted(dir string) (bool, error) {
	ms, err := mountsUnder(dir)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.Point == dir {
			return true, nil
		}
	}
	return false, nil
}

// unmount unmounts dir, retrying while it is busy (the kernel may still be releasing files), and
// detaches it lazily as a last resort. A dead FUSE mount (its server gone: ENOTCONN on access)
// unmounts normally. Not mounted is not an error.
func unmount(dir string) (lazy bool, err error) {
	delay := 5 * time.Millisecond
	for try := 0; ; try++ {
		err = unix.Unmount(dir, 0)
		if err == nil {
			break
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			if m, merr := isMounted(dir); merr == nil && !m {
				return false, nil
			}
		}
		if try == 6 {
			if derr := unix.Unmount(dir, unix.MNT_DETACH); derr != nil {
				return false, fmt.Errorf("umount %s: %w; lazy umount: %w", dir, err, derr)
			}
			return true, nil
		}
		time.Sleep(delay)
		delay *= 2
	}
	return false, nil
}
