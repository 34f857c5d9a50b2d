package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export"
)

// TestDrainIO: Server.DrainIO waits for a flush that is in flight (stuck in the pool's
// fdatasync) and lets it succeed, then holds the I/O that comes after it, unanswered. (The
// plugin then exits; here the gate reopens so that the held write completes and the test can
// tear its export down.)
func TestDrainIO(t *testing.T) {
	needKernel(t)
	pool, f := mustOpenFailablePool(t)
	dir := t.TempDir()
	exp, err := export.Detect(export.Options{StateDir: filepath.Join(dir, "export")})
	require.NoError(t, err)
	srv, err := NewServer(Config{NodeID: testNode, Version: "test"}, pool)
	require.NoError(t, err)
	require.NoError(t, srv.RegisterNode(pool, NodeConfig{Exporter: exp}))
	n := srv.node
	c := newControllerServer(&srv.cfg, pool)
	ctx := context.Background()

	vol := mustCreateVolume(t, c, "v", 16*mib).GetVolumeId()
	staging := filepath.Join(dir, "staging")
	_, err = n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging, VolumeCapability: blockCap(rwo)})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
		require.NoError(t, err)
	})
	at, ok := n.vols.Get(vol)
	require.True(t, ok)
	fd, err := os.OpenFile(at.DevicePath(), os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer fd.Close()
	block := alignedBlock(t)
	block[0] = 1
	_, err = fd.WriteAt(block, 0)
	require.NoError(t, err)

	// A flush in flight: the pool's fdatasync stalls under it.
	entered, release := f.stallSync(t)
	flushed := make(chan error, 1)
	go func() { flushed <- unix.Fdatasync(int(fd.Fd())) }()
	<-entered
	drained := make(chan error, 1)
	go func() { drained <- srv.DrainIO(ctx) }()
	select {
	case err := <-drained:
		t.Fatalf("DrainIO returned (%v) while a flush was in flight", err)
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
		if _, held := n.gate.counts(); held == 1 {
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
	n.gate.reopen()
	require.NoError(t, <-wrote)
	inflight, held := n.gate.counts()
	require.Zero(t, inflight)
	require.Zero(t, held)
}
