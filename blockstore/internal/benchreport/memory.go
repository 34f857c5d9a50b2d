package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// memPoint is the state after mapping some bytes.
type memPoint struct {
	mapped int64 // bytes mapped in the volume
	heap   int64 // HeapInuse growth after GC since before the pool was created
	rss    int64 // VmRSS growth
	meta   int64 // Stats().MetadataBytes growth since the volume was created
}

type memResult struct {
	bs        int
	points    []memPoint
	heapSlope float64 // bytes of heap per byte mapped (least squares over points)
	rssSlope  float64
	metaSlope float64
	cold      memPoint // the pool closed and reopened: heap growth with an empty node cache
	warm      memPoint // after reading every mapped block once (node cache warm)
	cacheCap  int64    // Options.NodeCacheBytes in effect (default)
}

// memory maps N GiB into one volume in four steps of 1 MiB sequential writes and records the
// heap, RSS and metadata growth after each; then closes, reopens and reads it all.
func (b *bench) memory() (*memResult, error) {
	const bs = 4 * kib
	n := int64(b.memGiB) * gib
	res := &memResult{bs: bs, cacheCap: 64 * mib}
	path := filepath.Join(b.dir, "mem.pool")
	defer removeFile(path)

	heap0, rss0 := heapInuse(), rss()
	p, err := blockstore.Create(path, blockstore.Options{Size: n + 2*gib, BlockSize: bs, DirectIO: true})
	if err != nil {
		return nil, err
	}
	defer func() {
		if p != nil {
			p.Close()
		}
	}()
	info, err := p.CreateVolume("mem", n)
	if err != nil {
		return nil, err
	}
	vol, err := p.Volume(info.ID)
	if err != nil {
		return nil, err
	}
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
			return nil, fmt.Errorf("map step %d: %w", i, err)
		}
		if err := p.Flush(); err != nil {
			return nil, err
		}
		pt := point(int64(i) * step)
		res.points = append(res.points, pt)
		b.logf("  mapped %d MiB: heap +%d KiB, RSS +%d KiB, metadata +%d KiB", pt.mapped/mib, pt.heap/kib, pt.rss/kib, pt.meta/kib)
	}
	res.heapSlope = slope(res.points, func(p memPoint) int64 { return p.heap })
	res.rssSlope = slope(res.points, func(p memPoint) int64 { return p.rss })
	res.metaSlope = slope(res.points, func(p memPoint) int64 { return p.meta })

	if err := p.Close(); err != nil {
		p = nil
		return nil, err
	}
	p = nil
	heap1, rss1 := heapInuse(), rss()
	if p, err = blockstore.Open(path, blockstore.Options{DirectIO: true}); err != nil {
		return nil, err
	}
	res.cold = memPoint{mapped: n, heap: heapInuse() - heap1, rss: rss() - rss1}
	if vol, err = p.Volume(info.ID); err != nil {
		return nil, err
	}
	if _, err := runLoad(newSeq(vol, n, mib, true), false, mib, 4, time.Hour, 9); err != nil {
		return nil, fmt.Errorf("read back: %w", err)
	}
	res.warm = memPoint{mapped: n, heap: heapInuse() - heap1, rss: rss() - rss1}
	b.logf("  reopened: heap +%d KiB; after reading it all: heap +%d KiB", res.cold.heap/kib, res.warm.heap/kib)
	return res, nil
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
