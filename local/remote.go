package local

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/poolvol"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/internal/units"
)

// Images in registries (docs/export-sets.md): the daemon pushes its images' snapshots and pulls
// images into its pool with package exportset; this file says which registry, which parent,
// which metadata, and records digests in the catalog.

// Remote names a registry and how to reach it. Every empty field takes the value of the
// daemon's default registry (Config.Remote).
type Remote struct {
	// URL is s3://bucket/prefix or file:///dir.
	URL string `json:"url,omitempty"`
	// Endpoint, Region, CAFile and PathStyle configure S3 access (remote.S3Config).
	Endpoint  string `json:"endpoint,omitempty"`
	Region    string `json:"region,omitempty"`
	CAFile    string `json:"caFile,omitempty"`
	PathStyle bool   `json:"pathStyle,omitempty"`
	// Credentials are the client's (its AWS environment); none: the daemon's.
	Credentials remote.Credentials `json:"credentials,omitzero"`
}

// PushRequest asks to push an image into a registry, under its name.
type PushRequest struct {
	Image  string `json:"image"`
	Remote Remote `json:"remote,omitzero"`
	// Whole pushes every chunk whole, referencing no object of the image's ancestors (for a
	// masked image made from an unmasked one).
	Whole bool `json:"whole,omitempty"`
}

// PullRequest asks to pull an image from a registry.
type PullRequest struct {
	// Ref is the image's name in the registry or its digest.
	Ref    string `json:"ref"`
	Remote Remote `json:"remote,omitzero"`
	// Name is the local image's name ("" = the image's name in its manifest).
	Name string `json:"name,omitempty"`
}

// RemoteImage is an image of a registry.
type RemoteImage struct {
	Digest exportset.Digest `json:"digest"`
	// Names point at the image in the registry.
	Names   []string            `json:"names,omitempty"`
	Name    string              `json:"name,omitempty"` // its own name (manifest)
	Engine  imagebuilder.Engine `json:"engine,omitempty"`
	Version string              `json:"version,omitempty"`
	Size    int64               `json:"size,omitempty"`
	// StoredBytes is what its objects take in the registry (shared objects counted in full).
	StoredBytes int64            `json:"storedBytes,omitempty"`
	Created     time.Time        `json:"created,omitzero"`
	Parent      exportset.Digest `json:"parent,omitempty"`
	// Error says why the manifest could not be read.
	Error string `json:"error,omitempty"`
}

// RemoteDeletion is what deleting an image from a registry did.
type RemoteDeletion struct {
	Digest exportset.Digest `json:"digest"`
	// Deleted is false when only the name went (another name points at the image).
	Deleted bool `json:"deleted"`
	// Collected objects and bytes: the garbage collection that followed.
	Collected      int   `json:"collected"`
	CollectedBytes int64 `json:"collectedBytes"`
	// GC says why no collection ran (a push was in progress), if so.
	GC string `json:"gc,omitempty"`
}

// registry opens the registry r names, filling its empty fields from the daemon's default.
func (d *Daemon) registry(r Remote) (*exportset.Registry, error) {
	def := d.cfg.Remote
	url := cmpOr(r.URL, def.URL)
	if url == "" {
		return nil, errorf(ErrInvalid, "no registry: name one (s3://bucket/prefix or file:///dir), or start the daemon with --remote")
	}
	loc, err := remote.ParseURL(url)
	if err != nil {
		return nil, &kindError{kind: ErrInvalid, err: err}
	}
	cfg := remote.S3Config{
		Endpoint: cmpOr(r.Endpoint, def.Endpoint), Region: cmpOr(r.Region, def.Region), CAFile: cmpOr(r.CAFile, def.CAFile),
		PathStyle: r.PathStyle || def.PathStyle, Credentials: def.Credentials,
	}
	if r.Credentials.Set() {
		cfg.Credentials = r.Credentials
	}
	t, err := remote.Open(loc, cfg)
	if err != nil {
		return nil, remoteError(err)
	}
	return exportset.New(t, exportset.Options{Logger: d.log}), nil
}

// beginRemote begins an operation on registry r (Daemon.begin): its context, the function that
// ends it, and the registry.
func (d *Daemon) beginRemote(ctx context.Context, r Remote) (context.Context, func(), *exportset.Registry, error) {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	reg, err := d.registry(r)
	if err != nil {
		end()
		return nil, nil, nil, err
	}
	return ctx, end, reg, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// remoteError gives a registry's failure the kind the API reports it with, keeping the chain.
func remoteError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, exportset.ErrNotFound):
		return &kindError{kind: ErrNotFound, err: err}
	case errors.Is(err, exportset.ErrInvalid):
		return &kindError{kind: ErrInvalid, err: err}
	case errors.Is(err, exportset.ErrBusy):
		return &kindError{kind: ErrUnavailable, err: err}
	}
	if se := storeError(err); se != err {
		return se
	}
	return &kindError{kind: ErrRemote, err: err}
}

// PushImage pushes an image into a registry under its name, incrementally when the image it
// was made from was pushed or pulled before and is still here, and records its digest.
func (d *Daemon) PushImage(ctx context.Context, req PushRequest, progress func(wire.Event)) (*Image, error) {
	if err := checkName("image name", req.Image); err != nil {
		return nil, err
	}
	ctx, end, reg, err := d.beginRemote(ctx, req.Remote)
	if err != nil {
		return nil, err
	}
	defer end()
	unlock, err := d.locks.Lock(ctx, imageObject(req.Image))
	if err != nil {
		return nil, err
	}
	defer unlock()
	img, err := d.imageView(req.Image)
	if err != nil {
		return nil, err
	}
	snap, err := d.lookupSnapshot(imageObject(img.Name), "image "+img.Name)
	if err != nil {
		return nil, err
	}
	meta, err := imageMeta(img)
	if err != nil {
		return nil, err
	}
	// The image and its parent are read through clones of their snapshots, attached as
	// devices (poolvol): pushPrefix volumes, which the next start deletes if a crash leaves them.
	src, err := d.pv.NewSource(ctx, snap.ID, pushPrefix+img.Name, pushExportID(img.Name))
	if err != nil {
		return nil, err
	}
	defer closeSource(d, src)
	parent, parentName := d.pushParent(img)
	preq := exportset.PushRequest{Source: src, Image: meta, Name: img.Name, Whole: req.Whole, Progress: transferProgress("push", progress)}
	if parent != "" {
		preq.Parent = &exportset.Parent{Digest: parent}
		if ps, ok := d.snapshotOf(parent); ok && !req.Whole {
			psrc, err := d.pv.NewSource(ctx, ps, pushPrefix+img.Name+".parent", pushExportID(img.Name)+".parent")
			if err != nil {
				return nil, err
			}
			defer closeSource(d, psrc)
			preq.Parent.Source = psrc
		}
	}
	if progress != nil {
		msg := fmt.Sprintf("pushing %s (%s) to %s", img.Name, units.FormatBytes(img.DataBytes), reg)
		if preq.Parent != nil && preq.Parent.Source != nil {
			msg += fmt.Sprintf("; what changed since %s", parentName)
		}
		progress(wire.Event{Step: "push", Message: msg})
	}
	res, err := reg.Push(ctx, preq)
	if err != nil {
		return nil, remoteError(fmt.Errorf("local: push image %s to %s: %w", img.Name, reg, err))
	}
	if err := d.commit(func(c *catalog) error {
		if r := c.Images[img.Name]; r != nil && r.Created.Equal(img.Created) {
			r.Digest, r.ParentDigest = string(res.Digest), string(parent)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	d.log.Info("image pushed", "image", img.Name, "digest", res.Digest, "registry", reg.String(), "incremental", res.Incremental,
		"uploaded", res.Uploaded, "uploadedBytes", res.UploadedBytes, "present", res.Present)
	return d.imageView(img.Name)
}

// closeSource releases a push's source, logging a failure (the next start deletes its volume).
func closeSource(d *Daemon, s *poolvol.Source) {
	if err := s.Close(storeCtx); err != nil {
		d.log.Warn("releasing a push's source", "err", err)
	}
}

// pushParent returns the lineage of an image being pushed: the digest of the image it was
// made from, when that one has a digest (and the local name it has, for messages).
func (d *Daemon) pushParent(img *Image) (exportset.Digest, string) {
	if img.ParentDigest != "" {
		return exportset.Digest(img.ParentDigest), cmpOr(img.Parent, exportset.Digest(img.ParentDigest).Short())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	self, parent := d.mu.cat.Images[img.Name], d.mu.cat.Images[img.Parent]
	// The parent's name may have been given to another image since: its creation time tells.
	if self == nil || parent == nil || parent.Deleting || parent.Digest == "" || !parent.Created.Equal(self.ParentCreated) {
		return "", ""
	}
	return exportset.Digest(parent.Digest), parent.Name
}

// snapshotOf returns the snapshot of the local image whose digest is dg.
func (d *Daemon) snapshotOf(dg exportset.Digest) (blockstore.SnapshotID, bool) {
	d.mu.Lock()
	var name string
	for _, r := range d.mu.cat.Images {
		if !r.Deleting && r.Digest == string(dg) {
			name = r.Name
			break
		}
	}
	d.mu.Unlock()
	if name == "" {
		return 0, false
	}
	s, err := d.store.LookupSnapshot(storeCtx, imageObject(name))
	if err != nil {
		return 0, false
	}
	return s.ID, true
}

// imageMeta is the metadata a pushed image's manifest records.
func imageMeta(img *Image) (exportset.Image, error) {
	m := exportset.Image{Name: img.Name, Engine: string(img.Engine), Version: img.Version, SourceType: string(img.SourceType),
		Database: img.Database, Tags: img.Tags, DataState: img.DataState, LogPosition: img.LogPosition, Created: img.Created}
	if img.Definition != nil {
		def, err := yaml.Marshal(img.Definition)
		if err != nil {
			return m, fmt.Errorf("local: image %s: encode its definition: %w", img.Name, err)
		}
		m.Definition = string(def)
	}
	return m, nil
}

// transferProgress turns a push's or a pull's progress into events of step.
func transferProgress(step string, progress func(wire.Event)) func(exportset.Progress) {
	if progress == nil {
		return nil
	}
	phase := ""
	return func(p exportset.Progress) {
		ev := wire.Event{Step: step}
		switch p.Phase {
		case exportset.PhaseWaiting:
			ev.Message = "waiting for a garbage collection of the registry to end"
		case exportset.PhaseTransfer:
			ev.Done, ev.Total = p.Bytes, p.TotalBytes
			if phase != p.Phase {
				ev.Message = fmt.Sprintf("%d chunks to %s", p.TotalChunks, map[string]string{"push": "read", "pull": "write"}[step])
			}
		case exportset.PhaseCommit:
			ev.Message = map[string]string{"push": "writing the manifest", "pull": "making the volume the image"}[step]
		default:
			return
		}
		if ev.Message == "" && ev.Total == 0 {
			return
		}
		phase = p.Phase
		progress(ev)
	}
}

// PullImage pulls an image from a registry into the pool, starting from a clone of an ancestor
// the pool holds, and records it. Pulling an image that is here already (same name, same
// digest) returns it.
func (d *Daemon) PullImage(ctx context.Context, req PullRequest, progress func(wire.Event)) (*Image, error) {
	ctx, end, reg, err := d.beginRemote(ctx, req.Remote)
	if err != nil {
		return nil, err
	}
	defer end()
	dg, err := reg.Resolve(ctx, req.Ref)
	if err != nil {
		return nil, remoteError(err)
	}
	m, _, err := reg.Manifest(ctx, dg)
	if err != nil {
		return nil, remoteError(err)
	}
	name := cmpOr(req.Name, m.Image.Name)
	if err := checkName("image name", name); err != nil {
		return nil, err
	}
	if existing, err := d.imageView(name); err == nil {
		if existing.Digest == string(dg) {
			return existing, nil
		}
		return nil, errorf(ErrAlreadyExists, "image %s already exists (digest %s); pull under another name with --name", name, cmpOr(existing.Digest, "none"))
	}
	if err := d.reserveImage(name); err != nil {
		return nil, err
	}
	defer d.unreserveImage(name)
	// The volume is named by the image's name and digest: a pull of them that was interrupted
	// (a lost connection, a cancelled command) left it, and this one resumes it.
	sink := &poolvol.Sink{Node: d.pv, Lookup: d.snapshotOf, Volume: pullVolume(name, dg), ID: pullExportID(name), Snapshot: imageObject(name), Resume: true}
	if progress != nil {
		progress(wire.Event{Step: "pull", Message: fmt.Sprintf("pulling %s (%s) from %s", m.Image.Name, dg.Short(), reg)})
	}
	res, err := reg.Pull(ctx, exportset.PullRequest{Ref: string(dg), Sink: sink, Progress: transferProgress("pull", progress)})
	if err != nil {
		return nil, remoteError(fmt.Errorf("local: pull %s from %s: %w", req.Ref, reg, err))
	}
	snap, _ := sink.Committed()
	img, err := d.pulledImage(name, res, snap.ID)
	if err == nil {
		err = d.recordImage(imageRecord{Image: img})
	}
	if err != nil {
		return nil, errors.Join(err, d.store.DeleteSnapshot(storeCtx, snap.ID))
	}
	d.log.Info("image pulled", "image", name, "digest", dg, "registry", reg.String(), "base", res.Base,
		"fetchedBytes", res.FetchedBytes, "writtenBytes", res.WrittenBytes)
	return d.imageView(name)
}

// pulledImage is the catalog's record of a pulled image.
func (d *Daemon) pulledImage(name string, res *exportset.PullResult, snap blockstore.SnapshotID) (Image, error) {
	m := res.Manifest
	dataBytes, err := d.allocatedBytes(snap)
	if err != nil {
		return Image{}, err
	}
	now := d.now()
	img := Image{
		Name: name, Engine: imagebuilder.Engine(m.Image.Engine), Version: m.Image.Version,
		SourceType: imagebuilder.SourceType(m.Image.SourceType), Tags: slices.Clone(m.Image.Tags), Database: m.Image.Database,
		Size: m.Size, DataBytes: dataBytes, Created: m.Image.Created, DataState: m.Image.DataState, LogPosition: m.Image.LogPosition,
		Lifetime: d.cfg.imageLifetime.String(), Expires: expires(now, d.cfg.imageLifetime),
		Digest: string(res.Digest), ParentDigest: string(m.Parent), Pulled: now,
	}
	if m.Image.Definition != "" {
		if def, err := imagebuilder.ParseDefinition([]byte(m.Image.Definition)); err == nil {
			img.Definition = def
		} else {
			d.log.Warn("the pulled image's definition does not parse; kept without it", "image", name, "err", err)
		}
	}
	if res.Base != "" {
		d.mu.Lock()
		for _, r := range d.mu.cat.Images {
			if r.Digest == string(res.Base) {
				img.Parent = r.Name
			}
		}
		d.mu.Unlock()
	}
	return img, nil
}

// RemoteImages lists the images of a registry.
func (d *Daemon) RemoteImages(ctx context.Context, r Remote) ([]RemoteImage, error) {
	ctx, end, reg, err := d.beginRemote(ctx, r)
	if err != nil {
		return nil, err
	}
	defer end()
	entries, err := reg.List(ctx)
	if err != nil {
		return nil, remoteError(err)
	}
	out := make([]RemoteImage, 0, len(entries))
	for _, e := range entries {
		ri := RemoteImage{Digest: e.Digest, Names: e.Names}
		if e.Err != nil {
			ri.Error = e.Err.Error()
		} else {
			m := e.Manifest
			ri.Name, ri.Engine, ri.Version, ri.Size = m.Image.Name, imagebuilder.Engine(m.Image.Engine), m.Image.Version, m.Size
			ri.StoredBytes, ri.Created, ri.Parent = m.StoredBytes(), m.Image.Created, m.Parent
		}
		out = append(out, ri)
	}
	return out, nil
}

// DeleteRemoteImage deletes an image (or one of its names) from a registry, then collects the
// objects no manifest names any more. A collection that a push in progress keeps from running
// is not an error: the next one collects.
func (d *Daemon) DeleteRemoteImage(ctx context.Context, ref string, r Remote) (*RemoteDeletion, error) {
	ctx, end, reg, err := d.beginRemote(ctx, r)
	if err != nil {
		return nil, err
	}
	defer end()
	dg, deleted, err := reg.Delete(ctx, ref)
	if err != nil {
		return nil, remoteError(err)
	}
	out := &RemoteDeletion{Digest: dg, Deleted: deleted}
	gc, err := reg.GC(ctx)
	switch {
	case errors.Is(err, exportset.ErrBusy):
		out.GC = strings.TrimPrefix(err.Error(), exportset.ErrBusy.Error()+": ")
	case err != nil:
		return out, remoteError(fmt.Errorf("local: %s deleted from %s; collecting its objects failed: %w", ref, reg, err))
	default:
		out.Collected, out.CollectedBytes = gc.Deleted, gc.DeletedBytes
	}
	return out, nil
}
