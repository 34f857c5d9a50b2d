package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/internal/units"
)

// BuildImage validates the definition, builds the image in a new volume (an ext4 file system
// that the builder fills: init or restore, scripts, a clean stop) and freezes it as the
// snapshot image/<name>. Progress: the steps volume and filesystem, the builder's steps, then
// freeze. A failed build leaves no image and no volume, and fails with ErrBuildFailed naming the
// step, with the tail of the engine's log.
func (d *Daemon) BuildImage(ctx context.Context, req BuildRequest, progress func(wire.Event)) (*Image, error) {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	var progressMu sync.Mutex // the builder may report from several goroutines
	report := func(ev wire.Event) {
		if progress != nil {
			progressMu.Lock()
			defer progressMu.Unlock()
			progress(ev)
		}
	}
	breq, err := d.prepareBuild(req)
	if err != nil {
		return nil, err
	}
	def := breq.Definition
	name := def.Name
	if err := d.reserveImage(name); err != nil {
		return nil, err
	}
	defer d.unreserveImage(name)
	log := d.log.With("image", name)
	start := time.Now()
	log.Info("image build started", "engine", def.NormalizedEngine(), "version", def.Version, "sourceType", def.NormalizedSourceType())

	report(wire.Event{Step: "volume", Message: fmt.Sprintf("creating a %s thin volume", units.FormatBytes(d.cfg.VolumeSize))})
	vol, err := d.newVolume(buildPrefix+name, d.cfg.VolumeSize)
	if err != nil {
		return nil, fmt.Errorf("local: build image %s: create its volume: %w", name, err)
	}
	// Whatever happens below, the build volume goes: on success it is frozen as the image first.
	mnt, exportID := d.cfg.buildMount(name), buildExportID(name)
	attached := false
	cleanup := func() error {
		var errs []error
		if attached {
			errs = append(errs, d.detach(exportID, mnt))
		}
		if err := d.store.DeleteVolume(storeCtx, vol.ID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
			errs = append(errs, fmt.Errorf("local: delete build volume %s: %w", vol.Name, err))
		}
		errs = append(errs, removeAll(d.cfg.buildRun(name)))
		return errors.Join(errs...)
	}
	failed := func(err error) (*Image, error) {
		if cerr := cleanup(); cerr != nil {
			log.Error("cleaning up after a failed build", "err", cerr)
			err = errors.Join(err, cerr)
		}
		log.Warn("image build failed", "err", err, "took", time.Since(start))
		return nil, err
	}

	report(wire.Event{Step: "filesystem", Message: "making an ext4 file system"})
	if _, err := d.attach(ctx, exportID, vol.ID, mnt, true); err != nil {
		return failed(fmt.Errorf("local: build image %s: %w", name, err))
	}
	attached = true
	if err := runtimeDir(d.cfg.buildRun(name)); err != nil {
		return failed(fmt.Errorf("local: build image %s: %w", name, err))
	}
	breq.Root, breq.RuntimeDir = mnt, d.cfg.buildRun(name)
	// A tar bomb fails the build once it passes the volume's size or the member limit; the
	// volume is deleted with the failed build, and the pool gets its space back.
	breq.MaxRestoreBytes, breq.MaxArchiveMembers = d.cfg.VolumeSize, d.cfg.MaxArchiveMembers
	breq.Progress, breq.Logger = report, d.log
	res, err := builder.Build(ctx, breq)
	if err != nil {
		return failed(buildFailed(name, err))
	}

	report(wire.Event{Step: "freeze", Message: "unmounting and freezing the volume as the image"})
	if err := d.detach(exportID, mnt); err != nil {
		return failed(fmt.Errorf("local: build image %s: %w", name, err))
	}
	attached = false
	snap, err := d.store.CreateSnapshot(storeCtx, vol.ID, imageObject(name))
	if err != nil {
		return failed(fmt.Errorf("local: build image %s: freeze it as snapshot %s: %w", name, imageObject(name), storeError(err)))
	}
	if err := d.store.DeleteVolume(storeCtx, vol.ID); err != nil {
		log.Warn("delete the build volume (the next start does)", "volume", vol.Name, "err", err)
	}
	_ = removeAll(d.cfg.buildRun(name))
	dataBytes, err := d.allocatedBytes(snap.ID)
	if err != nil {
		return failed(errors.Join(err, d.store.DeleteSnapshot(storeCtx, snap.ID)))
	}
	now := d.now()
	img := Image{
		Name:         name,
		Engine:       res.Engine,
		Version:      res.Version,
		SourceType:   def.NormalizedSourceType(),
		Tags:         slices.Clone(def.Tags),
		Definition:   def,
		Database:     def.InitialDatabaseName,
		Size:         snap.Size,
		DataBytes:    dataBytes,
		Created:      now,
		DataState:    res.DataState.Time,
		LogPosition:  res.DataState.LogPosition,
		Lifetime:     res.Lifetime.String(),
		Expires:      expires(now, res.Lifetime),
		BuildSeconds: time.Since(start).Seconds(),
	}
	if err := d.recordImage(imageRecord{Image: img}); err != nil {
		return failed(errors.Join(err, d.store.DeleteSnapshot(storeCtx, snap.ID)))
	}
	log.Info("image ready", "engine", img.Engine, "version", img.Version, "dataBytes", img.DataBytes, "seconds", img.BuildSeconds)
	return d.imageView(name)
}

// prepareBuild parses and validates a build's definition against the engines of this machine
// and the backup root (the request's, else the daemon's default): builder.Prepare, whose input
// errors are ErrInvalid here.
func (d *Daemon) prepareBuild(req BuildRequest) (builder.Request, error) {
	root := req.BackupRoot
	if root == "" {
		root = d.cfg.BackupRoot
	}
	breq, err := builder.Prepare(builder.Input{
		Definition:      req.Definition,
		DefinitionPath:  req.DefinitionPath,
		BackupRoot:      root,
		DefaultLifetime: d.cfg.imageLifetime,
		Engines:         d.engineSet,
	})
	if errors.Is(err, builder.ErrInvalidInput) {
		return breq, &kindError{kind: ErrInvalid, err: err}
	}
	return breq, err
}

// buildFailed makes the error of a failed build: ErrBuildFailed, the step, the cause and the
// tail of the engine's log.
func buildFailed(name string, err error) error {
	var se *builder.StepError
	if !errors.As(err, &se) {
		return &kindError{kind: ErrBuildFailed, err: fmt.Errorf("local: build image %s: %w", name, err)}
	}
	msg := fmt.Sprintf("local: build image %s failed at step %s: %%w", name, se.Step)
	if tail := strings.TrimSpace(se.LogTail); tail != "" && !strings.Contains(se.Err.Error(), tail) {
		msg += "\nengine log (last lines):\n" + tail
	}
	return &kindError{kind: ErrBuildFailed, err: fmt.Errorf(msg, se.Err)}
}

// reserveImage reserves an image name for a build or a graduation.
func (d *Daemon) reserveImage(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r := d.mu.cat.Images[name]; r != nil {
		if r.Deleting {
			return errorf(ErrAlreadyExists, "image %s is being deleted; try again when it is gone", name)
		}
		return errorf(ErrAlreadyExists, "image %s already exists", name)
	}
	if d.mu.pendingImages[name] {
		return errorf(ErrAlreadyExists, "image %s is being made already", name)
	}
	d.mu.pendingImages[name] = true
	return nil
}

func (d *Daemon) unreserveImage(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.mu.pendingImages, name)
}

// recordImage adds an image whose snapshot exists to the catalog.
func (d *Daemon) recordImage(r imageRecord) error {
	return d.commit(func(c *catalog) error {
		c.Images[r.Name] = &r
		return nil
	})
}

// newVolume creates a pool volume; one of that name is left over from an earlier failure of
// this daemon (names are reserved while in use) and is deleted first.
func (d *Daemon) newVolume(name string, size int64) (blockstore.VolumeInfo, error) {
	if old, err := d.store.LookupVolume(storeCtx, name); err == nil {
		if err := d.store.DeleteVolume(storeCtx, old.ID); err != nil {
			return old, fmt.Errorf("local: delete the leftover volume %s: %w", name, err)
		}
	}
	v, err := d.store.CreateVolume(storeCtx, name, size)
	if err != nil {
		return v, fmt.Errorf("local: create volume %s: %w", name, storeError(err))
	}
	return v, nil
}

// allocatedBytes is the bytes a snapshot maps.
func (d *Daemon) allocatedBytes(id blockstore.SnapshotID) (int64, error) {
	ext, err := d.store.AllocatedExtents(storeCtx, id)
	if err != nil {
		return 0, fmt.Errorf("local: allocated extents of snapshot %d: %w", id, err)
	}
	return sumExtents(ext), nil
}

func sumExtents(ext []blockstore.Extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.Length
	}
	return n
}

// expires is when something created at t with lifetime l expires (zero: never).
func expires(t time.Time, l imagebuilder.Lifetime) time.Time {
	if !l.Expires() {
		return time.Time{}
	}
	return t.Add(l.Duration)
}

// Images lists the images, by name.
func (d *Daemon) Images(ctx context.Context) ([]Image, error) {
	_, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Image, 0, len(d.mu.cat.Images))
	for _, r := range d.mu.cat.Images {
		if !r.Deleting {
			out = append(out, d.imageViewLocked(r, now))
		}
	}
	slices.SortFunc(out, func(a, b Image) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Image returns one image.
func (d *Daemon) Image(ctx context.Context, name string) (*Image, error) {
	_, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	return d.imageView(name)
}

// imageView returns an image as the API shows it.
func (d *Daemon) imageView(name string) (*Image, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.mu.cat.Images[name]
	if r == nil || r.Deleting {
		return nil, errorf(ErrNotFound, "image %s does not exist", name)
	}
	img := d.imageViewLocked(r, d.now())
	return &img, nil
}

// imageViewLocked returns an image as the API shows it at time now. REQUIRES d.mu.
func (d *Daemon) imageViewLocked(r *imageRecord, now time.Time) Image {
	img := r.Image
	img.Tags = slices.Clone(r.Tags)
	img.Clones = len(d.clonesOfLocked(r.Name))
	img.Status = ""
	if !img.Expires.IsZero() && !now.Before(img.Expires) {
		img.Status = "expired"
		if img.Clones > 0 {
			img.Status = fmt.Sprintf("expired; kept: %s", plural(img.Clones, "clone"))
		}
	}
	return img
}

// clonesOfLocked returns the clones of image, also those being made, sorted. REQUIRES d.mu.
func (d *Daemon) clonesOfLocked(image string) []string {
	names := d.mu.cat.clonesOf(image)
	for clone, img := range d.mu.pendingClones {
		if img == image {
			names = append(names, clone)
		}
	}
	slices.Sort(names)
	return names
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// DeleteImage deletes an image, refusing with ErrHasClones while it has clones.
func (d *Daemon) DeleteImage(ctx context.Context, name string) error {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return err
	}
	defer end()
	unlock, err := d.locks.Lock(ctx, imageObject(name))
	if err != nil {
		return err
	}
	defer unlock()
	err = d.commit(func(c *catalog) error {
		r := c.Images[name]
		if r == nil {
			return errorf(ErrNotFound, "image %s does not exist", name)
		}
		if clones := d.clonesOfLocked(name); len(clones) > 0 {
			it := "them"
			if len(clones) == 1 {
				it = "it"
			}
			return errorf(ErrHasClones, "image %s has %s: %s; delete %s first", name, plural(len(clones), "clone"), strings.Join(clones, ", "), it)
		}
		r.Deleting = true
		return nil
	})
	if err != nil {
		return err
	}
	snap, err := d.store.LookupSnapshot(storeCtx, imageObject(name))
	switch {
	case errors.Is(err, blockstore.ErrNotFound):
	case err != nil:
		return fmt.Errorf("local: delete image %s: %w", name, err)
	default:
		if err := d.store.DeleteSnapshot(storeCtx, snap.ID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
			return fmt.Errorf("local: delete image %s: delete snapshot %s: %w", name, snap.Name, err)
		}
	}
	if err := d.commit(func(c *catalog) error {
		delete(c.Images, name)
		return nil
	}); err != nil {
		return err
	}
	d.log.Info("image deleted", "image", name)
	return nil
}

// ImageFromClone graduates a clone's revision, or its current state, to an image: a snapshot of
// its own, which stays valid after the clone and its revisions are deleted. Made in O(1): the
// revision (or the clone volume, its file system frozen meanwhile) is cloned into a temporary
// volume, which is snapshotted as the image and deleted.
func (d *Daemon) ImageFromClone(ctx context.Context, req ImageFromCloneRequest) (*Image, error) {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	if err := checkName("image name", req.Name); err != nil {
		return nil, err
	}
	if err := checkTags(req.Tags); err != nil {
		return nil, err
	}
	lifetime := d.cfg.imageLifetime
	if req.Lifetime != "" {
		if lifetime, err = parseLifetime(req.Lifetime); err != nil {
			return nil, err
		}
	}
	unlock, err := d.locks.Lock(ctx, cloneObject(req.Clone))
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := d.cloneRecord(req.Clone)
	if err != nil {
		return nil, err
	}
	if err := d.reserveImage(req.Name); err != nil {
		return nil, err
	}
	defer d.unreserveImage(req.Name)
	d.mu.Lock()
	var database string
	var source Image
	if src := d.mu.cat.Images[r.Image]; src != nil {
		source = src.Image
	}
	database = r.Database
	d.mu.Unlock()

	tmpName := tmpPrefix + req.Name
	var tmp blockstore.VolumeInfo
	var state time.Time
	if req.Revision != "" {
		rv, ok := r.revision(req.Revision)
		if !ok {
			return nil, errorf(ErrNotFound, "clone %s has no revision %s", r.Name, req.Revision)
		}
		snap, err := d.lookupSnapshot(revObject(r.Name, rv.Name), "clone "+r.Name+" revision "+rv.Name)
		if err != nil {
			return nil, err
		}
		if tmp, err = d.store.Clone(storeCtx, snap.ID, tmpName, 0); err != nil {
			return nil, fmt.Errorf("local: image %s from clone %s revision %s: clone the revision: %w", req.Name, r.Name, rv.Name, storeError(err))
		}
		state = rv.Created
	} else {
		vol, err := d.lookupVolume(cloneObject(r.Name), "clone "+r.Name)
		if err != nil {
			return nil, err
		}
		state = d.now()
		err = d.quiesced(ctx, r.Name, func() error {
			var err error
			tmp, err = d.store.CloneVolume(storeCtx, vol.ID, tmpName, 0)
			return storeError(err)
		})
		if err != nil {
			return nil, fmt.Errorf("local: image %s from clone %s: %w", req.Name, r.Name, err)
		}
	}
	snap, err := d.store.CreateSnapshot(storeCtx, tmp.ID, imageObject(req.Name))
	if derr := d.store.DeleteVolume(storeCtx, tmp.ID); derr != nil {
		d.log.Warn("delete a temporary volume (the next start does)", "volume", tmpName, "err", derr)
	}
	if err != nil {
		return nil, fmt.Errorf("local: image %s from clone %s: snapshot: %w", req.Name, r.Name, storeError(err))
	}
	dataBytes, err := d.allocatedBytes(snap.ID)
	if err != nil {
		return nil, errors.Join(err, d.store.DeleteSnapshot(storeCtx, snap.ID))
	}
	now := d.now()
	img := Image{
		Name:         req.Name,
		Engine:       r.Engine,
		Version:      r.Version,
		SourceType:   source.SourceType,
		Tags:         slices.Clone(req.Tags),
		Database:     database,
		FromClone:    r.Name,
		FromRevision: req.Revision,
		Parent:       source.Name,
		Size:         snap.Size,
		DataBytes:    dataBytes,
		Created:      now,
		DataState:    state,
		Lifetime:     lifetime.String(),
		Expires:      expires(now, lifetime),
	}
	if err := d.recordImage(imageRecord{Image: img, ParentCreated: source.Created}); err != nil {
		return nil, errors.Join(err, d.store.DeleteSnapshot(storeCtx, snap.ID))
	}
	d.log.Info("image made from a clone", "image", img.Name, "clone", r.Name, "revision", req.Revision)
	return d.imageView(req.Name)
}

// checkTags checks tags as a definition's tags are checked.
func checkTags(tags []string) error {
	seen := map[string]bool{}
	for i, t := range tags {
		switch {
		case t == "":
			return errorf(ErrInvalid, "tags[%d]: must not be empty", i)
		case !utf8.ValidString(t) || strings.IndexFunc(t, unicode.IsControl) >= 0:
			return errorf(ErrInvalid, "tags[%d]: must be valid UTF-8 without control characters, got %q", i, t)
		case utf8.RuneCountInString(t) > maxNameLen:
			return errorf(ErrInvalid, "tags[%d]: must be at most %d characters", i, maxNameLen)
		case seen[t]:
			return errorf(ErrInvalid, "tags[%d]: duplicate tag %q", i, t)
		}
		seen[t] = true
	}
	return nil
}

func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("local: remove %s: %w", dir, err)
	}
	return nil
}
