package blockstore_test

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

var crashSequences = flag.Int("crash.sequences", 500, "sequences of two or three power losses in a row in TestCrashSequences")

// seqStats counts what the sequences went through.
type seqStats struct {
	sequences, losses, torn, atSync, replayed int
	rebuilt                                   int // recoveries that found a torn refcount page and rebuilt the refcounts
	inRecovery, inRecoveryFirst               int // crashes during recovery; of them before its first write
}

// TestCrashSequences: two or three power losses in a row, with writes in between. Each loss
// comes at a random file operation or at a random fdatasync (where the writes since the last one
// are at stake: a commit's journal blocks, a checkpoint's metadata or superblock), and keeps
// nothing, everything, or a random part of the unsynced writes, in half of the cases torn at
// 512-byte sectors. A third of the recoveries lose power themselves, before the first write of
// the checkpoint that ends recovery (that is, during replay, which writes nothing) or inside it,
// and are recovered in turn. After each recovery the pool passes Check and every volume and
// snapshot holds what the model allows; then it becomes the model and the workload goes on.
func TestCrashSequences(t *testing.T) {
	base := *crashSeed
	if base == 0 {
		base = rand.Uint64()
	}
	n := *crashSequences
	if testing.Short() {
		n /= 4
	}
	var st seqStats
	for i := 0; i < n; i++ {
		seed := base + uint64(i)
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runSequence(t, seed, &st) }) {
			t.Fatalf("sequence %d failed: rerun with go test ./blockstore -run 'TestCrashSequences/seed=%d$' -args -crash.seed=%d -crash.sequences=%d",
				i, seed, base, i+1)
		}
	}
	t.Logf("base seed %d: %+v", base, st)
	fmt.Printf("crash sequences: %d sequences of 2-3 power losses in a row recovered and verified (%d losses: %d at an fdatasync, %d with torn sectors; %d during recovery, %d of them before its first write; %d recoveries with journal replay, %d rebuilt refcounts after a torn refcount page)\n",
		st.sequences, st.losses, st.atSync, st.torn, st.inRecovery, st.inRecoveryFirst, st.replayed, st.rebuilt)
}

func runSequence(t *testing.T, seed uint64, st *seqStats) {
	r := newCrashRun(t, seed)
	defer r.printLogOnFailure()
	crashes := 2 + r.rng.IntN(2)
	for c := range crashes {
		if r.rng.IntN(2) == 0 {
			// At one of the next fdatasyncs; often one of the very next: what the recovery
			// before left in the journal then lies next to the first commits after it.
			k := r.rng.IntN([]int{4, 25}[r.rng.IntN(2)])
			r.f.CrashAtSync(k)
			r.logf("crash %d: at the %dth fdatasync from now", c, k+1)
			st.atSync++
		} else {
			k := 1 + r.rng.IntN(250)
			r.f.CrashAfter(k)
			r.logf("crash %d: after %d file operations", c, k)
		}
		r.untilCrash()
		loss := r.randomLoss()
		f2 := r.f.Restart(r.rng, loss)
		r.logf("crash %d: power lost after %d file operations (%d syncs); %+v", c, r.f.Ops(), r.f.Syncs(), loss)
		st.losses++
		if loss.Torn && loss.Keep > 0 && loss.Keep < 1 {
			st.torn++
		}
		if r.rng.IntN(3) == 0 {
			// Power is lost again during recovery. A probe on a copy counts the file
			// operations recovery issues.
			probe := f2.Restart(r.rng, faultfs.Loss{})
			if _, err := blockstore.OpenOn(probe, r.opts); err != nil {
				t.Fatalf("crash %d: recovery: %v", c, err)
			}
			ops := probe.Ops()
			if ops == 0 {
				t.Fatalf("crash %d: recovery wrote nothing: it must start a new epoch", c)
			}
			k := r.rng.IntN(ops)
			f2.CrashAfter(k)
			// Recovery fails, unless the power loss hit one of the hole punches that follow
			// its checkpoint (their failures are not errors).
			if _, err := blockstore.OpenOn(f2, r.opts); !errors.Is(err, faultfs.ErrCrashed) && (err != nil || !f2.Crashed()) {
				t.Fatalf("crash %d: recovery cut after %d of its %d file operations returned %v", c, k, ops, err)
			}
			loss := r.randomLoss()
			r.logf("crash %d: recovery lost power after %d of its %d file operations; %+v", c, k, ops, loss)
			f2 = f2.Restart(r.rng, loss)
			st.losses++
			st.inRecovery++
			if k == 0 {
				st.inRecoveryFirst++
			}
		}
		p := r.open(f2)
		rec := p.Recovery()
		r.logf("crash %d: recovery %+v", c, rec)
		if rec.Records > 0 {
			st.replayed++
		}
		if len(rec.DamagedRefcountPages) > 0 {
			st.rebuilt++
		}
		r.verify(p)
		r.adopt(f2, p)
	}
	// The pool recovered last works: a write everywhere, and a clean close.
	for id, img := range r.vols {
		data := pattern(byte(id), int(img.size))
		if err := r.write(id, 0, data); err != nil {
			t.Fatalf("write after recovery: %v", err)
		}
	}
	mustCheckClose(t, r.p)
	st.sequences++
}

// TestCrashTornRefcountPage: power is lost while a checkpoint writes a refcount page, and the
// drive keeps some of its sectors. The torn slot fails its checksum; Open reports it and
// rebuilds the refcounts from the trees, and the pool is whole.
func TestCrashTornRefcountPage(t *testing.T) {
	for seed := range uint64(8) {
		f := faultfs.New(8 << 20)
		p, err := blockstore.CreateOn(f, blockstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.CreateVolume("v", 4<<20)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := p.Volume(info.ID)
		data := pattern(byte(seed), 4<<20)
		if _, err := v.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		// Counts in every sector of refcount page 0, then a change to half of them.
		mustCheck(t, p)
		if err := v.Discard(0, 2<<20); err != nil {
			t.Fatal(err)
		}
		clear(data[:2<<20])
		if err := p.Flush(); err != nil {
			t.Fatal(err)
		}
		f.CrashAtSync(0) // the checkpoint's first fdatasync: its refcount pages are at stake
		if err := p.Close(); !errors.Is(err, faultfs.ErrCrashed) {
			t.Fatalf("close: %v", err)
		}
		f2 := f.Restart(rand.New(rand.NewPCG(seed, 1)), faultfs.Loss{Keep: 0.5, Torn: true})
		p2, err := blockstore.OpenOn(f2, blockstore.Options{})
		if err != nil {
			t.Fatalf("seed %d: open: %v", seed, err)
		}
		rec := p2.Recovery()
		if len(rec.DamagedRefcountPages) == 0 {
			t.Errorf("seed %d: no torn refcount page reported (recovery %+v)", seed, rec)
		}
		v2, _ := p2.Volume(info.ID)
		mustEqual(t, mustRead(t, v2, 0, len(data)), data, "volume")
		mustCheckClose(t, p2)
	}
}
