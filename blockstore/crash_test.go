package blockstore_test

import (
	"bytes"
	"encoding/binary"
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
	crashKills  = flag.Int("crash.kills", 200, "SIGKILLed child processes in TestCrashKill (a quarter with -short)")
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

// verify checks that every block of r holds one of its allowed contents.
func (a *allowed) verify(t testing.TB, r interface {
	ReadAt([]byte, int64) (int, error)
}, what string) {
	t.Helper()
	a.verifyUnits(t, r, what, modelBS)
}

// verifyUnits checks every unit-sized piece of every block on its own: after torn writes a
// block may hold a different allowed content in each sector.
func (a *allowed) verifyUnits(t testing.TB, r interface {
	ReadAt([]byte, int64) (int, error)
}, what string, unit int64) {
	t.Helper()
	buf := make([]byte, a.size)
	if n, err := r.ReadAt(buf, 0); err != nil || n != len(buf) {
		t.Fatalf("%s: read: %d, %v", what, n, err)
	}
	zero := make([]byte, modelBS)
	for lbn := int64(0); lbn < a.size/modelBS; lbn++ {
		if slices.ContainsFunc(a.blocks[lbn], func(w []byte) bool {
			if w == nil {
				w = zero
			}
			return bytes.Equal(buf[lbn*modelBS:(lbn+1)*modelBS], w)
		}) {
			continue // the whole block holds one of them
		}
		for u := int64(0); u < modelBS; u += unit {
			got := buf[lbn*modelBS+u : lbn*modelBS+u+unit]
			ok := false
			for _, w := range a.blocks[lbn] {
				if w == nil {
					w = zero
				}
				if bytes.Equal(got, w[u:u+unit]) {
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
					i := 0
					for i < len(got) && got[i] == w[u+int64(i)] {
						i++
					}
					cands = append(cands, fmt.Sprintf("%x (differs from byte %d)", w[u:u+min(unit, 8)], u+int64(i)))
				}
				t.Fatalf("%s: block %d (bytes %d-%d) holds neither its durable content nor anything written since: %x, candidates %v",
					what, lbn, u, u+unit-1, got[:min(unit, 8)], cands)
			}
		}
	}
}

// crashRun is a power-loss scenario: a workload on a pool on a faultfs file until it loses
// power, then recovery and verification, possibly several times in a row.
type crashRun struct {
	t         testing.TB
	rng       *rand.Rand
	f         *faultfs.File
	p         *blockstore.Pool
	opts      blockstore.Options
	vols      map[blockstore.VolumeID]*image
	allow     map[blockstore.VolumeID]*allowed
	snaps     map[blockstore.SnapshotID]*image
	maybe     map[blockstore.SnapshotID]*image // snapshots whose creation or deletion was cut off
	maybeVols map[blockstore.VolumeID]*image   // clones whose creation was cut off
	snapVol   map[blockstore.SnapshotID]blockstore.VolumeID
	origin    map[blockstore.VolumeID]blockstore.SnapshotID
	nextSnap  blockstore.SnapshotID // the last ID handed out: IDs are handed out in order
	nextVol   blockstore.VolumeID
	cutSnap   blockstore.SnapshotID // the ID of a snapshot whose creation was cut off, 0 if none
	cutVol    blockstore.VolumeID   // the same for a clone
	torn      bool                  // a restart since the last durable point tore sectors
	log       []string              // what happened, printed if the run fails
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

// newCrashRun makes a pool of three volumes on a faultfs file.
func newCrashRun(t testing.TB, seed uint64) *crashRun {
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
	return r
}

func (r *crashRun) logf(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

// untilCrash runs the workload until the file loses power (after the crash point was set).
func (r *crashRun) untilCrash() {
	for step := 0; step < 5000; step++ {
		if err := r.step(); err != nil {
			if !errors.Is(err, faultfs.ErrCrashed) {
				r.t.Fatalf("step %d: %v", step, err)
			}
			return
		}
	}
	r.t.Fatalf("no crash after 5000 steps")
}

// open opens the pool on f and checks it.
func (r *crashRun) open(f *faultfs.File) *blockstore.Pool {
	r.t.Helper()
	p, err := blockstore.OpenOn(f, r.opts)
	if err != nil {
		r.t.Fatalf("recovery: %v", err)
	}
	rep, err := p.Check(false)
	if err != nil || !rep.OK() {
		r.t.Fatalf("check after recovery: %v: %v %v", err, rep, rep.RefcountErrors)
	}
	return p
}

// verify compares a recovered pool with what the model allows.
func (r *crashRun) verify(p *blockstore.Pool) {
	t := r.t
	t.Helper()
	unit := int64(modelBS)
	if r.torn {
		unit = faultfs.Sector
	}
	for id, a := range r.allow {
		v, err := p.Volume(id)
		if err != nil {
			t.Fatalf("volume %d lost: %v", id, err)
		}
		a.verifyUnits(t, v, fmt.Sprintf("volume %d", id), unit)
	}
	for id, img := range r.snaps {
		sv, err := p.SnapshotView(id)
		if err != nil {
			t.Fatalf("durable snapshot %d lost: %v", id, err)
		}
		newAllowed(img).verify(t, sv, fmt.Sprintf("snapshot %d", id))
	}
	for _, s := range p.Snapshots() {
		if r.snaps[s.ID] != nil {
			continue
		}
		img := r.maybe[s.ID]
		if img == nil {
			t.Fatalf("snapshot %d appeared from nowhere", s.ID)
		}
		sv, _ := p.SnapshotView(s.ID)
		newAllowed(img).verify(t, sv, fmt.Sprintf("snapshot %d (cut off while being taken or deleted)", s.ID))
	}
	for _, v := range p.Volumes() {
		if r.allow[v.ID] != nil {
			continue
		}
		img := r.maybeVols[v.ID]
		if img == nil {
			t.Fatalf("volume %d appeared from nowhere", v.ID)
		}
		vol, _ := p.Volume(v.ID)
		newAllowed(img).verify(t, vol, fmt.Sprintf("clone %d (cut off while being made)", v.ID))
	}
}

// adopt makes the recovered pool p on f the run's pool, and what it holds the model: Open ended
// with a checkpoint, so it is all durable.
func (r *crashRun) adopt(f *faultfs.File, p *blockstore.Pool) {
	r.f, r.p, r.torn = f, p, false
	clear(r.vols)
	clear(r.allow)
	for _, v := range p.Volumes() {
		vol, _ := p.Volume(v.ID)
		img := &image{size: v.Size, blocks: map[int64][]byte{}}
		img.write(0, mustRead(r.t, vol, 0, int(v.Size)))
		r.vols[v.ID], r.allow[v.ID] = img, newAllowed(img)
		if r.maybeVols[v.ID] != nil {
			r.origin[v.ID] = v.Origin
		}
	}
	clear(r.snaps)
	for _, s := range p.Snapshots() {
		sv, _ := p.SnapshotView(s.ID)
		img := &image{size: s.Size, blocks: map[int64][]byte{}}
		img.write(0, mustRead(r.t, sv, 0, int(s.Size)))
		r.snaps[s.ID] = img
		r.snapVol[s.ID] = s.Volume
	}
	// The ID of a snapshot or clone whose creation was lost is handed out again.
	if r.cutSnap != 0 && r.snaps[r.cutSnap] == nil {
		r.nextSnap = r.cutSnap - 1
	}
	if r.cutVol != 0 && r.vols[r.cutVol] == nil {
		r.nextVol = r.cutVol - 1
	}
	r.cutSnap, r.cutVol = 0, 0
	clear(r.maybe)
	clear(r.maybeVols)
}

func runCrash(t *testing.T, seed uint64) blockstore.Recovery {
	r := newCrashRun(t, seed)
	defer r.printLogOnFailure()
	r.f.CrashAfter(1 + r.rng.IntN(600))
	r.untilCrash()
	// Power is lost: the machine restarts with the synced contents and some of the rest.
	loss := r.randomLoss()
	f2 := r.f.Restart(r.rng, loss)
	r.logf("crashed after %d file operations (%d syncs); %+v", r.f.Ops(), r.f.Syncs(), loss)
	p2 := r.open(f2)
	defer p2.Close()
	rec := p2.Recovery()
	r.logf("recovery %+v", rec)
	r.verify(p2)
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

// randomLoss picks what a power loss keeps of the unsynced writes: nothing (a quarter of the
// cases), everything (a quarter), or a random part, torn at sectors half of the time.
func (r *crashRun) randomLoss() faultfs.Loss {
	keep := r.rng.Float64()
	switch r.rng.IntN(4) {
	case 0:
		keep = 0
	case 1:
		keep = 1
	}
	loss := faultfs.Loss{Keep: keep, Torn: r.rng.IntN(2) == 0}
	if loss.Torn && loss.Keep > 0 && loss.Keep < 1 {
		r.torn = true
	}
	return loss
}

// printLogOnFailure prints what the run did if the test failed.
func (r *crashRun) printLogOnFailure() {
	if r.t.Failed() {
		for _, l := range r.log {
			r.t.Log(l)
		}
	}
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

// randomBytes returns n random bytes (one ChaCha8 stream per call, seeded from the run's rng:
// cheap under the race detector, unlike a byte at a time).
func (r *crashRun) randomBytes(n int64) []byte {
	var seed [32]byte
	for i := range 4 {
		binary.LittleEndian.PutUint64(seed[8*i:], r.rng.Uint64())
	}
	b := make([]byte, n)
	rand.NewChaCha8(seed).Read(b)
	return b
}

func (r *crashRun) write(id blockstore.VolumeID, off int64, data []byte) error {
	img := r.vols[id]
	img.write(off, data)
	r.allow[id].add(img, off, int64(len(data)))
	r.tracef("write [%d, %d) blocks %d-%d data %x", off, off+int64(len(data)), off/modelBS, (off+int64(len(data))-1)/modelBS, data[:min(8, len(data))])
	v, err := r.p.Volume(id)
	if err != nil {
		return err
	}
	_, err = v.WriteAt(data, off)
	return err
}

func (r *crashRun) discard(id blockstore.VolumeID, off, n int64) error {
	img := r.vols[id]
	img.zero(off, n)
	r.allow[id].add(img, off, n)
	r.tracef("discard [%d, %d) blocks %d-%d", off, off+n, off/modelBS, (off+n-1)/modelBS)
	v, err := r.p.Volume(id)
	if err != nil {
		return err
	}
	return v.Discard(off, n)
}

func (r *crashRun) flush() error {
	if err := r.p.Flush(); err != nil {
		return err
	}
	r.durable()
	return nil
}

func (r *crashRun) step() error {
	id := r.pick()
	img := r.vols[id]
	op := r.rng.IntN(100)
	r.tracef("volume %d op %d", id, op)
	switch {
	case op < 2:
		// A burst: many one-block changes far apart (a journal record each), then one Flush,
		// so that a commit spans several journal blocks; half the time power is lost at the
		// fdatasync that would make those blocks durable (the second of the commit).
		cut := r.rng.IntN(2) == 0
		for range 40 + r.rng.IntN(140) {
			lbn := r.rng.Int64N(img.size / modelBS)
			var err error
			if r.rng.IntN(3) == 0 {
				err = r.discard(id, lbn*modelBS, modelBS)
			} else {
				err = r.write(id, lbn*modelBS, r.randomBytes(modelBS))
			}
			if err != nil {
				return err
			}
		}
		if cut {
			r.f.CrashAtSync(1)
		}
		return r.flush()
	case op < 60:
		var off, n int64
		if r.rng.IntN(2) == 0 {
			off = r.rng.Int64N(img.size/modelBS) * modelBS
			n = min(img.size-off, (1+r.rng.Int64N(8))*modelBS)
		} else {
			off = r.rng.Int64N(img.size)
			n = 1 + r.rng.Int64N(min(img.size-off, 3*modelBS))
		}
		return r.write(id, off, r.randomBytes(n))
	case op < 70:
		off := r.rng.Int64N(img.size)
		n := 1 + r.rng.Int64N(min(img.size-off, 6*modelBS))
		return r.discard(id, off, n)
	case op < 82:
		return r.flush()
	case op < 88:
		snapImg := img.clone(img.size)
		r.nextSnap++
		next := r.nextSnap
		r.maybe[next], r.snapVol[next], r.cutSnap = snapImg, id, next
		info, err := r.p.CreateSnapshot(id, "")
		if err != nil {
			return err
		}
		if info.ID != next {
			r.t.Fatalf("snapshot ID %d, expected %d", info.ID, next)
		}
		delete(r.maybe, next)
		r.cutSnap = 0
		r.snaps[info.ID] = snapImg
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
		r.maybeVols[next], r.cutVol = cimg, next
		info, err := r.p.Clone(sid, "", size)
		if err != nil {
			return err
		}
		if info.ID != next {
			r.t.Fatalf("clone ID %d, expected %d", info.ID, next)
		}
		delete(r.maybeVols, next)
		r.cutVol = 0
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
