package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/internal/atomicfile"
)

// User is the OS user a server and its tools run as.
type User struct {
	Name     string
	UID, GID int
	Home     string
	// switchTo is set when the process runs as root and the user is another one: commands then
	// run with the user's credentials.
	switchTo bool
}

// ResolveUser returns the user a server runs as. As root, that is the user called name (or
// fallback when name is empty), which must exist: database servers refuse to run as root. As any
// other user, it is the current user, whatever name says (a container that runs the builder as
// the database's user).
func ResolveUser(name, fallback string) (*User, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("engine: current user: %w", err)
		}
		return toUser(u, false)
	}
	if name == "" {
		name = fallback
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("engine: the server runs as OS user %q (servers refuse root): %w", name, err)
	}
	return toUser(u, u.Uid != "0")
}

func toUser(u *user.User, switchTo bool) (*User, error) {
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("engine: user %s: %w", u.Username, err)
	}
	return &User{Name: u.Username, UID: uid, GID: gid, Home: u.HomeDir, switchTo: switchTo}, nil
}

// Command returns a command that runs as u, in directory dir ("" = "/"), with a small fixed
// environment (PATH, HOME, LANG=C.UTF-8, TZ=UTC) plus env, in its own process group so that
// signals to the caller's group do not reach it.
func (u *User) Command(ctx context.Context, dir, name string, args []string, env ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	if dir == "" {
		dir = "/"
	}
	cmd.Dir = dir
	home := u.Home
	if home == "" || !isDir(home) {
		home = "/"
	}
	cmd.Env = append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home, "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TZ=UTC", "USER=" + u.Name, "LOGNAME=" + u.Name,
	}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if u.switchTo {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID)}
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Chown gives path and everything under it to u (a no-op unless running as root).
func (u *User) Chown(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.UID, u.GID)
	})
}

// MkdirAll makes dir (and its parents) with mode perm and gives dir itself to u.
func (u *User) MkdirAll(dir string, perm os.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	if err := os.Chmod(dir, perm); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return nil
	}
	return os.Chown(dir, u.UID, u.GID)
}

// WriteFile replaces the file at path with data, mode perm, atomically (internal/atomicfile: a
// crash leaves the old file or the new one), and gives it to u when running as root.
func (u *User) WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := atomicfile.Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := f.Chown(u.UID, u.GID); err != nil {
			return err
		}
	}
	return f.Commit()
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// WatchPID returns the process pid, which this process did not start (it is not a child, so
// it cannot be waited for), and a channel closed once it has exited: a pidfd (Linux 5.3)
// becomes readable then. The process is reached through its pidfd too (os.FindProcess uses
// one), so that a signal never reaches another process that reused the pid. It fails with an
// error wrapping ErrNotRunning when the process is gone.
func WatchPID(pid int) (*os.Process, <-chan struct{}, error) {
	if pid <= 0 {
		return nil, nil, fmt.Errorf("%w: pid %d", ErrNotRunning, pid)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, nil, fmt.Errorf("%w: process %d is gone", ErrNotRunning, pid)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("engine: pidfd of process %d: %w", pid, err)
	}
	unix.CloseOnExec(fd)
	proc, err := os.FindProcess(pid)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("engine: process %d: %w", pid, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
	return proc, exited, nil
}

// CommandLine returns the arguments of process pid (its /proc/<pid>/cmdline), nil when it is
// gone.
func CommandLine(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// Run runs cmd to completion. Its standard output and error are kept (the last 64 KiB) and
// their last lines are part of the error when it fails, which names the command.
func Run(cmd *exec.Cmd) (string, error) {
	var out tailBuffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &out
	}
	err := cmd.Run()
	if err != nil {
		tail := lastLines(out.String(), 20)
		if tail != "" {
			err = fmt.Errorf("%s: %w\n%s", filepath.Base(cmd.Path), err, tail)
		} else {
			err = fmt.Errorf("%s: %w", filepath.Base(cmd.Path), err)
		}
	}
	return out.String(), err
}

// tailBuffer keeps the last 64 KiB written to it; safe for concurrent writers.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailBufferMax = 64 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailBufferMax {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailBufferMax:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// TailFile returns the last n lines of the file at path ("" if it cannot be read). It reads at
// most the file's last 256 KiB.
func TailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 256 << 10
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max64(0, st.Size()-max)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return ""
	}
	return lastLines(string(b), n)
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// lastLines returns the last n lines of s, without a trailing newline.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	if s == "" || n <= 0 {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreePort returns a TCP port that nothing listens on at address (e.g. "127.0.0.1") right now.
// The kernel picks it from the ephemeral range; the caller should bind it soon.
func FreePort(address string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(address, "0"))
	if err != nil {
		return 0, fmt.Errorf("engine: free port on %s: %w", address, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ProgressReader counts the bytes read through it and reports the count to report at most every
// interval (and, through Finish, once at the end).
type ProgressReader struct {
	R        io.Reader
	Report   func(done int64)
	Interval time.Duration // default 200ms

	n    int64
	last time.Time
}

func (p *ProgressReader) Read(b []byte) (int, error) {
	n, err := p.R.Read(b)
	p.n += int64(n)
	if p.Report != nil {
		iv := p.Interval
		if iv == 0 {
			iv = 200 * time.Millisecond
		}
		if now := time.Now(); now.Sub(p.last) >= iv {
			p.last = now
			p.Report(p.n)
		}
	}
	return n, err
}

// Finish reports the final count.
func (p *ProgressReader) Finish() {
	if p.Report != nil {
		p.Report(p.n)
	}
}

// Sniff returns up to n bytes from the start of the file at path.
func Sniff(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	m, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return bytes.Clone(b[:m]), nil
}
