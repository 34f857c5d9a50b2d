package fusedev_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestAdoptResends: a server reads a write and never answers it (it hangs in the Disk, as if
// dead); a second server adopts the connection, the kernel sends it the write again
// (FUSE_NOTIFY_RESEND), it answers, and the writer's call returns. The first server's late reply
// is dropped by the kernel.
func TestAdoptResends(t *testing.T) {
	nodetest.Need(t)
	md := newMemDisk(16 * mib)
	stuck := &nodetest.HoldingDisk{Disk: md}
	m := mountOnly(t)
	require.True(t, m.params.CanResend(), "kernel %d.%d without FUSE_HAS_RESEND", 7, m.params.KernelMinor)
	// One worker, which the held write keeps: the first server reads nothing else, as if dead.
	first, err := fusedev.Serve([]int{m.fd}, m.params, stuck, fusedev.Config{MaxWorkers: 1})
	require.NoError(t, err)
	f := openFile(t, m.file(), unix.O_RDWR|unix.O_DIRECT)

	entered, release := stuck.Hold()
	defer release()
	wrote := make(chan error, 1)
	go func() { _, err := f.WriteAt(pattern(9, 4096), 8192); wrote <- err }()
	<-entered
	select {
	case err := <-wrote:
		t.Fatalf("write returned (%v) while its server holds it", err)
	case <-time.After(200 * time.Millisecond):
	}

	// The Params as a holder keeps them: through JSON.
	p, err := fusedev.UnmarshalParams(m.params.Marshal())
	require.NoError(t, err)
	second, err := fusedev.Adopt([]int{m.fd}, p, md, fusedev.Config{})
	require.NoError(t, err)
	m.srv = second
	select {
	case err := <-wrote:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the write was not sent again to the adopting server")
	}
	assert.Equal(t, pattern(9, 4096), md.at(8192, 8192+4096))
	assert.GreaterOrEqual(t, second.Stats().Resent, uint64(1), "stats %+v", second.Stats())

	release() // the first server answers late: the kernel drops the reply (ENOENT)
	require.NoError(t, first.Stop())
	_, err = f.WriteAt(pattern(10, 4096), 0)
	require.NoError(t, err, "the second server serves on")
	assert.Equal(t, pattern(10, 4096), md.at(0, 4096))
}

// TestStopHandsOver: Stop returns only once a request it had read is answered, reads no request
// submitted after it, flushes the Disk; the next server serves those.
func TestStopHandsOver(t *testing.T) {
	nodetest.Need(t)
	md := newMemDisk(16 * mib)
	hd := &nodetest.HoldingDisk{Disk: md}
	m := mountOnly(t)
	first, err := fusedev.Serve([]int{m.fd}, m.params, hd, fusedev.Config{})
	require.NoError(t, err)
	f := openFile(t, m.file(), unix.O_RDWR|unix.O_DIRECT)

	entered, release := hd.Hold()
	defer release()
	wrote := make(chan error, 1)
	go func() { _, err := f.WriteAt(pattern(1, 4096), 0); wrote <- err }()
	<-entered
	flushes := md.flushes.Load()
	stopped := make(chan error, 1)
	go func() { stopped <- first.Stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) with a request unanswered", err)
	case <-time.After(300 * time.Millisecond):
	}
	// Submitted after Stop: it waits in the kernel.
	later := make(chan error, 1)
	go func() { _, err := f.WriteAt(pattern(2, 4096), 4096); later <- err }()
	time.Sleep(200 * time.Millisecond)
	release()
	require.NoError(t, <-wrote)
	require.NoError(t, <-stopped)
	assert.Greater(t, md.flushes.Load(), flushes, "Stop flushed the disk")
	select {
	case err := <-later:
		t.Fatalf("a write submitted after Stop was answered (%v) with no server", err)
	case <-time.After(300 * time.Millisecond):
	}
	requests := first.Stats().Requests

	second, err := fusedev.Adopt([]int{m.fd}, m.params, md, fusedev.Config{})
	require.NoError(t, err)
	m.srv = second
	require.NoError(t, <-later)
	assert.Equal(t, pattern(2, 4096), md.at(4096, 8192))
	assert.Equal(t, requests, first.Stats().Requests, "the stopped server read nothing more")
	assert.Zero(t, second.Stats().Resent, "nothing was left half-served")
}

// TestAdoptDeadConnection: a connection aborted while nobody served it (its last descriptor
// closed) cannot be adopted.
func TestAdoptDeadConnection(t *testing.T) {
	nodetest.Need(t)
	dir := t.TempDir()
	fd, err := fusedev.Mount(dir, "fusedev-test", fusedev.DefaultMaxWrite)
	require.NoError(t, err)
	t.Cleanup(func() { unmount(t, dir) })
	p, err := fusedev.Init(fd, fusedev.InitOptions{})
	require.NoError(t, err)
	fd2, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd2)
	// Unmounting ends the connection (as an abort does) while fd2 stays open.
	unix.Close(fd)
	unmount(t, dir)
	_, err = fusedev.Adopt([]int{fd2}, p, newMemDisk(mib), fusedev.Config{})
	require.ErrorIs(t, err, fusedev.ErrDisconnected)
}

// TestParams: Params survive JSON with fields a newer server added, and Params of another version
// or out of range are refused.
func TestParams(t *testing.T) {
	good := fusedev.Params{Version: fusedev.ParamsVersion, Minor: 45, KernelMinor: 45, MaxWrite: fusedev.DefaultMaxWrite, BlockSize: 4096}
	b := good.Marshal()
	p, err := fusedev.UnmarshalParams(append(b[:len(b)-1], []byte(`,"fromTheFuture":[1,2]}`)...))
	require.NoError(t, err)
	assert.Equal(t, good, p)
	for _, bad := range []string{
		`{"version":2,"minor":45,"maxWrite":1044480,"blockSize":4096}`,
		`{"version":1,"minor":20,"maxWrite":1044480,"blockSize":4096}`,
		`{"version":1,"minor":45,"maxWrite":0,"blockSize":4096}`,
		`{"version":1,"minor":45,"maxWrite":1044480,"blockSize":3000}`,
		`not json`,
	} {
		_, err := fusedev.UnmarshalParams([]byte(bad))
		require.ErrorIs(t, err, fusedev.ErrInvalid, bad)
	}
	_, err = fusedev.Serve([]int{0}, fusedev.Params{}, newMemDisk(mib), fusedev.Config{})
	require.ErrorIs(t, err, fusedev.ErrInvalid)
}

// TestSetIOFlusher: every thread of the process is marked (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE in
// /proc/self/task/*/stat), where the binary can do it (no cgo).
func TestSetIOFlusher(t *testing.T) {
	nodetest.Need(t)
	err := fusedev.SetIOFlusher()
	if errorsIsUnsupported(err) {
		t.Skipf("%v", err)
	}
	require.NoError(t, err)
	tasks, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	for _, task := range tasks {
		flags := taskFlags(t, task.Name())
		const pfMemallocNoIO, pfLocalThrottle = 0x00080000, 0x00100000
		assert.Equal(t, uint64(pfMemallocNoIO|pfLocalThrottle), flags&(pfMemallocNoIO|pfLocalThrottle), "thread %s", task.Name())
	}
}

func errorsIsUnsupported(err error) bool { return errors.Is(err, fusedev.ErrUnsupported) }

// taskFlags returns the flags field of /proc/self/task/<tid>/stat.
func taskFlags(t *testing.T, tid string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/task/" + tid + "/stat")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(b), ") ")
	require.True(t, ok, "%s", b)
	f := strings.Fields(rest) // state ppid pgrp session tty_nr tpgid flags ...
	flags, err := strconv.ParseUint(f[6], 10, 64)
	require.NoError(t, err)
	return flags
}
