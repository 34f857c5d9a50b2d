package blockstore_test

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

var crashIOErrors = flag.Int("crash.ioerrors", 6, "workloads in TestCrashIOErrors, each run once per file operation it issues, that operation failing")

// ioStats counts the failures TestCrashIOErrors injected, by what failed.
type ioStats struct {
	workloads, runs                                int
	dataWrites, journalWrites, rcWrites, sbWrites  int // by region (data: data blocks, tree nodes, catalog)
	syncs, punches                                 int
	failedPools, reopenedInCache, reopenedFromDisk int
}

// TestCrashIOErrors runs a small workload that goes through every step of a commit and of a
// checkpoint (writes in place and to new blocks, a Flush, a discard, a snapshot, copy-on-write,
// a commit spanning several journal blocks, Close), once per file operation it issues, with that
// operation failing (faultfs.FailAfter): a failed write leaves each sector it covers old or new;
// a failed fdatasync leaves each unsynced sector on the disk or not and the page cache showing
// either (see faultfs). The pool must never acknowledge anything after a failed fdatasync, and
// after a restart of the process (the page cache kept, pages a failed write-back left clean
// included) and then a power loss, or after a power loss straight away, it must open, pass
// Check and hold what the model allows: everything acknowledged, and for the rest old or new
// contents, sector by sector.
func TestCrashIOErrors(t *testing.T) {
	base := *crashSeed
	if base == 0 {
		base = rand.Uint64()
	}
	n := *crashIOErrors
	if testing.Short() {
		n = max(n/4, 1)
	}
	var st ioStats
	for i := 0; i < n; i++ {
		seed := base + uint64(i)
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runIOErrors(t, seed, &st) }) {
			t.Fatalf("workload %d failed: rerun with go test ./blockstore -run 'TestCrashIOErrors/seed=%d$' -args -crash.seed=%d -crash.ioerrors=%d",
				i, seed, base, i+1)
		}
	}
	t.Logf("base seed %d: %+v", base, st)
	fmt.Printf("crash I/O errors: %d failed file operations in %d workloads recovered and verified (writes: %d data/tree/catalog, %d journal, %d refcount, %d superblock; %d fdatasyncs, %d hole punches; %d left the pool failed; %d reopened with the page cache kept, then a power loss; %d after a power loss)\n",
		st.runs, st.workloads, st.dataWrites, st.journalWrites, st.rcWrites, st.sbWrites, st.syncs, st.punches,
		st.failedPools, st.reopenedInCache, st.reopenedFromDisk)
}

func runIOErrors(t *testing.T, seed uint64, st *ioStats) {
	// The starting point: two volumes with data, checkpointed and closed.
	base := newCrashRun(t, seed)
	for id, img := range base.vols {
		if err := base.write(id, 0, base.randomBytes(img.size/2)); err != nil {
			t.Fatal(err)
		}
	}
	if err := base.p.Close(); err != nil {
		t.Fatal(err)
	}
	base.durable()
	baseFile := base.f.Reopen()
	sb := readFaultSuperblock(t, baseFile)

	// A dry run counts the file operations of the workload.
	dry := base.fork(baseFile, seed)
	opened := dry.f.Ops() // by Open's checkpoint
	dry.ioWorkload()
	ops := dry.f.Ops() - opened
	if ops < 20 {
		t.Fatalf("the workload issued %d file operations", ops)
	}
	for i := range ops {
		r := base.fork(baseFile, seed)
		r.f.Seed(seed ^ uint64(i)<<32)
		r.f.FailAfter(i)
		r.logf("file operation %d of %d fails", i, ops)
		failed := r.ioWorkload()
		kind, off := r.f.Injected()
		switch {
		case kind == "sync":
			st.syncs++
		case kind == "punch":
			st.punches++
		case kind == "write" && off < int64(sb.JournalStart)*int64(sb.BlockSize):
			st.sbWrites++
		case kind == "write" && off < int64(sb.RCStart)*int64(sb.BlockSize):
			st.journalWrites++
		case kind == "write" && off < int64(sb.DataStart)*int64(sb.BlockSize):
			st.rcWrites++
		case kind == "write":
			st.dataWrites++
		default:
			t.Fatalf("file operation %d of %d: nothing failed (the workload is not deterministic)", i, ops)
		}
		r.logf("injected: %s at %d; pool failed: %v", kind, off, failed)
		if kind == "sync" && !failed {
			t.Fatalf("file operation %d (an fdatasync) failed, yet the pool did not", i)
		}
		if failed {
			st.failedPools++
		}
		r.torn = true // a failed write or fdatasync leaves sectors of either version
		if i%2 == 0 {
			// The process restarts: the page cache survives, with whatever a failed
			// write-back left in it. Then the machine loses power.
			f2 := r.f.AfterKill()
			p := r.open(f2)
			r.verify(p)
			r.adopt(f2, p)
			f3 := f2.Restart(r.rng, r.randomLoss())
			p = r.open(f3)
			r.verify(p) // everything the first recovery showed was durable
			mustCheckClose(t, p)
			st.reopenedInCache++
		} else {
			f2 := r.f.Restart(r.rng, r.randomLoss())
			r.torn = true
			p := r.open(f2)
			r.verify(p)
			mustCheckClose(t, p)
			st.reopenedFromDisk++
		}
		r.printLogOnFailure()
		if t.Failed() {
			return
		}
		st.runs++
	}
	st.workloads++
}

// fork returns a run on a copy of the base file (a cleanly closed pool) with a copy of the
// model, opened; its random choices follow seed, the same for every fork.
func (r *crashRun) fork(f *faultfs.File, seed uint64) *crashRun {
	c := &crashRun{
		t:         r.t,
		rng:       rand.New(rand.NewPCG(seed, 0x10e)),
		opts:      r.opts,
		vols:      map[blockstore.VolumeID]*image{},
		allow:     map[blockstore.VolumeID]*allowed{},
		snaps:     map[blockstore.SnapshotID]*image{},
		maybe:     map[blockstore.SnapshotID]*image{},
		maybeVols: map[blockstore.VolumeID]*image{},
		snapVol:   map[blockstore.SnapshotID]blockstore.VolumeID{},
		origin:    map[blockstore.VolumeID]blockstore.SnapshotID{},
		nextSnap:  r.nextSnap,
		nextVol:   r.nextVol,
	}
	for id, img := range r.vols {
		c.vols[id] = img.clone(img.size)
		c.allow[id] = newAllowed(c.vols[id])
	}
	c.f = f.Restart(c.rng, faultfs.Loss{}) // a copy: nothing is unsynced
	p, err := blockstore.OpenOn(c.f, c.opts)
	if err != nil {
		r.t.Fatalf("open the base pool: %v", err)
	}
	c.p = p
	return c
}

// ioWorkload runs the workload of TestCrashIOErrors and reports whether the pool failed. An
// operation that fails makes the model allow old or new contents where it wrote; once the pool
// has failed, nothing may succeed that would acknowledge durability.
func (r *crashRun) ioWorkload() (failed bool) {
	t := r.t
	ids := make([]blockstore.VolumeID, 0, len(r.vols))
	for id := range r.vols {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	a, b := ids[0], ids[1]
	sizeA, sizeB := r.vols[a].size, r.vols[b].size
	blk := func(lo, hi int64) int64 { return (lo + r.rng.Int64N(hi-lo)) * modelBS } // a block in [lo, hi)

	// check handles an operation's outcome; durable says that its success acknowledges
	// durability (a Flush, a snapshot).
	check := func(what string, err error, durable bool) bool {
		if err == nil {
			if durable && failed {
				t.Fatalf("%s succeeded after the pool failed", what)
			}
			if kind, _ := r.f.Injected(); durable && kind == "sync" {
				t.Fatalf("%s was acknowledged after an fdatasync failed", what)
			}
			return true
		}
		if !errors.Is(err, faultfs.ErrInjected) && !errors.Is(err, blockstore.ErrFailed) {
			t.Fatalf("%s: %v", what, err)
		}
		if r.p.Health() != nil {
			failed = true
		} else if durable {
			t.Fatalf("%s failed (%v), yet the pool works on", what, err)
		}
		r.logf("%s: %v", what, err)
		return false
	}
	// written makes the model hold what the pool now shows in [off, off+n) of a volume after
	// a write or discard that failed: per sector old or new (verify checks that at reopen).
	written := func(id blockstore.VolumeID, off, n int64) {
		lo, hi := off/modelBS*modelBS, (off+n+modelBS-1)/modelBS*modelBS
		v, err := r.p.Volume(id)
		if err != nil {
			t.Fatal(err)
		}
		got := mustRead(t, v, lo, int(hi-lo))
		r.vols[id].write(lo, got)
		r.allow[id].add(r.vols[id], lo, hi-lo)
	}
	write := func(id blockstore.VolumeID, off int64, data []byte) {
		if !failed && !check(fmt.Sprintf("write %d bytes at %d of volume %d", len(data), off, id), r.write(id, off, data), false) {
			written(id, off, int64(len(data)))
		}
	}
	discard := func(id blockstore.VolumeID, off, n int64) {
		if !failed && !check(fmt.Sprintf("discard %d bytes at %d of volume %d", n, off, id), r.discard(id, off, n), false) {
			written(id, off, n)
		}
	}
	flush := func() {
		check("flush", r.flush(), true)
	}

	// New blocks, an overwrite in place, a sub-block write in place; a commit.
	write(a, blk(sizeA/modelBS/2, sizeA/modelBS-3), r.randomBytes(3*modelBS))
	write(a, blk(0, sizeA/modelBS/2-2), r.randomBytes(2*modelBS))
	write(b, blk(0, sizeB/modelBS/2)+100, r.randomBytes(1000))
	flush()
	// A discard with partial edges (zeroed by writes), then a snapshot (a commit).
	discard(b, modelBS/2, 3*modelBS)
	if !failed {
		snapImg := r.vols[a].clone(sizeA)
		r.nextSnap++
		next := r.nextSnap
		r.maybe[next], r.snapVol[next], r.cutSnap = snapImg, a, next
		info, err := r.p.CreateSnapshot(a, "")
		if check("snapshot", err, true) {
			if info.ID != next {
				t.Fatalf("snapshot ID %d, expected %d", info.ID, next)
			}
			delete(r.maybe, next)
			r.cutSnap = 0
			r.snaps[next] = snapImg
			r.durable()
		}
	}
	// Copy-on-write from the snapshot, then a commit of many records (several journal blocks).
	write(a, 0, r.randomBytes(modelBS+300))
	for i := range 150 {
		discard(b, (sizeB/modelBS/2+int64(i)%(sizeB/modelBS/2))*modelBS, modelBS)
	}
	flush()
	if failed {
		flush() // must fail again: nothing is acknowledged once the pool failed
		return failed
	}
	// A checkpoint.
	if err := r.p.Close(); err != nil {
		check("close", err, false)
		return failed
	}
	if kind, _ := r.f.Injected(); kind == "sync" {
		t.Fatalf("Close succeeded after an fdatasync failed")
	}
	r.durable()
	return failed
}
