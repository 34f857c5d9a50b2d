package exportset

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// Registry is a set of images in a target: manifests, objects and names (refs), with the
// protocols that push into it, pull from it and collect its garbage (docs/export-sets.md). It
// is safe for concurrent use, also by several processes and machines on one target.
type Registry struct {
	t       Target
	ttl     time.Duration
	workers int
	log     *slog.Logger
}

// Options configure a Registry. Zero values pick the defaults.
type Options struct {
	// LeaseTTL is how long a push's lease, or a collection's marker, holds without being
	// renewed (they are renewed every quarter of it). A push or a collection that could not
	// renew for half of it stops with ErrLeaseLost. Default 10 minutes; every client of a
	// target should use the same.
	LeaseTTL time.Duration
	// Workers bounds the objects a push or a pull moves at once. Default 8.
	Workers int
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
}

// DefaultLeaseTTL is Options.LeaseTTL's default.
const DefaultLeaseTTL = 10 * time.Minute

// New returns the registry kept in t.
func New(t Target, o Options) *Registry {
	r := &Registry{t: t, ttl: o.LeaseTTL, workers: o.Workers, log: o.Logger}
	if r.ttl <= 0 {
		r.ttl = DefaultLeaseTTL
	}
	if r.workers <= 0 {
		r.workers = 8
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

// Target returns the registry's target.
func (r *Registry) Target() Target { return r.t }

func (r *Registry) String() string { return r.t.String() }

// Manifest returns the manifest of image d, verified (its bytes have digest d) and decoded,
// with its bytes.
func (r *Registry) Manifest(ctx context.Context, d Digest) (*Manifest, []byte, error) {
	if !d.Valid() {
		return nil, nil, invalid("image digest %.80q: want sha256: and 64 lowercase hex digits", d)
	}
	raw, err := r.t.Get(ctx, manifestKey(d), MaxManifestSize)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: image %s is not in %s", ErrNotFound, d, r.t)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("exportset: read the manifest of image %s: %w", d, err)
	}
	if got := DigestOf(raw); got != d {
		return nil, nil, fmt.Errorf("%w: the manifest of image %s in %s has digest %s", ErrCorrupt, d, r.t, got)
	}
	m, err := DecodeManifest(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("exportset: image %s: %w", d, err)
	}
	return m, raw, nil
}

// Resolve returns the digest ref names: ref itself when it is a digest, else the image the
// name points at.
func (r *Registry) Resolve(ctx context.Context, ref string) (Digest, error) {
	if IsDigest(ref) {
		return ParseDigest(ref)
	}
	if err := CheckName(ref); err != nil {
		return "", err
	}
	b, err := r.t.Get(ctx, refKey(ref), 1024)
	if errors.Is(err, ErrNotFound) {
		return "", fmt.Errorf("%w: no image named %s in %s", ErrNotFound, ref, r.t)
	}
	if err != nil {
		return "", fmt.Errorf("exportset: resolve %s: %w", ref, err)
	}
	d := Digest(strings.TrimSuffix(string(b), "\n"))
	if !d.Valid() {
		return "", malformed("name %s in %s: %.80q is not a digest", ref, r.t, b)
	}
	return d, nil
}

// setRef points name at image d.
func (r *Registry) setRef(ctx context.Context, name string, d Digest) error {
	if err := r.t.Put(ctx, refKey(name), []byte(string(d)+"\n")); err != nil {
		return fmt.Errorf("exportset: name %s: %w", name, err)
	}
	return nil
}

// Entry is an image of a registry, as List returns it.
type Entry struct {
	Digest Digest
	// Names are the names that point at the image, sorted.
	Names []string
	// Manifest is the image's manifest; nil when it could not be read, and Err says why.
	Manifest *Manifest
	Err      error
}

// List returns the registry's images, by image name then creation time. A manifest that cannot
// be read is listed with its error rather than failing the listing.
func (r *Registry) List(ctx context.Context) ([]Entry, error) {
	names := map[Digest][]string{}
	var digests []Digest
	if err := r.t.List(ctx, refsDir, func(o ObjectInfo) error {
		name := strings.TrimPrefix(o.Key, refsDir)
		if CheckName(name) != nil {
			return nil // not a name this package writes
		}
		d, err := r.Resolve(ctx, name)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		names[d] = append(names[d], name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("exportset: list the names of %s: %w", r.t, err)
	}
	if err := r.t.List(ctx, manifestsDir, func(o ObjectInfo) error {
		if d, ok := digestOfKey(manifestsDir, o.Key); ok {
			digests = append(digests, d)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("exportset: list the manifests of %s: %w", r.t, err)
	}
	out := make([]Entry, len(digests))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.workers)
	for i, d := range digests {
		out[i] = Entry{Digest: d, Names: names[d]}
		slices.Sort(out[i].Names)
		g.Go(func() error {
			m, _, err := r.Manifest(gctx, d)
			if gctx.Err() != nil {
				return gctx.Err()
			}
			out[i].Manifest, out[i].Err = m, err
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out = slices.DeleteFunc(out, func(e Entry) bool { return errors.Is(e.Err, ErrNotFound) }) // deleted meanwhile
	slices.SortFunc(out, func(a, b Entry) int {
		an, bn := "", ""
		var at, bt time.Time
		if a.Manifest != nil {
			an, at = a.Manifest.Image.Name, a.Manifest.Image.Created
		}
		if b.Manifest != nil {
			bn, bt = b.Manifest.Image.Name, b.Manifest.Image.Created
		}
		return cmp.Or(strings.Compare(an, bn), at.Compare(bt), strings.Compare(string(a.Digest), string(b.Digest)))
	})
	return out, nil
}

// Delete removes an image from the registry: ref is a name (that name goes, and the image with
// it unless another name points at it) or a digest (the image goes with every name pointing at
// it). Names go before the manifest, so that no name is left pointing at nothing. The objects
// stay until a collection (GC) finds that no manifest names them. It returns the image's digest
// and whether its manifest was deleted.
func (r *Registry) Delete(ctx context.Context, ref string) (Digest, bool, error) {
	d, err := r.Resolve(ctx, ref)
	if err != nil {
		return "", false, err
	}
	if IsDigest(ref) {
		if _, err := r.t.Stat(ctx, manifestKey(d)); errors.Is(err, ErrNotFound) {
			return d, false, fmt.Errorf("%w: image %s is not in %s", ErrNotFound, d, r.t)
		} else if err != nil {
			return d, false, fmt.Errorf("exportset: delete %s: %w", d, err)
		}
	}
	names, err := r.namesOf(ctx, d)
	if err != nil {
		return d, false, fmt.Errorf("exportset: delete %s: %w", ref, err)
	}
	others := slices.DeleteFunc(names, func(n string) bool { return n == ref })
	if !IsDigest(ref) {
		if err := r.t.Delete(ctx, refKey(ref)); err != nil {
			return d, false, fmt.Errorf("exportset: delete name %s: %w", ref, err)
		}
		if len(others) > 0 {
			r.log.Info("name deleted; the image stays under its other names", "name", ref, "image", d, "names", others)
			return d, false, nil
		}
	} else {
		for _, n := range others {
			if err := r.t.Delete(ctx, refKey(n)); err != nil {
				return d, false, fmt.Errorf("exportset: delete name %s: %w", n, err)
			}
		}
	}
	if err := r.t.Delete(ctx, manifestKey(d)); err != nil {
		return d, false, fmt.Errorf("exportset: delete the manifest of %s: %w", d, err)
	}
	r.log.Info("image deleted from the registry", "image", d, "ref", ref, "target", r.t.String())
	return d, true, nil
}

// namesOf returns the names that point at image d, sorted.
func (r *Registry) namesOf(ctx context.Context, d Digest) ([]string, error) {
	var names []string
	err := r.t.List(ctx, refsDir, func(o ObjectInfo) error {
		name := strings.TrimPrefix(o.Key, refsDir)
		if CheckName(name) != nil {
			return nil
		}
		nd, err := r.Resolve(ctx, name)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		case nd == d:
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list names: %w", err)
	}
	slices.Sort(names)
	return names, nil
}
