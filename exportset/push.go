package exportset

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// PushRequest asks to push an image.
type PushRequest struct {
	// Source is the image's data.
	Source Source
	// Image is its metadata, recorded in the manifest.
	Image Image
	// Parent is the image Source was derived from, when that one has a digest (it was pushed
	// or pulled before); nil otherwise.
	Parent *Parent
	// Name, when set, is made to point at the image (refs/<name>) once it is complete.
	Name string
	// ChunkSize is the chunk size of a push that does not start from its parent's manifest
	// (one that does keeps the parent's); 0: DefaultChunkSize.
	ChunkSize int64
	// Whole writes every chunk whole, never as a patch on the parent's objects: the image then
	// references no object of its ancestors (see docs/export-sets.md on masked images).
	Whole bool
	// Progress, when set, receives the push's progress (from one goroutine at a time).
	Progress func(Progress)
}

// Parent is the image a pushed image was derived from.
type Parent struct {
	// Digest is the parent's manifest digest: the pushed image's lineage.
	Digest Digest
	// Source is the parent's data in the same store as the pushed image, or nil when the store
	// no longer holds it. With it, and the parent's manifest in the registry, the push reads
	// only what the store's diff says changed, and uploads only patches of it.
	Source Source
}

// PushResult is what a push did.
type PushResult struct {
	Digest   Digest
	Manifest []byte
	// Incremental is set when the push started from the parent's manifest.
	Incremental bool
	// Chunks is the image's chunks that hold data; Reused those taken unchanged from the
	// parent's manifest; Read those read from the source, ReadBytes the bytes read.
	Chunks, Reused, Read int
	ReadBytes            int64
	// Uploaded objects and their stored bytes; Present objects that were there already.
	Uploaded      int
	UploadedBytes int64
	Present       int
}

// Push writes an image into the registry: its objects first, then its manifest, then its name.
// An image whose parent's manifest is in the registry is pushed incrementally: the chunks the
// store's diff says unchanged keep the parent's objects, and a changed chunk gets a patch of
// its changed blocks on top of them (or is written whole when its patches grew past half of
// it, or past MaxChain objects). Objects the registry holds already are not uploaded again,
// so a push that was interrupted resumes where it stopped. The same image (content, metadata,
// parent, chunk size) always gives the same manifest and digest for the same registry state.
func (r *Registry) Push(ctx context.Context, req PushRequest) (*PushResult, error) {
	src := req.Source
	if src == nil {
		return nil, invalid("push: no source")
	}
	if err := req.Image.check(); err != nil {
		return nil, fmt.Errorf("%w: push: %w", ErrInvalid, err)
	}
	if req.Name != "" {
		if err := CheckName(req.Name); err != nil {
			return nil, err
		}
	}
	bs, size := src.BlockSize(), src.Size()
	cs := req.ChunkSize
	if cs == 0 {
		cs = DefaultChunkSize
	}
	switch {
	case bs < MinBlockSize || bs > MaxBlockSize || bits.OnesCount(uint(bs)) != 1:
		return nil, invalid("push %s: block size %d: want a power of two from %d to %d", req.Image.Name, bs, MinBlockSize, MaxBlockSize)
	case size <= 0 || size > MaxImageSize || size%int64(bs) != 0:
		return nil, invalid("push %s: size %d: want a positive multiple of the block size %d", req.Image.Name, size, bs)
	case cs < MinChunkSize || cs > MaxChunkSize || cs%int64(bs) != 0:
		return nil, invalid("push %s: chunk size %d: want a multiple of the block size %d from %d to %d", req.Image.Name, cs, bs, MinChunkSize, MaxChunkSize)
	case req.Parent != nil && !req.Parent.Digest.Valid():
		return nil, invalid("push %s: parent digest %.80q: want sha256: and 64 lowercase hex digits", req.Image.Name, req.Parent.Digest)
	}
	p := &pusher{r: r, src: src, inflight: map[Digest]*flight{}}
	p.reporter = reporter{report: req.Progress, transferred: &p.uploadedBytes}
	p.update(func(pr *Progress) { pr.Phase = PhasePlan })
	lease, err := r.acquirePushLease(ctx, func(string) { p.update(func(pr *Progress) { pr.Phase = PhaseWaiting }) })
	if err != nil {
		return nil, err
	}
	defer lease.release()

	m := &Manifest{Image: req.Image, BlockSize: bs, Size: size, ChunkSize: cs}
	if req.Parent != nil {
		m.Parent = req.Parent.Digest
		if req.Parent.Source != nil && !req.Whole {
			// Read after the lease is taken: a collection cannot delete the parent's objects
			// from now on, also when the parent is deleted meanwhile.
			pm, _, err := r.Manifest(ctx, req.Parent.Digest)
			switch {
			case errors.Is(err, ErrNotFound):
				r.log.Info("the parent is not in the registry; the push is whole", "image", req.Image.Name, "parent", req.Parent.Digest)
			case err != nil:
				return nil, err
			case pm.BlockSize != bs || pm.Size > size || pm.Size != req.Parent.Source.Size() || req.Parent.Source.BlockSize() != bs:
				r.log.Info("the parent's geometry differs; the push is whole", "image", req.Image.Name, "parent", req.Parent.Digest)
			default:
				p.parent, p.pm = req.Parent.Source, pm
				m.ChunkSize = pm.ChunkSize
			}
		}
	}
	p.m = m
	work, err := p.plan(ctx)
	if err != nil {
		return nil, err
	}
	results := make([]*Chunk, len(work))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.workers)
	for k, w := range work {
		g.Go(func() error {
			c, err := p.chunk(gctx, w)
			if err != nil {
				return err
			}
			results[k] = c
			p.update(func(pr *Progress) { pr.Chunks++; pr.Bytes += w.bytes })
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	worked := map[int64]bool{}
	for k, w := range work {
		worked[w.index] = true
		if results[k] != nil {
			m.Chunks = append(m.Chunks, *results[k])
		}
	}
	res := &PushResult{Incremental: p.pm != nil}
	if p.pm != nil {
		for _, c := range p.pm.Chunks {
			if !worked[c.Index] {
				m.Chunks = append(m.Chunks, c)
				res.Reused++
			}
		}
	}
	slices.SortFunc(m.Chunks, func(a, b Chunk) int { return cmp.Compare(a.Index, b.Index) })
	raw, err := m.Encode()
	if err != nil {
		return nil, err
	}
	d := DigestOf(raw)
	p.update(func(pr *Progress) { pr.Phase = PhaseCommit })
	if err := lease.fresh(); err != nil {
		return nil, fmt.Errorf("exportset: push %s: %w", req.Image.Name, err)
	}
	if err := r.t.Put(ctx, manifestKey(d), raw); err != nil {
		return nil, fmt.Errorf("exportset: push %s: write the manifest: %w", req.Image.Name, err)
	}
	if req.Name != "" {
		if err := r.setRef(ctx, req.Name, d); err != nil {
			return nil, err
		}
	}
	res.Digest, res.Manifest, res.Chunks = d, raw, len(m.Chunks)
	res.Read, res.ReadBytes = int(p.read.Load()), p.readBytes.Load()
	res.Uploaded, res.UploadedBytes, res.Present = int(p.uploaded.Load()), p.uploadedBytes.Load(), int(p.present.Load())
	r.log.Info("image pushed", "image", req.Image.Name, "digest", d, "target", r.t.String(), "incremental", res.Incremental,
		"chunks", res.Chunks, "reused", res.Reused, "read", res.Read, "uploaded", res.Uploaded, "uploadedBytes", res.UploadedBytes, "present", res.Present)
	return res, nil
}

// pusher is one push's state.
type pusher struct {
	r      *Registry
	m      *Manifest
	src    Source
	parent Source    // nil for a whole push
	pm     *Manifest // the parent's manifest; nil for a whole push
	reporter

	flightMu sync.Mutex
	inflight map[Digest]*flight // objects being uploaded, so that two chunks with one payload upload it once

	read, uploaded, present  atomic.Int64
	readBytes, uploadedBytes atomic.Int64
}

type flight struct {
	done chan struct{}
	obj  Object
	err  error
}

// chunkWork is a chunk a push reads: with a parent, the extents of it that changed.
type chunkWork struct {
	index int64
	exts  []Extent
	bytes int64 // what the push reads of it, for progress
}

// plan returns the chunks to read: those the store's diff says changed since the parent, or
// those that hold data.
func (p *pusher) plan(ctx context.Context) ([]chunkWork, error) {
	var exts []Extent
	var err error
	if p.pm != nil {
		exts, err = p.src.ChangedSince(ctx, p.parent)
	} else {
		exts, err = p.src.Allocated(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("exportset: push %s: %w", p.m.Image.Name, err)
	}
	work := splitByChunk(exts, p.m.ChunkSize, p.m.Size, int64(p.m.BlockSize))
	var total int64
	for k := range work {
		if p.pm == nil {
			work[k].bytes = p.m.ChunkLen(work[k].index)
		}
		total += work[k].bytes
	}
	p.update(func(pr *Progress) { pr.Phase, pr.TotalChunks, pr.TotalBytes = PhaseTransfer, len(work), total })
	return work, nil
}

// splitByChunk returns the chunks exts touch, each with the parts of exts in it, aligned to
// whole blocks and clipped to size.
func splitByChunk(exts []Extent, chunkSize, size, bs int64) []chunkWork {
	var work []chunkWork
	for _, e := range exts {
		start := e.Offset / bs * bs
		end := min((e.Offset+e.Length+bs-1)/bs*bs, size)
		for start < end {
			i := start / chunkSize
			stop := min(end, (i+1)*chunkSize)
			if n := len(work); n == 0 || work[n-1].index != i {
				work = append(work, chunkWork{index: i})
			}
			w := &work[len(work)-1]
			if k := len(w.exts); k > 0 && w.exts[k-1].Offset+w.exts[k-1].Length >= start {
				last := &w.exts[k-1]
				grown := max(last.Offset+last.Length, stop) - last.Offset
				w.bytes += grown - last.Length
				last.Length = grown
			} else {
				w.exts = append(w.exts, Extent{Offset: start, Length: stop - start})
				w.bytes += stop - start
			}
			start = stop
		}
	}
	return work
}

// chunk returns chunk w's entry (nil when it reads as zeros).
func (p *pusher) chunk(ctx context.Context, w chunkWork) (*Chunk, error) {
	if p.pm == nil {
		return p.whole(ctx, w.index)
	}
	pe := p.pm.chunk(w.index)
	at := w.index * p.m.ChunkSize
	var recs []patchRecord
	for _, e := range w.exts {
		cur := make([]byte, e.Length)
		if err := readFull(p.src, cur, e.Offset); err != nil {
			return nil, fmt.Errorf("exportset: push %s: read %d bytes at %d: %w", p.m.Image.Name, e.Length, e.Offset, err)
		}
		old := make([]byte, e.Length)
		if n := min(e.Length, p.pm.Size-e.Offset); n > 0 {
			if err := readFull(p.parent, old[:n], e.Offset); err != nil {
				return nil, fmt.Errorf("exportset: push %s: read the parent's %d bytes at %d: %w", p.m.Image.Name, n, e.Offset, err)
			}
		}
		p.read.Add(1)
		p.readBytes.Add(e.Length)
		recs = append(recs, diffRecords(old, cur, e.Offset-at, p.m.BlockSize)...)
	}
	if len(recs) == 0 {
		return pe, nil // the diff's "may differ" did not
	}
	var chain []Object
	var patched int64
	if pe != nil {
		chain = pe.Objects
		for _, o := range chain {
			if o.Patch {
				patched += o.Length
			}
		}
	}
	payload := encodePatch(recs)
	if len(chain) >= MaxChain || patched+int64(len(payload)) > p.m.ChunkLen(w.index)/2 {
		return p.whole(ctx, w.index)
	}
	obj, err := p.upload(ctx, DigestOf(payload), payload, true)
	if err != nil {
		return nil, err
	}
	return &Chunk{Index: w.index, Objects: append(slices.Clone(chain), obj)}, nil
}

// whole reads chunk i whole and returns its entry: one full object, or nil when it reads as
// zeros.
func (p *pusher) whole(ctx context.Context, i int64) (*Chunk, error) {
	buf := make([]byte, p.m.ChunkLen(i))
	off := i * p.m.ChunkSize
	if err := readFull(p.src, buf, off); err != nil {
		return nil, fmt.Errorf("exportset: push %s: read chunk %d: %w", p.m.Image.Name, i, err)
	}
	p.read.Add(1)
	p.readBytes.Add(int64(len(buf)))
	if allZero(buf) {
		return nil, nil
	}
	obj, err := p.upload(ctx, DigestOf(buf), buf, false)
	if err != nil {
		return nil, err
	}
	return &Chunk{Index: i, Objects: []Object{obj}}, nil
}

// upload makes sure the registry holds the object of payload (digest d), uploading it when it
// is not there, and returns its entry.
func (p *pusher) upload(ctx context.Context, d Digest, payload []byte, patch bool) (Object, error) {
	p.flightMu.Lock()
	if f := p.inflight[d]; f != nil {
		p.flightMu.Unlock()
		select {
		case <-f.done:
			return f.obj, f.err
		case <-ctx.Done():
			return Object{}, context.Cause(ctx)
		}
	}
	f := &flight{done: make(chan struct{})}
	p.inflight[d] = f
	p.flightMu.Unlock()
	f.obj, f.err = p.put(ctx, d, payload, patch)
	close(f.done)
	return f.obj, f.err
}

func (p *pusher) put(ctx context.Context, d Digest, payload []byte, patch bool) (Object, error) {
	obj := Object{Digest: d, Length: int64(len(payload)), Patch: patch}
	key := objectKey(d)
	info, err := p.r.t.Stat(ctx, key)
	if err == nil {
		obj.Size = info.Size
		p.present.Add(1)
		return obj, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return obj, fmt.Errorf("exportset: push %s: stat %s: %w", p.m.Image.Name, key, err)
	}
	stored := compress(payload)
	if err := p.r.t.Put(ctx, key, stored); err != nil {
		return obj, fmt.Errorf("exportset: push %s: upload %s: %w", p.m.Image.Name, key, err)
	}
	obj.Size = int64(len(stored))
	p.uploaded.Add(1)
	p.uploadedBytes.Add(obj.Size)
	return obj, nil
}

// readFull fills b from r at off (a short read at the end of r with io.EOF counts only if b
// is full).
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
