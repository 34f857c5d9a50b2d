package dataplane

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestDrain: Local.Drain waits for a flush that is in flight (stuck in the pool's fdatasync)
// and lets it succeed, then holds the I/O that comes after it, unanswered. (The data plane then
// exits; here the gate reopens so that the held write completes and the test can tear its
// export down.)
func TestDrain(t *testing.T) {
	nodetest.Need(t)
	pool, f := nodetest.FailablePool(t, 64<<20)
	dir := t.TempDir()
	exp, err := export.Detect(export.Options{StateDir: filepath.Join(dir, "export")})
	require.NoError(t, err)
	l := NewLocal(pool, exp, nil)
	ctx := context.Background()

	info, err := pool.CreateVolume("v", 16<<20)
	require.NoError(t, err)
	e, err := l.Export(ctx, ExportSpec{ID: "v", Volume: info.ID})
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, l.Unexport(ctx, "v"))
		nodetest.RequireNothingLeft(t, dir, filepath.Join(dir, "export"))
	})
	fd, err := os.OpenFile(e.Device, os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer fd.Close()
	block := nodetest.AlignedBuf(4096)
	block[0] = 1
	_, err = fd.WriteAt(block, 0)
	require.NoError(t, err)

	// A flush in flight: the pool's fdatasync stalls under it.
	entered, release := f.StallSync(t)
	flushed := make(chan error, 1)
	go func() { flushed <- unix.Fdatasync(int(fd.Fd())) }()
	<-entered
	drained := make(chan error, 1)
	go func() { drained <- l.Drain(ctx) }()
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a flush was in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	require.NoError(t, <-flushed, "the flush in flight at the drain succeeds")
	require.NoError(t, <-drained)

	// After the drain: a write is held at the gate, unanswered.
	block[0] = 2
	wrote := make(chan error, 1)
	go func() { _, err := fd.WriteAt(block, 4096); wrote <- err }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, held := l.gate.counts(); held == 1 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the write never reached the gate")
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-wrote:
		t.Fatalf("a write after the drain was answered (%v)", err)
	default:
	}
	l.gate.reopen()
	require.NoError(t, <-wrote)
	// The write is answered from inside its batch, which leaves the gate just after: the
	// counts settle to zero, they need not be there the instant the write returns.
	require.Eventually(t, func() bool {
		inflight, held := l.gate.counts()
		return inflight == 0 && held == 0
	}, 10*time.Second, 5*time.Millisecond, "I/O still in flight or held after the gate reopened and the write returned")
	st, err := l.IOStats(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), st.Ops[IOWrite], "the two writes are counted")
	require.Equal(t, uint64(8192), st.Bytes[IOWrite])
	require.GreaterOrEqual(t, st.Ops[IOFlush], uint64(1))
	require.Zero(t, st.Errors[IOWrite])
	require.Equal(t, 1, st.Exported)
}
