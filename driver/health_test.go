package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
)

// The periodic read-only pool check feeds volume health and the metrics: nothing before the
// first check or while checks find nothing; DEGRADED "PoolCheckFailed" with the first problem
// when one found problems (here: the pool file cannot be read), until a later one finds none.
// The check writes nothing, so the pool itself stays healthy.
func TestPoolCheckHealth(t *testing.T) {
	p, f := mustOpenFailablePool(t)

	cfg := testConfig(testNode)
	cfg.PoolCheckInterval = 10 * time.Millisecond
	srv := newTestServer(t, *cfg, p)
	c := newControllerServer(&srv.cfg, srv.store, p.BlockSize())
	c.checker = srv.checker
	ctx := context.Background()
	v := mustCreateVolume(t, c, "v", mib)
	health := func() []*csi.VolumeHealth_VolumeHealthEntry {
		t.Helper()
		resp, err := c.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.GetVolumeId()})
		require.NoError(t, err)
		return resp.GetVolumeHealth().GetHealthStatuses()
	}
	require.Empty(t, health(), "no check yet")
	m := scrape(t, srv.MetricsHandler())
	require.Nil(t, m["dataimage_pool_check_problems"], "no check yet")

	// The server runs the check every interval while it serves.
	dir, err := os.MkdirTemp("", "csi")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, filepath.Join(dir, "csi.sock")) }()
	deadline := time.Now().Add(30 * time.Second)
	for srv.checker.last.Load() == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	require.NoError(t, <-served)
	o := srv.checker.last.Load()
	require.NotNil(t, o, "a check ran while serving")
	require.Zero(t, o.problems)
	require.Empty(t, health())
	m = scrape(t, srv.MetricsHandler())
	require.Equal(t, 0.0, sample(m, "dataimage_pool_check_problems"))
	require.InDelta(t, float64(o.at.Unix()), sample(m, "dataimage_pool_check_timestamp_seconds"), 1)

	f.FailReads.Store(true)
	o = srv.checker.check(ctx)
	f.FailReads.Store(false)
	require.NotNil(t, o)
	require.Positive(t, o.problems)
	h := health()
	require.Len(t, h, 1)
	require.Equal(t, csi.VolumeHealthErrorType_DEGRADED, h[0].GetStatus())
	require.Equal(t, "PoolCheckFailed", h[0].GetReason())
	require.Contains(t, h[0].GetMessage(), "input/output error")
	m = scrape(t, srv.MetricsHandler())
	require.Equal(t, float64(o.problems), sample(m, "dataimage_pool_check_problems"))
	require.NoError(t, p.Health(), "a read-only check changes nothing")
	lh, err := c.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	require.NoError(t, err)
	require.Len(t, lh.GetEntries(), 1, "the volume is listed with an adverse condition")

	require.NotNil(t, srv.checker.check(ctx))
	require.Empty(t, health(), "the next check found nothing")
}

func TestPoolCheckIntervalValidation(t *testing.T) {
	_, err := Config{NodeID: testNode, Version: "v", PoolCheckInterval: -time.Second}.complete()
	require.ErrorContains(t, err, "pool check interval")
}
