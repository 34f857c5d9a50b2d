package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
)

// poolChecker verifies the pool with a read-only Check every Config.PoolCheckInterval and keeps
// the outcome for volume health (poolHealth) and the metrics. A read-only Check writes nothing
// and does not stop I/O: it verifies the pool's last checkpoint and holds back checkpoints
// while it runs (blockstore/check.go). Health never waits for it: it reads the last outcome.
type poolChecker struct {
	store    dataplane.Volumes
	interval time.Duration // 0: never
	log      *slog.Logger
	last     atomic.Pointer[checkOutcome] // nil until a check completed
}

// checkOutcome is what one read-only Check found.
type checkOutcome struct {
	at         time.Time
	took       time.Duration
	generation uint64 // the checkpoint verified
	problems   int    // corrupt metadata, refcount errors and leaked blocks
	first      string // the first problem
}

func newPoolChecker(cfg *Config, store dataplane.Volumes) *poolChecker {
	return &poolChecker{store: store, interval: cfg.PoolCheckInterval, log: cfg.Logger}
}

// run checks the pool every interval until ctx ends. It returns at once if the interval is 0.
func (c *poolChecker) run(ctx context.Context) {
	if c == nil || c.interval <= 0 {
		return
	}
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.check(ctx)
		}
	}
}

// check runs one read-only Check and records its outcome. A Check that could not run (the
// pool failed or closed, the data plane did not answer: Health reports that) records nothing.
func (c *poolChecker) check(ctx context.Context) *checkOutcome {
	start := time.Now()
	rep, err := c.store.Check(ctx, blockstore.CheckOptions{ReadOnly: true})
	if rep == nil || (err != nil && !errors.Is(err, blockstore.ErrCorrupt)) {
		c.log.Warn("pool check could not run", "err", err)
		return nil
	}
	o := &checkOutcome{at: start, took: time.Since(start), generation: rep.Generation,
		problems: len(rep.Corrupt) + len(rep.RefcountErrors) + rep.LeakedBlocks}
	switch {
	case len(rep.Corrupt) > 0:
		o.first = rep.Corrupt[0].Error()
	case len(rep.RefcountErrors) > 0:
		o.first = rep.RefcountErrors[0]
	case rep.LeakedBlocks > 0:
		o.first = fmt.Sprintf("%d leaked blocks (first: %d)", rep.LeakedBlocks, rep.Leaked[0])
	}
	c.last.Store(o)
	if o.problems > 0 {
		c.log.Error("pool check found problems", "generation", o.generation, "problems", o.problems, "first", o.first, "took", o.took)
	} else {
		c.log.Info("pool checked", "generation", o.generation, "report", rep.String(), "took", o.took)
	}
	return o
}

// health is the volume health entry for the last check's outcome: DEGRADED "PoolCheckFailed"
// when it found problems, nothing otherwise (or before the first check).
func (c *poolChecker) health() *csi.VolumeHealth_VolumeHealthEntry {
	if c == nil {
		return nil
	}
	o := c.last.Load()
	if o == nil || o.problems == 0 {
		return nil
	}
	return &csi.VolumeHealth_VolumeHealthEntry{
		Status: csi.VolumeHealthErrorType_DEGRADED, Reason: "PoolCheckFailed",
		Message: fmt.Sprintf("the node's pool check of %s (checkpoint %d) found %d problems (the plugin's log lists them), the first: %s",
			o.at.UTC().Format(time.RFC3339), o.generation, o.problems, o.first),
	}
}
