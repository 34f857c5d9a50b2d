package exportset

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// maxLineage bounds how far a pull looks up an image's ancestors for one the node holds.
const maxLineage = 64

// PullRequest asks to pull an image.
type PullRequest struct {
	// Ref is the image's name in the registry or its digest.
	Ref string
	// Sink is the store to pull into.
	Sink Sink
	// Progress, when set, receives the pull's progress (from one goroutine at a time).
	Progress func(Progress)
}

// PullResult is what a pull did.
type PullResult struct {
	Digest   Digest
	Manifest *Manifest
	Raw      []byte // the manifest's bytes
	// Base is the image the pull started from (a clone of it), or "" for an empty volume.
	Base Digest
	// Chunks is the chunks that differed from the base and were written.
	Chunks int
	// Resumed: the pull resumed what an interrupted one left; Kept of the chunks were found
	// written and verified, and not downloaded again.
	Resumed bool
	Kept    int
	// Fetched objects and their stored bytes.
	Fetched      int
	FetchedBytes int64
	// WrittenBytes were written into the volume; ZeroedBytes made to read as zeros.
	WrittenBytes, ZeroedBytes int64
}

// Pull writes an image from the registry into a node's store. It looks up the image's lineage
// for an ancestor the node holds (Sink.Has) and starts from a clone of it, writing only the
// chunks whose objects differ from the ancestor's, and within them only the blocks that
// differ: the pulled image shares the rest with the ancestor in the store. Without one it
// fills an empty volume. Every object is verified against its digest; a missing or corrupt
// one fails the pull with a ChunkError naming the chunk and the image. The pull is atomic: the
// volume becomes the image (Fill.Commit) only once every chunk is written; on failure it is
// deleted (Fill.Abort), unless the Fill is a ResumableFill and the pull lost its way to the
// registry or was cancelled (not a corrupt or missing object, not a failure of the store):
// then it is kept (ResumableFill.Keep), and the next pull of the image resumes it. A resumed
// pull reads back each chunk that is one whole object and downloads it only if what the volume
// holds does not match the object's digest (the digest of the chunk's bytes); it writes every
// other chunk again, diffed against what the volume holds (patches over a base's chunk are
// absolute: writing them again gives the same bytes).
func (r *Registry) Pull(ctx context.Context, req PullRequest) (_ *PullResult, err error) {
	if req.Sink == nil {
		return nil, invalid("pull: no sink")
	}
	d, err := r.Resolve(ctx, req.Ref)
	if err != nil {
		return nil, err
	}
	p := &puller{r: r, d: d}
	p.reporter = reporter{report: req.Progress, transferred: &p.fetchedBytes}
	p.update(func(pr *Progress) { pr.Phase = PhasePlan })
	m, raw, err := r.Manifest(ctx, d)
	if err != nil {
		return nil, err
	}
	p.m = m
	p.zeros = sync.OnceValue(func() []byte { return make([]byte, m.ChunkSize) })
	base, bm, err := r.findBase(ctx, m, req.Sink)
	if err != nil {
		return nil, err
	}
	fill, err := req.Sink.Begin(ctx, d, m, base)
	if err != nil {
		return nil, fmt.Errorf("exportset: pull %s (%s): %w", d, m.Image.Name, err)
	}
	p.fill = fill
	rf, resumable := fill.(ResumableFill)
	p.resumed = resumable && rf.Resumed()
	committed := false
	defer func() {
		if committed {
			return
		}
		if resumable && resumableFailure(err) {
			if kerr := rf.Keep(context.WithoutCancel(ctx)); kerr != nil {
				r.log.Error("keeping the volume of a failed pull", "image", d, "err", kerr)
			} else {
				r.log.Info("kept the volume of a failed pull: the next pull of the image resumes it", "image", d, "err", err)
			}
			return
		}
		if aerr := fill.Abort(context.WithoutCancel(ctx)); aerr != nil {
			r.log.Error("deleting the volume of a failed pull", "image", d, "err", aerr)
		}
	}()

	work := p.plan(bm)
	if err := p.transfer(ctx, work); err != nil {
		return nil, err
	}
	p.update(func(pr *Progress) { pr.Phase = PhaseCommit })
	if err := fill.Commit(ctx); err != nil {
		return nil, fmt.Errorf("exportset: pull %s (%s): %w", d, m.Image.Name, err)
	}
	committed = true
	res := &PullResult{Digest: d, Manifest: m, Raw: raw, Base: base, Chunks: len(work), Resumed: p.resumed, Kept: int(p.kept.Load()),
		Fetched: int(p.fetched.Load()), FetchedBytes: p.fetchedBytes.Load(), WrittenBytes: p.written.Load(), ZeroedBytes: p.zeroed.Load()}
	r.log.Info("image pulled", "image", m.Image.Name, "digest", d, "target", r.t.String(), "base", base,
		"chunks", res.Chunks, "resumed", res.Resumed, "kept", res.Kept, "fetched", res.Fetched, "fetchedBytes", res.FetchedBytes, "writtenBytes", res.WrittenBytes)
	return res, nil
}

// resumableFailure reports whether a pull that failed with err leaves its volume for the next
// pull to resume: it lost its way to the registry (a target's error on an object other than
// its absence) or was cancelled. A corrupt or missing object, and a failure of the store (a
// full pool, a failed write), abort it.
func resumableFailure(err error) bool {
	if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound) {
		return false
	}
	var ce *ChunkError
	return errors.As(err, &ce) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// findBase returns the nearest ancestor of m that sink holds and that m can start from (same
// block and chunk size, not larger), with its manifest; "" when there is none.
func (r *Registry) findBase(ctx context.Context, m *Manifest, sink Sink) (Digest, *Manifest, error) {
	cur := m.Parent
	for depth := 0; cur != "" && depth < maxLineage; depth++ {
		am, _, err := r.Manifest(ctx, cur)
		if err != nil {
			// An ancestor deleted from the registry (or unreadable) ends the lineage: pull
			// whole rather than fail.
			r.log.Info("the lineage ends here; pulling without it", "image", m.Image.Name, "ancestor", cur, "err", err)
			return "", nil, nil
		}
		has, err := sink.Has(ctx, cur)
		if err != nil {
			return "", nil, fmt.Errorf("exportset: pull %s: look for %s here: %w", m.Image.Name, cur, err)
		}
		if has && am.BlockSize == m.BlockSize && am.ChunkSize == m.ChunkSize && am.Size <= m.Size {
			return cur, am, nil
		}
		cur = am.Parent
	}
	return "", nil, nil
}

// puller is one pull's state.
type puller struct {
	r    *Registry
	d    Digest
	m    *Manifest
	fill Fill
	reporter

	fetched, fetchedBytes, written, zeroed, kept atomic.Int64
	// resumed: the volume holds what an interrupted pull of the image wrote.
	resumed bool
	// zeros returns a chunk of zeros, read only: what an empty volume holds.
	zeros func() []byte
}

// pullWork is a chunk to write: the image's entry c (nil: zeros) over the base's b (nil: the
// volume reads zeros there).
type pullWork struct {
	index int64
	c, b  *Chunk
	bytes int64 // stored bytes to fetch, for progress
}

// plan returns the chunks that differ from the base's (bm, nil for none).
func (p *puller) plan(bm *Manifest) []pullWork {
	var work []pullWork
	var total int64
	add := func(w pullWork) {
		if w.c != nil {
			from := 0
			if w.b != nil && isPrefix(w.b.Objects, w.c.Objects) {
				from = len(w.b.Objects)
			}
			for _, o := range w.c.Objects[from:] {
				w.bytes += o.Size
			}
		}
		total += w.bytes
		work = append(work, w)
	}
	var base []Chunk
	if bm != nil {
		base = bm.Chunks
	}
	i, j := 0, 0
	for i < len(p.m.Chunks) || j < len(base) {
		switch {
		case j == len(base) || i < len(p.m.Chunks) && p.m.Chunks[i].Index < base[j].Index:
			add(pullWork{index: p.m.Chunks[i].Index, c: &p.m.Chunks[i]})
			i++
		case i == len(p.m.Chunks) || base[j].Index < p.m.Chunks[i].Index:
			add(pullWork{index: base[j].Index, b: &base[j]})
			j++
		default:
			if !slices.Equal(p.m.Chunks[i].Objects, base[j].Objects) {
				add(pullWork{index: base[j].Index, c: &p.m.Chunks[i], b: &base[j]})
			}
			i++
			j++
		}
	}
	p.update(func(pr *Progress) { pr.Phase, pr.TotalChunks, pr.TotalBytes = PhaseTransfer, len(work), total })
	return work
}

// isPrefix reports whether a's objects are the first of b's.
func isPrefix(a, b []Object) bool { return len(a) < len(b) && slices.Equal(a, b[:len(a)]) }

// transfer downloads and writes the chunks of work. Downloads and writes overlap: r.workers
// chunks download at a time, as many are written at a time, and a chunk whose download ended
// waits for a writer before its download slot goes to the next chunk, so that at most twice
// r.workers chunks are in memory.
func (p *puller) transfer(ctx context.Context, work []pullWork) error {
	g, gctx := errgroup.WithContext(ctx)
	fetchers := make(chan struct{}, p.r.workers)
	writers := make(chan struct{}, p.r.workers)
	for _, w := range work {
		select {
		case fetchers <- struct{}{}:
		case <-gctx.Done():
			return g.Wait()
		}
		g.Go(func() error {
			write, err := p.chunk(gctx, w)
			if err == nil {
				select {
				case writers <- struct{}{}:
				case <-gctx.Done():
					err = context.Cause(gctx)
				}
			}
			<-fetchers
			if err != nil {
				return err
			}
			defer func() { <-writers }()
			if err := write(); err != nil {
				return err
			}
			p.update(func(pr *Progress) { pr.Chunks++; pr.Bytes += w.bytes })
			return nil
		})
	}
	return g.Wait()
}

// chunk downloads chunk w and returns what writes it into the volume.
func (p *puller) chunk(ctx context.Context, w pullWork) (write func() error, err error) {
	off, clen := w.index*p.m.ChunkSize, p.m.ChunkLen(w.index)
	if w.c == nil {
		return func() error { return p.apply(off, []patchRecord{{off: 0, length: clen}}) }, nil
	}
	if w.b != nil && isPrefix(w.b.Objects, w.c.Objects) {
		// The volume holds the base's chunk: the patches that follow, applied in order.
		var patches [][]patchRecord
		for _, o := range w.c.Objects[len(w.b.Objects):] {
			payload, err := p.fetch(ctx, w.index, o)
			if err != nil {
				return nil, err
			}
			recs, err := decodePatch(payload, clen, p.m.BlockSize)
			if err != nil {
				return nil, p.chunkError(w.index, o, err)
			}
			patches = append(patches, recs)
		}
		return func() error {
			for _, recs := range patches {
				if err := p.apply(off, recs); err != nil {
					return err
				}
			}
			return nil
		}, nil
	}
	// What the volume holds there: the base's chunk, or (resumed) what the interrupted pull
	// wrote over it, read once; zeros in an empty volume.
	old := p.zeros()[:clen]
	if w.b != nil || p.resumed {
		old = make([]byte, clen)
		if err := readFull(p.fill, old, off); err != nil {
			return nil, fmt.Errorf("exportset: pull %s: read the volume at %d: %w", p.d, off, err)
		}
	}
	if o := w.c.Objects[0]; p.resumed && len(w.c.Objects) == 1 && !o.Patch && o.Length <= clen &&
		allZero(old[o.Length:]) && DigestOf(old[:o.Length]) == o.Digest {
		// Written whole by the interrupted pull: the object's payload, then zeros.
		p.kept.Add(1)
		return func() error { return nil }, nil
	}
	var buf []byte // the chunk's bytes: its first full object's payload as decoded, or a copy
	for i, o := range w.c.Objects {
		payload, err := p.fetch(ctx, w.index, o)
		if err != nil {
			return nil, err
		}
		if i == 0 && !o.Patch && int64(len(payload)) == clen {
			buf = payload // decoded into a buffer of its own
			continue
		}
		if buf == nil {
			buf = make([]byte, clen)
		}
		if !o.Patch {
			copy(buf, payload)
			continue
		}
		recs, err := decodePatch(payload, clen, p.m.BlockSize)
		if err != nil {
			return nil, p.chunkError(w.index, o, err)
		}
		applyPatch(buf, recs)
	}
	if buf == nil {
		buf = make([]byte, clen)
	}
	recs := diffRecords(old, buf, 0, p.m.BlockSize)
	return func() error { return p.apply(off, recs) }, nil
}

// apply writes recs into the volume at the chunk that starts at off.
func (p *puller) apply(off int64, recs []patchRecord) error {
	for _, r := range recs {
		if r.data != nil {
			if _, err := p.fill.WriteAt(r.data, off+r.off); err != nil {
				return fmt.Errorf("exportset: pull %s: write %d bytes at %d: %w", p.d, len(r.data), off+r.off, err)
			}
			p.written.Add(r.length)
			continue
		}
		if err := p.fill.Zero(off+r.off, r.length); err != nil {
			return fmt.Errorf("exportset: pull %s: zero %d bytes at %d: %w", p.d, r.length, off+r.off, err)
		}
		p.zeroed.Add(r.length)
	}
	return nil
}

// fetch downloads object o of chunk i and returns its verified payload.
func (p *puller) fetch(ctx context.Context, i int64, o Object) ([]byte, error) {
	stored, err := p.r.t.Get(ctx, objectKey(o.Digest), maxStoredSize(p.m.ChunkSize, p.m.BlockSize))
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, p.chunkError(i, o, err)
	}
	p.fetched.Add(1)
	p.fetchedBytes.Add(int64(len(stored)))
	payload, err := openObject(stored, o.Digest, maxPatchSize(p.m.ChunkSize, p.m.BlockSize))
	if err == nil && int64(len(payload)) != o.Length {
		err = fmt.Errorf("%w: %d bytes of payload, the manifest says %d", ErrCorrupt, len(payload), o.Length)
	}
	if err != nil {
		return nil, p.chunkError(i, o, err)
	}
	return payload, nil
}

func (p *puller) chunkError(i int64, o Object, err error) error {
	if errors.Is(err, ErrMalformed) {
		err = fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return &ChunkError{Image: p.d, Name: p.m.Image.Name, Index: i, Offset: i * p.m.ChunkSize, Object: o.Digest, Err: err}
}
