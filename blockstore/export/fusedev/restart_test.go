package fusedev_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/blockstore/export/holder"
)

// maxStall is the longest a block request may wait across a restart of the server (issue 12).
const maxStall = 2 * time.Second

// TestRestartAfterSIGKILL: fio writes and verifies (crc32c) at queue depth 32 through a loop device
// on the file of a server child while the child is SIGKILLed at random moments and a new child
// adopts the connection from the holder each time. fio exits 0 (every block it wrote reads back
// as written), the kernel logs no I/O error for the device, and no request waits longer than
// maxStall (fio's largest completion latency).
func TestRestartAfterSIGKILL(t *testing.T) {
	needRoot(t, "fio", "losetup")
	rig := newRestartRig(t, 256*mib)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)

	const kills = 12
	f := rig.startFIO(t, 10*time.Second+kills*1500*time.Millisecond)
	var restarts []time.Duration
	for i := range kills {
		time.Sleep(time.Duration(200+rng.IntN(1000)) * time.Millisecond)
		require.True(t, f.running(), "fio ended early")
		rig.cur.kill(t)
		rig.cur = startChild(t, rig.cfg)
		require.Equal(t, "adopted", rig.cur.how, "restart %d", i)
		restarts = append(restarts, rig.cur.took)
	}
	res := f.wait(t)
	t.Logf("%d kills; restarts took %v; fio: %d writes, %d verifying reads, longest completion %v (write) %v (read)",
		kills, restarts, res.writes, res.reads, res.maxWrite, res.maxRead)
	rig.requireNoKernelErrors(t)
	require.Positive(t, res.reads, "fio verified")
	assert.LessOrEqual(t, max(res.maxWrite, res.maxRead), maxStall, "longest I/O stall")
}

// TestGracefulHandover: the same under fio, but the server stops (Server.Stop: it reads no more
// requests, answers those it has, flushes) and a new one adopts, as an upgrade does. No error;
// the stall is reported and bounded.
func TestGracefulHandover(t *testing.T) {
	needRoot(t, "fio", "losetup")
	rig := newRestartRig(t, 256*mib)
	const handovers = 5
	f := rig.startFIO(t, 6*time.Second+handovers*time.Second)
	var took []time.Duration
	for range handovers {
		time.Sleep(time.Second)
		start := time.Now()
		rig.cur.stop(t)
		rig.cur = startChild(t, rig.cfg)
		require.Equal(t, "adopted", rig.cur.how)
		took = append(took, time.Since(start))
	}
	res := f.wait(t)
	t.Logf("%d handovers took %v; fio: %d writes, %d verifying reads, longest completion %v (write) %v (read)",
		handovers, took, res.writes, res.reads, res.maxWrite, res.maxRead)
	rig.requireNoKernelErrors(t)
	assert.LessOrEqual(t, max(res.maxWrite, res.maxRead), maxStall, "longest I/O stall")
}

// restartRig is a holder in this process, a server child, and a loop device on its file.
type restartRig struct {
	cfg  childConfig
	cur  *child
	loop string
	kmsg *kmsg
}

func newRestartRig(t *testing.T, size int64) *restartRig {
	t.Helper()
	tmp := t.TempDir()
	sock := filepath.Join(tmp, "holder.sock")
	l, err := holder.Listen(sock)
	require.NoError(t, err)
	h := holder.New(nil)
	served := make(chan error, 1)
	go func() { served <- h.Serve(l) }()
	t.Cleanup(func() {
		l.Close()
		require.NoError(t, <-served)
		h.Close()
	})
	disk := filepath.Join(tmp, "disk.img")
	require.NoError(t, os.WriteFile(disk, nil, 0o600))
	require.NoError(t, os.Truncate(disk, size))
	mnt := filepath.Join(tmp, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o700))

	rig := &restartRig{cfg: childConfig{Holder: sock, Key: "test", Dir: mnt, Disk: disk}}
	rig.kmsg = openKmsg(t)
	rig.cur = startChild(t, rig.cfg)
	require.Equal(t, "mounted", rig.cur.how)
	t.Cleanup(func() {
		unmount(t, mnt)
		c, err := holder.Dial(sock)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.Drop("test"))
	})
	out, err := exec.Command("losetup", "--direct-io=on", "--sector-size", "4096", "--find", "--show", filepath.Join(mnt, fusedev.FileName)).Output()
	require.NoError(t, err)
	rig.loop = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		// With the server of the moment still serving (the detach closes the file), then stop it.
		out, err := exec.Command("losetup", "-d", rig.loop).CombinedOutput()
		require.NoError(t, err, "%s", out)
		rig.cur.stop(t)
	})
	return rig
}

// requireNoKernelErrors checks the kernel log since the rig started for errors about its loop
// device.
func (rig *restartRig) requireNoKernelErrors(t *testing.T) {
	t.Helper()
	dev := filepath.Base(rig.loop)
	for _, line := range rig.kmsg.read(t) {
		if strings.Contains(line, dev) && (strings.Contains(line, "error") || strings.Contains(line, "I/O")) {
			t.Errorf("kernel: %s", line)
		}
	}
}

// fioRun is fio writing and verifying on the rig's loop device.
type fioRun struct {
	cmd     *exec.Cmd
	out     string
	runtime time.Duration
	done    chan struct{} // closed when fio exited, with err set
	err     error
}

type fioResult struct {
	writes, reads     int64
	maxWrite, maxRead time.Duration
}

func (rig *restartRig) startFIO(t *testing.T, runtime time.Duration) *fioRun {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fio.json")
	cmd := exec.Command("fio", "--name=restart", "--filename="+rig.loop, "--ioengine=libaio", "--direct=1",
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M",
		"--verify=crc32c", "--verify_fatal=1", "--verify_backlog=4096",
		"--time_based", "--runtime="+strconv.Itoa(int(runtime.Seconds())),
		"--output-format=json", "--output="+out)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	f := &fioRun{cmd: cmd, out: out, done: make(chan struct{}), runtime: runtime}
	go func() {
		f.err = cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		if f.running() {
			cmd.Process.Kill()
			<-f.done
		}
	})
	t.Logf("fio: %s", strings.Join(cmd.Args, " "))
	return f
}

func (f *fioRun) running() bool {
	select {
	case <-f.done:
		return false
	default:
		return true
	}
}

// wait waits for fio to end, at most a minute past its runtime: requests that nobody answers
// would hang it forever.
func (f *fioRun) wait(t *testing.T) fioResult {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(f.runtime + time.Minute):
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
	return fioResult{writes: j.Write.TotalIOs, reads: j.Read.TotalIOs,
		maxWrite: time.Duration(j.Write.ClatNS.Max), maxRead: time.Duration(j.Read.ClatNS.Max)}
}

// kmsg reads the kernel log from the moment it was opened.
type kmsg struct{ fd int }

func openKmsg(t *testing.T) *kmsg {
	t.Helper()
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	_, err = unix.Seek(fd, 0, 2) // SEEK_END: only what comes from now on
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return &kmsg{fd: fd}
}

// read returns the messages logged since the last read.
func (k *kmsg) read(t *testing.T) []string {
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
