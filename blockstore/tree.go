package blockstore

import (
	"fmt"
	"sync/atomic"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// Converter trees.
//
// A converter tree maps logical block numbers of a volume or snapshot to physical blocks. It is
// a radix tree of fixed-size nodes with `fanout` entries each: leaves (level 0) hold data block
// numbers, inner nodes hold child node numbers, 0 means unmapped. A tree of height h covers
// fanout^h logical blocks; an empty tree has root 0.
//
// Trees share subtrees. Every node and data block carries a refcount (refcount.go), and a node is
// changed in place only when it is private: refcount 1 and dirty (created since the last
// checkpoint, so no durable state points at it). Otherwise it is copied first (Rodeh, "B-trees,
// shadowing, and clones"): a copy of a shared node takes a new reference on every child, a copy
// of a clean private node takes over its references and the old block is freed after the next
// checkpoint.
//
// All functions here REQUIRE p.mu.

// node is a tree node in memory.
type node struct {
	pbn   uint64      // the block it lives in (assigned at creation, written at checkpoint)
	level uint8       // 0 for a leaf
	dirty bool        // not yet written: created since the last checkpoint
	ref   atomic.Bool // recently used (CLOCK bit for the node cache; set by shared readers)
	ent   []uint64    // fanout entries
}

// tree names a root: a volume's (mutable) or a snapshot's (frozen).
type tree struct {
	root   uint64
	height uint8
}

// getNode returns the node at pbn, from the cache or disk.
func (p *Pool) getNode(pbn uint64) (*node, error) {
	if n, ok := p.nodes[pbn]; ok {
		n.ref.Store(true)
		return n, nil
	}
	if !p.rc.valid(pbn) {
		return nil, &CorruptionError{Block: pbn, What: "tree node", Err: fmt.Errorf("%w: block is outside the data region", format.ErrInvalid)}
	}
	buf := p.blockBuf()
	defer p.putBlockBuf(buf)
	if _, err := p.f.ReadAt(buf, int64(pbn)*int64(p.bs)); err != nil {
		return nil, fmt.Errorf("blockstore: read tree node at block %d: %w", pbn, err)
	}
	level, ent, err := format.DecodeNode(buf, pbn, make([]uint64, 0, p.fanout))
	if err == nil && len(ent) != p.fanout {
		err = fmt.Errorf("%w: %d entries, pool fanout is %d", format.ErrInvalid, len(ent), p.fanout)
	}
	if err != nil {
		return nil, &CorruptionError{Block: pbn, What: "tree node", Err: err}
	}
	n := &node{pbn: pbn, level: level, ent: ent}
	n.ref.Store(true)
	p.cacheNode(n)
	return n, nil
}

// cacheNode adds a node to the cache, evicting clean nodes past the budget.
func (p *Pool) cacheNode(n *node) {
	p.nodes[n.pbn] = n
	if n.dirty {
		p.dirtyNodes++
		return
	}
	p.cleanNodes++
	p.evictNodes(n)
}

// evictNodes drops clean nodes past the cache budget, sparing keep: a CLOCK over Go's
// randomized map order drops nodes not used since the last sweep. REQUIRES p.mu.
func (p *Pool) evictNodes(keep *node) {
	if p.cleanNodes <= p.maxCleanNodes {
		return
	}
	for pbn, c := range p.nodes {
		if p.cleanNodes <= p.maxCleanNodes*7/8 {
			break
		}
		if c.dirty || c == keep {
			continue
		}
		if c.ref.Load() {
			c.ref.Store(false)
			continue
		}
		delete(p.nodes, pbn)
		p.cleanNodes--
	}
}

func (p *Pool) uncacheNode(n *node) {
	if _, ok := p.nodes[n.pbn]; !ok {
		return
	}
	delete(p.nodes, n.pbn)
	if n.dirty {
		p.dirtyNodes--
	} else {
		p.cleanNodes--
	}
}

// newNode allocates a zeroed dirty node.
func (p *Pool) newNode(level uint8) (*node, error) {
	pbn, err := p.allocBlock(allocNode)
	if err != nil {
		return nil, err
	}
	n := &node{pbn: pbn, level: level, dirty: true, ent: make([]uint64, p.fanout)}
	p.cacheNode(n)
	p.nodeBlocks++
	return n, nil
}

// freeNodeBlock releases the block of a node whose last reference went away.
func (p *Pool) freeNodeBlock(n *node) {
	p.uncacheNode(n)
	p.nodeBlocks--
	if n.dirty {
		p.decref(n.pbn, 0) // never written: no durable state points at it
	} else {
		p.decref(n.pbn, pendingCheckpoint)
	}
}

// writable makes the node that *ref points at private and returns it, updating *ref.
func (p *Pool) writable(ref *uint64) (*node, error) {
	n, err := p.getNode(*ref)
	if err != nil {
		return nil, err
	}
	rc := p.rc.get(n.pbn)
	if n.dirty && rc == 1 {
		return n, nil
	}
	nn, err := p.newNode(n.level)
	if err != nil {
		return nil, err
	}
	copy(nn.ent, n.ent)
	if rc == 1 {
		// Private but durable: the copy takes over the children; the old block goes after
		// the next checkpoint.
		p.freeNodeBlock(n)
	} else {
		for i, c := range nn.ent {
			if c == 0 {
				continue
			}
			if err := p.incref(c); err != nil {
				for _, d := range nn.ent[:i] {
					if d != 0 {
						p.decref(d, 0)
					}
				}
				p.freeNodeBlock(nn)
				return nil, err
			}
		}
		p.decref(n.pbn, 0) // rc > 1: just drops our reference
	}
	*ref = nn.pbn
	return nn, nil
}

// span returns the number of logical blocks one entry of a node at level covers.
func (p *Pool) span(level uint8) uint64 {
	s := uint64(1)
	for range level {
		s *= uint64(p.fanout)
	}
	return s
}

// heightFor returns the tree height needed for a volume of blocks logical blocks.
func (p *Pool) heightFor(blocks uint64) uint8 {
	h := uint8(1)
	for c := uint64(p.fanout); c < blocks; c *= uint64(p.fanout) {
		h++
	}
	return h
}

// lookup returns the physical block mapped at lbn (0 if unmapped) and whether the block is
// exclusively owned by this tree, now and in the durable state: every node on its path and the
// block itself have refcount 1, and none of them became private by a change that a crash could
// still undo (see p.unshared: a delete or a revert that dropped the other tree holding a node
// is durable only once its commit is). Only an owned block may be overwritten in place.
func (p *Pool) lookup(t *tree, lbn uint64) (pbn uint64, owned bool, err error) {
	cur := t.root
	owned = true
	for level := int(t.height) - 1; ; level-- {
		if cur == 0 {
			return 0, false, nil
		}
		if p.rc.get(cur) != 1 || p.recentlyUnshared(cur) {
			owned = false
		}
		n, err := p.getNode(cur)
		if err != nil {
			return 0, false, err
		}
		s := p.span(uint8(level))
		cur = n.ent[(lbn/s)%uint64(p.fanout)]
		if level == 0 {
			if cur == 0 {
				return 0, false, nil
			}
			return cur, owned && p.rc.get(cur) == 1 && !p.recentlyUnshared(cur), nil
		}
	}
}

// setEntry maps lbn to pbn (0 unmaps) in a mutable tree, copying shared nodes on the path, and
// returns the block that was mapped before. The caller owns the reference to pbn and receives
// the reference to the old block. Unmapping prunes nodes that become empty.
func (p *Pool) setEntry(t *tree, lbn, pbn uint64) (old uint64, err error) {
	if pbn == 0 {
		cur, _, err := p.lookup(t, lbn)
		if err != nil || cur == 0 {
			return 0, err
		}
	}
	var path [format.MaxHeight]*node
	var slots [format.MaxHeight]int
	ref := &t.root
	for level := int(t.height) - 1; level >= 0; level-- {
		var n *node
		if *ref == 0 {
			if n, err = p.newNode(uint8(level)); err != nil {
				return 0, err
			}
			*ref = n.pbn
		} else if n, err = p.writable(ref); err != nil {
			return 0, err
		}
		idx := int((lbn / p.span(uint8(level))) % uint64(p.fanout))
		path[level], slots[level] = n, idx
		ref = &n.ent[idx]
	}
	old = *ref
	*ref = pbn
	if pbn == 0 {
		p.prune(t, path[:t.height], slots[:t.height])
	}
	return old, nil
}

// prune frees nodes on a just-written path that hold no entries any more. The path nodes are
// private (writable made them so).
func (p *Pool) prune(t *tree, path []*node, slots []int) {
	for level := 0; level < len(path); level++ {
		n := path[level]
		for _, e := range n.ent {
			if e != 0 {
				return
			}
		}
		p.freeNodeBlock(n)
		if level+1 < len(path) {
			path[level+1].ent[slots[level+1]] = 0
		} else {
			t.root = 0
		}
	}
}

// drop releases one reference to the subtree at pbn (a node at level), freeing what nobody else
// holds. Data blocks whose last reference goes are freed after the next commit.
func (p *Pool) drop(pbn uint64, level uint8) error {
	if pbn == 0 {
		return nil
	}
	if p.rc.get(pbn) > 1 {
		p.decref(pbn, 0)
		return nil
	}
	n, err := p.getNode(pbn)
	if err != nil {
		return err
	}
	for _, c := range n.ent {
		if c == 0 {
			continue
		}
		if level == 0 {
			p.decref(c, p.dataFreeMark())
		} else if err := p.drop(c, level-1); err != nil {
			return err
		}
	}
	p.freeNodeBlock(n)
	return nil
}

// dataFreeMark is how a freed data block waits: until the next commit in normal operation;
// during replay not at all when the record freeing it is durable, else until the recovery
// checkpoint (replayVolatile).
func (p *Pool) dataFreeMark() uint32 {
	switch {
	case !p.replaying:
		return pendingCommit
	case p.replayVolatile:
		return pendingCheckpoint
	default:
		return 0
	}
}

// lift raises a tree to height h, putting the old root under slot 0 of new roots, one per
// level added. It does all or nothing: when a new root cannot be allocated (a full pool), the
// roots already made are freed and the tree is left as it was.
func (p *Pool) lift(t *tree, h uint8) error {
	orig := *t
	var made []*node
	for t.height < h {
		if t.root != 0 {
			n, err := p.newNode(t.height)
			if err != nil {
				// Each new root holds the reference to the one below; the tree's reference
				// goes back to its old root.
				for _, m := range made {
					p.freeNodeBlock(m)
				}
				*t = orig
				return err
			}
			n.ent[0] = t.root // the new node takes over the tree's reference
			t.root = n.pbn
			made = append(made, n)
		}
		t.height++
	}
	p.maxHeight = max(p.maxHeight, t.height)
	return nil
}

// walkMapped calls fn for every mapped logical block of t in [from, to), in order.
func (p *Pool) walkMapped(t *tree, from, to uint64, fn func(lbn, pbn uint64) error) error {
	return p.walkNode(t.root, int(t.height)-1, 0, from, to, fn)
}

func (p *Pool) walkNode(pbn uint64, level int, base, from, to uint64, fn func(lbn, pbn uint64) error) error {
	if pbn == 0 {
		return nil
	}
	n, err := p.getNode(pbn)
	if err != nil {
		return err
	}
	s := p.span(uint8(level))
	for i, c := range n.ent {
		lo := base + uint64(i)*s
		if c == 0 || lo+s <= from {
			continue
		}
		if lo >= to {
			break
		}
		if level == 0 {
			if err := fn(lo, c); err != nil {
				return err
			}
		} else if err := p.walkNode(c, level-1, lo, from, to, fn); err != nil {
			return err
		}
	}
	return nil
}
