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
	modelOps  = flag.Int("model.ops", 100_000, "random operations in TestModel")
	modelSeed = flag.Uint64("model.seed", 0, "seed for TestModel (0: random)")
)

const modelBS = 4096

// image is the model of a volume's or snapshot's contents: block number -> block (nil: zeros).
// Blocks are never changed in place, so images share them freely.
type image struct {
	size   int64
	blocks map[int64][]byte
}

func (m *image) clone(size int64) *image {
	c := &image{size: size, blocks: make(map[int64][]byte, len(m.blocks))}
	for k, v := range m.blocks {
		c.blocks[k] = v
	}
	return c
}

func (m *image) read(off, n int64) []byte {
	out := make([]byte, n)
	for i := int64(0); i < n; {
		lbn, inner := (off+i)/modelBS, (off+i)%modelBS
		k := min(modelBS-inner, n-i)
		if b := m.blocks[lbn]; b != nil {
			copy(out[i:i+k], b[inner:inner+k])
		}
		i += k
	}
	return out
}

func (m *image) write(off int64, p []byte) {
	for i := int64(0); i < int64(len(p)); {
		lbn, inner := (off+i)/modelBS, (off+i)%modelBS
		k := min(modelBS-inner, int64(len(p))-i)
		nb := make([]byte, modelBS)
		if b := m.blocks[lbn]; b != nil {
			copy(nb, b)
		}
		copy(nb[inner:], p[i:i+k])
		m.blocks[lbn] = nb
		i += k
	}
}

// zero models Discard: whole blocks unmapped, partial edges zeroed.
func (m *image) zero(off, n int64) {
	m.write(off, make([]byte, n))
}

type modelVol struct {
	id  blockstore.VolumeID
	img *image
}

type modelSnap struct {
	id  blockstore.SnapshotID
	vol blockstore.VolumeID
	img *image
}

// model drives a pool and its model with random operations.
type model struct {
	t     testing.TB
	rng   *rand.Rand
	f     *faultfs.File
	p     *blockstore.Pool
	opts  blockstore.Options
	vols  []*modelVol
	snaps []*modelSnap
	ops   map[string]int
}

func TestModel(t *testing.T) {
	seed := *modelSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	n := *modelOps
	if testing.Short() {
		n /= 10
	}
	t.Logf("seed %d (rerun with -args -model.seed=%d), %d operations", seed, seed, n)
	defer func() {
		if t.Failed() {
			t.Logf("FAILED with seed %d: go test ./blockstore -run TestModel -args -model.seed=%d", seed, seed)
		}
	}()
	m := newModel(t, seed)
	for i := 0; i < n && !t.Failed(); i++ {
		m.step(i)
	}
	m.checkAll()
	rep, err := m.p.Check(false)
	if err != nil || !rep.OK() {
		t.Fatalf("final check: %v: %v %v", err, rep, rep.RefcountErrors)
	}
	t.Logf("final check: %v", rep)
	t.Logf("operations: %v", m.ops)
	if err := m.p.Close(); err != nil {
		t.Fatal(err)
	}
}

func newModel(t testing.TB, seed uint64) *model {
	m := &model{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), ops: map[string]int{}}
	blockstore.SetTestFanout(&m.opts, 4)
	m.opts.OverProvisionRatio = 100
	m.opts.NodeCacheBytes = 1     // evict clean nodes aggressively: exercise reads from disk
	m.opts.RefcountCacheBytes = 1 // and refcount pages
	m.f = faultfs.New(16 << 20)
	p, err := blockstore.CreateOn(m.f, m.opts)
	if err != nil {
		t.Fatal(err)
	}
	m.p = p
	return m
}

func (m *model) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf(format, args...)
}

func (m *model) randRange(size int64) (int64, int64) {
	var off, n int64
	switch m.rng.IntN(4) {
	case 0: // block aligned
		nb := size / modelBS
		first := m.rng.Int64N(nb)
		off, n = first*modelBS, (1+m.rng.Int64N(min(4, nb-first)))*modelBS
	case 1: // small, unaligned
		off = m.rng.Int64N(size)
		n = 1 + m.rng.Int64N(min(700, size-off))
	default:
		off = m.rng.Int64N(size)
		n = 1 + m.rng.Int64N(min(3*modelBS, size-off))
	}
	return off, n
}

func (m *model) step(i int) {
	m.t.Helper()
	op := m.rng.IntN(100)
	switch {
	case len(m.vols) == 0 || (op < 3 && len(m.vols) < 8):
		m.createVolume()
	case op < 40:
		m.write()
	case op < 62:
		m.read()
	case op < 66:
		m.do("flush", m.p.Flush())
	case op < 72:
		m.discard()
	case op < 76 && len(m.snaps) < 16:
		m.snapshot()
	case op < 79 && len(m.snaps) > 0 && len(m.vols) < 8:
		m.clone()
	case op < 80 && len(m.vols) < 8:
		m.cloneVolume()
	case op < 83:
		m.revert()
	case op < 85 && len(m.vols) > 1:
		m.deleteVolume()
	case op < 88 && len(m.snaps) > 0:
		m.deleteSnapshot()
	case op < 90:
		m.grow()
	case op < 91 && m.rng.IntN(3) == 0:
		m.reopen()
	case op < 92 && len(m.snaps) > 0 && m.rng.IntN(2) == 0:
		m.diff()
	case op < 92 && i%10 == 0:
		rep, err := m.p.Check(false)
		if err != nil || !rep.OK() {
			m.fatalf("op %d: check: %v: %v %v", i, err, rep, rep.RefcountErrors)
		}
		m.ops["check"]++
	default:
		m.read()
	}
}

func (m *model) do(op string, err error) {
	m.t.Helper()
	if err != nil {
		m.fatalf("%s: %v", op, err)
	}
	m.ops[op]++
}

func (m *model) pickVol() *modelVol { return m.vols[m.rng.IntN(len(m.vols))] }

func (m *model) volume(v *modelVol) *blockstore.Volume {
	m.t.Helper()
	h, err := m.p.Volume(v.id)
	if err != nil {
		m.fatalf("volume %d: %v", v.id, err)
	}
	return h
}

func (m *model) createVolume() {
	size := (1 + m.rng.Int64N(80)) * modelBS
	info, err := m.p.CreateVolume(fmt.Sprintf("v%d", m.rng.Uint32()), size)
	m.do("create", err)
	m.vols = append(m.vols, &modelVol{id: info.ID, img: &image{size: size, blocks: map[int64][]byte{}}})
}

func (m *model) write() {
	v := m.pickVol()
	off, n := m.randRange(v.img.size)
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(m.rng.Uint32())
	}
	k, err := m.volume(v).WriteAt(p, off)
	if err != nil || k != len(p) {
		m.fatalf("write %d bytes at %d of volume %d: %d, %v", n, off, v.id, k, err)
	}
	v.img.write(off, p)
	m.ops["write"]++
}

func (m *model) read() {
	if len(m.snaps) > 0 && m.rng.IntN(4) == 0 {
		s := m.snaps[m.rng.IntN(len(m.snaps))]
		sv, err := m.p.SnapshotView(s.id)
		if err != nil {
			m.fatalf("snapshot view %d: %v", s.id, err)
		}
		off, n := m.randRange(s.img.size)
		m.compare(sv, s.img, off, n, fmt.Sprintf("snapshot %d", s.id))
		m.ops["read-snapshot"]++
		return
	}
	v := m.pickVol()
	off, n := m.randRange(v.img.size)
	m.compare(m.volume(v), v.img, off, n, fmt.Sprintf("volume %d", v.id))
	m.ops["read"]++
}

func (m *model) compare(r interface {
	ReadAt([]byte, int64) (int, error)
}, img *image, off, n int64, what string) {
	m.t.Helper()
	got := make([]byte, n)
	if k, err := r.ReadAt(got, off); err != nil || int64(k) != n {
		m.fatalf("read %d bytes at %d of %s: %d, %v", n, off, what, k, err)
	}
	if want := img.read(off, n); !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		m.fatalf("read %d bytes at %d of %s: differs from the model at byte %d (block %d)", n, off, what, off+int64(i), (off+int64(i))/modelBS)
	}
}

func (m *model) discard() {
	v := m.pickVol()
	off, n := m.randRange(v.img.size)
	m.do("discard", m.volume(v).Discard(off, n))
	v.img.zero(off, n)
}

func (m *model) snapshot() {
	v := m.pickVol()
	info, err := m.p.CreateSnapshot(v.id, "")
	m.do("snapshot", err)
	if info.Size != v.img.size || info.Volume != v.id {
		m.fatalf("snapshot info %+v for volume %d of %d bytes", info, v.id, v.img.size)
	}
	m.snaps = append(m.snaps, &modelSnap{id: info.ID, vol: v.id, img: v.img.clone(v.img.size)})
}

func (m *model) clone() {
	s := m.snaps[m.rng.IntN(len(m.snaps))]
	size := s.img.size + m.rng.Int64N(3)*m.rng.Int64N(40)*modelBS
	info, err := m.p.Clone(s.id, "", size)
	m.do("clone", err)
	m.vols = append(m.vols, &modelVol{id: info.ID, img: s.img.clone(size)})
}

func (m *model) cloneVolume() {
	v := m.pickVol()
	info, err := m.p.CloneVolume(v.id, "", 0)
	m.do("clone-volume", err)
	m.vols = append(m.vols, &modelVol{id: info.ID, img: v.img.clone(v.img.size)})
}

func (m *model) revert() {
	v := m.pickVol()
	var cands []*modelSnap
	for _, s := range m.snaps {
		if s.vol == v.id && s.img.size <= v.img.size {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return
	}
	s := cands[m.rng.IntN(len(cands))]
	m.do("revert", m.p.Revert(v.id, s.id))
	v.img = s.img.clone(v.img.size)
}

func (m *model) deleteVolume() {
	i := m.rng.IntN(len(m.vols))
	m.do("delete-volume", m.p.DeleteVolume(m.vols[i].id))
	m.vols = slices.Delete(m.vols, i, i+1)
}

func (m *model) deleteSnapshot() {
	i := m.rng.IntN(len(m.snaps))
	m.do("delete-snapshot", m.p.DeleteSnapshot(m.snaps[i].id))
	m.snaps = slices.Delete(m.snaps, i, i+1)
}

func (m *model) grow() {
	v := m.pickVol()
	size := v.img.size + (1+m.rng.Int64N(64))*modelBS
	m.do("grow", m.p.GrowVolume(v.id, size))
	v.img.size = size
}

func (m *model) reopen() {
	if err := m.p.Close(); err != nil {
		m.fatalf("close: %v", err)
	}
	m.f = m.f.Reopen()
	p, err := blockstore.OpenOn(m.f, m.opts)
	if err != nil {
		m.fatalf("reopen: %v", err)
	}
	if r := p.Recovery(); r.Records != 0 {
		m.fatalf("clean reopen replayed %d records", r.Records)
	}
	m.p = p
	m.ops["reopen"]++
}

// diff checks that a diff reports every block whose contents differ, between two snapshots or
// a snapshot and a volume (it may report more: blocks rewritten with the same bytes).
func (m *model) diff() {
	m.t.Helper()
	a := m.snaps[m.rng.IntN(len(m.snaps))]
	var other *image
	var ext []blockstore.Extent
	var err error
	if m.rng.IntN(2) == 0 {
		b := m.snaps[m.rng.IntN(len(m.snaps))]
		other = b.img
		ext, err = m.p.DiffSnapshots(a.id, b.id)
	} else {
		v := m.pickVol()
		other = v.img
		ext, err = m.p.DiffVolume(a.id, v.id)
	}
	if err != nil {
		m.fatalf("diff: %v", err)
	}
	covered := func(lbn int64) bool {
		for _, e := range ext {
			if lbn*modelBS >= e.Offset && lbn*modelBS < e.Offset+e.Length {
				return true
			}
		}
		return false
	}
	zero := make([]byte, modelBS)
	for lbn := int64(0); lbn < max(a.img.size, other.size)/modelBS; lbn++ {
		x, y := a.img.blocks[lbn], other.blocks[lbn]
		if x == nil {
			x = zero
		}
		if y == nil {
			y = zero
		}
		if !bytes.Equal(x, y) && !covered(lbn) {
			m.fatalf("diff from snapshot %d misses block %d, which differs", a.id, lbn)
		}
	}
	m.ops["diff"]++
}

// checkAll compares every volume and snapshot in full with the model.
func (m *model) checkAll() {
	m.t.Helper()
	for _, v := range m.vols {
		m.compare(m.volume(v), v.img, 0, v.img.size, fmt.Sprintf("volume %d", v.id))
	}
	for _, s := range m.snaps {
		sv, err := m.p.SnapshotView(s.id)
		if err != nil {
			m.fatalf("snapshot %d: %v", s.id, err)
		}
		m.compare(sv, s.img, 0, s.img.size, fmt.Sprintf("snapshot %d", s.id))
	}
	if got, want := len(m.p.Volumes()), len(m.vols); got != want {
		m.fatalf("%d volumes, model has %d", got, want)
	}
	if got, want := len(m.p.Snapshots()), len(m.snaps); got != want {
		m.fatalf("%d snapshots, model has %d", got, want)
	}
}

var _ = errors.Is
