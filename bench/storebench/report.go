package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dataimage/dataimage/internal/units"
)

// report collects every result of a run and renders BENCHMARKS.md.
type report struct {
	cfg      config
	started  time.Time
	elapsed  time.Duration
	machine  [][2]string
	perf     []cmpRow   // store vs raw, 4 KiB blocks, qd 1 and 32
	bsRows   []cmpRow   // every block size (4 KiB rows are perf's)
	metas    []poolMeta // per block size: what the prefill of the perf volume cost
	qemu     *qemuResult
	qemuErr  error
	lat      *latResult
	snapRead *snapReadResult
	mem      *memResult
	csi      *csiResult
	kdev     *kdevResult
	ext4     *ext4Result
	restart  *restartResult
	check    *checkResult

	goals []goal // filled while rendering
}

// goal is one line of the summary.
type goal struct {
	id       string // key for the analysis of misses
	what     string
	measured string
	target   string
	met      bool
}

func (r *report) addGoal(g goal) { r.goals = append(r.goals, g) }

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// markdown renders the report.
func (r *report) markdown() string {
	var body strings.Builder
	r.perfSection(&body)
	r.qemuSection(&body)
	r.latSection(&body)
	r.snapReadSection(&body)
	r.memSection(&body)
	r.bsSection(&body)
	r.csiSection(&body)
	r.kdevSection(&body)
	r.ext4Section(&body)
	r.restartSection(&body)
	r.checkSection(&body)

	var out strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&out, format, args...) }
	w("# Block store benchmarks\n\n")
	w("Written by the bench report tool (`bench/storebench`); do not edit by hand.\n\n")
	w("**Reproduce:** `make bench` runs `hack/bench.sh`, which runs `go run ./bench/storebench -write -out BENCHMARKS.md`: the full run (about %s here) rewrites this file. ", roundDur(r.elapsed))
	w("`make bench BENCH_ARGS=-quick` is a smoke run of a few minutes that only prints the report; `BENCH_ARGS='-dir /path'` measures another disk (scratch files go in a temporary directory there and are removed).\n\n")
	mode := "full"
	if r.cfg.quick {
		mode = "quick (-quick: shorter runs, fewer repetitions; do not compare with full runs)"
	}
	w("**Run:** %s UTC, %s mode, %s in total.\n\n", r.started.UTC().Format("2006-01-02 15:04"), mode, roundDur(r.elapsed))
	w("## Machine\n\n| | |\n|---|---|\n")
	for _, kv := range r.machine {
		w("| %s | %s |\n", kv[0], kv[1])
	}
	w("\n## Method\n\n")
	w("- Every throughput is a ratio against a baseline measured **in the same run on the same disk**: a 1 GiB raw file opened with `O_DIRECT`, prefilled, read and written with pread/pwrite (`os.File.ReadAt/WriteAt`). The pool is a file in the same directory opened with `Options{DirectIO: true}`, so neither side uses the page cache; it is thin (a sparse file, the default) except in the rows marked *thick pool* (`Options{Preallocate: true}`). Absolute numbers on this virtual disk are noisy; the ratios are what matter.\n")
	w("- Each comparison alternates the two sides in %d rounds — raw then store, store then raw, and so on (A B B A A B B A) — each slice %s, so each side gets %s and drift of the disk hits both alike. **Ratio** is the median of the per-round ratios (store rate / raw rate of the same round), which one hiccup of the disk does not move much; *rounds* gives their range. The Raw file and Store columns are each side's I/Os (or bytes) over its total time. Queue depth N means N goroutines each with one synchronous I/O in flight. Buffers are 4 KiB-aligned. No Flush or fdatasync is issued during throughput runs on either side.\n", r.cfg.rounds, roundDur(r.cfg.dur/time.Duration(r.cfg.rounds)), roundDur(r.cfg.dur))
	w("- The volume is 1 GiB, prefilled with 1 MiB sequential writes (so its blocks are contiguous, like the raw file's); random offsets are uniform and aligned to the I/O size.\n")
	w("- Sections 6 to 8 go through the driver's gRPC API and the kernel (CSI calls on a unix socket; fio on exported block devices and on ext4 in clones); each says how it was measured. Their baselines are in the same run too: a bare fdatasync of the same pool file, and fio on a loop device over a raw file in the same directory, alternating with the store in rounds as above.\n")
	w("- Latencies: %d timed repetitions (after 3 untimed) of each operation, the 1 GiB and 1 TiB volumes alternating; with %d samples, p99 is %s.\n\n", r.cfg.reps, r.cfg.reps, rankName(r.cfg.reps))

	w("## Goals\n\n| Goal | Measured | Target | Met |\n|---|---|---|---|\n")
	for _, g := range r.goals {
		w("| %s | %s | %s | %s |\n", g.what, g.measured, g.target, metStr(g.met))
	}
	w("\n")
	out.WriteString(body.String())
	r.analysis(&out)
	return out.String()
}

// ---- 1. store vs raw ----

func (r *report) perfSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	w("## 1. In-process store vs raw file (block size 4 KiB)\n\n")
	var hows []string
	seen := map[string]bool{}
	table := func(diag bool) {
		w("| Test | QD | Raw file | Store | Ratio | rounds | Goal | Met | p50 latency raw / store | p99 latency raw / store |\n")
		w("|---|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range r.perf {
			if c.diag != diag {
				continue
			}
			goalS, met := "—", "—"
			if c.goal > 0 {
				goalS = fmt.Sprintf("≥ %.1f×", c.goal)
				met = metStr(c.ratio() >= c.goal)
				r.addGoal(goal{id: goalID(c), what: fmt.Sprintf("%s, qd %d", c.test, c.qd),
					measured: fmt.Sprintf("%.2f×", c.ratio()), target: goalS, met: c.ratio() >= c.goal})
			}
			note := ""
			if len(c.notes) > 0 {
				note = " (" + strings.Join(c.notes, "; ") + ")"
			}
			lo, hi := c.p.spread()
			w("| %s%s | %d | %s | %s | %.2f× | %.2f–%.2f | %s | %s | %s / %s | %s / %s |\n", c.test, note, c.qd,
				fmtRate(c, c.p.raw), fmtRate(c, c.p.store), c.ratio(), lo, hi, goalS, met,
				fmtLat(c.p.raw.pct(0.5)), fmtLat(c.p.store.pct(0.5)), fmtLat(c.p.raw.pct(0.99)), fmtLat(c.p.store.pct(0.99)))
			if !seen[c.test] {
				seen[c.test] = true
				hows = append(hows, fmt.Sprintf("- *%s*: %s; I/O size %s; block size %d KiB; %s per side.", c.test, c.how, units.FormatBytes(int64(c.io)), c.bs/kib, roundDur(c.p.store.dur)))
			}
		}
	}
	table(false)
	if slices.ContainsFunc(r.perf, func(c cmpRow) bool { return c.diag }) {
		w("\nDiagnostics (no goals): raw-file-only runs that price what the file system and the disk charge for things the store does.\n\n")
		table(true)
	}
	w("\nHow each line was produced:\n\n%s\n\n", strings.Join(hows, "\n"))
}

func goalID(c cmpRow) string {
	switch {
	case strings.Contains(c.test, "first write"):
		return "cow"
	case strings.Contains(c.test, "sequential"):
		return "seq"
	default:
		return "read"
	}
}

func fmtRate(c cmpRow, res result) string {
	if c.mbps {
		return fmt.Sprintf("%.0f MB/s", res.mbps())
	}
	return fmtInt(res.iops()) + " IOPS"
}

func fmtInt(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func fmtLat(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
}

func fmtMiB(n float64) string { return fmt.Sprintf("%.2f MiB", n/mib) }

func roundDur(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Millisecond).String()
	}
}

// findRow returns the perf row for a test and queue depth.
func findRow(rows []cmpRow, bs int, test string, qd int) (cmpRow, bool) {
	for _, c := range rows {
		if c.bs == bs && c.test == test && c.qd == qd {
			return c, true
		}
	}
	return cmpRow{}, false
}

// ---- 2. qcow2 ----

func (r *report) qemuSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	w("## 2. Peer: qcow2 overlay on a raw backing file (qemu-img bench)\n\n")
	if r.qemu == nil || len(r.qemu.rows) == 0 {
		w("Not measured: %v\n\n", r.qemuErr)
		return
	}
	q := r.qemu
	w("%s, `-t none` (O_DIRECT), `-i %s`. The backing file is the raw baseline file above (1 GiB, prefilled); each run uses a fresh overlay made by `qemu-img create -f qcow2 -b base.raw -F raw -o cluster_size=C overlay.qcow2`. ", q.version, q.aio)
	w("qemu-img bench only does strided I/O: the stride is %d × 4 KiB for reads (a scattered walk over every 4 KiB block) and (%d mod clusters) × the cluster size for first writes (one 4 KiB write at the start of each cluster, every cluster at most once, so each write allocates a cluster and copies the rest of it from the backing file). ", qemuPrimeStep, qemuPrimeStep)
	w("The count is calibrated on a short run (on a separate fresh overlay) to last about %s, capped by the number of clusters. Ratios are against `qemu-img bench -f raw` on the raw file in the same run (same tool, same stride), and against the Go raw baseline of section 1 (4 KiB random pread/pwrite, same queue depth). The last column repeats the store's ratio for the matching operation.\n\n", roundDur(r.cfg.dur))
	w("| Test | Image | QD | IOPS | vs qemu-img on raw | vs Go raw baseline | store, same op (sec. 1) | I/Os, seconds |\n|---|---|---|---|---|---|---|---|\n")
	rawQ := map[string]float64{}
	for _, row := range q.rows {
		if row.format == "raw" {
			rawQ[fmt.Sprintf("%s %d", row.test, row.qd)] = row.iops()
		}
	}
	for _, row := range q.rows {
		img := "raw file"
		qrKey := fmt.Sprintf("%s %d", row.test, row.qd)
		var goRawTest, storeTest string
		switch row.test {
		case "4K read":
			goRawTest, storeTest = "4K random read, mapped blocks", "4K random read, clone (shared blocks)"
		case "4K write":
			goRawTest = "4K random overwrite, owned blocks"
		case "4K first write":
			goRawTest, storeTest = cowTest(4*kib, false), cowTest(4*kib, false)
			qrKey = fmt.Sprintf("4K write %d", row.qd)
		}
		vsQ := "—"
		if row.format == "qcow2" {
			img = fmt.Sprintf("qcow2 overlay, %s clusters", units.FormatBytes(int64(row.cluster)))
			if v := rawQ[qrKey]; v > 0 {
				vsQ = fmt.Sprintf("%.2f×", row.iops()/v)
			}
		}
		vsGo, st := "—", "—"
		if c, ok := findRow(r.perf, 4*kib, goRawTest, row.qd); ok {
			vsGo = fmt.Sprintf("%.2f×", row.iops()/c.p.raw.iops())
		}
		if c, ok := findRow(r.perf, 4*kib, storeTest, row.qd); ok && row.format == "qcow2" {
			st = fmt.Sprintf("%.2f×", c.ratio())
		}
		w("| %s | %s | %d | %s | %s | %s | %s | %d in %.2f s |\n", row.test, img, row.qd, fmtInt(row.iops()), vsQ, vsGo, st, row.count, row.secs)
	}
	w("\nCommands (image names shortened):\n\n")
	for _, row := range q.rows {
		w("- `%s`\n", row.cmd)
	}
	w("\n")
}

// ---- 3. latency ----

func (r *report) latSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	l := r.lat
	if l == nil || len(l.cases) != 2 {
		return
	}
	small, big := l.cases[0], l.cases[1]
	w("## 3. Snapshot, clone and revert latency: 1 GiB vs 1 TiB volume\n\n")
	w("Each volume lives in its own pool: an 8 GiB sparse file, 4 KiB blocks, `DirectIO: true`, over-provisioning ratio 400 (so a 1 TiB volume and its clone fit the limit). Before measuring, each volume was filled, flushed, and the pool closed and reopened (a checkpoint, cold node cache):\n\n")
	for _, c := range l.cases {
		w("- %s volume: %s. Tree metadata after the fill (growth of `Stats().MetadataBytes`): %s (%d blocks); reopen took %s.\n", c.name, c.fill, units.FormatBytes(c.treeBytes), c.treeBytes/(4*kib), fmtLat(c.openTime))
	}
	w("\nOne repetition, on each volume in turn: a bare `fdatasync` of the pool file (its own read-only descriptor); `Pool.Flush` with nothing pending; one 4 KiB write at a random offset in the first GiB, then `Pool.Flush` (timed); `CreateSnapshot` (timed); `Clone` of that snapshot at its size (timed); `DeleteVolume` of the clone (timed); one 4 KiB write + Flush (untimed); `Revert` to the snapshot (timed); `DeleteSnapshot` (timed). Every timed operation is durable when it returns.\n\n")
	w("The goal is that snapshot, clone and revert take the same time at both sizes (1 TiB / 1 GiB ≤ 1.5, on p50) and at most 1 ms more than one flush: the *excess* columns subtract the bare fdatasync of the same volume's pool (p50 from p50, p99 from p99).\n\n")
	w("| Operation | 1 GiB p50 | 1 GiB p99 | 1 TiB p50 | 1 TiB p99 | 1 TiB / 1 GiB (p50) | excess p50 (1 GiB / 1 TiB) | excess p99 (1 GiB / 1 TiB) | Met (ratio ≤ 1.5, excess ≤ 1 ms) |\n|---|---|---|---|---|---|---|---|---|\n")
	isGoal := map[string]bool{}
	for _, op := range goalOps {
		isGoal[op] = true
	}
	for _, op := range latOps {
		s50, s99 := quantile(small.samples[op], 0.5), quantile(small.samples[op], 0.99)
		b50, b99 := quantile(big.samples[op], 0.5), quantile(big.samples[op], 0.99)
		ratio := float64(b50) / float64(s50)
		ex := func(c *latCase, q float64) time.Duration {
			return quantile(c.samples[op], q) - quantile(c.samples[opFdatasync], q)
		}
		exS := "—"
		exS99 := "—"
		met := "—"
		if op != opFdatasync {
			exS = fmtSigned(ex(small, 0.5)) + " / " + fmtSigned(ex(big, 0.5))
			exS99 = fmtSigned(ex(small, 0.99)) + " / " + fmtSigned(ex(big, 0.99))
		}
		if isGoal[op] {
			okRatio := ratio <= 1.5
			okEx := max(ex(small, 0.5), ex(big, 0.5)) <= time.Millisecond
			okEx99 := max(ex(small, 0.99), ex(big, 0.99)) <= time.Millisecond
			var parts []string
			parts = append(parts, "ratio "+metStr(okRatio), "excess p50 "+metStr(okEx), "excess p99 "+metStr(okEx99))
			met = strings.Join(parts, ", ")
			r.addGoal(goal{id: "latratio", what: op + ": 1 TiB / 1 GiB (p50)", measured: fmt.Sprintf("%.2f", ratio), target: "≤ 1.5", met: okRatio})
			r.addGoal(goal{id: "latexcess", what: op + ": latency − one fdatasync, p50 (worse of the two sizes)",
				measured: fmtSigned(max(ex(small, 0.5), ex(big, 0.5))), target: "≤ 1 ms", met: okEx})
			r.addGoal(goal{id: "latexcess99", what: op + ": latency − one fdatasync, p99 (worse of the two sizes)",
				measured: fmtSigned(max(ex(small, 0.99), ex(big, 0.99))), target: "≤ 1 ms", met: okEx99})
		}
		w("| %s | %s | %s | %s | %s | %.2f | %s | %s | %s |\n", op, fmtLat(s50), fmtLat(s99), fmtLat(b50), fmtLat(b99), ratio, exS, exS99, met)
	}
	w("\nA commit (blockstore/journal.go gives its order) is an fdatasync of the data if anything was written since the last one, then a journal block write and a second fdatasync. `Pool.Flush` after a write pays all three; snapshot, clone and revert here follow a Flush with no write in between, so each is a journal block write and one fdatasync plus in-memory work (and, for snapshot and revert, waiting for the I/O in flight before they apply: blockstore/volume.go):\n\n")
	for _, c := range l.cases {
		w("- %s\n", latBreakdown(c))
	}
	w("\n")
}

func fmtSigned(d time.Duration) string {
	if d < 0 {
		return "−" + fmtLat(-d)
	}
	return "+" + fmtLat(d)
}

// ---- 4. metadata and memory ----

// rcBookkeeping is the heap the store keeps for every refcount page of a pool, resident or
// not: a *rcPage slot in refcounts.pages (8 bytes), the page's non-zero count in
// refcounts.used (4 bytes) and its durable slot in refcounts.slot (1 byte); refcount.go.
const rcBookkeeping = 8 + 4 + 1

func perTiB(bytesPerByte float64) float64 { return bytesPerByte * (1 << 40) }

func (r *report) memSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	m := r.mem
	if m == nil {
		return
	}
	pl := m.plan
	s0, s1 := m.sizes[0], m.sizes[1]
	dm := float64(s1.mapped - s0.mapped)
	w("## 4. Metadata and memory per amount mapped\n\n")

	w("### Resident memory per TiB mapped (the goal)\n\n")
	w("With bounded caches, what matters is how resident memory grows with the amount mapped once the caches are full and nothing is dirty. ")
	w("Two pools (4 KiB blocks, `DirectIO: true`, thin), each a file of 1.25 × what it maps + 64 MiB so that whatever the store keeps per pool block grows in proportion, map %s and %s into one volume with 1 MiB sequential writes (queue depth 4). ", units.FormatBytes(s0.mapped), units.FormatBytes(s1.mapped))
	w("Each pool is closed (a checkpoint: nothing stays dirty), reopened with small fixed cache budgets — **`NodeCacheBytes` %s, `RefcountCacheBytes` %s**, the same at both sizes — and every mapped block is read once (1 MiB reads, queue depth 4). ", units.FormatBytes(memNodeCacheBytes), units.FormatBytes(memRCCacheBytes))
	w("**Heap** is the growth of `runtime.MemStats.HeapInuse` after two `runtime.GC()` since just before `Open`, with the pool open; the value at each size is the median of %d readings: right after the full read, and after each of %d re-reads of one block at the start of a leaf's range (each loads one tree node, so the node cache's occupancy, which its CLOCK eviction keeps between 7/8 of its budget and all of it (blockstore/tree.go), moves through its range). ", memRereads+1, memRereads)
	w("The **slope** is Δheap / Δmapped between the two sizes; per TiB is the slope × 1024 GiB. ")
	nodesFull := s0.nodes > int64(pl.maxNodes)
	rcUsed := (uint64(s0.mapped)/uint64(m.bs) + uint64(s0.nodes) + uint64(pl.perPage) - 1) / uint64(pl.perPage)
	rcFull := rcUsed > uint64(pl.maxPages)
	w("The budgets are small so that both caches are full at both sizes: the node cache keeps at most %d clean nodes (`Options.NodeCacheBytes` / (block size + 64 + 8 × `Geometry.NodeEntries`), at least 64: blockstore/pool.go) and the smaller volume has %d tree nodes; the refcount cache keeps at most %d clean pages (`Options.RefcountCacheBytes` / (4 × %d + 48), at least 2: blockstore/pool.go) and the smaller pool has at least %d pages with a non-zero count. ",
		pl.maxNodes, s0.nodes, pl.maxPages, pl.perPage, rcUsed)
	if nodesFull && rcFull {
		w("So the difference between the sizes holds only what grows with the amount mapped (or with the pool, sized in proportion), not the caches filling up.\n\n")
	} else {
		w("**In this run a cache is not full at the smaller size, so the slope also counts that cache filling up** (use a larger -memgib).\n\n")
	}
	bk := func(s memSize) int64 { return int64(s.rcPages) * rcBookkeeping }
	bkTiB := perTiB(float64(bk(s1)-bk(s0)) / dm)
	heapTiB := perTiB(m.slope)
	resTiB := perTiB(float64(m.band) / dm)
	w("| | %s mapped | %s mapped | per TiB mapped (slope × 1024) |\n|---|---|---|---|\n", units.FormatBytes(s0.mapped), units.FormatBytes(s1.mapped))
	w("| pool file | %s | %s | — |\n", units.FormatBytes(s0.poolBytes), units.FormatBytes(s1.poolBytes))
	w("| tree nodes of the volume (growth of `Stats().MetadataBytes` / block size) | %d | %d | — |\n", s0.nodes, s1.nodes)
	w("| heap after `Open` | %s | %s | %s |\n", fmtKiB(s0.open), fmtKiB(s1.open), fmtMiB(perTiB(float64(s1.open-s0.open)/dm)))
	w("| **heap after reading every mapped block** (median; range of the readings) | %s (%s–%s) | %s (%s–%s) | **%s** (± %s) |\n",
		fmtKiB(s0.read), fmtKiB(slices.Min(s0.reads)), fmtKiB(slices.Max(s0.reads)),
		fmtKiB(s1.read), fmtKiB(slices.Min(s1.reads)), fmtKiB(slices.Max(s1.reads)), fmtMiB(heapTiB), fmtMiB(resTiB))
	w("| of which, by the code: per-page refcount bookkeeping (%d bytes for each of the pool's refcount pages, resident or not) | %s (%d pages) | %s (%d pages) | %s |\n",
		rcBookkeeping, fmtKiB(bk(s0)), s0.rcPages, fmtKiB(bk(s1)), s1.rcPages, fmtMiB(bkTiB))
	met := heapTiB <= 8*mib
	r.addGoal(goal{id: "mem", what: fmt.Sprintf("resident memory per TiB mapped (heap slope between %s and %s mapped, caches full, × 1024)", units.FormatBytes(s0.mapped), units.FormatBytes(s1.mapped)),
		measured: fmt.Sprintf("%s (± %s)", fmtMiB(heapTiB), fmtMiB(resTiB)), target: "≤ 8 MiB", met: met})
	w("\n**Goal: resident memory per TiB mapped ≤ 8 MiB: %s ± %s, %s.** ", fmtMiB(heapTiB), fmtMiB(resTiB), metStr(met))
	w("The ± is the widest spread of the readings at one size over the difference in size mapped: a bound on how far the node cache's occupancy and heap span rounding move the slope. ")
	w("The bookkeeping row is what the store keeps for every refcount page of the pool (blockstore/refcount.go: an 8-byte pointer, a 4-byte count and a 1-byte slot per page of %d blocks): %.1f MiB per TiB of pool, here %s per TiB mapped since each pool is 1.25 × what it maps.\n\n",
		pl.perPage, float64(rcBookkeeping)*float64(1<<40)/float64(m.bs)/float64(pl.perPage)/mib, fmtMiB(bkTiB))

	w("### Fixed: the cache budgets\n\n")
	w("Not per TiB: the caches are bounded by budgets that do not depend on the amount mapped. At the defaults, `NodeCacheBytes` %s (at most %d clean tree nodes; the store counts %d bytes per node, about twice a node's heap, which is a %d-entry slice of 4 KiB plus a small struct) and `RefcountCacheBytes` %s (at most %d clean refcount pages of 4 KiB). ",
		units.FormatBytes(defNodeCacheBytes), pl.defMaxNodes, m.bs+64+8*pl.fanout, pl.fanout, units.FormatBytes(defRCCacheBytes), pl.defMaxPages)
	w("With the small budgets above, the part of the heap that does not grow with the amount mapped (the reading at %s minus the slope × %s) was %s.\n\n",
		units.FormatBytes(s0.mapped), units.FormatBytes(s0.mapped), fmtKiB(int64(float64(s0.read)-m.slope*float64(s0.mapped))))

	w("### Transient: dirty state while writing\n\n")
	n := m.points[len(m.points)-1].mapped
	w("A fresh pool with default options (4 KiB blocks, `DirectIO: true`, thin file of %s) with one %s volume, mapped in four equal steps of 1 MiB sequential writes (queue depth 4), each step followed by `Flush` (a journal commit, not a checkpoint). ", units.FormatBytes(n+2*gib), units.FormatBytes(n))
	w("After each step: **metadata** = growth of `Stats().MetadataBytes` since the volume was created (tree node blocks plus catalog blocks; the fixed regions do not grow); **heap** = growth of `HeapInuse` after two `runtime.GC()` since before the pool was created; **RSS** = growth of VmRSS (`/proc/self/status`) after `debug.FreeOSMemory()`. Per-GiB figures are least-squares slopes over the five points.\n\n")
	w("| Mapped | Metadata | Heap | RSS |\n|---|---|---|---|\n")
	for _, p := range m.points {
		w("| %s | %s | %s | %s |\n", units.FormatBytes(p.mapped), fmtMiB(float64(p.meta)), fmtMiB(float64(p.heap)), fmtMiB(float64(p.rss)))
	}
	metaPct := m.metaSlope * 100
	r.addGoal(goal{id: "meta", what: "metadata per GiB mapped (tree nodes, 4 KiB blocks, dense)", measured: fmt.Sprintf("%s/GiB = %.3f%%", fmtMiB(m.metaSlope*gib), metaPct), target: "≤ 0.3%", met: metaPct <= 0.3})
	w("\n| Measure | Value | Goal | Met |\n|---|---|---|---|\n")
	w("| metadata per GiB mapped (slope) | %s = %.3f%% of the data | ≤ 0.3%% | %s |\n", fmtMiB(m.metaSlope*gib), metaPct, metStr(metaPct <= 0.3))
	w("| heap per GiB mapped before any checkpoint (slope; transient) | %s | — | — |\n", fmtMiB(m.heapSlope*gib))
	w("| RSS per GiB mapped before any checkpoint (slope; transient) | %s | — | — |\n", fmtMiB(m.rssSlope*gib))
	leafBytes := int64(pl.fanout) * int64(m.bs)
	peakMapped := float64(pl.dirtyNodesMax) * float64(leafBytes)
	w("\nThis growth is dirty tree nodes and dirty refcount pages, pinned in memory until the next checkpoint writes them (blockstore/checkpoint.go; neither cache evicts a dirty entry). ")
	w("What ends it is the checkpoint policy (blockstore/journal.go), checked after every `Volume.WriteAt` and at every commit: more than max(clean-node limit / 2, 4096) dirty tree nodes — %d at the default budget —, the journal more than half full, more than 16 × its blocks in uncommitted records, or more blocks waiting for a checkpoint to be freed than 1/8 of the data region. ", pl.dirtyNodesMax)
	w("Dense sequential mapping creates one leaf per %s, so %d dirty nodes come after about %s mapped: at the measured %s per GiB, a peak of about %s before the checkpoint that clears it. ",
		units.FormatBytes(leafBytes), pl.dirtyNodesMax, units.FormatBytes(int64(peakMapped)), fmtMiB(m.heapSlope*gib), fmtMiB(m.heapSlope*peakMapped))
	w("Scattered first writes reach %d dirty leaves sooner (one per leaf range touched), but the count bounds them alike. Dirty refcount pages are not among the triggers: they are bounded only through the others (see the deletes below).\n\n", pl.dirtyNodesMax)

	w("### Found while measuring: writing without reading, and deleting\n\n")
	w("| Heap growth | %s | %s | per TiB (slope × 1024) |\n|---|---|---|---|\n", units.FormatBytes(s0.mapped), units.FormatBytes(s1.mapped))
	w("| after writing the goal pools above (small budgets; a %s journal, so a checkpoint every few `Flush`es, one per %s written; checkpoints taken: %v / %v), pool open | %s | %s | %s |\n",
		units.FormatBytes(memJournalBytes), units.FormatBytes(memFlushEvery), s0.checkpoints, s1.checkpoints, fmtMiB(float64(s0.written)), fmtMiB(float64(s1.written)), fmtMiB(perTiB(m.writeRate)))
	w("| from `DeleteVolume` of the mapped volume (after the read above) | %s | %s | %s |\n",
		fmtMiB(float64(s0.deleted-s0.read)), fmtMiB(float64(s1.deleted-s1.read)), fmtMiB(perTiB(m.delRate)))
	w("| the same, after the next checkpoint (taken: %v / %v) | %s | %s | %s |\n", s0.ckptLSNNew, s1.ckptLSNNew,
		fmtMiB(float64(s0.ckptAfter-s0.read)), fmtMiB(float64(s1.ckptAfter-s1.read)), fmtMiB(perTiB(float64((s1.ckptAfter-s1.read)-(s0.ckptAfter-s0.read))/dm)))
	w("\nWith caches bounded and checkpoints taken, neither should grow with the amount written or deleted; see *Other findings* for what does.\n\n")

	// Fixed on-disk regions, per GiB of pool (not of mapped data).
	w("**On disk**, sized by the pool rather than by what is mapped (`Geometry`; blockstore/pool.go lays it out): refcount pages of %d counts of 4 bytes, two slots each, i.e. %.3f%% of the pool; the journal, 1/64 of the pool (1.56%%) between 1 MiB and 256 MiB; two superblocks. ",
		pl.perPage, 2*100/float64(pl.perPage))
	if l := r.lat; l != nil && len(l.cases) == 2 {
		var parts []string
		for _, c := range l.cases {
			parts = append(parts, fmt.Sprintf("the %s latency volume of section 3 holds %d written 4 KiB blocks and %s of tree nodes (%.1f%% of the data written)", c.name, c.written, units.FormatBytes(c.treeBytes), 100*float64(c.treeBytes)/float64(int64(c.written)*4*kib)))
		}
		w("Sparse mapping costs more per byte mapped, since a leaf node is written for every %s range touched: %s.", units.FormatBytes(leafBytes), strings.Join(parts, "; "))
	}
	w("\n\n")
}

func fmtKiB(n int64) string { return fmt.Sprintf("%d KiB", n/kib) }

// ---- 5. block size ----

func (r *report) bsSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	w("## 5. Block size\n\n")
	if len(r.metas) < 2 {
		w("Not measured in this run (the block-size sweep is skipped with -quick).\n\n")
		return
	}
	var sizes []int
	for _, m := range r.metas {
		sizes = append(sizes, m.bs)
	}
	w("The same comparisons at queue depth 1 on a fresh pool of each block size (the 4 KiB column is section 1's qd 1 rows), each against its own raw baseline in the same alternating way; median ratio (range of the rounds; store value).\n\n")
	w("| Test (qd 1) |")
	for _, bs := range sizes {
		w(" %d KiB blocks |", bs/kib)
	}
	w("\n|---|")
	for range sizes {
		w("---|")
	}
	w("\n")
	tests := []string{"4K random read, mapped blocks", "4K random overwrite, owned blocks", cowTest(4*kib, false), "1M sequential read", "1M sequential write, owned blocks"}
	geo := make([]float64, len(sizes))
	for _, t := range tests {
		w("| %s |", t)
		for i, bs := range sizes {
			c, ok := findRow(r.bsRows, bs, t, 1)
			if !ok {
				w(" — |")
				continue
			}
			geo[i] += math.Log(c.ratio())
			lo, hi := c.p.spread()
			w(" %.2f× (%.2f–%.2f; %s) |", c.ratio(), lo, hi, fmtRate(c, c.p.store))
		}
		w("\n")
	}
	w("| geometric mean of the ratios |")
	for i := range sizes {
		geo[i] = math.Exp(geo[i] / float64(len(tests)))
		w(" %.2f× |", geo[i])
	}
	w("\n| tree metadata per GiB mapped (prefill of the 1 GiB volume) |")
	for _, m := range r.metas {
		w(" %s (%.3f%%) |", units.FormatBytes(m.metaBytes), 100*float64(m.metaBytes)/float64(m.mapped))
	}
	w("\n| heap growth from that prefill (1 GiB) |")
	for _, m := range r.metas {
		w(" %s |", fmtMiB(float64(m.heapBytes)))
	}
	w("\n| prefill, 1 MiB sequential writes, qd 1 |")
	for _, m := range r.metas {
		w(" %.0f MB/s |", m.prefillMBps)
	}
	w("\n\n")
	best := 0
	for i := range geo {
		if geo[i] > geo[best] {
			best = i
		}
	}
	w("Best geometric mean: %d KiB blocks (%.2f×). ", sizes[best]/kib, geo[best])
	if sizes[best] == 4*kib {
		w("The default of 4 KiB stays: it is the best for 4 KiB I/O, which is what databases on clones mostly do.")
	} else {
		w("This run favours a larger block than the 4 KiB default; see the analysis below before changing it.")
	}
	w(" Larger blocks cut tree metadata and memory per GiB roughly in proportion, but a write smaller than the block into a block that is not the volume's alone (a clone's first write) reads the old block and writes the whole block to a new one, and a read smaller than the block reads the whole block (blockstore/io.go). An overwrite of an owned block writes just the bytes written when they are 4 KiB-aligned, also with direct I/O.\n\n")
}

// ---- analysis ----

func (r *report) analysis(out *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	w("## Analysis of misses\n\n")
	missed := map[string][]goal{}
	var ids []string
	for _, g := range r.goals {
		if !g.met {
			id := g.id
			if strings.HasPrefix(id, "lat") {
				id = "lat" // one analysis for every latency miss
			}
			if strings.HasPrefix(id, "csi") {
				id = "csi" // one analysis for every CSI miss
			}
			if _, ok := missed[id]; !ok {
				ids = append(ids, id)
			}
			missed[id] = append(missed[id], g)
		}
	}
	defer r.otherFindings(out)
	if len(ids) == 0 {
		w("Every goal was met in this run.\n")
		return
	}
	sort.SliceStable(ids, func(i, j int) bool { return analysisOrder(ids[i]) < analysisOrder(ids[j]) })
	for _, id := range ids {
		var names []string
		for _, g := range missed[id] {
			names = append(names, fmt.Sprintf("%s (%s, target %s)", g.what, g.measured, g.target))
		}
		w("- **Missed:** %s.\n", strings.Join(names, "; "))
		if text := r.explain(id); text != "" {
			w("  %s\n", text)
		}
	}
	w("\n")
}

func analysisOrder(id string) int {
	return strings.Index("read seq cow lat meta mem csi kread kcpu restart", id)
}

// otherFindings notes results without a goal that point at the store.
func (r *report) otherFindings(out *strings.Builder) {
	var items []string
	if c, ok := findRow(r.perf, 4*kib, "4K random overwrite, owned blocks", 32); ok && c.ratio() < 0.9 {
		items = append(items, fmt.Sprintf("4K random overwrite of owned blocks at qd 32 (no goal) ran at %.2f× of raw. %s", c.ratio(), r.explain("overwrite")))
	}
	items = append(items, r.memFindings()...)
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(out, "## Other findings\n\n")
	for _, it := range items {
		fmt.Fprintf(out, "- %s\n", it)
	}
	fmt.Fprintf(out, "\n")
}

// rankName says which sample the 0.99 quantile of n samples is (see quantile).
func rankName(n int) string {
	i := int(0.99*float64(n)+0.5) - 1
	switch k := n - 1 - max(i, 0); k {
	case 0:
		return "the largest sample"
	case 1:
		return "the second largest sample"
	default:
		return fmt.Sprintf("the %d-th largest sample", k+1)
	}
}
