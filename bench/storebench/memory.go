package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// Cache budgets of the pools reopened for the goal measurement. They are small so that both
// sizes measured fill both caches (the node cache holds at most 64 nodes whatever the budget,
// see memCachePlan), which makes the difference between the two sizes free of cache fill-up.
const (
	memNodeCacheBytes = 512 * kib
	memRCCacheBytes   = 128 * kib
	// memJournalBytes is the journal of the goal pools: small, so that writing them takes a
	// checkpoint every few Flushes, as a long-running pool does every half journal.
	memJournalBytes = 32 * kib
	memFlushEvery   = 16 * mib
	// memRereads is how many extra heap readings are taken after reading every block, each
	// after re-reading one leaf's worth of blocks (one node cache miss).
	memRereads = 16
)

// memPoint is the state after mapping some bytes into a pool with default options.
type memPoint struct {
	mapped int64 // bytes mapped in the volume
	heap   int64 // HeapInuse growth after GC since before the pool was created
	rss    int64 // VmRSS growth
	meta   int64 // Stats().MetadataBytes growth since the volume was created
}

// memSize is one pool of the goal measurement: mapped, closed, reopened with small cache
// budgets, read, then the volume deleted.
type memSize struct {
	mapped    int64
	poolBytes int64
	rcPages   uint64 // refcount pages of the pool (Geometry.RefcountPages)
	nodes     int64  // tree node blocks of the volume (Stats().MetadataBytes growth / block size)

	// While writing (small budgets, a checkpoint every few Flushes), heap growth since before
	// Create, after the last write and Flush.
	written     int64
	checkpoints bool // the checkpoint LSN advanced while writing

	// Heap growth since before Open.
	open       int64   // right after Open
	reads      []int64 // after reading every block once, then after each re-read
	read       int64   // median of reads
	deleted    int64   // after DeleteVolume
	ckptAfter  int64   // after the small commits that followed, up to the first checkpoint
	ckptLSNNew bool    // that checkpoint happened
}

type memResult struct {
	bs int

	// Transient growth: a fresh pool with default options, mapped in four steps.
	points    []memPoint
	heapSlope float64 // bytes of heap per byte mapped (least squares over points)
	rssSlope  float64
	metaSlope float64

	// The goal: two pools, mapped sizes[0] < sizes[1].
	sizes     [2]memSize
	slope     float64 // Δ read heap / Δ mapped
	band      int64   // largest spread of the heap readings at one size
	writeRate float64 // Δ written heap / Δ mapped
	delRate   float64 // Δ (deleted − read) / Δ mapped

	plan memCachePlan
}

// memCachePlan is what the store makes of cache budgets: the accounting that
// Options.NodeCacheBytes and Options.RefcountCacheBytes document, and the dirty-node count at
// which a commit becomes a checkpoint (blockstore/journal.go), applied to the pool's geometry
// to check that the caches are full and to state the bounds.
type memCachePlan struct {
	fanout        int
	perPage       int // counts per refcount page
	maxNodes      int // clean tree nodes kept, small budget
	maxPages      int // clean refcount pages kept, small budget
	defMaxNodes   int // the same, default budgets
	defMaxPages   int
	dirtyNodesMax int // dirty nodes before needCheckpoint asks for a checkpoint, default budget
}

func newCachePlan(g blockstore.Geometry) memCachePlan {
	bs, fanout, perPage := g.BlockSize, g.NodeEntries, g.RefcountsPerPage
	nodes := func(budget int64) int { return max(int(budget/int64(bs+64+8*fanout)), 64) }
	pages := func(budget int64) int { return max(int(budget/int64(4*perPage+48)), 2) }
	return memCachePlan{
		fanout: fanout, perPage: perPage,
		maxNodes: nodes(memNodeCacheBytes), maxPages: pages(memRCCacheBytes),
		defMaxNodes: nodes(defNodeCacheBytes), defMaxPages: pages(defRCCacheBytes),
		dirtyNodesMax: max(nodes(defNodeCacheBytes)/2, 4096),
	}
}

// The defaults of Options.NodeCacheBytes and Options.RefcountCacheBytes (Options.defaults).
const (
	defNodeCacheBytes = 64 * mib
	defRCCacheBytes   = 16 * mib
)

// memory measures resident memory against the amount mapped: the transient growth while
// writing a pool with default options, and the goal measurement (memGoal).
func (b *bench) memory() (*memResult, error) {
	const bs = 4 * kib
	res := &memResult{bs: bs}
	if err := b.memTransient(res, min(int64(b.memGiB)*gib, 4*gib)); err != nil {
		return nil, err
	}
	large := int64(b.memGiB) * gib
	small := max(large/16, 256*mib)
	for i, n := range []int64{small, large} {
		if err := b.memGoal(&res.sizes[i], n); err != nil {
			return nil, fmt.Errorf("%d MiB mapped: %w", n/mib, err)
		}
	}
	s0, s1 := res.sizes[0], res.sizes[1]
	dm := float64(s1.mapped - s0.mapped)
	res.slope = float64(s1.read-s0.read) / dm
	res.writeRate = float64(s1.written-s0.written) / dm
	res.delRate = float64((s1.deleted-s1.read)-(s0.deleted-s0.read)) / dm
	for _, s := range res.sizes {
		res.band = max(res.band, slices.Max(s.reads)-slices.Min(s.reads))
	}
	return res, nil
}

// memTransient maps n bytes into one volume of a fresh pool with default options, in four steps
// of 1 MiB sequential writes, and records the heap, RSS and metadata growth after each.
func (b *bench) memTransient(res *memResult, n int64) error {
	path := filepath.Join(b.dir, "mem.pool")
	defer removeFile(path)
	heap0, rss0 := heapInuse(), rss()
	p, err := blockstore.Create(path, blockstore.Options{Size: n + 2*gib, BlockSize: res.bs, DirectIO: true})
	if err != nil {
		return err
	}
	defer p.Close()
	vol, err := newVolume(p, "mem", n)
	if err != nil {
		return err
	}
	res.plan = newCachePlan(p.Geometry())
	meta0 := p.Stats().MetadataBytes
	point := func(mapped int64) memPoint {
		return memPoint{mapped: mapped, heap: heapInuse() - heap0, rss: rss() - rss0, meta: p.Stats().MetadataBytes - meta0}
	}
	res.points = append(res.points, point(0))
	const steps = 4
	sp := newSeq(vol, n, mib, true)
	for i := 1; i <= steps; i++ {
		step := n / steps
		if _, err := runLoad(newLimit(sp, step/mib), true, mib, 4, time.Hour, uint64(i)); err != nil {
			return fmt.Errorf("map step %d: %w", i, err)
		}
		if err := p.Flush(); err != nil {
			return err
		}
		pt := point(int64(i) * step)
		res.points = append(res.points, pt)
		b.logf("  default options, mapped %d MiB: heap +%d KiB, RSS +%d KiB, metadata +%d KiB", pt.mapped/mib, pt.heap/kib, pt.rss/kib, pt.meta/kib)
	}
	res.heapSlope = slope(res.points, func(p memPoint) int64 { return p.heap })
	res.rssSlope = slope(res.points, func(p memPoint) int64 { return p.rss })
	res.metaSlope = slope(res.points, func(p memPoint) int64 { return p.meta })
	return nil
}

// memGoal maps n bytes into a pool of 1.25 n (plus 64 MiB) with the small cache budgets,
// Flushing every memFlushEvery; closes it; reopens it with the same budgets; reads every mapped
// block once; then deletes the volume. Heap readings along the way fill s.
func (b *bench) memGoal(s *memSize, n int64) error {
	path := filepath.Join(b.dir, "memgoal.pool")
	defer removeFile(path)
	s.mapped = n
	s.poolBytes = n + n/4 + 64*mib
	opts := blockstore.Options{BlockSize: 4 * kib, DirectIO: true, NodeCacheBytes: memNodeCacheBytes, RefcountCacheBytes: memRCCacheBytes}

	heap0 := heapInuse()
	create := opts
	create.Size, create.JournalSize = s.poolBytes, memJournalBytes
	p, err := blockstore.Create(path, create)
	if err != nil {
		return err
	}
	defer func() {
		if p != nil {
			p.Close()
		}
	}()
	s.rcPages = p.Geometry().RefcountPages
	vol, err := newVolume(p, "mem", n)
	if err != nil {
		return err
	}
	id := vol.ID()
	st0 := p.Stats()
	sp := newSeq(vol, n, mib, true)
	for done := int64(0); done < n; done += memFlushEvery {
		if _, err := runLoad(newLimit(sp, min(memFlushEvery, n-done)/mib), true, mib, 4, time.Hour, uint64(done/mib)+1); err != nil {
			return fmt.Errorf("map: %w", err)
		}
		if err := p.Flush(); err != nil {
			return err
		}
	}
	st1 := p.Stats()
	s.nodes = (st1.MetadataBytes - st0.MetadataBytes) / int64(st1.BlockSize)
	s.checkpoints = st1.CheckpointLSN > st0.CheckpointLSN
	s.written = heapInuse() - heap0
	err = p.Close()
	p = nil
	if err != nil {
		return err
	}

	heap0 = heapInuse()
	if p, err = blockstore.Open(path, opts); err != nil {
		return err
	}
	s.open = heapInuse() - heap0
	if vol, err = p.Volume(id); err != nil {
		return err
	}
	if _, err := runLoad(newSeq(vol, n, mib, true), false, mib, 4, time.Hour, 9); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	s.reads = append(s.reads, heapInuse()-heap0)
	// One leaf covers fanout blocks; re-read one leaf's worth at a time from the start (long
	// evicted), so that each re-read loads one node and the CLOCK occupancy of the node cache
	// moves through its range.
	leaf := int64(p.Geometry().NodeEntries) * 4 * kib
	buf := alignedBuf(4 * kib)
	for i := range int64(memRereads) {
		if _, err := vol.ReadAt(buf, i*leaf); err != nil {
			return fmt.Errorf("re-read: %w", err)
		}
		s.reads = append(s.reads, heapInuse()-heap0)
	}
	s.read = medianInt(s.reads)
	b.logf("  %d MiB mapped (pool %d MiB, %d tree nodes): heap while writing +%d KiB; reopened +%d KiB; after reading it all +%d KiB (readings %d–%d KiB)",
		n/mib, s.poolBytes/mib, s.nodes, s.written/kib, s.open/kib, s.read/kib, slices.Min(s.reads)/kib, slices.Max(s.reads)/kib)

	ckpt := p.Stats().CheckpointLSN
	if err := p.DeleteVolume(id); err != nil {
		return err
	}
	s.deleted = heapInuse() - heap0
	// Small commits until one becomes a checkpoint (the journal is small: half of it fills
	// after a few).
	for i := 0; i < 64 && p.Stats().CheckpointLSN == ckpt; i++ {
		vi, err := p.CreateVolume(fmt.Sprintf("ckpt-%d", i), 4*mib)
		if err != nil {
			return err
		}
		if err := p.DeleteVolume(vi.ID); err != nil {
			return err
		}
	}
	s.ckptLSNNew = p.Stats().CheckpointLSN > ckpt
	s.ckptAfter = heapInuse() - heap0
	b.logf("  deleted the volume: +%d KiB; after the next checkpoint (taken: %v): +%d KiB", s.deleted/kib, s.ckptLSNNew, s.ckptAfter/kib)
	runtime.KeepAlive(vol)
	return nil
}

func medianInt(v []int64) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// limitPattern hands out at most left I/Os of an underlying pattern.
type limitPattern struct {
	pattern
	left atomic.Int64
}

func newLimit(p pattern, n int64) *limitPattern {
	l := &limitPattern{pattern: p}
	l.left.Store(n)
	return l
}

func (l *limitPattern) next(rng *rand.Rand) (ioTarget, int64, bool) {
	if l.left.Add(-1) < 0 {
		return nil, 0, false
	}
	return l.pattern.next(rng)
}

// slope fits y = a + s·mapped by least squares and returns s.
func slope(pts []memPoint, y func(memPoint) int64) float64 {
	var sx, sy, sxx, sxy float64
	for _, p := range pts {
		x, v := float64(p.mapped), float64(y(p))
		sx += x
		sy += v
		sxx += x * x
		sxy += x * v
	}
	n := float64(len(pts))
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// rss returns the resident set size in bytes, after returning freed memory to the OS.
func rss() int64 {
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if f := bytes.Fields(line); len(f) >= 2 && string(f[0]) == "VmRSS:" {
			v, _ := strconv.ParseInt(string(f[1]), 10, 64)
			return v * kib
		}
	}
	return 0
}
