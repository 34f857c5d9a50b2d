package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/internal/units"
)

// What a snapshot costs the readers of other volumes (section "snapread"): a reader of 4 KiB
// blocks at random offsets of one volume, with and without a loop on another volume of the same
// pool that writes one 4 KiB block and takes a snapshot, back to back. Both sides run in the
// same pool, alternating in rounds (A B B A ...) as the other comparisons do. The reader runs
// at queue depth 32 (the goal's), and at queue depth 1, whose own latency tail is short enough
// to show what a reader waits for.

// snapReadQDs are the reader's queue depths.
var snapReadQDs = []int{1, 32}

// snapSide is one side of a comparison, summed over its rounds.
type snapSide struct {
	res    result
	rounds []time.Duration // p99 of each round
}

// snapRead is the comparison at one queue depth.
type snapRead struct {
	qd          int
	alone, snap snapSide
	snapLat     []time.Duration // CreateSnapshot calls
	checkpoints int             // checkpoints that completed during the snapshot slices (at least)
}

type snapReadResult struct {
	volSize   int64
	byQD      []*snapRead
	fdatasync []time.Duration // bare fdatasync of the pool file, between rounds
}

// p99Ratio is the reader's p99 while snapshots are taken over its p99 alone.
func (s *snapRead) p99Ratio() float64 {
	return float64(s.snap.res.pct(0.99)) / float64(max(s.alone.res.pct(0.99), 1))
}

// snapshotReaders measures the reader alone and while snapshots are taken.
func (b *bench) snapshotReaders() (*snapReadResult, error) {
	res := &snapReadResult{volSize: b.volSize}
	path := filepath.Join(b.dir, "snapread.pool")
	defer removeFile(path)
	p, err := blockstore.Create(path, blockstore.Options{Size: 4*b.volSize + gib, DirectIO: true})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	reader, err := newVolume(p, "reader", b.volSize)
	if err != nil {
		return nil, err
	}
	if err := prefill(reader); err != nil {
		return nil, err
	}
	source, err := newVolume(p, "source", b.volSize)
	if err != nil {
		return nil, err
	}
	if err := p.Flush(); err != nil {
		return nil, err
	}
	syncF, err := os.Open(path) // for the bare fdatasync
	if err != nil {
		return nil, err
	}
	defer syncF.Close()

	// Each side gets 2 × -duration in total at each queue depth, in -rounds slices.
	slice := 2 * b.dur / time.Duration(b.rounds)
	pat := randomPattern{t: reader, size: b.volSize, io: 4 * kib}
	n := 0 // snapshots taken, for their names
	for _, qd := range snapReadQDs {
		s := &snapRead{qd: qd}
		alone := func(seed uint64) (result, error) {
			return runLoad(pat, false, 4*kib, qd, slice, seed)
		}
		withSnapshots := func(seed uint64) (result, error) {
			var (
				stop    atomic.Bool
				wg      sync.WaitGroup
				loopErr error
			)
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := alignedBuf(4 * kib)
				rng := rand.New(rand.NewPCG(seed, 0x5a))
				last := p.Stats().CheckpointLSN
				for !stop.Load() {
					for i := range buf {
						buf[i] = byte(rng.Uint32())
					}
					if _, err := source.WriteAt(buf, rng.Int64N(b.volSize/(4*kib))*4*kib); err != nil {
						loopErr = err
						return
					}
					n++
					t0 := time.Now()
					if _, err := p.CreateSnapshot(source.ID(), fmt.Sprintf("s%d", n)); err != nil {
						loopErr = err
						return
					}
					s.snapLat = append(s.snapLat, time.Since(t0))
					if c := p.Stats().CheckpointLSN; c != last {
						s.checkpoints++
						last = c
					}
				}
			}()
			r, err := runLoad(pat, false, 4*kib, qd, slice, seed)
			stop.Store(true)
			wg.Wait()
			if err == nil {
				err = loopErr
			}
			if err == nil {
				// Untimed, with the reader stopped: the next slice starts from the same pool.
				_, err = p.DeleteVolumeSnapshots(source.ID())
			}
			return r, err
		}
		for i := range b.rounds {
			seed := uint64(2*i + 1)
			sides := []func(uint64) (result, error){alone, withSnapshots}
			outs := []*snapSide{&s.alone, &s.snap}
			if i%2 == 1 {
				sides[0], sides[1] = sides[1], sides[0]
				outs[0], outs[1] = outs[1], outs[0]
			}
			for k := range sides {
				r, err := sides[k](seed + uint64(k))
				if err != nil {
					return nil, fmt.Errorf("qd %d, round %d: %w", qd, i+1, err)
				}
				outs[k].res = outs[k].res.add(r)
				outs[k].rounds = append(outs[k].rounds, r.pct(0.99))
			}
			t0 := time.Now()
			if err := syscall.Fdatasync(int(syncF.Fd())); err != nil {
				return nil, err
			}
			res.fdatasync = append(res.fdatasync, time.Since(t0))
		}
		res.byQD = append(res.byQD, s)
		b.logf("  qd %d: reader p99 alone %v, while snapshots are taken %v (%d snapshots, p50 %v)", qd, s.alone.res.pct(0.99),
			s.snap.res.pct(0.99), len(s.snapLat), quantile(s.snapLat, 0.5))
	}
	return res, nil
}

// snapReadSection is a part of section 3.
func (r *report) snapReadSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	res := r.snapRead
	if res == nil || len(res.byQD) == 0 {
		return
	}
	w("### Readers of another volume while snapshots are taken\n\n")
	w("**Reproduce:** `go run ./bench/storebench -only snapread` (add `-quick` for a short run).\n\n")
	first := res.byQD[0]
	w("How: one pool (`DirectIO: true`, thin), two %s volumes. The *reader* volume is prefilled; N goroutines each read 4 KiB at uniform random 4 KiB-aligned offsets of it (`Volume.ReadAt`, one read in flight each: queue depth N). ", units.FormatBytes(res.volSize))
	w("On the *source* volume one goroutine writes one 4 KiB block at a random offset, then calls `Pool.CreateSnapshot` of it, back to back, for as long as the reader runs: every snapshot is a durable change that follows a write, so its commit syncs data and the journal (blockstore/journal.go gives the commit order). ")
	w("*Alone* is the same reader with the source idle. At each queue depth the two sides alternate in %d rounds of %s each (A B B A ...); after each side with snapshots they are deleted (`Pool.DeleteVolumeSnapshots`, untimed). Latencies are per read, over all rounds of a side.\n\n",
		len(first.alone.rounds), roundDur(first.alone.res.dur/time.Duration(max(len(first.alone.rounds), 1))))
	w("| QD | Reader | IOPS | p50 | p99 | p99.9 | max | p99 per round | snapshots (per second), p50 / p99 |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.byQD {
		row := func(name string, sd snapSide, snaps string) {
			var rounds []string
			for _, d := range sd.rounds {
				rounds = append(rounds, fmtLat(d))
			}
			w("| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.qd, name, fmtInt(sd.res.iops()), fmtLat(sd.res.pct(0.5)), fmtLat(sd.res.pct(0.99)),
				fmtLat(sd.res.pct(0.999)), fmtLat(sd.res.pct(1)), strings.Join(rounds, ", "), snaps)
		}
		row("alone", s.alone, "—")
		row("while snapshots are taken", s.snap, fmt.Sprintf("%d (%.0f/s), %s / %s", len(s.snapLat), float64(len(s.snapLat))/s.snap.res.dur.Seconds(),
			fmtLat(quantile(s.snapLat, 0.5)), fmtLat(quantile(s.snapLat, 0.99))))
	}
	var parts []string
	ckpts := 0
	for _, s := range res.byQD {
		ckpts += s.checkpoints
		parts = append(parts, fmt.Sprintf("qd %d **%.2f×** (IOPS %.2f×)", s.qd, s.p99Ratio(), s.snap.res.iops()/s.alone.res.iops()))
	}
	w("\nReader p99 while snapshots are taken / alone: %s. Checkpoints among the snapshots: %d. A bare fdatasync of the pool file between rounds: p50 %s.\n\n",
		strings.Join(parts, "; "), ckpts, fmtLat(quantile(res.fdatasync, 0.5)))
	w("%s\n\n", r.explainSnapRead())
}

// explainSnapRead says where the readers' time goes while snapshots are taken, with the
// numbers of this run.
func (r *report) explainSnapRead() string {
	res := r.snapRead
	var lat []time.Duration
	for _, s := range res.byQD {
		lat = append(lat, s.snapLat...)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "A snapshot (blockstore/volume.go) waits for the reads and writes in flight on every volume of the pool, applies in memory, and then commits (here a data fdatasync, a journal block write and a second fdatasync: a snapshot took %s at p50, a bare fdatasync %s) without holding any read or write back; blockstore/pool.go says which lock each step holds. ",
		fmtLat(quantile(lat, 0.5)), fmtLat(quantile(res.fdatasync, 0.5)))
	b.WriteString("So a read of another volume waits at most for the I/O that was in flight when a snapshot began, and otherwise shares the disk and the CPUs with the snapshots' writes and fdatasyncs: ")
	for i, s := range res.byQD {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "at qd %d a read alone took %s at p50 and %s at p99", s.qd, fmtLat(s.alone.res.pct(0.5)), fmtLat(s.alone.res.pct(0.99)))
	}
	b.WriteString(".")
	for _, s := range res.byQD {
		if s.p99Ratio() < 1 {
			fmt.Fprintf(&b, " At qd %d the p99 ratio is below 1 while IOPS fall to %.2f×: the reader's tail alone is already %.0f× its p50, longer than what the snapshots add to it, so at this depth their cost shows in throughput, not in the p99.",
				s.qd, s.snap.res.iops()/s.alone.res.iops(), float64(s.alone.res.pct(0.99))/float64(max(s.alone.res.pct(0.5), 1)))
		}
	}
	return b.String()
}
