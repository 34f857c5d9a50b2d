package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// drainOp is one request of the direct-I/O writer: a write of a block or a flush, when it was
// submitted and answered, and how.
type drainOp struct {
	worker, seq int
	flush       bool  // an fdatasync: one flush request
	block       int64 // the block written
	start, end  time.Time
	err         error
}

// tag is what a write puts in every 8 bytes of its block: unique per write.
func (o drainOp) tag() uint64 { return uint64(o.worker+1)<<40 | uint64(o.seq+1) }

// drainWriter writes blocks of a block device with O_DIRECT from several workers, each owning
// its own blocks and doing one request at a time, until one fails or it is told to stop. Every
// system call is one block request: a 4 KiB write, or (one in four) an fdatasync, which the
// block device turns into one flush. (An O_DSYNC write would be two: the
// kernel submits its flush only once the write has completed.)
type drainWriter struct {
	bs, blocks int64
	workers    int
	stop       chan struct{}
	wg         sync.WaitGroup

	mu  sync.Mutex
	ops [][]drainOp // by worker, in order; guarded by mu
}

func startDrainWriter(t *testing.T, dev string, size int64, workers int) *drainWriter {
	t.Helper()
	w := &drainWriter{bs: 4096, blocks: size / 4096, workers: workers, stop: make(chan struct{}), ops: make([][]drainOp, workers)}
	for i := range workers {
		f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		w.wg.Go(func() {
			defer f.Close()
			w.work(f, i)
		})
	}
	t.Cleanup(func() { w.halt() })
	return w
}

// work is one worker: it writes random blocks of its share until a write fails or stop.
func (w *drainWriter) work(f *os.File, worker int) {
	rng := rand.New(rand.NewPCG(uint64(worker), 7))
	share := w.blocks / int64(w.workers)
	buf := nodetest.AlignedBuf(int(w.bs))
	for seq := 0; ; seq++ {
		select {
		case <-w.stop:
			return
		default:
		}
		op := drainOp{worker: worker, seq: seq, block: int64(worker)*share + rng.Int64N(share)}
		op.flush = rng.IntN(4) == 0
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], op.tag())
		}
		op.start = time.Now()
		if op.flush {
			op.err = unix.Fdatasync(int(f.Fd()))
		} else {
			_, op.err = f.WriteAt(buf, op.block*w.bs)
		}
		op.end = time.Now()
		w.mu.Lock()
		w.ops[worker] = append(w.ops[worker], op)
		w.mu.Unlock()
		if op.err != nil {
			return
		}
	}
}

// halt stops the workers and waits for them.
func (w *drainWriter) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

// failed returns the first error a request of the writer got, if any.
func (w *drainWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ops := range w.ops {
		for _, op := range ops {
			if op.err != nil {
				return fmt.Errorf("request %d of worker %d (flush %v, block %d): %w", op.seq, op.worker, op.flush, op.block, op.err)
			}
		}
	}
	return nil
}

// summary returns how many writes were acknowledged, and the longest time a request that was
// in flight at one of the instants took.
func (w *drainWriter) summary(instants []time.Time) (acked int, longest time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ops := range w.ops {
		for _, op := range ops {
			if !op.flush && op.err == nil {
				acked++
			}
			for _, at := range instants {
				if op.start.Before(at) && op.end.After(at) {
					longest = max(longest, op.end.Sub(op.start))
				}
			}
		}
	}
	return acked, longest
}

// verify checks that every block read (read fills buf with block b) holds the last write
// acknowledged to it, or a later write that was not acknowledged (zeros for a block never
// acknowledged), whole (not torn). The writer must have halted.
func (w *drainWriter) verify(t *testing.T, read func(b int64, buf []byte)) {
	t.Helper()
	last := map[int64]uint64{}      // block -> tag of the last acknowledged write
	unacked := map[int64][]uint64{} // block -> tags of writes after it that were not acknowledged
	for _, ops := range w.ops {
		for _, op := range ops {
			switch {
			case op.flush:
			case op.err == nil:
				last[op.block] = op.tag()
				delete(unacked, op.block)
			default:
				unacked[op.block] = append(unacked[op.block], op.tag())
			}
		}
	}
	buf := nodetest.AlignedBuf(int(w.bs))
	var bad []string
	for b := range w.blocks {
		read(b, buf)
		got := binary.LittleEndian.Uint64(buf)
		for i := 8; i < len(buf); i += 8 {
			if binary.LittleEndian.Uint64(buf[i:]) != got {
				bad = append(bad, fmt.Sprintf("block %d is torn", b))
				break
			}
		}
		ok := got == last[b] // 0 for a block never acknowledged: zeros
		for _, tag := range unacked[b] {
			ok = ok || got == tag
		}
		if !ok {
			bad = append(bad, fmt.Sprintf("block %d holds write %#x, want the last acknowledged %#x or one of %#x", b, got, last[b], unacked[b]))
		}
	}
	require.Empty(t, bad, "%d blocks differ from the model:\n%s", len(bad), strings.Join(bad[:min(len(bad), 20)], "\n"))
	t.Logf("%d blocks hold what the model says (%d written)", w.blocks, len(last))
}

// TestSIGTERMDrainsIO sends SIGTERM to the data plane binary while a direct-I/O writer (8
// workers, writes and flushes) writes to a volume published through the plugin. The data plane
// drains: every request submitted before the SIGTERM succeeds (the ones in flight at that
// moment included), it answers no I/O with an error, it exits 0, and requests that reached it
// after the drain fail with EIO only once it has exited (the kernel ends the FUSE connection).
// Reopened, the pool checks clean and holds, for every block, the last write acknowledged to it
// (or a later one that was not acknowledged).
func TestSIGTERMDrainsIO(t *testing.T) {
	e := newRestartEnv(t)
	dp, plugin, c := e.start(t)
	const size = 64 * mib
	vol := c.createVolume(t, "drain", size, blockCap(), nil)
	target := c.stagePublish(t, "vol", vol, blockCap())

	w := startDrainWriter(t, target, size, 8)
	// Let the writer run until every worker has had writes acknowledged.
	deadline := time.Now().Add(time.Minute)
	for {
		w.mu.Lock()
		ready := true
		for _, ops := range w.ops {
			ready = ready && len(ops) >= 20
		}
		w.mu.Unlock()
		if ready {
			break
		}
		require.True(t, time.Now().Before(deadline), "the writer made no progress")
		time.Sleep(10 * time.Millisecond)
	}
	sig := time.Now()
	require.NoError(t, dp.stop(t, syscall.SIGTERM), "exit status after SIGTERM")
	exited := time.Now()

	// The workers' writes held at the drain fail once the process is gone: promptly.
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("writes still hang 30 s after the data plane exited")
	}
	w.halt()

	var before, inflight, flushes, failed int
	for _, ops := range w.ops {
		for _, op := range ops {
			switch {
			case op.start.Before(sig) && op.err != nil:
				t.Errorf("request %d of worker %d (flush %v, block %d), submitted %v before SIGTERM, failed after %v: %v",
					op.seq, op.worker, op.flush, op.block, sig.Sub(op.start), op.end.Sub(op.start), op.err)
			case op.err != nil && !errors.Is(op.err, syscall.EIO):
				t.Errorf("request %d of worker %d failed with %v, want EIO", op.seq, op.worker, op.err)
			}
			if op.start.Before(sig) {
				before++
				if op.end.After(sig) {
					inflight++
					if op.flush {
						flushes++
					}
				}
			}
			if op.err != nil {
				failed++
			}
		}
	}
	acked, _ := w.summary(nil)
	t.Logf("requests: %d submitted before SIGTERM, %d of them in flight at it (%d flushes); %d writes acknowledged in all; %d requests failed (EIO, after the exit); exit %v after SIGTERM",
		before, inflight, flushes, acked, failed, exited.Sub(sig).Round(time.Millisecond))
	require.Positive(t, inflight, "no write was in flight at SIGTERM: nothing was drained")

	logs, err := os.ReadFile(e.dataPlaneLog)
	require.NoError(t, err)
	// The data plane answered no request with an error: those that failed, failed in the
	// kernel once the process was gone.
	require.NotContains(t, string(logs), "disk I/O failed", "the data plane answered I/O with an error")
	require.Contains(t, string(logs), "exports drained and the pool flushed")

	// The plugin runs on; the dead volume unpublishes and unstages once the data plane is back.
	require.True(t, plugin.running())
	dp = e.startDataPlane(t)
	c.unpublishUnstage(t, "vol", vol)
	nodetest.RequireNothingLeft(t, e.paths, e.stateDir)
	e.stopAll(t, dp, plugin)

	// Reopened: clean, and every block holds its last acknowledged write (or a later one).
	p, err := blockstore.Open(e.pool, blockstore.Options{})
	require.NoError(t, err)
	defer p.Close()
	info, err := p.LookupVolume("drain")
	require.NoError(t, err)
	v, err := p.Volume(info.ID)
	require.NoError(t, err)
	w.verify(t, func(b int64, buf []byte) {
		_, err := v.ReadAt(buf, b*w.bs)
		require.NoError(t, err)
	})
}
