package nodetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FioResult is what the tests read of fio's JSON output.
type FioResult struct {
	Jobs []struct {
		Error int    `json:"error"`
		Read  FioDir `json:"read"`
		Write FioDir `json:"write"`
	} `json:"jobs"`
}

// FioDir is what the tests read of one direction of a fio job.
type FioDir struct {
	IOBytes int64 `json:"io_bytes"`
	// Lat is the requests' total latency (submission to completion); Max is the longest stall.
	Lat struct {
		Max float64 `json:"max"`
	} `json:"lat_ns"`
}

// Stall is the longest request of the job (read or write).
func (r FioResult) Stall() time.Duration {
	return time.Duration(max(r.Jobs[0].Write.Lat.Max, r.Jobs[0].Read.Lat.Max))
}

// StartFio runs fio on a file under dir for runtime: 4 KiB random direct writes, each block
// verified (crc32c) once 64 more are written and at the end, stopping at the first mismatch or
// I/O error (--verify_fatal, --continue_on_error=none). It returns a function that waits for fio,
// requires it to succeed with one job, and returns its result. Cleanup kills a fio still
// running.
func StartFio(t testing.TB, dir string, runtime time.Duration) func() FioResult {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command("fio", "--name=verify", "--filename="+filepath.Join(dir, "fio.dat"), "--size=32M", "--rw=randwrite", "--bs=4k",
		"--ioengine=psync", "--direct=1", "--verify=crc32c", "--verify_fatal=1", "--verify_backlog=64", "--verify_state_save=0", "--continue_on_error=none",
		"--time_based", fmt.Sprintf("--runtime=%ds", int(runtime.Seconds())), "--output-format=json")
	cmd.Stdout, cmd.Stderr, cmd.Dir = &out, &errOut, t.TempDir()
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-done:
			done <- err
		default:
			_ = cmd.Process.Kill()
		}
	})
	return func() FioResult {
		t.Helper()
		var err error
		select {
		case err = <-done:
			done <- err
		case <-time.After(runtime + 2*time.Minute):
			t.Fatal("fio did not finish")
		}
		require.NoError(t, err, "fio: %s\n%s", errOut.String(), out.String())
		var res FioResult
		require.NoError(t, json.Unmarshal(out.Bytes(), &res), "fio output: %s", out.String())
		require.Len(t, res.Jobs, 1)
		return res
	}
}

// MountSource returns the device (the source) mounted at the mount point dir.
func MountSource(t testing.TB, dir string) string {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, line := range strings.Split(string(mi), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != dir {
			continue
		}
		for i := 5; i+2 < len(f); i++ {
			if f[i] == "-" {
				return f[i+2]
			}
		}
	}
	t.Fatalf("nothing is mounted at %s", dir)
	return ""
}

// KernelLog is a mark in the kernel's log (dmesg).
type KernelLog struct{ last string }

// MarkKernelLog marks the end of the kernel's log now.
func MarkKernelLog(t testing.TB) KernelLog {
	t.Helper()
	lines := kernelLogLines(t)
	return KernelLog{last: lines[len(lines)-1]}
}

// RequireNoDeviceErrors fails the test if the kernel logged, since the mark, a line naming one
// of devices (e.g. "/dev/loop7") that speaks of an error or a failure: an I/O error of the
// block layer, a buffer I/O error, an EXT4-fs or XFS error. Lines are told apart by their time
// stamps; when the mark's line is gone (the ring buffer wrapped), every line counts.
func (k KernelLog) RequireNoDeviceErrors(t testing.TB, devices ...string) {
	t.Helper()
	lines := kernelLogLines(t)
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i] == k.last {
			lines = lines[i+1:]
			break
		}
	}
	for _, dev := range devices {
		re := regexp.MustCompile(`\b` + regexp.QuoteMeta(filepath.Base(dev)) + `\b`)
		for _, line := range lines {
			lower := strings.ToLower(line)
			if re.MatchString(line) && (strings.Contains(lower, "error") || strings.Contains(lower, "fail")) {
				t.Errorf("the kernel logged for %s: %s", dev, line)
			}
		}
	}
}

func kernelLogLines(t testing.TB) []string {
	t.Helper()
	out, err := exec.Command("dmesg").Output()
	require.NoError(t, err, "dmesg")
	return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
}

// PgbenchBalanced is the SQL that is true when pgbench's balance invariant holds: every delta
// went to an account, a branch and a teller.
const PgbenchBalanced = `SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
	AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
	AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)`
