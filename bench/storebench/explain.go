package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/dataimage/dataimage/internal/units"
)

// explain returns the analysis of a missed goal: the evidence of this run, and where in the
// store the time or memory goes. Code is named by its package directory and file
// (blockstore/io.go) or by exported API, never by an unexported name, which nothing keeps true
// (bench/prose_test.go checks); anything said about the store's behaviour is either measured
// in this run or read from that code, and says which.
func (r *report) explain(id string) string {
	switch id {
	case "read":
		return r.explainRead()
	case "seq":
		return r.explainSeq()
	case "cow":
		return r.explainCOW()
	case "lat":
		return r.explainLat()
	case "meta":
		return fmt.Sprintf("A tree node holds %d entries at 4 KiB blocks (`Geometry.NodeEntries`), so dense mapping costs one leaf per %d blocks; sparse mapping (one block per leaf range) costs a whole node per mapped block.",
			r.fanout4K(), r.fanout4K())
	case "mem":
		return r.explainMem()
	case "overwrite":
		return r.explainOverwrite()
	case "csi":
		return r.explainCSI()
	case "kread":
		return r.explainKRead()
	case "kcpu":
		return r.explainKCPU()
	case "restart":
		return r.explainRestart()
	}
	return ""
}

// fanout4K returns the entries per tree node of this run's 4 KiB pools (0 if it made none).
func (r *report) fanout4K() int {
	for _, m := range r.metas {
		if m.bs == 4*kib {
			return m.geo.NodeEntries
		}
	}
	if r.mem != nil {
		return r.mem.plan.fanout
	}
	return 0
}

// ratiosByQD lists "qd N: R×" for a test of section 1.
func (r *report) ratiosByQD(test string) string {
	var parts []string
	for _, c := range r.perf {
		if c.test == test {
			lo, hi := c.p.spread()
			parts = append(parts, fmt.Sprintf("qd %d %.2f× (rounds %.2f–%.2f; p99 latency raw %s, store %s; max raw %s, store %s)", c.qd, c.ratio(), lo, hi,
				fmtLat(c.p.raw.pct(0.99)), fmtLat(c.p.store.pct(0.99)), fmtLat(c.p.raw.pct(1)), fmtLat(c.p.store.pct(1))))
		}
	}
	return strings.Join(parts, "; ")
}

// straddling names the missed goal rows of a kind whose best round reached the goal: misses
// within this disk's round-to-round noise.
func (r *report) straddling(id string) string {
	var names []string
	for _, c := range r.perf {
		if c.goal == 0 || goalID(c) != id || c.ratio() >= c.goal {
			continue
		}
		if _, hi := c.p.spread(); hi >= c.goal {
			names = append(names, fmt.Sprintf("%s qd %d", c.test, c.qd))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return fmt.Sprintf("For %s, at least one round reached the goal: that miss is within this disk's round-to-round noise. ", strings.Join(names, ", "))
}

func (r *report) explainRead() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Evidence: mapped blocks %s; clone %s. ", r.ratiosByQD("4K random read, mapped blocks"), r.ratiosByQD("4K random read, clone (shared blocks)"))
	b.WriteString(r.straddling("read"))
	b.WriteString("The read path (`Volume.ReadAt`, blockstore/io.go) holds the pool's I/O gate shared for the whole read, and the pool lock shared while it finds the mappings in cached tree nodes; it issues the pread with only the gate held, and a node missing from the cache makes it retake the pool lock exclusively to load it (blockstore/pool.go says what each lock guards and when it is held). ")
	if len(r.metas) > 0 {
		m := r.metas[0]
		fmt.Fprintf(&b, "The 1 GiB test volume has %d tree node blocks (its prefill's metadata), far fewer than the default node cache keeps, so once they are loaded every read takes the shared path. ", m.metaBytes/int64(m.bs))
	}
	b.WriteString("This report does not measure where the rest of the time goes at queue depth 32; a run with `-only perf -blockprofile FILE -mutexprofile FILE -cpuprofile FILE` shows it (blocking on the pool's locks, or the CPU spent per read by the store on 2 CPUs shared with the kernel's I/O path).")
	return b.String()
}

func (r *report) explainSeq() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Evidence: read %s; write %s. ", r.ratiosByQD("1M sequential read"), r.ratiosByQD("1M sequential write, owned blocks"))
	b.WriteString(r.straddling("seq"))
	var mr, mw float64
	for _, c := range r.perf {
		switch c.test {
		case "diagnostic: 1M sequential read, raw file at a 24 KiB offset":
			mr = c.ratio()
		case "diagnostic: 1M sequential write, raw file at a 24 KiB offset":
			mw = c.ratio()
		}
	}
	if len(r.metas) > 0 && r.metas[0].geo.DataStart != 0 {
		m := r.metas[0]
		off := m.geo.DataStart * uint64(m.bs)
		fmt.Fprintf(&b, "The store's 1 MiB requests are not 1 MiB-aligned in the pool file: the data region starts at block %d (byte %d, %d KiB past a 1 MiB boundary), and tree nodes are allocated from the same next-fit cursor as data (blockstore/refcount.go), so each new leaf shifts the following data by a block. ", m.geo.DataStart, off, off%mib/kib)
	}
	if mr > 0 && mw > 0 {
		fmt.Fprintf(&b, "On this disk the raw file alone, read and written 1 MiB at a time at offsets 24 KiB past 1 MiB boundaries, runs at %.2f× (read) and %.2f× (write) of the aligned rate (diagnostics above), ", mr, mw)
		if min(mr, mw) >= 0.95 {
			b.WriteString("so misalignment does not explain a shortfall here. ")
		} else {
			b.WriteString("so misalignment accounts for part of a shortfall. ")
		}
	}
	b.WriteString("The store's own per-I/O work is in memory (blockstore/io.go): a 1 MiB write looks up each of its 256 blocks from the root with the pool lock held exclusively, and takes it exclusively a second time after the data I/O to record new mappings (even when every block was overwritten in place and there is none); its range check and its check whether a checkpoint is due take it shared. A 1 MiB read maps its 256 blocks with the pool lock shared.")
	return b.String()
}

func (r *report) explainCOW() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Evidence, thin pool (the default): 4K %s; 8K %s. Thick pool (`Preallocate: true`), same run: 4K %s; 8K %s. ",
		r.ratiosByQD(cowTest(4*kib, false)), r.ratiosByQD(cowTest(8*kib, false)), r.ratiosByQD(cowTest(4*kib, true)), r.ratiosByQD(cowTest(8*kib, true)))
	b.WriteString(r.straddling("cow"))
	b.WriteString("Every first write into a clone goes to a newly allocated pool block. In a thin pool that block is a hole of the pool file: the file is sparse, and freed blocks are punched out again (blockstore/refcount.go). ")
	b.WriteString("ext4 takes the inode lock exclusively for an O_DIRECT write that must allocate blocks, so writes into holes do not overlap however many are in flight; an aligned O_DIRECT write into blocks that fallocate reserved (unwritten extents) counts as an overwrite and takes the lock shared (`ext4_dio_write_checks`, fs/ext4/file.c, in recent kernels). ")
	sparse, falloc := r.ratiosByQD(sparseTest), r.ratiosByQD(fallocTest)
	if sparse != "" && falloc != "" {
		fmt.Fprintf(&b, "Measured on raw files alone, against the prefilled raw file: first writes into holes of a sparse file %s; into a fallocated file %s. ", sparse, falloc)
	}
	b.WriteString("A thick pool is fallocated at creation and never punches (blockstore/refcount.go skips it when the superblock marks the pool thick), so its new blocks are never holes: that is why it is faster at queue depth 32. Thin stays the default because it returns freed space to the file system; a thick pool holds its whole size from creation on. On a block device (the production path) there is no file system allocation at all. ")
	b.WriteString("What the store adds (read from the code): each first write (blockstore/io.go) holds the write stripes of its blocks (512 stripes of 16-block runs per volume, blockstore/volume.go) from lookup to mapping, across its data I/O; takes the pool lock exclusively to look up and allocate, and again after the data write to map the new block; the first write under each leaf range also copies the leaf the clone still shares with the snapshot (blockstore/tree.go: a new dirty node and a reference added to each of its up to ")
	fmt.Fprintf(&b, "%d entries). ", r.fanout4K())
	fanout := int64(max(r.fanout4K(), 1))
	leaves := (perfVolSize/(4*kib) + fanout - 1) / fanout
	fmt.Fprintf(&b, "Dirty nodes stay until the checkpoint policy (blockstore/journal.go) asks for a checkpoint after 4096 of them at the default budget; then the `Volume.WriteAt` that notices takes it (blockstore/checkpoint.go), and every write and discard of the pool waits while it writes the dirty nodes (runs of consecutive ones in one pwrite) and refcount pages and syncs twice; reads go on. Each clone here has %d leaves; ", leaves)
	most := int64(0) // leaves copied by one comparison, at most
	for _, c := range r.perf {
		if strings.Contains(c.test, "first write into a clone") {
			units := int64(perfVolSize) / int64(max(c.bs, c.io)) // per clone
			clones := (c.p.store.ops + units - 1) / units
			most = max(most, min(clones*leaves, c.p.store.ops))
		}
	}
	if most > 0 && most <= 4096 {
		fmt.Fprintf(&b, "the first writes of one comparison here (all its rounds) copied at most %d of them, far fewer than the 4096 dirty nodes that call for a checkpoint. A sustained stream of first writes across many clones would meet one every 4096 leaves copied.", most)
	} else {
		b.WriteString("a sustained stream of first writes across many clones meets a checkpoint every 4096 leaves copied.")
	}
	return b.String()
}

func (r *report) explainLat() string {
	l := r.lat
	if l == nil || len(l.cases) != 2 {
		return ""
	}
	var b strings.Builder
	for _, c := range l.cases {
		fmt.Fprintf(&b, "%s: bare fdatasync p50 %s, Flush after one write p50 %s, snapshot %s, clone %s, revert %s. ", c.name,
			fmtLat(quantile(c.samples[opFdatasync], 0.5)), fmtLat(quantile(c.samples[opFlushOne], 0.5)),
			fmtLat(quantile(c.samples[opSnapshot], 0.5)), fmtLat(quantile(c.samples[opClone], 0.5)), fmtLat(quantile(c.samples[opRevert], 0.5)))
	}
	b.WriteString("Snapshot, clone and revert are durable on return: their commit (blockstore/journal.go gives its order) syncs data only if something was written since the last sync (here nothing was: they follow a Flush), writes the journal block and issues one fdatasync; so their floor is one flush and a block write. ")
	b.WriteString("Snapshot, revert and the deletes also wait for the I/O in flight on every volume before they apply (blockstore/volume.go), and when a checkpoint is due the commit becomes a whole checkpoint (blockstore/checkpoint.go: every dirty node, dirty refcount page and the catalog, and two fdatasyncs). ")
	missed := map[string]bool{}
	for _, g := range r.goals {
		if !g.met {
			missed[g.id] = true
		}
	}
	if missed["latratio"] {
		small, big := l.cases[0], l.cases[1]
		fmt.Fprintf(&b, "On the size ratio: the operations touch only the root in memory, and their p50s are a few hundred microseconds made mostly of an fdatasync, whose own p50 differed between the two pools by %.2f× in this run; the two pools differ in tree size (%s vs %s of nodes), which matters only when a checkpoint runs inside an operation. ",
			float64(quantile(big.samples[opFdatasync], 0.5))/float64(quantile(small.samples[opFdatasync], 0.5)), units.FormatBytes(small.treeBytes), units.FormatBytes(big.treeBytes))
	}
	if missed["latexcess99"] {
		b.WriteString("On p99: of so few samples it is the largest one; the bare fdatasync's own p99 shows how far a single slow flush on this disk reaches.")
	}
	return b.String()
}

func (r *report) explainMem() string {
	m := r.mem
	if m == nil {
		return ""
	}
	s0, s1 := m.sizes[0], m.sizes[1]
	dm := float64(s1.mapped - s0.mapped)
	bk := perTiB(float64(int64(s1.rcPages-s0.rcPages)*rcBookkeeping) / dm)
	var b strings.Builder
	fmt.Fprintf(&b, "Evidence: with both caches full, the heap after reading every mapped block was %s at %s mapped and %s at %s: %s per TiB, ± %s. ",
		fmtKiB(s0.read), units.FormatBytes(s0.mapped), fmtKiB(s1.read), units.FormatBytes(s1.mapped), fmtMiB(perTiB(m.slope)), fmtMiB(perTiB(float64(m.band)/dm)))
	fmt.Fprintf(&b, "Of that, %s per TiB is the per-page refcount bookkeeping the store keeps for every refcount page of the pool (blockstore/refcount.go: a page pointer, a count of its used entries and its slot, %d bytes per page of %d blocks), which grows with the pool, here 1.25 × what is mapped. ",
		fmtMiB(bk), rcBookkeeping, m.plan.perPage)
	open := perTiB(float64(s1.open-s0.open) / dm)
	fmt.Fprintf(&b, "Right after `Open` (the refcount cache filled from disk, no tree node cached) the heap grew %s per TiB between the sizes; reading every block moved that to %s per TiB. ",
		fmtMiB(open), fmtMiB(perTiB(m.slope)))
	perPool := func(bytesPerPage int) float64 {
		return float64(bytesPerPage) * float64(1<<40) / float64(m.bs) / float64(m.plan.perPage)
	}
	fmt.Fprintf(&b, "The bookkeeping alone is %s per TiB of pool; without the 8-byte pointer per page (a slice of them is sized for every page, resident or not; a map or index of the resident ones would do) it would be %s, the figure the comment in blockstore/refcount.go gives.",
		fmtMiB(perPool(rcBookkeeping)), fmtMiB(perPool(rcBookkeeping-8)))
	return b.String()
}

// latBreakdown returns a line comparing the timed operations with the flushes they contain.
func latBreakdown(c *latCase) string {
	q := func(op string) time.Duration { return quantile(c.samples[op], 0.5) }
	return fmt.Sprintf("%s volume, p50: snapshot − Flush after one write = %s, clone − that = %s, revert − that = %s; Flush with nothing pending − bare fdatasync = %s.",
		c.name, fmtSigned(q(opSnapshot)-q(opFlushOne)), fmtSigned(q(opClone)-q(opFlushOne)), fmtSigned(q(opRevert)-q(opFlushOne)), fmtSigned(q(opFlushEmpty)-q(opFdatasync)))
}

func (r *report) explainOverwrite() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Evidence: %s. ", r.ratiosByQD("4K random overwrite, owned blocks"))
	b.WriteString("Read from the code: an overwrite of an owned block (blockstore/io.go) holds its write stripe across the data I/O, and a volume has 512 stripes, each the runs of 16 logical blocks whose run number is equal modulo 512 (blockstore/volume.go): with 32 uniform random writers in flight, a write finds its stripe held by another about 6% of the time (1 − (511/512)^31). ")
	b.WriteString("It takes the pool lock exclusively twice — to look the block up, and after the pwrite to record mappings even though an in-place overwrite has none — and shared twice (its range check, and its check whether a checkpoint is due). Which of these costs the time at queue depth 32 is for a blocking or mutex profile to say (`-only perf -blockprofile FILE -mutexprofile FILE`).")
	return b.String()
}

// memFindings returns findings of the memory measurements that point at the store: growth
// that caches and checkpoints should have bounded.
func (r *report) memFindings() []string {
	m := r.mem
	if m == nil {
		return nil
	}
	const notable = 64 * mib // per TiB: far beyond the goal's 8 MiB, not noise
	s0, s1 := m.sizes[0], m.sizes[1]
	var out []string
	if w := perTiB(m.writeRate); w > notable {
		out = append(out, fmt.Sprintf("Writing without reading keeps tree nodes beyond the cache budget. The goal pools, written with the node cache budget at %s (at most %d clean nodes) and checkpoints taken along the way (%v / %v), held %s of heap at %s and %s at %s, still open: %s per TiB written, about 4 KiB per %s. "+
			"From the code (blockstore/tree.go, blockstore/checkpoint.go): nodes made by writes are dirty and stay in memory until a checkpoint writes them; the checkpoint then counts them as clean and evicts clean nodes past `Options.NodeCacheBytes`. Growth beyond that budget is what neither bounds: a profile of this section (`-only mem -cpuprofile FILE`, or a heap profile) says where it is.",
			units.FormatBytes(memNodeCacheBytes), m.plan.maxNodes, s0.checkpoints, s1.checkpoints, fmtMiB(float64(s0.written)), units.FormatBytes(s0.mapped), fmtMiB(float64(s1.written)), units.FormatBytes(s1.mapped), fmtMiB(w),
			units.FormatBytes(int64(m.plan.fanout)*int64(m.bs))))
	}
	if d := perTiB(m.delRate); d > notable {
		after := perTiB(float64((s1.ckptAfter-s1.read)-(s0.ckptAfter-s0.read)) / float64(s1.mapped-s0.mapped))
		out = append(out, fmt.Sprintf("Deleting a volume costs memory in proportion to its size, and most of it stays. `DeleteVolume` of the %s volume added %s of heap (%s per TiB deleted), and %s per TiB remained after the next checkpoint. "+
			"From the code (blockstore/tree.go, blockstore/refcount.go): the delete lists every data block it frees until the commit that makes them reusable (8 bytes per block), and loads and dirties every refcount page it touches (4 KiB per %d blocks) until the next checkpoint writes it; afterwards the page is clean but stays resident until the refcount cache evicts it. What remains after the checkpoint is what this does not account for.",
			units.FormatBytes(s1.mapped), fmtMiB(float64(s1.deleted-s1.read)), fmtMiB(d), fmtMiB(after), m.plan.perPage))
	}
	return out
}

// explainRestart says what a stall across a restart is made of (the restarts section).
func (r *report) explainRestart() string {
	if r.restart == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("Evidence: ")
	var parts []string
	for _, row := range r.restart.rows {
		parts = append(parts, fmt.Sprintf("%s: longest request %s, restart %s", row.s.name, fmtLat(row.longest), fmtLat(row.restart)))
	}
	b.WriteString(strings.Join(parts, "; "))
	b.WriteString(". A request that spans a data-plane restart waits in the kernel (the holder keeps the FUSE connection) for as long as the new data plane takes to start, recover the pool (replay its journal), adopt the exports and ask the kernel to resend: the longest request is about the restart time, which is mostly process start and pool recovery on a loaded machine. The plugin is not on the I/O path: a stall across its restart is the noise of the baseline row (CPU contention on 2 cores), not a wait for the plugin.")
	return b.String()
}
