package blockstore

import "time"

// SetTestFanout makes new pools use fewer entries per tree node, so small volumes get deep trees.
func SetTestFanout(o *Options, fanout int) { o.fanout = fanout }

// SetTestClock fixes the pool's clock.
func SetTestClock(o *Options, now func() time.Time) { o.now = now }
