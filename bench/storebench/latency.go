package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// Operations timed by the latency suite, in the order of one repetition.
const (
	opFdatasync  = "bare fdatasync of the pool file"
	opFlushEmpty = "Pool.Flush, nothing pending"
	opFlushOne   = "Pool.Flush after one 4 KiB write"
	opSnapshot   = "CreateSnapshot"
	opClone      = "Clone (of that snapshot)"
	opDelClone   = "DeleteVolume (the unwritten clone)"
	opRevert     = "Revert (after one 4 KiB write)"
	opDelSnap    = "DeleteSnapshot"
)

var latOps = []string{opFdatasync, opFlushEmpty, opFlushOne, opSnapshot, opClone, opDelClone, opRevert, opDelSnap}

// goalOps are the operations with a latency goal.
var goalOps = []string{opSnapshot, opClone, opRevert}

// latCase is one volume of the latency suite.
type latCase struct {
	name      string
	size      int64
	fill      string // how the volume was filled before the measurements
	written   int    // 4 KiB blocks written by the fill
	treeBytes int64  // Stats().MetadataBytes growth from the fill (tree nodes, catalog)
	openTime  time.Duration
	samples   map[string][]time.Duration

	p    *blockstore.Pool
	vol  *blockstore.Volume
	id   blockstore.VolumeID
	sync *os.File // read-only descriptor of the pool file, for the bare fdatasync
	path string
}

type latResult struct {
	reps  int
	cases []*latCase
}

// latency measures snapshot, clone and revert on a 1 GiB and a 1 TiB volume, each in its own
// pool of the same size and options, repetitions interleaved between the two.
func (b *bench) latency() (*latResult, error) {
	res := &latResult{reps: b.reps}
	leafRegions := b.fillLeaf
	small := &latCase{name: "1 GiB", size: gib}
	big := &latCase{name: "1 TiB", size: 1 << 40}
	for _, c := range []*latCase{small, big} {
		c.path = filepath.Join(b.dir, "lat-"+map[int64]string{gib: "1g", 1 << 40: "1t"}[c.size]+".pool")
		defer removeFile(c.path)
		if err := b.setupLatCase(c, leafRegions); err != nil {
			return nil, fmt.Errorf("%s volume: %w", c.name, err)
		}
		defer c.p.Close()
		defer c.sync.Close()
		res.cases = append(res.cases, c)
	}
	buf := alignedBuf(4 * kib)
	rng := rand.New(rand.NewPCG(11, 12))
	// write4K writes one 4 KiB block in the first GiB (filled alike in both volumes).
	write4K := func(c *latCase) error {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		_, err := c.vol.WriteAt(buf, rng.Int64N(gib/(4*kib))*4*kib)
		return err
	}
	timed := func(c *latCase, op string, fn func() error) error {
		t0 := time.Now()
		err := fn()
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("%s volume: %s: %w", c.name, op, err)
		}
		c.samples[op] = append(c.samples[op], d)
		return nil
	}
	const warmup = 3
	for rep := range b.reps + warmup {
		for _, c := range res.cases {
			if rep == warmup {
				clear(c.samples)
			}
			if err := timed(c, opFdatasync, func() error { return syscall.Fdatasync(int(c.sync.Fd())) }); err != nil {
				return nil, err
			}
			if err := timed(c, opFlushEmpty, c.p.Flush); err != nil {
				return nil, err
			}
			if err := write4K(c); err != nil {
				return nil, err
			}
			if err := timed(c, opFlushOne, c.p.Flush); err != nil {
				return nil, err
			}
			var snap blockstore.SnapshotInfo
			if err := timed(c, opSnapshot, func() (err error) {
				snap, err = c.p.CreateSnapshot(c.id, fmt.Sprintf("s%d", rep))
				return err
			}); err != nil {
				return nil, err
			}
			var clone blockstore.VolumeInfo
			if err := timed(c, opClone, func() (err error) {
				clone, err = c.p.Clone(snap.ID, fmt.Sprintf("c%d", rep), 0)
				return err
			}); err != nil {
				return nil, err
			}
			if err := timed(c, opDelClone, func() error { return c.p.DeleteVolume(clone.ID) }); err != nil {
				return nil, err
			}
			if err := write4K(c); err != nil {
				return nil, err
			}
			if err := c.p.Flush(); err != nil {
				return nil, err
			}
			if err := timed(c, opRevert, func() error { return c.p.Revert(c.id, snap.ID) }); err != nil {
				return nil, err
			}
			if err := timed(c, opDelSnap, func() error { return c.p.DeleteSnapshot(snap.ID) }); err != nil {
				return nil, err
			}
		}
	}
	for _, c := range res.cases {
		b.logf("  %s: snapshot p50 %v, clone p50 %v, revert p50 %v, fdatasync p50 %v", c.name,
			quantile(c.samples[opSnapshot], 0.5), quantile(c.samples[opClone], 0.5),
			quantile(c.samples[opRevert], 0.5), quantile(c.samples[opFdatasync], 0.5))
	}
	return res, nil
}

// setupLatCase creates the case's pool and volume, fills the volume, then closes and reopens
// the pool so that both cases start from a checkpoint with a cold node cache.
func (b *bench) setupLatCase(c *latCase, leafRegions int) error {
	opts := blockstore.Options{Size: 8 * gib, BlockSize: 4 * kib, DirectIO: true, OverProvisionRatio: 400}
	p, err := blockstore.Create(c.path, opts)
	if err != nil {
		return err
	}
	info, err := p.CreateVolume("vol", c.size)
	if err != nil {
		p.Close()
		return err
	}
	vol, err := p.Volume(info.ID)
	if err != nil {
		p.Close()
		return err
	}
	st0 := p.Stats()

	// One 4 KiB block in every 100 blocks of the first GiB: 1% of its blocks, every leaf of
	// its tree populated. The 1 TiB volume also gets one block at the start of each of the
	// next leafRegions 2 MiB regions (about one per leaf node) and then one per GiB up to
	// its end, so every inner node of its full-height tree exists.
	var offs []int64
	for off := int64(0); off+4*kib <= min(c.size, gib); off += 100 * 4 * kib {
		offs = append(offs, off)
	}
	c.fill = fmt.Sprintf("one 4 KiB block every 400 KiB of the first GiB (%d blocks, 1%% of them)", len(offs))
	if c.size > gib {
		n0 := len(offs)
		end := gib + int64(leafRegions)*2*mib
		for off := int64(gib); off < end && off < c.size; off += 2 * mib {
			offs = append(offs, off)
		}
		n1 := len(offs)
		for off := (end + gib - 1) / gib * gib; off < c.size; off += gib {
			offs = append(offs, off)
		}
		c.fill += fmt.Sprintf("; then one block at the start of each 2 MiB from 1 GiB to %d GiB (%d blocks); then one block at the start of each further GiB up to 1 TiB (%d blocks)",
			end/gib, n1-n0, len(offs)-n1)
	}
	c.written = len(offs)
	lp := &listPattern{t: vol, offs: offs}
	if r, err := runLoad(lp, true, 4*kib, 32, time.Hour, 3); err != nil {
		p.Close()
		return fmt.Errorf("fill: %w", err)
	} else if r.ops != int64(len(offs)) {
		p.Close()
		return fmt.Errorf("fill: wrote %d of %d blocks", r.ops, len(offs))
	}
	if err := p.Flush(); err != nil {
		p.Close()
		return err
	}
	c.treeBytes = p.Stats().MetadataBytes - st0.MetadataBytes
	if err := p.Close(); err != nil {
		return err
	}
	t0 := time.Now()
	if c.p, err = blockstore.Open(c.path, blockstore.Options{DirectIO: true}); err != nil {
		return err
	}
	c.openTime = time.Since(t0)
	if c.vol, err = c.p.Volume(info.ID); err != nil {
		return err
	}
	c.id = info.ID
	if c.sync, err = os.Open(c.path); err != nil {
		return err
	}
	c.samples = make(map[string][]time.Duration)
	b.logf("  %s volume: %d blocks written, tree metadata %d KiB, reopen %v", c.name, c.written, c.treeBytes/kib, c.openTime.Round(time.Microsecond))
	return nil
}

// listPattern writes each offset of a list once.
type listPattern struct {
	t    ioTarget
	offs []int64
	cur  atomic.Int64
}

func (p *listPattern) next(*rand.Rand) (ioTarget, int64, bool) {
	i := p.cur.Add(1) - 1
	if i >= int64(len(p.offs)) {
		return nil, 0, false
	}
	return p.t, p.offs[i], true
}
