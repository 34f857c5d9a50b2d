package blockstore

// Extent is a byte range of a volume or snapshot.
type Extent struct {
	Offset int64
	Length int64
}

// treeRef is a subtree seen at some level of a walk: a real node at level `level`, or, when the
// walk is above it (a shorter tree compared with a taller one), a virtual chain of nodes whose
// slot 0 leads down to it.
type treeRef struct {
	pbn   uint64
	level int
}

// child returns the subtree under slot idx of ref, seen from level L.
func (p *Pool) child(ref treeRef, L int, idx int) (treeRef, error) {
	if ref.pbn == 0 {
		return ref, nil
	}
	if ref.level < L {
		if idx == 0 {
			return ref, nil
		}
		return treeRef{}, nil
	}
	n, err := p.getNode(ref.pbn)
	if err != nil {
		return treeRef{}, err
	}
	return treeRef{pbn: n.ent[idx], level: L - 1}, nil
}

// diffTrees calls emit for each logical block whose mapping differs between a and b, in order,
// skipping every subtree the two share: the cost is proportional to what changed.
// REQUIRES p.mu.
func (p *Pool) diffTrees(a, b tree, emit func(lbn uint64)) error {
	top := int(max(a.height, b.height)) - 1
	var walk func(x, y treeRef, L int, base uint64) error
	walk = func(x, y treeRef, L int, base uint64) error {
		if x.pbn == y.pbn {
			return nil
		}
		p.diffVisits++
		s := p.span(uint8(L))
		for i := 0; i < p.fanout; i++ {
			cx, err := p.child(x, L, i)
			if err != nil {
				return err
			}
			cy, err := p.child(y, L, i)
			if err != nil {
				return err
			}
			if L == 0 {
				if cx.pbn != cy.pbn {
					emit(base + uint64(i))
				}
				continue
			}
			if err := walk(cx, cy, L-1, base+uint64(i)*s); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(treeRef{a.root, int(a.height) - 1}, treeRef{b.root, int(b.height) - 1}, top, 0)
}

// extentBuilder coalesces block numbers emitted in increasing order into byte extents.
type extentBuilder struct {
	bs  int64
	out []Extent
}

func (e *extentBuilder) add(lbn uint64) {
	off := int64(lbn) * e.bs
	if n := len(e.out); n > 0 && e.out[n-1].Offset+e.out[n-1].Length == off {
		e.out[n-1].Length += e.bs
		return
	}
	e.out = append(e.out, Extent{Offset: off, Length: e.bs})
}

// DiffSnapshots returns the extents whose contents may differ between two snapshots (blocks
// written, discarded or cloned differently), in time proportional to what changed.
func (p *Pool) DiffSnapshots(from, to SnapshotID) ([]Extent, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, err := p.snapByID(from)
	if err != nil {
		return nil, err
	}
	b, err := p.snapByID(to)
	if err != nil {
		return nil, err
	}
	eb := &extentBuilder{bs: int64(p.bs)}
	err = p.diffTrees(a.t, b.t, eb.add)
	return eb.out, err
}

// DiffVolume returns the extents of a volume that may differ from a snapshot.
func (p *Pool) DiffVolume(from SnapshotID, vol VolumeID) ([]Extent, error) {
	p.writeGate.Lock() // writes in flight have not mapped their blocks yet: wait for them
	defer p.writeGate.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	a, err := p.snapByID(from)
	if err != nil {
		return nil, err
	}
	v, err := p.volByID(vol)
	if err != nil {
		return nil, err
	}
	eb := &extentBuilder{bs: int64(p.bs)}
	err = p.diffTrees(a.t, v.t, eb.add)
	return eb.out, err
}

// AllocatedExtents returns the extents of a snapshot that are mapped (everything else reads as
// zeros), in time proportional to what is mapped.
func (p *Pool) AllocatedExtents(id SnapshotID) ([]Extent, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, err := p.snapByID(id)
	if err != nil {
		return nil, err
	}
	eb := &extentBuilder{bs: int64(p.bs)}
	err = p.walkMapped(&s.t, 0, p.blocksFor(s.size), func(lbn, _ uint64) error {
		eb.add(lbn)
		return nil
	})
	return eb.out, err
}
