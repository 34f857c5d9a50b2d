package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dataimage/dataimage/blockstore"
)

// probeBound is how long Probe may take while the pool is stuck in a sync. The livenessprobe
// sidecar's timeout in the chart is 3 s; Probe does no I/O and takes no lock, so it answers in
// microseconds, and the bound only leaves room for a loaded machine.
const probeBound = time.Second

// TestProbeWhilePoolStalls: Probe, over gRPC, answers within probeBound while the pool is
// stuck in the fdatasync of a flush (a volume's Flush, as a file system's fsync makes it), of a
// checkpoint (Check); it reports a pool failed by a sync as FAILED_PRECONDITION
// once that sync has returned its error.
func TestProbeWhilePoolStalls(t *testing.T) {
	pool, f := mustOpenFailablePool(t)
	srv := newTestServer(t, Config{NodeID: testNode, Version: "test"}, pool)
	dir, err := os.MkdirTemp("", "csi") // short: socket paths are limited to 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, "unix://"+sock) }()
	t.Cleanup(func() { cancel(); <-served })
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	idc := csi.NewIdentityClient(conn)

	probe := func() error {
		t.Helper()
		pctx, pcancel := context.WithTimeout(context.Background(), probeBound)
		defer pcancel()
		start := time.Now()
		resp, err := idc.Probe(pctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
		require.NotEqual(t, codes.DeadlineExceeded, status.Code(err), "Probe did not answer within %v", probeBound)
		t.Logf("Probe answered in %v", time.Since(start))
		if err == nil {
			require.True(t, resp.GetReady().GetValue())
		}
		return err
	}
	// Connected first: a client that dialled before the socket existed backs off for a second.
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err = idc.Probe(cctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
	ccancel()
	require.NoError(t, err)
	require.NoError(t, probe())

	info, err := pool.CreateVolume("v", mib)
	require.NoError(t, err)
	vol, err := pool.Volume(info.ID)
	require.NoError(t, err)
	block := make([]byte, pool.BlockSize())
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"flush", vol.Flush},
		{"checkpoint", func() error { _, err := pool.Check(false); return err }},
	} {
		block[0]++
		_, err = vol.WriteAt(block, 0)
		require.NoError(t, err)
		entered, release := f.StallSync(t)
		done := make(chan error, 1)
		go func() { done <- tc.run() }()
		<-entered
		require.NoError(t, probe(), "%s stalled in fdatasync", tc.name)
		release()
		require.NoError(t, <-done, tc.name)
	}

	// A sync that stalls and then fails: ready while it stalls, FAILED_PRECONDITION after.
	block[0]++
	_, err = vol.WriteAt(block, 0)
	require.NoError(t, err)
	entered, release := f.StallSync(t)
	done := make(chan error, 1)
	go func() { done <- vol.Flush() }()
	<-entered
	require.NoError(t, probe())
	f.Fail.Store(true)
	release()
	require.ErrorIs(t, <-done, blockstore.ErrFailed)
	err = probe()
	requireCode(t, codes.FailedPrecondition, err)
}
