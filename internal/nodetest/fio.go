package nodetest

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// FIO is a fio job that writes and verifies (crc32c, fatal) 4 KiB random blocks at queue depth
// 32 on a block device, for a time: what the restart tests of the export run while they kill its
// server. It runs in a directory of its own (fio leaves its verify state files in the current
// directory).
type FIO struct {
	cmd    *exec.Cmd
	out    string
	length time.Duration // how long it runs
	done   chan struct{} // closed when fio exited, with err set
	err    error
}

// FIOResult is what a FIO job did: I/Os of each kind and the longest completion of each (the
// longest stall a request saw).
type FIOResult struct {
	Writes, Reads     int64
	MaxWrite, MaxRead time.Duration
}

// MaxStall is the longest completion of any request.
func (r FIOResult) MaxStall() time.Duration { return max(r.MaxWrite, r.MaxRead) }

// StartFIOVerify starts a FIO job on device for length (whole seconds) over its first size
// bytes. Cleanup kills it if it still runs.
func StartFIOVerify(t testing.TB, device string, size int64, length time.Duration) *FIO {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "fio.json")
	cmd := exec.Command("fio", "--name=verify", "--filename="+device, "--ioengine=libaio", "--direct=1",
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size="+strconv.FormatInt(size, 10),
		"--verify=crc32c", "--verify_fatal=1", "--verify_backlog=4096",
		"--time_based", "--runtime="+strconv.Itoa(int(length.Seconds())),
		"--output-format=json", "--output="+out)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	f := &FIO{cmd: cmd, out: out, done: make(chan struct{}), length: length}
	go func() {
		f.err = cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		if f.Running() {
			cmd.Process.Kill()
			<-f.done
		}
	})
	t.Logf("fio: %s", strings.Join(cmd.Args, " "))
	return f
}

// Running reports whether fio still runs.
func (f *FIO) Running() bool {
	select {
	case <-f.done:
		return false
	default:
		return true
	}
}

// Wait waits for fio to end, at most a minute past its runtime (requests nobody answers would
// hang it forever), and requires that it ended without an error: every block it wrote read back
// as written.
func (f *FIO) Wait(t testing.TB) FIOResult {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(f.length + time.Minute):
		f.cmd.Process.Kill()
		t.Fatalf("fio hangs %v past its runtime: requests left unanswered", time.Minute)
	}
	b, rerr := os.ReadFile(f.out)
	require.NoError(t, f.err, "fio failed: %s", b)
	require.NoError(t, rerr)
	var o struct {
		Jobs []struct {
			Error       int `json:"error"`
			Read, Write struct {
				TotalIOs int64 `json:"total_ios"`
				ClatNS   struct {
					Max float64 `json:"max"`
				} `json:"clat_ns"`
			}
		} `json:"jobs"`
	}
	i := strings.Index(string(b), "{")
	require.GreaterOrEqual(t, i, 0, "fio output: %s", b)
	require.NoError(t, json.Unmarshal(b[i:], &o))
	require.Len(t, o.Jobs, 1)
	require.Zero(t, o.Jobs[0].Error, "fio job error")
	j := o.Jobs[0]
	return FIOResult{Writes: j.Write.TotalIOs, Reads: j.Read.TotalIOs,
		MaxWrite: time.Duration(j.Write.ClatNS.Max), MaxRead: time.Duration(j.Read.ClatNS.Max)}
}

// Kmsg reads the kernel log from the moment it was opened.
type Kmsg struct{ fd int }

// OpenKmsg opens the kernel log at its end; cleanup closes it.
func OpenKmsg(t testing.TB) *Kmsg {
	t.Helper()
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	_, err = unix.Seek(fd, 0, 2) // SEEK_END: only what comes from now on
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return &Kmsg{fd: fd}
}

// Read returns the messages logged since the last Read.
func (k *Kmsg) Read(t testing.TB) []string {
	t.Helper()
	var out []string
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(k.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		if errors.Is(err, unix.EPIPE) { // overwritten before read: go on from the next
			continue
		}
		require.NoError(t, err)
		rec := string(buf[:n])
		if _, msg, ok := strings.Cut(rec, ";"); ok {
			out = append(out, strings.TrimSpace(strings.SplitN(msg, "\n", 2)[0]))
		}
	}
}

// RequireNoErrorsAbout fails the test for every message since the last Read that names the
// block device (e.g. "/dev/loop3") and reports an error or an I/O problem.
func (k *Kmsg) RequireNoErrorsAbout(t testing.TB, device string) {
	t.Helper()
	dev := regexp.MustCompile(`\b` + regexp.QuoteMeta(filepath.Base(device)) + `\b`)
	for _, line := range k.Read(t) {
		if dev.MatchString(line) && (strings.Contains(line, "error") || strings.Contains(line, "I/O")) {
			t.Errorf("kernel: %s", line)
		}
	}
}
