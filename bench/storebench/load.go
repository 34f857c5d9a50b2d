package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/dataimage/dataimage/blockstore"
)

// newVolume creates a volume of size bytes in p and returns a handle for its I/O.
func newVolume(p *blockstore.Pool, name string, size int64) (*blockstore.Volume, error) {
	info, err := p.CreateVolume(name, size)
	if err != nil {
		return nil, err
	}
	return p.Volume(info.ID)
}

// prefill writes the whole of vol with 1 MiB sequential writes at queue depth 1, so that its
// blocks are contiguous like the raw file's.
func prefill(vol *blockstore.Volume) error {
	size := vol.Size()
	r, err := runLoad(newSeq(vol, size, mib, true), true, mib, 1, time.Hour, 1)
	if err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	if r.bytes != size {
		return fmt.Errorf("prefill: wrote %d of %d bytes", r.bytes, size)
	}
	return nil
}

// ioTarget is what a load runs against: a raw file (*os.File) or a volume (*blockstore.Volume).
type ioTarget interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
}

// pattern chooses where each I/O of a load goes. Workers call next concurrently, each with its
// own rng; ok=false means the pattern is used up and ends the run for every worker.
type pattern interface {
	next(rng *rand.Rand) (t ioTarget, off int64, ok bool)
}

// randomPattern: uniform random offsets, aligned to the I/O size, over [0, size).
type randomPattern struct {
	t        ioTarget
	size, io int64
}

func (p randomPattern) next(rng *rand.Rand) (ioTarget, int64, bool) {
	return p.t, rng.Int64N(p.size/p.io) * p.io, true
}

// seqPattern: consecutive offsets shared by all workers (queue depth N behaves like one
// sequential stream with N requests in flight), wrapping at size unless once is set.
type seqPattern struct {
	t        ioTarget
	size, io int64
	once     bool
	cur      *atomic.Int64
}

func newSeq(t ioTarget, size, io int64, once bool) seqPattern {
	return seqPattern{t: t, size: size, io: io, once: once, cur: new(atomic.Int64)}
}

func (p seqPattern) next(*rand.Rand) (ioTarget, int64, bool) {
	off := (p.cur.Add(1) - 1) * p.io
	if off+p.io > p.size {
		if p.once {
			return nil, 0, false
		}
		off %= p.size - p.size%p.io
	}
	return p.t, off, true
}

// cowPattern: first writes into clones. Each unit (max(block size, I/O size) bytes) of each
// clone is written at most once, in a random order, so every I/O lands on a block the clone
// still shares with its snapshot; the offset within the unit is random. When every unit of
// every clone has been written the pattern is used up.
type cowPattern struct {
	targets  []ioTarget
	unit, io int64
	perm     []int64 // unit indices in random order
	cur      *atomic.Int64
}

func newCOW(targets []ioTarget, size, unit, io int64, seed uint64) cowPattern {
	n := size / unit
	perm := make([]int64, n)
	for i := range perm {
		perm[i] = int64(i)
	}
	rng := rand.New(rand.NewPCG(seed, 0xc0))
	rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
	return cowPattern{targets: targets, unit: unit, io: io, perm: perm, cur: new(atomic.Int64)}
}

func (p cowPattern) next(rng *rand.Rand) (ioTarget, int64, bool) {
	i := p.cur.Add(1) - 1
	c := i / int64(len(p.perm))
	if c >= int64(len(p.targets)) {
		return nil, 0, false
	}
	off := p.perm[i%int64(len(p.perm))]*p.unit + rng.Int64N(p.unit/p.io)*p.io
	return p.targets[c], off, true
}

// used returns how many I/Os the pattern has handed out.
func (p cowPattern) used() int64 { return min(p.cur.Load(), int64(len(p.perm)*len(p.targets))) }

// result is what one or more timed runs of a load did.
type result struct {
	ops       int64
	bytes     int64
	dur       time.Duration   // wall time, summed over runs
	lat       []time.Duration // per-I/O latencies (capped per worker)
	exhausted bool            // a run ended early: the pattern was used up
}

func (r result) iops() float64 { return float64(r.ops) / r.dur.Seconds() }
func (r result) mbps() float64 { return float64(r.bytes) / r.dur.Seconds() / 1e6 }

func (r result) add(o result) result {
	return result{ops: r.ops + o.ops, bytes: r.bytes + o.bytes, dur: r.dur + o.dur,
		lat: append(r.lat, o.lat...), exhausted: r.exhausted || o.exhausted}
}

// pct returns the q-quantile (0..1) of the latencies.
func (r result) pct(q float64) time.Duration { return quantile(r.lat, q) }

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

const maxLatSamples = 1 << 20

// runLoad runs qd workers doing ioSize-byte reads or writes where pat says, for d or until
// pat is used up.
func runLoad(pat pattern, write bool, ioSize, qd int, d time.Duration, seed uint64) (result, error) {
	var (
		wg        sync.WaitGroup
		stop      atomic.Bool
		mu        sync.Mutex
		res       result
		firstErr  error
		exhausted atomic.Bool
	)
	start := time.Now()
	deadline := start.Add(d)
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			buf := alignedBuf(ioSize)
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			var ops, bytes int64
			lat := make([]time.Duration, 0, 4096)
			var err error
			for !stop.Load() {
				t, off, ok := pat.next(rng)
				if !ok {
					exhausted.Store(true)
					stop.Store(true)
					break
				}
				t0 := time.Now()
				var n int
				if write {
					n, err = t.WriteAt(buf, off)
				} else {
					n, err = t.ReadAt(buf, off)
				}
				t1 := time.Now()
				if err == nil && n != ioSize {
					err = fmt.Errorf("short I/O: %d of %d bytes at offset %d", n, ioSize, off)
				}
				if err != nil {
					err = fmt.Errorf("I/O at offset %d: %w", off, err)
					stop.Store(true)
					break
				}
				ops++
				bytes += int64(n)
				if len(lat) < maxLatSamples {
					lat = append(lat, t1.Sub(t0))
				}
				if t1.After(deadline) {
					stop.Store(true)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			res.ops += ops
			res.bytes += bytes
			res.lat = append(res.lat, lat...)
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}()
	}
	wg.Wait()
	res.dur = time.Since(start)
	res.exhausted = exhausted.Load()
	return res, firstErr
}

// pair holds a comparison of the store with the raw-file baseline, both measured in the same
// run in alternating slices: rounds of (raw, store) and (store, raw) in turn, i.e. A B B A
// A B B A ..., so drift of the disk affects both sides alike. The ratio of a comparison is the
// median of its per-round ratios, which one hiccup of the disk does not move much.
type pair struct {
	raw, store result    // totals over every slice
	ratios     []float64 // per round: store rate / raw rate
}

// spread returns the smallest and largest per-round ratio.
func (p pair) spread() (lo, hi float64) {
	if len(p.ratios) == 0 {
		return 0, 0
	}
	return slices.Min(p.ratios), slices.Max(p.ratios)
}

type loadFn func(d time.Duration, seed uint64) (result, error)

// comparePair runs rounds rounds; each side gets d in total. rate reads the value compared
// (IOPS or MB/s) from a result.
func comparePair(raw, store loadFn, d time.Duration, rounds int, rate func(result) float64) (pair, error) {
	var p pair
	slice := d / time.Duration(rounds)
	for i := range rounds {
		var rr, sr result
		var err error
		seed := uint64(2*i + 1)
		if i%2 == 0 {
			if rr, err = raw(slice, seed); err == nil {
				sr, err = store(slice, seed+1)
			}
		} else {
			if sr, err = store(slice, seed); err == nil {
				rr, err = raw(slice, seed+1)
			}
		}
		if err != nil {
			return p, err
		}
		p.raw = p.raw.add(rr)
		p.store = p.store.add(sr)
		if sr.ops > 0 && rr.ops > 0 {
			p.ratios = append(p.ratios, rate(sr)/rate(rr))
		}
	}
	return p, nil
}

// median returns the median of v (the mean of the middle two for an even count).
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

const directAlign = 4096

// alignedBuf returns n bytes whose start is aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	if off != 0 {
		off = directAlign - off
	}
	return b[off : off+n : off+n]
}

// createRaw creates a raw file of size bytes opened with O_DIRECT, filled with non-zero data
// written sequentially (so that it is allocated, like the prefilled volume it is compared with).
func createRaw(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_DIRECT, 0o600)
	if err != nil {
		return nil, err
	}
	buf := alignedBuf(1 << 20)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range buf {
		buf[i] = byte(rng.Uint32()) | 1
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			return nil, fmt.Errorf("fill %s: %w", path, err)
		}
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
