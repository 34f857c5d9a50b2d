package blockstore_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

var (
	crashPoints = flag.Int("crash.points", 200, "power-loss crash points in TestCrashPowerLoss")
	crashKills  = flag.Int("crash.kills", 20, "SIGKILLed child processes in TestCrashKill")
	crashSeed   = flag.Uint64("crash.seed", 0, "base seed for the crash tests (0: random)")
	crashTrace  = flag.Bool("crash.trace", false, "log every operation of the crash workloads")
)

// allowed is, for each block of a volume, every content it may hold after a crash: what it
// held at the last durable point, and everything written to it since.
type allowed struct {
	size   int64
	blocks map[int64][][]byte // nil entry: zeros
}

func newAllowed(img *image) *allowed {
	a := &allowed{size: img.size, blocks: map[int64][][]byte{}}
	a.reset(img)
	return a
}

// reset makes img the only state allowed (a durable point).
func (a *allowed) reset(img *image) {
	clear(a.blocks)
	for lbn := int64(0); lbn < img.size/modelBS; lbn++ {
		a.blocks[lbn] = [][]byte{img.blocks[lbn]}
	}
}

// add allows the current contents of the blocks [off, off+n) of img.
func (a *allowed) add(img *image, off, n int64) {
	for lbn := off / modelBS; lbn <= (off+n-1)/modelBS; lbn++ {
		a.blocks[lbn] = append(a.blocks[lbn], img.blocks[lbn])
	}
}

func (a *allowed) verify(t testing.TB, r interface {
	ReadAt([]byte, int64) (int, error)
}, what string) {
	t.Helper()
	buf := make([]byte, a.size)
	if n, err := r.ReadAt(buf, 0); err != nil || n != len(buf) {
		t.Fatalf("%s: read: %d, %v", what, n, err)
	}
	zero := make([]byte, modelBS)
	for lbn := int64(0); lbn < a.size/modelBS; lbn++ {
		got := buf[lbn*modelBS : (lbn+1)*modelBS]
		ok := false
		for _, w := range a.blocks[lbn] {
			if w == nil {
				w = zero
			}
			if bytes.Equal(got, w) {
				ok = true
				break
			}
		}
		if !ok {
			var cands []string
			for _, w := range a.blocks[lbn] {
				if w == nil {
					w = zero
				}
				cands = append(cands, fmt.Sprintf("%x", w[:8]))
			}
			t.Fatalf("%s: block %d holds neither its durable content nor anything written since: %x, candidates %v", what, lbn, got[:8], cands)
		}
	}
}

// crashRun is one power-loss scenario: a workload on a fresh pool until the file loses power
// after a random number of operations, then recovery and verification.
type crashRun struct {
	t         testing.TB
	rng       *rand.Rand
	f         *faultfs.File
	p         *blockstore.Pool
	opts      blockstore.Options
	vols      map[blockstore.VolumeID]*image
	allow     map[blockstore.VolumeID]*allowed
	snaps     map[blockstore.SnapshotID]*image
	maybe     map[blockstore.SnapshotID]*image // snapshots whose creation was cut off
	maybeVols map[blockstore.VolumeID]*image
	snapVol   map[blockstore.SnapshotID]blockstore.VolumeID
	origin    map[blockstore.VolumeID]blockstore.SnapshotID
	nextSnap  blockstore.SnapshotID // IDs are handed out in order and never reused
	nextVol   blockstore.VolumeID
}

// snapIDs returns the durable snapshots in ID order (map order would break reproducibility).
func (r *crashRun) snapIDs() []blockstore.SnapshotID {
	ids := make([]blockstore.SnapshotID, 0, len(r.snaps))
	for id := range r.snaps {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func TestCrashPowerLoss(t *testing.T) {
	base := *crashSeed
	if base == 0 {
		base = rand.Uint64()
	}
	n := *crashPoints
	if testing.Short() {
		n /= 4
	}
	replayed, crashed := 0, 0
	for i := 0; i < n; i++ {
		seed := base + uint64(i)
		ok := t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r := runCrash(t, seed)
			if r.Records > 0 {
				replayed++
			}
		})
		crashed++
		if !ok {
			t.Fatalf("crash point %d failed: rerun with go test ./blockstore -run 'TestCrashPowerLoss/seed=%d$' -args -crash.seed=%d -crash.points=%d", i, seed, base, i+1)
		}
	}
	t.Logf("%d crash points (base seed %d), %d recoveries replayed journal records", crashed, base, replayed)
	fmt.Printf("crash points: %d power losses recovered and verified (%d with journal replay)\n", crashed, replayed)
}

func runCrash(t *testing.T, seed uint64) blockstore.Recovery {
	r := &crashRun{
		t:         t,
		rng:       rand.New(rand.NewPCG(seed, ^seed)),
		vols:      map[blockstore.VolumeID]*image{},
		allow:     map[blockstore.VolumeID]*allowed{},
		snaps:     map[blockstore.SnapshotID]*image{},
		maybe:     map[blockstore.SnapshotID]*image{},
		maybeVols: map[blockstore.VolumeID]*image{},
		snapVol:   map[blockstore.SnapshotID]blockstore.VolumeID{},
		origin:    map[blockstore.VolumeID]blockstore.SnapshotID{},
	}
	blockstore.SetTestFanout(&r.opts, 4)
	r.opts.OverProvisionRatio = 100
	r.opts.JournalSize = 16 * modelBS // small: checkpoints happen within a run
	r.opts.RefcountCacheBytes = 1     // refcount pages evicted and reloaded
	r.f = faultfs.New(8 << 20)
	p, err := blockstore.CreateOn(r.f, r.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	for range 3 {
		size := (8 + r.rng.Int64N(60)) * modelBS
		info, err := p.CreateVolume("", size)
		if err != nil {
			t.Fatal(err)
		}
		img := &image{size: size, blocks: map[int64][]byte{}}
		r.vols[info.ID], r.allow[info.ID] = img, newAllowed(img)
		r.nextVol = info.ID
	}
	r.f.CrashAfter(1 + r.rng.IntN(600))
	for step := 0; step < 5000; step++ {
		if err := r.step(); err != nil {
			if !errors.Is(err, faultfs.ErrCrashed) {
				t.Fatalf("step %d: %v", step, err)
			}
			break
		}
	}
	// Power is lost: the machine restarts with the synced contents and some of the rest.
	keep := []float64{0, 1, r.rng.Float64()}[r.rng.IntN(3)]
	f2 := r.f.Restart(r.rng, faultfs.Loss{Keep: keep})
	p2, err := blockstore.OpenOn(f2, r.opts)
	if err != nil {
		t.Fatalf("recovery (keep %.2f of unsynced writes): %v", keep, err)
	}
	defer p2.Close()
	rec := p2.Recovery()
	t.Logf("crashed after %d file operations (%d syncs); kept %.2f of unsynced writes; recovery %+v", r.f.Ops(), r.f.Syncs(), keep, rec)
	rep, err := p2.Check(false)
	if err != nil || !rep.OK() {
		t.Fatalf("check after recovery: %v: %v %v", err, rep, rep.RefcountErrors)
	}
	for id, a := range r.allow {
		v, err := p2.Volume(id)
		if err != nil {
			t.Fatalf("volume %d lost: %v", id, err)
		}
		a.verify(t, v, fmt.Sprintf("volume %d", id))
	}
	for id, img := range r.snaps {
		sv, err := p2.SnapshotView(id)
		if err != nil {
			t.Fatalf("durable snapshot %d lost: %v", id, err)
		}
		newAllowed(img).verify(t, sv, fmt.Sprintf("snapshot %d", id))
	}
	for _, s := range p2.Snapshots() {
		if r.snaps[s.ID] != nil {
			continue
		}
		img := r.maybe[s.ID]
		if img == nil {
			t.Fatalf("snapshot %d appeared from nowhere", s.ID)
		}
		sv, _ := p2.SnapshotView(s.ID)
		newAllowed(img).verify(t, sv, fmt.Sprintf("snapshot %d (cut off while being taken)", s.ID))
	}
	for _, v := range p2.Volumes() {
		if r.allow[v.ID] != nil {
			continue
		}
		img := r.maybeVols[v.ID]
		if img == nil {
			t.Fatalf("volume %d appeared from nowhere", v.ID)
		}
		vol, _ := p2.Volume(v.ID)
		newAllowed(img).verify(t, vol, fmt.Sprintf("clone %d (cut off while being made)", v.ID))
	}
	// The recovered pool works: write everywhere, flush, reopen, compare.
	for id, a := range r.allow {
		v, _ := p2.Volume(id)
		data := pattern(byte(id), int(a.size))
		if _, err := v.WriteAt(data, 0); err != nil {
			t.Fatalf("write after recovery: %v", err)
		}
		mustEqual(t, mustRead(t, v, 0, len(data)), data, "after recovery")
	}
	if rep, err := p2.Check(false); err != nil || !rep.OK() {
		t.Fatalf("check after writing to the recovered pool: %v: %v %v", err, rep, rep.RefcountErrors)
	}
	return rec
}

func (r *crashRun) pick() blockstore.VolumeID {
	ids := make([]blockstore.VolumeID, 0, len(r.vols))
	for id := range r.vols {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids[r.rng.IntN(len(ids))]
}

// durable marks every volume's current model as its only allowed state.
func (r *crashRun) durable() {
	for id, img := range r.vols {
		r.allow[id].reset(img)
	}
}

func (r *crashRun) tracef(format string, args ...any) {
	if *crashTrace {
		r.t.Logf("op %d: "+format, append([]any{r.f.Ops()}, args...)...)
	}
}

func (r *crashRun) step() error {
	id := r.pick()
	img := r.vols[id]
	op := r.rng.IntN(100)
	r.tracef("volume %d op %d", id, op)
	switch {
	case op < 60:
		var off, n int64
		if r.rng.IntN(2) == 0 {
			off = r.rng.Int64N(img.size/modelBS) * modelBS
			n = min(img.size-off, (1+r.rng.Int64N(8))*modelBS)
		} else {
			off = r.rng.Int64N(img.size)
			n = 1 + r.rng.Int64N(min(img.size-off, 3*modelBS))
		}
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(r.rng.Uint32())
		}
		img.write(off, data)
		r.allow[id].add(img, off, n)
		r.tracef("write [%d, %d) blocks %d-%d data %x", off, off+n, off/modelBS, (off+n-1)/modelBS, data[:min(8, len(data))])
		v, err := r.p.Volume(id)
		if err != nil {
			return err
		}
		_, err = v.WriteAt(data, off)
		return err
	case op < 70:
		off := r.rng.Int64N(img.size)
		n := 1 + r.rng.Int64N(min(img.size-off, 6*modelBS))
		img.zero(off, n)
		r.allow[id].add(img, off, n)
		r.tracef("discard [%d, %d) blocks %d-%d", off, off+n, off/modelBS, (off+n-1)/modelBS)
		v, err := r.p.Volume(id)
		if err != nil {
			return err
		}
		return v.Discard(off, n)
	case op < 82:
		if err := r.p.Flush(); err != nil {
			return err
		}
		r.durable()
	case op < 88:
		snapImg := img.clone(img.size)
		r.nextSnap++
		next := r.nextSnap
		r.maybe[next] = snapImg
		info, err := r.p.CreateSnapshot(id, "")
		if err != nil {
			return err
		}
		if info.ID != next {
			r.t.Fatalf("snapshot ID %d, expected %d", info.ID, next)
		}
		delete(r.maybe, next)
		r.snaps[info.ID] = snapImg
		r.snapVol[info.ID] = id
		r.durable()
	case op < 92 && len(r.snaps) > 0:
		ids := r.snapIDs()
		sid := ids[r.rng.IntN(len(ids))]
		if err := r.p.DeleteSnapshot(sid); err != nil {
			// Cut off: it may or may not survive.
			r.maybe[sid] = r.snaps[sid]
			delete(r.snaps, sid)
			return err
		}
		delete(r.snaps, sid)
		r.durable()
	case op < 95 && len(r.snaps) > 0 && len(r.vols) < 6:
		ids := r.snapIDs()
		sid := ids[r.rng.IntN(len(ids))]
		simg := r.snaps[sid]
		size := simg.size + r.rng.Int64N(4)*modelBS
		cimg := simg.clone(size)
		r.nextVol++
		next := r.nextVol
		r.maybeVols[next] = cimg
		info, err := r.p.Clone(sid, "", size)
		if err != nil {
			return err
		}
		if info.ID != next {
			r.t.Fatalf("clone ID %d, expected %d", info.ID, next)
		}
		delete(r.maybeVols, next)
		r.vols[info.ID], r.allow[info.ID] = cimg, newAllowed(cimg)
		r.origin[info.ID] = sid
		r.durable()
	case op < 98:
		for _, sid := range r.snapIDs() {
			simg := r.snaps[sid]
			if simg.size > img.size || (r.snapVol[sid] != id && r.origin[id] != sid) {
				continue
			}
			r.vols[id] = simg.clone(img.size)
			// Either reverted or not, block by block no other content is possible.
			for lbn := int64(0); lbn < img.size/modelBS; lbn++ {
				r.allow[id].blocks[lbn] = append(r.allow[id].blocks[lbn], r.vols[id].blocks[lbn])
			}
			if err := r.p.Revert(id, sid); err != nil {
				return err
			}
			r.durable()
			break
		}
	default:
		v, err := r.p.Volume(id)
		if err != nil {
			return err
		}
		got := make([]byte, img.size)
		if _, err := v.ReadAt(got, 0); err != nil {
			return err
		}
		if want := img.read(0, img.size); !bytes.Equal(got, want) {
			r.t.Fatalf("volume %d differs from the model before the crash", id)
		}
	}
	return nil
}
