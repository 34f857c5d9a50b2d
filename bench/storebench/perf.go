package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// cmpRow is one store-versus-raw comparison.
type cmpRow struct {
	test string  // what is measured
	io   int     // I/O size in bytes
	qd   int     // queue depth: concurrent goroutines, one I/O each
	bs   int     // pool block size
	mbps bool    // report MB/s (else IOPS)
	goal float64 // minimum ratio store/raw; 0: informational
	how  string  // the raw and store operations
	diag bool    // a diagnostic, reported apart from the goals
	// exhaust says what running out of the store's pattern means
	exhaust string
	p       pair
	notes   []string
}

func (r cmpRow) val(res result) float64 {
	if r.mbps {
		return res.mbps()
	}
	return res.iops()
}

// ratio is the median of the per-round ratios of store to raw.
func (r cmpRow) ratio() float64 { return median(r.p.ratios) }

// poolMeta is what mapping the prefilled volume cost: tree metadata and memory.
type poolMeta struct {
	bs            int
	mapped        int64 // bytes mapped by the prefill
	metaBytes     int64 // growth of Stats().MetadataBytes
	heapBytes     int64 // growth of HeapInuse after GC
	prefillMBps   float64
	fixedMetaPool int64 // Stats().MetadataBytes of the empty pool (superblocks, journal, refcount pages)
	poolBytes     int64
	geo           blockstore.Geometry
}

// perfOpts chooses which comparisons a perf run makes.
type perfOpts struct {
	bs   int
	qds  []int
	full bool // every test (else the block-size subset: random read, overwrite, clone first write, sequential)
	// thick: only the clone first writes, on a thick pool (Options{Preallocate: true})
	thick bool
}

// Diagnostics on raw files alone: first writes into a sparse file (holes) and into a
// fallocated one (unwritten extents), against the prefilled raw file.
const (
	sparseTest = "diagnostic: 4K first write into holes of a sparse raw file"
	fallocTest = "diagnostic: 4K first write into a fallocated raw file"
)

// Pool kinds, as the test names of the clone first writes give them.
const (
	thinPool  = "thin pool (default)"
	thickPool = "thick pool (Preallocate)"
)

// cowTest names the comparison of first writes of io bytes into clones.
func cowTest(io int, thick bool) string {
	kind := thinPool
	if thick {
		kind = thickPool
	}
	return fmt.Sprintf("%dK first write into a clone, %s", io/kib, kind)
}

// insertAfterCOW inserts rows (the thick pool's) after the last clone first-write row of perf
// (the thin pool's), so that the two sit together in the report.
func insertAfterCOW(perf, rows []cmpRow) []cmpRow {
	at := len(perf)
	for i, c := range perf {
		if strings.Contains(c.test, "first write into a clone") {
			at = i + 1
		}
	}
	return slices.Insert(perf, at, rows...)
}

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// perfVolSize is the size of the volume of section 1 (and of each clone of it), and of the raw
// file it is compared with.
const perfVolSize = gib

// perf runs the store-versus-raw comparisons on a fresh pool of block size o.bs.
func (b *bench) perf(o perfOpts) ([]cmpRow, poolMeta, error) {
	var rows []cmpRow
	meta := poolMeta{bs: o.bs}
	path := filepath.Join(b.dir, fmt.Sprintf("perf-%dk.pool", o.bs/kib))
	defer removeFile(path)
	poolSize := int64(16 * gib)
	if b.quick || o.thick {
		poolSize = 6 * gib
	}
	p, err := blockstore.Create(path, blockstore.Options{Size: poolSize, BlockSize: o.bs, DirectIO: true, Preallocate: o.thick})
	if err != nil {
		return nil, meta, err
	}
	defer p.Close()
	meta.poolBytes = poolSize
	meta.geo = p.Geometry()
	meta.fixedMetaPool = p.Stats().MetadataBytes

	volSize := b.volSize
	vol, err := newVolume(p, "bench", volSize)
	if err != nil {
		return nil, meta, err
	}

	// Prefill: 1 MiB sequential writes at queue depth 1, so the volume's blocks are contiguous
	// like the raw file's. Memory and metadata are measured around it.
	heap0 := heapInuse()
	st0 := p.Stats()
	t0 := time.Now()
	if err := prefill(vol); err != nil {
		return nil, meta, err
	}
	if err := p.Flush(); err != nil {
		return nil, meta, err
	}
	meta.prefillMBps = float64(volSize) / time.Since(t0).Seconds() / 1e6
	meta.mapped = volSize
	meta.metaBytes = p.Stats().MetadataBytes - st0.MetadataBytes
	meta.heapBytes = heapInuse() - heap0
	b.logf("  prefilled %d MiB at %.0f MB/s; tree metadata +%d KiB; heap +%d KiB", volSize/mib, meta.prefillMBps, meta.metaBytes/kib, meta.heapBytes/kib)

	raw := b.raw
	rawSize := b.rawSize
	d := b.dur
	bsName := fmt.Sprintf("%d KiB", o.bs/kib)
	compare := func(r cmpRow, rawPat, storePat func() pattern, write bool) error {
		r.bs = o.bs
		b.logf("  %s, %d KiB I/O, qd %d, block size %s", r.test, r.io/kib, r.qd, bsName)
		rp, sp := rawPat(), storePat()
		pr, err := comparePair(
			func(d time.Duration, seed uint64) (result, error) { return runLoad(rp, write, r.io, r.qd, d, seed) },
			func(d time.Duration, seed uint64) (result, error) { return runLoad(sp, write, r.io, r.qd, d, seed) },
			d, b.rounds, r.val)
		if err != nil {
			return fmt.Errorf("%s qd %d: %w", r.test, r.qd, err)
		}
		r.p = pr
		if pr.store.exhausted {
			r.notes = append(r.notes, fmt.Sprintf("the store's side used up its pattern (%s) after %.1f s of its %.1f s", r.exhaust, pr.store.dur.Seconds(), d.Seconds()))
		}
		rows = append(rows, r)
		lo, hi := pr.spread()
		b.logf("    raw %.0f, store %.0f %s: %.2f× (rounds %.2f–%.2f)", r.val(pr.raw), r.val(pr.store), unitOf(r), r.ratio(), lo, hi)
		return nil
	}
	rnd := func(t ioTarget, size int64, io int) func() pattern {
		return func() pattern { return randomPattern{t: t, size: size, io: int64(io)} }
	}
	seq := func(t ioTarget, size int64, io int) func() pattern {
		return func() pattern { return newSeq(t, size, int64(io), false) }
	}

	// in-place tests on the prefilled volume (not on the thick pool).
	if !o.thick {
		for _, qd := range o.qds {
			if err := compare(cmpRow{test: "4K random read, mapped blocks", io: 4 * kib, qd: qd, goal: 0.9,
				how: "pread vs Volume.ReadAt, uniform random 4 KiB-aligned offsets over the 1 GiB prefilled volume / raw file"},
				rnd(raw, rawSize, 4*kib), rnd(vol, volSize, 4*kib), false); err != nil {
				return rows, meta, err
			}
		}
		for _, qd := range o.qds {
			if err := compare(cmpRow{test: "1M sequential read", io: mib, qd: qd, mbps: true, goal: 0.9,
				how: "pread vs Volume.ReadAt, consecutive 1 MiB offsets shared by all workers, wrapping"},
				seq(raw, rawSize, mib), seq(vol, volSize, mib), false); err != nil {
				return rows, meta, err
			}
		}
		for _, qd := range o.qds {
			if err := compare(cmpRow{test: "4K random overwrite, owned blocks", io: 4 * kib, qd: qd,
				how: "pwrite vs Volume.WriteAt, uniform random 4 KiB-aligned offsets; the volume has no snapshot, so every block is overwritten in place"},
				rnd(raw, rawSize, 4*kib), rnd(vol, volSize, 4*kib), true); err != nil {
				return rows, meta, err
			}
		}
		for _, qd := range o.qds {
			if err := compare(cmpRow{test: "1M sequential write, owned blocks", io: mib, qd: qd, mbps: true, goal: 0.9,
				how: "pwrite vs Volume.WriteAt, consecutive 1 MiB offsets shared by all workers, wrapping; overwrites in place"},
				seq(raw, rawSize, mib), seq(vol, volSize, mib), true); err != nil {
				return rows, meta, err
			}
		}
		if err := p.Flush(); err != nil {
			return rows, meta, err
		}
	}

	snap, err := p.CreateSnapshot(vol.ID(), "base")
	if err != nil {
		return rows, meta, err
	}
	if o.full {
		ci, err := p.Clone(snap.ID, "reader", 0)
		if err != nil {
			return rows, meta, err
		}
		cv, err := p.Volume(ci.ID)
		if err != nil {
			return rows, meta, err
		}
		for _, qd := range o.qds {
			if err := compare(cmpRow{test: "4K random read, clone (shared blocks)", io: 4 * kib, qd: qd, goal: 0.9,
				how: "pread vs Volume.ReadAt on an unwritten clone of a snapshot of the prefilled volume"},
				rnd(raw, rawSize, 4*kib), rnd(cv, volSize, 4*kib), false); err != nil {
				return rows, meta, err
			}
		}
		if err := p.DeleteVolume(ci.ID); err != nil {
			return rows, meta, err
		}
	}

	// First writes into clones: every write lands on a block the clone still shares with the
	// snapshot, so each one allocates a block (and, for a write smaller than the block,
	// copies the old one). A set of clones is prepared per run so the pattern does not run out.
	cowSizes := []int{4 * kib, 8 * kib}
	if !o.full && !o.thick {
		cowSizes = cowSizes[:1]
	}
	for _, io := range cowSizes {
		for _, qd := range o.qds {
			const nclones = 8
			var clones []ioTarget
			var ids []blockstore.VolumeID
			for i := range nclones {
				ci, err := p.Clone(snap.ID, fmt.Sprintf("cow-%d-%d-%d", io, qd, i), 0)
				if err != nil {
					return rows, meta, err
				}
				cv, err := p.Volume(ci.ID)
				if err != nil {
					return rows, meta, err
				}
				clones = append(clones, cv)
				ids = append(ids, ci.ID)
			}
			unit := int64(max(o.bs, io))
			cp := newCOW(clones, volSize, unit, int64(io), uint64(io+qd))
			how := fmt.Sprintf("pwrite (random %d KiB-aligned overwrite of the raw file) vs Volume.WriteAt at a random not-yet-written %d KiB unit of 8 fresh clones of a snapshot of the prefilled volume (copy-on-write)", io/kib, unit/kib)
			if o.thick {
				how += "; the pool is thick (Options{Preallocate: true}): its file was fallocated at creation and freed blocks are not punched out, so a new block is never a hole"
			} else {
				how += "; the pool is thin (the default): a sparse file, and freed blocks are punched out, so a block written for the first time is a hole"
			}
			if err := compare(cmpRow{test: cowTest(io, o.thick), io: io, qd: qd, goal: 0.5, how: how, exhaust: "no shared block left in the clones"},
				rnd(raw, rawSize, io), func() pattern { return cp }, true); err != nil {
				return rows, meta, err
			}
			b.logf("    %d first writes into the clones", cp.used())
			for _, id := range ids {
				if err := p.DeleteVolume(id); err != nil {
					return rows, meta, err
				}
			}
			if err := p.Flush(); err != nil {
				return rows, meta, err
			}
		}
	}

	if o.full {
		// Sequential writes that allocate: a fresh volume per run, written once from the start.
		allocSize := 4 * volSize
		if b.quick {
			allocSize = 2 * volSize
		}
		for _, qd := range o.qds {
			av, err := newVolume(p, fmt.Sprintf("alloc-%d", qd), allocSize)
			if err != nil {
				return rows, meta, err
			}
			sp := newSeq(av, allocSize, mib, true)
			if err := compare(cmpRow{test: "1M sequential write, unmapped blocks (allocating)", io: mib, qd: qd, mbps: true, exhaust: "the whole fresh volume written",
				how: fmt.Sprintf("pwrite (1 MiB sequential overwrite of the raw file) vs Volume.WriteAt writing an empty %d GiB volume once from its start", allocSize/gib)},
				seq(raw, rawSize, mib), func() pattern { return sp }, true); err != nil {
				return rows, meta, err
			}
			if err := p.DeleteVolume(av.ID()); err != nil {
				return rows, meta, err
			}
		}
	}

	if o.full {
		// Diagnostics on raw files alone: what the file system charges for first writes into
		// holes (which a thin pool pays) and into fallocated blocks (which a thick pool pays),
		// and for 1 MiB I/O that is not 1 MiB-aligned in the file (the store's data blocks are
		// not).
		for _, falloc := range []bool{false, true} {
			const holeSize = 4 * gib
			hp := filepath.Join(b.dir, "holes.raw")
			hf, err := os.OpenFile(hp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_DIRECT, 0o600)
			if err != nil {
				return rows, meta, err
			}
			if falloc {
				err = syscall.Fallocate(int(hf.Fd()), 0, 0, holeSize)
			} else {
				err = hf.Truncate(holeSize)
			}
			if err != nil {
				hf.Close()
				removeFile(hp)
				return rows, meta, err
			}
			test, what := sparseTest, "a sparse 4 GiB raw file (ftruncate: every block a hole)"
			if falloc {
				test, what = fallocTest, "a 4 GiB raw file made with fallocate (mode 0: every block allocated, unwritten)"
			}
			for _, qd := range o.qds {
				pat := newCOW([]ioTarget{hf}, holeSize, 4*kib, 4*kib, uint64(qd))
				if err = compare(cmpRow{test: test, io: 4 * kib, qd: qd, diag: true, exhaust: "no unwritten block left",
					how: "not the store: pwrite into the prefilled raw file vs pwrite at a random not-yet-written 4 KiB block of " + what + ", opened O_DIRECT on the same file system (the Store column holds that file)"},
					rnd(raw, rawSize, 4*kib), func() pattern { return pat }, true); err != nil {
					break
				}
			}
			hf.Close()
			removeFile(hp)
			if err != nil {
				return rows, meta, err
			}
		}
		const skew = 24 * kib
		mis := offsetTarget{t: raw, delta: skew}
		for _, write := range []bool{false, true} {
			test, op := "diagnostic: 1M sequential read, raw file at a 24 KiB offset", "pread"
			if write {
				test, op = "diagnostic: 1M sequential write, raw file at a 24 KiB offset", "pwrite"
			}
			if err := compare(cmpRow{test: test, io: mib, qd: 1, mbps: true, diag: true,
				how: fmt.Sprintf("not the store: 1 MiB sequential %s of the raw file at 1 MiB-aligned offsets vs at offsets 24 KiB past them (the Store column holds the misaligned one)", op)},
				seq(raw, rawSize, mib), func() pattern { return newSeq(mis, rawSize-mib, mib, false) }, write); err != nil {
				return rows, meta, err
			}
		}
	}
	return rows, meta, p.Flush()
}

// offsetTarget shifts every offset by delta.
type offsetTarget struct {
	t     ioTarget
	delta int64
}

func (o offsetTarget) ReadAt(p []byte, off int64) (int, error)  { return o.t.ReadAt(p, off+o.delta) }
func (o offsetTarget) WriteAt(p []byte, off int64) (int, error) { return o.t.WriteAt(p, off+o.delta) }

func unitOf(r cmpRow) string {
	if r.mbps {
		return "MB/s"
	}
	return "IOPS"
}

// heapInuse returns HeapInuse after a full collection.
func heapInuse() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}
