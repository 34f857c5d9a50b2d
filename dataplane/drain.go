package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/blockio"
	"github.com/dataimage/dataimage/blockstore/export"
)

// The drain: how the data plane stops without failing the I/O of its exports.
//
// Every read, write, flush, discard and zeroing an export makes on a volume passes the data
// plane's ioGate (exportDisk). At the end of the process (Local.Drain, after the API server
// stopped):
//
//  1. every export's device is drained (export.Device.Drain): the I/O submitted to it so far
//     — queued in the kernel or in the plugin — is answered, as usual;
//  2. the gate closes: I/O that reaches it from then on is held, not answered;
//  3. the I/O already past the gate completes;
//  4. the pool is flushed: every write that completed, in flight at the drain included, is
//     durable;
//
// then the caller closes the pool (a checkpoint) and the process exits. Held I/O is never
// answered by this process: when it exits, the kernel ends the export's FUSE connection and
// fails it (docs/driver.md, "Stopping the data plane"). The drain answers nothing with an error
// itself.

// ioGate counts the export I/O in flight and, once closed, holds new I/O.
type ioGate struct {
	mu       sync.Mutex
	inflight int           // I/O past the gate; guarded by mu
	held     int           // I/O waiting at the closed gate; guarded by mu
	closed   bool          // guarded by mu
	idle     chan struct{} // closed once the gate is closed and nothing is in flight; guarded by mu
	reopened chan struct{} // closed by reopen: held I/O goes on; guarded by mu
}

func newIOGate() *ioGate {
	return &ioGate{idle: make(chan struct{}), reopened: make(chan struct{})}
}

// enter lets one I/O in, or holds it while the gate is closed; exit must follow.
func (g *ioGate) enter() {
	g.mu.Lock()
	if g.closed {
		g.held++
		reopened := g.reopened
		g.mu.Unlock()
		<-reopened
		g.mu.Lock()
		g.held--
	}
	g.inflight++
	g.mu.Unlock()
}

// exit ends one I/O let in by enter.
func (g *ioGate) exit() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	if g.closed && g.inflight == 0 {
		g.closeIdle()
	}
}

// closeIdle closes idle once. REQUIRES g.mu and g.closed.
func (g *ioGate) closeIdle() {
	select {
	case <-g.idle:
	default:
		close(g.idle)
	}
}

// close closes the gate; it returns the I/O in flight at that moment and a channel closed
// once none is.
func (g *ioGate) close() (inflight int, idle <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		if g.inflight == 0 {
			g.closeIdle()
		}
	}
	return g.inflight, g.idle
}

// reopen lets held I/O go on, and new I/O in without holding: a drain given up. The data plane
// never reopens (it exits after a drain); tests do, to tear their exports down.
func (g *ioGate) reopen() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.closed = false
		close(g.reopened)
		g.idle, g.reopened = make(chan struct{}), make(chan struct{})
	}
}

// counts returns the I/O in flight and held.
func (g *ioGate) counts() (inflight, held int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inflight, g.held
}

// exportDisk is a volume as its export sees it: every call passes the data plane's ioGate and
// is counted (IOStats).
type exportDisk struct {
	*blockstore.Volume
	c    *ioCounters
	gate *ioGate
}

var (
	_ export.Disk        = exportDisk{}
	_ export.WriteZeroer = exportDisk{}
	_ blockio.BatchDisk  = exportDisk{}
)

// NewBatcher passes the export's batches of reads and writes (blockio.BatchDisk) to the volume:
// a batch passes the gate as one I/O, each of its ops is counted.
func (d exportDisk) NewBatcher(ops int) (blockio.Batcher, error) {
	b, err := d.Volume.NewBatcher(ops)
	if err != nil {
		return nil, err
	}
	return exportBatcher{b: b, d: d}, nil
}

type exportBatcher struct {
	b blockio.Batcher
	d exportDisk
}

func (e exportBatcher) Do(ops []blockio.Op, done func(int)) {
	e.d.gate.enter()
	defer e.d.gate.exit()
	e.b.Do(ops, func(i int) {
		op := IORead
		if ops[i].Write {
			op = IOWrite
		}
		e.d.c.count(op, ops[i].N, ops[i].Err)
		if done != nil {
			done(i)
		}
	})
}

func (e exportBatcher) Close() error { return e.b.Close() }

func (d exportDisk) ReadAt(b []byte, off int64) (int, error) {
	d.gate.enter()
	defer d.gate.exit()
	n, err := d.Volume.ReadAt(b, off)
	d.c.count(IORead, n, err)
	return n, err
}

func (d exportDisk) WriteAt(b []byte, off int64) (int, error) {
	d.gate.enter()
	defer d.gate.exit()
	n, err := d.Volume.WriteAt(b, off)
	d.c.count(IOWrite, n, err)
	return n, err
}

func (d exportDisk) Flush() error {
	d.gate.enter()
	defer d.gate.exit()
	err := d.Volume.Flush()
	d.c.count(IOFlush, 0, err)
	return err
}

func (d exportDisk) Discard(off, n int64) error {
	d.gate.enter()
	defer d.gate.exit()
	err := d.Volume.Discard(off, n)
	d.c.count(IODiscard, 0, err)
	return err
}

func (d exportDisk) WriteZeroes(off, n int64) error {
	d.gate.enter()
	defer d.gate.exit()
	err := d.Volume.WriteZeroes(off, n)
	d.c.count(IOWriteZeroes, 0, err)
	return err
}

// ioCounters count the I/O of every export: operations, errors and bytes, by operation.
// Atomics only, so that counting costs the I/O path next to nothing.
type ioCounters struct {
	ops, errs, bytes [IOOps]atomic.Uint64
}

// count records one operation that moved n bytes and returned err.
func (c *ioCounters) count(op int, n int, err error) {
	c.ops[op].Add(1)
	if n > 0 {
		c.bytes[op].Add(uint64(n))
	}
	if err != nil {
		c.errs[op].Add(1)
	}
}

// Drain drains the I/O of the exports (see the top of this file): the I/O submitted to their
// devices so far is answered, then new I/O is held, the I/O already past the gate completes,
// and the pool is flushed. Call it at the end of the process, after the API server stopped and
// before closing the pool: held I/O waits until the process exits. If ctx ends first, Drain
// flushes anyway and returns an error saying what was left (the pool's Close then waits for
// the I/O still in flight).
func (l *Local) Drain(ctx context.Context) error {
	return l.drain(ctx, l.served())
}

// Handover hands the exports over to the next data plane (export.Device.Handover): each stops
// reading requests, answers those it read and flushes the pool; their connections wait in the
// holder, and I/O submitted meanwhile waits in the kernel for the next data plane (Run,
// startExports), which the kernel resends what is pending to. An export that cannot be handed
// over (the holder does not hold it now) is drained instead (Drain). Call it where Drain would
// be called.
func (l *Local) Handover(ctx context.Context) error {
	start := time.Now()
	var rest []*served
	var errs []error
	for _, s := range l.served() {
		err := s.dev.Handover()
		switch {
		case errors.Is(err, export.ErrNoHolder):
			l.log.Warn("export not handed over: drained instead (its I/O fails once this process exits)", "export", s.ID, "err", err)
			rest = append(rest, s)
		case err != nil:
			// It stopped serving and stays in the holder: the next data plane resends what
			// waits. Only the flush failed.
			errs = append(errs, err)
		}
	}
	l.log.Info("exports handed over", "handedOver", len(l.served())-len(rest), "drained", len(rest),
		"took", time.Since(start).Round(time.Microsecond))
	return errors.Join(append(errs, l.drain(ctx, rest))...)
}

// drain drains exports (see Drain), closes the gate and flushes the pool.
func (l *Local) drain(ctx context.Context, exports []*served) error {
	start := time.Now()
	l.log.Info("draining the exports' I/O", "devices", len(exports))
	waitErr := l.drainDevices(ctx, exports)
	inflight, idle := l.gate.close()
	l.log.Info("exports' devices drained; new I/O waits until the process exits", "inflight", inflight,
		"took", time.Since(start).Round(time.Microsecond))
	select {
	case <-idle:
	case <-ctx.Done():
		left, held := l.gate.counts()
		waitErr = errors.Join(waitErr, fmt.Errorf("dataplane: drain: %d I/O requests still in flight after %v (%d held): %w",
			left, time.Since(start).Round(time.Millisecond), held, ctx.Err()))
	}
	if err := l.pool.Flush(); err != nil {
		return errors.Join(waitErr, fmt.Errorf("dataplane: drain: flush the pool: %w", err))
	}
	if waitErr != nil {
		return waitErr
	}
	_, held := l.gate.counts()
	l.log.Info("exports drained and the pool flushed", "took", time.Since(start).Round(time.Microsecond), "held", held)
	return nil
}

// drainDevices drains every exported device at once (export.Device.Drain), waiting at most
// until ctx ends. A device that cannot drain is logged and reported; the drain goes on.
func (l *Local) drainDevices(ctx context.Context, exports []*served) error {
	errs := make(chan error, len(exports))
	for _, s := range exports {
		go func() {
			err := s.dev.Drain()
			if err != nil {
				err = fmt.Errorf("dataplane: drain export %s: %w", s.ID, err)
			}
			errs <- err
		}()
	}
	var all []error
	for range exports {
		select {
		case err := <-errs:
			all = append(all, err)
		case <-ctx.Done():
			return errors.Join(append(all, fmt.Errorf("dataplane: drain the devices: %w", ctx.Err()))...)
		}
	}
	err := errors.Join(all...)
	if err != nil {
		l.log.Error("drain devices", "err", err)
	}
	return err
}
