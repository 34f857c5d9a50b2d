package local

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/nodevolume"
)

// CreateClone makes a thin clone of an image's snapshot (O(1): nothing is copied), exports and
// mounts it, and starts the clone's server on a free port with a new password.
func (d *Daemon) CreateClone(ctx context.Context, req CloneRequest) (*Clone, error) {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	start := time.Now()
	if req.Image == "" {
		return nil, errorf(ErrInvalid, "clone: an image is required")
	}
	name := req.Name
	if name == "" {
		name = generatedCloneName(req.Image)
	}
	if err := checkName("clone name", name); err != nil {
		return nil, err
	}
	lifetime := d.cfg.cloneLifetime
	if req.Lifetime != "" {
		if lifetime, err = parseLifetime(req.Lifetime); err != nil {
			return nil, err
		}
	}
	if req.Port < 0 || req.Port > 65535 {
		return nil, errorf(ErrInvalid, "clone %s: port %d: must be from 1 to 65535 (0 picks a free one)", name, req.Port)
	}
	img, err := d.reserveClone(name, req.Image)
	if err != nil {
		return nil, err
	}
	defer d.unreserveClone(name)
	unlock, err := d.locks.Lock(ctx, cloneObject(name))
	if err != nil {
		return nil, err
	}
	defer unlock()
	log := d.log.With("clone", name, "image", img.Name)
	// Fail early, before any side effect, when the image's engine is not installed.
	if _, err := d.lookupEngine(img.Engine, img.Version); err != nil {
		return nil, &kindError{kind: ErrInvalid, err: fmt.Errorf("local: clone %s: image %s was built with %s %s, which this machine cannot run: %w",
			name, img.Name, img.Engine, img.Version, err)}
	}
	snap, err := d.lookupSnapshot(imageObject(img.Name), "image "+img.Name)
	if err != nil {
		return nil, err
	}
	vol, err := d.store.Clone(storeCtx, snap.ID, cloneObject(name), 0)
	if err != nil {
		return nil, fmt.Errorf("local: clone %s of image %s: %w", name, img.Name, storeError(err))
	}
	now := d.now()
	r := &cloneRecord{
		Name:     name,
		Image:    img.Name,
		Engine:   img.Engine,
		Version:  img.Version,
		Running:  true,
		Port:     req.Port,
		Password: randomHex(16),
		Size:     vol.Size,
		Created:  now,
		Lifetime: lifetime.String(),
		Expires:  expires(now, lifetime),
	}
	undo := func(err error) (*Clone, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		err = errors.Join(err, d.release(cctx, name))
		if derr := d.store.DeleteVolume(storeCtx, vol.ID); derr != nil {
			err = errors.Join(err, fmt.Errorf("local: delete volume %s: %w", vol.Name, derr))
		}
		log.Warn("clone creation failed", "err", err)
		return nil, err
	}
	inst, err := d.activate(ctx, r, req.Port != 0)
	if err != nil {
		return undo(err)
	}
	conn := inst.Conn()
	r.Port, r.PID, r.User = conn.Port, inst.PID(), conn.User
	r.Database = img.Database
	if r.Database == "" {
		r.Database = conn.Database
	}
	r.CreateSeconds = time.Since(start).Seconds()
	if err := d.commit(func(c *catalog) error {
		c.Clones[name] = r
		return nil
	}); err != nil {
		return undo(err)
	}
	log.Info("clone created", "port", r.Port, "seconds", r.CreateSeconds)
	return d.cloneView(name)
}

// reserveClone reserves a clone name for a clone of image, which must exist, and returns the
// image.
func (d *Daemon) reserveClone(name, image string) (Image, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	img := d.mu.cat.Images[image]
	if img == nil || img.Deleting {
		return Image{}, errorf(ErrNotFound, "image %s does not exist", image)
	}
	if d.mu.cat.Clones[name] != nil {
		return Image{}, errorf(ErrAlreadyExists, "clone %s already exists", name)
	}
	if _, ok := d.mu.pendingClones[name]; ok {
		return Image{}, errorf(ErrAlreadyExists, "clone %s is being made already", name)
	}
	d.mu.pendingClones[name] = image
	return img.Image, nil
}

func (d *Daemon) unreserveClone(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.mu.pendingClones, name)
}

// cloneRecord returns a copy of a clone's record (ErrNotFound if it does not exist or is being
// deleted).
func (d *Daemon) cloneRecord(name string) (*cloneRecord, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.mu.cat.Clones[name]
	if r == nil || r.Deleting {
		return nil, errorf(ErrNotFound, "clone %s does not exist", name)
	}
	c := *r
	c.Revisions = slices.Clone(r.Revisions)
	return &c, nil
}

// cloneView returns a clone as the API shows it.
func (d *Daemon) cloneView(name string) (*Clone, error) {
	d.mu.Lock()
	r := d.mu.cat.Clones[name]
	if r == nil || r.Deleting {
		d.mu.Unlock()
		return nil, errorf(ErrNotFound, "clone %s does not exist", name)
	}
	c := d.cloneViewLocked(r)
	d.mu.Unlock()
	c.AddedBytes = d.addedBytes(name)
	return &c, nil
}

// cloneViewLocked returns a clone as the API shows it, but for AddedBytes. REQUIRES d.mu.
func (d *Daemon) cloneViewLocked(r *cloneRecord) Clone {
	host := connectHost(d.cfg.ListenAddress)
	c := Clone{
		Name:          r.Name,
		Image:         r.Image,
		Engine:        r.Engine,
		Connection:    connection(r.Engine, r.User, r.Password, host, r.Port, r.Database),
		Host:          host,
		Port:          r.Port,
		User:          r.User,
		Password:      r.Password,
		Database:      r.Database,
		Size:          r.Size,
		Created:       r.Created,
		Lifetime:      r.Lifetime,
		Expires:       r.Expires,
		CreateSeconds: r.CreateSeconds,
		Revisions:     slices.Clone(r.Revisions),
	}
	rt := d.mu.clones[r.Name]
	switch {
	case !r.Running:
		c.State = CloneStopped
	case rt != nil && rt.inst != nil:
		c.State = CloneRunning
	default:
		c.State = CloneFailed
		c.Message = "the server is not running"
		if rt != nil && rt.failure != "" {
			c.Message = rt.failure
		}
	}
	return c
}

// addedBytes is what a clone's writes added to the pool: the extents of its volume that differ
// from the image's snapshot (0 when it cannot be told).
func (d *Daemon) addedBytes(name string) int64 {
	v, err := d.store.LookupVolume(storeCtx, cloneObject(name))
	if err != nil || v.Origin == 0 {
		return 0
	}
	ext, err := d.store.DiffVolume(storeCtx, v.Origin, v.ID)
	if err != nil {
		d.log.Warn("diff a clone against its image", "clone", name, "err", err)
		return 0
	}
	return sumExtents(ext)
}

// Clones lists the clones, by name.
func (d *Daemon) Clones(ctx context.Context) ([]Clone, error) {
	_, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	d.mu.Lock()
	out := make([]Clone, 0, len(d.mu.cat.Clones))
	for _, r := range d.mu.cat.Clones {
		if !r.Deleting {
			out = append(out, d.cloneViewLocked(r))
		}
	}
	d.mu.Unlock()
	for i := range out {
		out[i].AddedBytes = d.addedBytes(out[i].Name)
	}
	slices.SortFunc(out, func(a, b Clone) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Clone returns one clone.
func (d *Daemon) Clone(ctx context.Context, name string) (*Clone, error) {
	_, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	return d.cloneView(name)
}

// lockClone begins an operation on an existing clone: it takes the clone's lock and returns
// its record, the operation's context and the function that ends both.
func (d *Daemon) lockClone(ctx context.Context, name string) (*cloneRecord, context.Context, func(), error) {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	unlock, err := d.locks.Lock(ctx, cloneObject(name))
	if err != nil {
		end()
		return nil, nil, nil, err
	}
	r, err := d.cloneRecord(name)
	if err != nil {
		unlock()
		end()
		return nil, nil, nil, err
	}
	return r, ctx, func() { unlock(); end() }, nil
}

// DeleteClone stops a clone's server and deletes the clone's volume and revisions.
func (d *Daemon) DeleteClone(ctx context.Context, name string) error {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return err
	}
	defer end()
	unlock, err := d.locks.Lock(ctx, cloneObject(name))
	if err != nil {
		return err
	}
	defer unlock()
	var revs []Revision
	if err := d.commit(func(c *catalog) error {
		r := c.Clones[name]
		if r == nil { // a clone marked deleting is deleted again: the last attempt failed
			return errorf(ErrNotFound, "clone %s does not exist", name)
		}
		r.Deleting = true
		revs = slices.Clone(r.Revisions)
		return nil
	}); err != nil {
		return err
	}
	// Past this point the deletion runs to its end: a canceled request must not leave half of it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := d.release(ctx, name); err != nil {
		return fmt.Errorf("local: delete clone %s: %w", name, err)
	}
	for _, rv := range revs {
		if err := d.deleteSnapshot(revObject(name, rv.Name)); err != nil {
			return fmt.Errorf("local: delete clone %s: revision %s: %w", name, rv.Name, err)
		}
	}
	if vol, err := d.store.LookupVolume(storeCtx, cloneObject(name)); err == nil {
		if _, err := d.store.DeleteVolumeSnapshots(storeCtx, vol.ID); err != nil {
			return fmt.Errorf("local: delete clone %s: its snapshots: %w", name, err)
		}
		if err := d.store.DeleteVolume(storeCtx, vol.ID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
			return fmt.Errorf("local: delete clone %s: its volume: %w", name, err)
		}
	} else if !errors.Is(err, blockstore.ErrNotFound) {
		return fmt.Errorf("local: delete clone %s: %w", name, err)
	}
	if err := d.commit(func(c *catalog) error {
		delete(c.Clones, name)
		return nil
	}); err != nil {
		return err
	}
	d.log.Info("clone deleted", "clone", name)
	return nil
}

// deleteSnapshot deletes a pool snapshot by name; a missing one is not an error.
func (d *Daemon) deleteSnapshot(name string) error {
	s, err := d.store.LookupSnapshot(storeCtx, name)
	if errors.Is(err, blockstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := d.store.DeleteSnapshot(storeCtx, s.ID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
		return fmt.Errorf("delete snapshot %s: %w", name, err)
	}
	return nil
}

// StopClone stops a clone's server cleanly and releases its volume. A stopped clone stays
// stopped across daemon restarts until StartClone.
func (d *Daemon) StopClone(ctx context.Context, name string) (*Clone, error) {
	_, ctx, done, err := d.lockClone(ctx, name)
	if err != nil {
		return nil, err
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := d.release(ctx, name); err != nil {
		return nil, err
	}
	if err := d.commit(func(c *catalog) error {
		r := c.Clones[name]
		r.Running, r.PID = false, 0
		return nil
	}); err != nil {
		return nil, err
	}
	d.log.Info("clone stopped", "clone", name)
	return d.cloneView(name)
}

// StartClone starts a clone's server again (on its port if that is still free). Starting a
// running clone changes nothing; starting a failed one retries.
func (d *Daemon) StartClone(ctx context.Context, name string) (*Clone, error) {
	r, ctx, done, err := d.lockClone(ctx, name)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := d.startLocked(ctx, r); err != nil {
		return nil, err
	}
	return d.cloneView(name)
}

// startLocked activates a clone and records it as running; on failure it releases the clone,
// which stays as it was recorded. REQUIRES the clone's name lock.
func (d *Daemon) startLocked(ctx context.Context, r *cloneRecord) error {
	inst, err := d.activate(ctx, r, false)
	if err != nil {
		if !r.Running {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			err = errors.Join(err, d.release(rctx, r.Name))
		}
		return err
	}
	port, pid := inst.Conn().Port, inst.PID()
	return d.commit(func(c *catalog) error {
		cr := c.Clones[r.Name]
		cr.Running, cr.Port, cr.PID = true, port, pid
		return nil
	})
}

// ResetClone discards a clone's changes: it stops the server, points the volume back at the
// revision's snapshot or the image's (O(1)), and starts the server again if it ran.
func (d *Daemon) ResetClone(ctx context.Context, name, to string) (*Clone, error) {
	r, ctx, done, err := d.lockClone(ctx, name)
	if err != nil {
		return nil, err
	}
	defer done()
	vol, err := d.lookupVolume(cloneObject(name), "clone "+name)
	if err != nil {
		return nil, err
	}
	var target blockstore.SnapshotID
	what := ""
	switch {
	case to == ResetToImage || to == "" && len(r.Revisions) == 0:
		if vol.Origin == 0 {
			return nil, fmt.Errorf("local: reset clone %s: its volume has no origin snapshot", name)
		}
		target, what = vol.Origin, "image "+r.Image
	default:
		rev := to
		if rev == "" {
			rev = r.Revisions[len(r.Revisions)-1].Name
		}
		if _, ok := r.revision(rev); !ok {
			return nil, errorf(ErrNotFound, "clone %s has no revision %s", name, rev)
		}
		snap, err := d.lookupSnapshot(revObject(name, rev), "clone "+name+" revision "+rev)
		if err != nil {
			return nil, err
		}
		target, what = snap.ID, "revision "+rev
	}
	// From here on, the clone is changed: a canceled request must not stop it half-way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), startTimeout)
	defer cancel()
	if err := d.release(ctx, name); err != nil {
		return nil, fmt.Errorf("local: reset clone %s: %w", name, err)
	}
	if err := d.store.Revert(storeCtx, vol.ID, target); err != nil {
		err = fmt.Errorf("local: reset clone %s to %s: %w", name, what, err)
		if r.Running {
			err = errors.Join(err, d.startLocked(ctx, r))
		}
		return nil, err
	}
	d.log.Info("clone reset", "clone", name, "to", what)
	if r.Running {
		if err := d.startLocked(ctx, r); err != nil {
			return nil, fmt.Errorf("local: reset clone %s to %s: start it again: %w", name, what, err)
		}
	}
	return d.cloneView(name)
}

// SaveClone saves a clone's current state as a revision: a snapshot of its volume, taken after
// a checkpoint of its server and with its file system frozen, so that the revision holds
// consistent data files and a clean file system.
func (d *Daemon) SaveClone(ctx context.Context, name, revision string) (*Revision, error) {
	r, ctx, done, err := d.lockClone(ctx, name)
	if err != nil {
		return nil, err
	}
	defer done()
	if revision == "" {
		for n := len(r.Revisions) + 1; ; n++ {
			revision = fmt.Sprintf("rev-%d", n)
			if _, taken := r.revision(revision); !taken {
				break
			}
		}
	}
	if err := checkName("revision name", revision); err != nil {
		return nil, err
	}
	if revision == ResetToImage {
		return nil, errorf(ErrInvalid, "revision name %q is reserved: it names the image in reset", revision)
	}
	if _, taken := r.revision(revision); taken {
		return nil, errorf(ErrAlreadyExists, "clone %s has a revision %s already", name, revision)
	}
	vol, err := d.lookupVolume(cloneObject(name), "clone "+name)
	if err != nil {
		return nil, err
	}
	err = d.quiesced(ctx, name, func() error {
		_, err := d.store.CreateSnapshot(storeCtx, vol.ID, revObject(name, revision))
		return storeError(err)
	})
	if err != nil {
		return nil, fmt.Errorf("local: save clone %s as revision %s: %w", name, revision, err)
	}
	rv := Revision{Name: revision, Created: d.now()}
	if err := d.commit(func(c *catalog) error {
		cr := c.Clones[name]
		cr.Revisions = append(cr.Revisions, rv)
		return nil
	}); err != nil {
		return nil, errors.Join(err, d.deleteSnapshot(revObject(name, revision)))
	}
	d.log.Info("clone saved", "clone", name, "revision", revision)
	return &rv, nil
}

// quiesced runs fn (which takes a snapshot or a clone of the clone's volume) while the clone's
// data is consistent and still: after a checkpoint of its server, when it runs, and with its
// file system frozen (FIFREEZE), when it is mounted. Freezing rather than stopping the server
// keeps its connections; the checkpoint keeps the recovery a clone of the snapshot does at start
// short. REQUIRES the clone's name lock.
func (d *Daemon) quiesced(ctx context.Context, name string, fn func() error) error {
	d.mu.Lock()
	var inst engine.Instance
	mounted := false
	if rt := d.mu.clones[name]; rt != nil {
		inst, mounted = rt.inst, rt.dev != nil
	}
	d.mu.Unlock()
	if inst != nil {
		if err := inst.Checkpoint(ctx); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	if !mounted {
		return fn()
	}
	thaw, err := nodevolume.Freeze(d.cfg.cloneMount(name))
	if err != nil {
		return err
	}
	return errors.Join(fn(), thaw())
}
