package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/cluster"
	"github.com/dataimage/dataimage/exportset/poolvol"
	"github.com/dataimage/dataimage/nodevolume"
	"google.golang.org/grpc/codes"
)

// Images in the registry (docs/kubernetes.md, "Images on every node"). With Config.Registry the
// plugin:
//
//   - pushes the snapshots of its pool that a placement names (package cluster: the DataImage
//     controller writes one per image), under the name of their CSI snapshot handle, so that
//     the handle resolves to the image's digest anywhere;
//   - pulls, in CreateVolume, an image whose snapshot handle names no snapshot of its pool:
//     the handle's name in the registry gives the digest, the pull (incremental against an
//     image of the pool it descends from) makes a snapshot named after the digest
//     (pulledName), and the clone is made of that. A pull runs in the background, one per
//     digest, whatever the call that started it does: a CreateVolume that would outlast its
//     deadline returns ABORTED with the pull's progress, and its retry joins the same pull; a
//     failed pull is the error of the calls that wait for it, and the next call starts again;
//   - pre-pulls the images whose placement names its node, and writes a report of what it
//     holds, pushes and pulls (cluster.NodeReport), every Config.RegistrySync, and deletes the
//     images it pulled that no placement names any more.

// DefaultRegistrySync is Config.RegistrySync's default.
const DefaultRegistrySync = 10 * time.Second

// retryAfter is how long a failed push or pre-pull waits before the sync tries it again.
const retryAfter = time.Minute

// pulledPrefix + the digest's hex names the snapshot a pull makes; pullPrefix and pushPrefix
// name the volumes (and exports) of pulls and pushes in progress.
const (
	pulledPrefix = "image-sha256-"
	pullPrefix   = "dataimage-pull-"
	pushPrefix   = "dataimage-push-"
)

func pulledName(d exportset.Digest) string { return pulledPrefix + d.Hex() }

// transfer is one push or pull running in the background.
type transfer struct {
	done chan struct{} // closed when it ended; err and snap are set before
	err  error
	snap blockstore.SnapshotInfo // a pull's image

	mu       sync.Mutex
	progress exportset.Progress
}

func newTransfer() *transfer { return &transfer{done: make(chan struct{})} }

func (t *transfer) report(p exportset.Progress) {
	t.mu.Lock()
	t.progress = p
	t.mu.Unlock()
}

func (t *transfer) chunks() (done, total int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.progress.Chunks, t.progress.TotalChunks
}

// failure is the last failure of a push or pull of one image, for reports and retries.
type failure struct {
	err error
	at  time.Time
}

// images moves the node's images to and from the registry.
type images struct {
	cfg   *Config
	reg   *exportset.Registry
	store dataplane.Store
	node  *poolvol.Node
	devs  attacherDevices
	ids   ids
	log   *slog.Logger
	now   func() time.Time
	// running counts the transfers in the background (tests wait for them).
	running sync.WaitGroup

	mu struct {
		sync.Mutex
		// pulls are the pulls running, by digest; pushes the pushes running, by handle.
		pulls  map[exportset.Digest]*transfer
		pushes map[string]*transfer
		// digests caches what handles resolved to (a handle names one image for good).
		digests map[string]exportset.Digest
		// pushed are the images this process pushed: the ancestors a pull may start from,
		// besides pulled ones.
		pushed map[exportset.Digest]blockstore.SnapshotID
		// failed are the last failures, by handle, until a later push or pull succeeds.
		failed map[string]failure
	}
}

// attacherDevices detaches the block devices that pushes and pulls of earlier versions
// attached (they moved the data through one; now it goes over the data plane's socket,
// poolvol.WithStore): what an interrupted one left is torn down under its export id.
type attacherDevices struct{ vols *nodevolume.Attacher }

func (a attacherDevices) Detach(ctx context.Context, id string) error {
	return a.vols.Detach(ctx, id, "")
}

func newImages(cfg *Config, store dataplane.Store, vols *nodevolume.Attacher, blockSize int) *images {
	im := &images{
		cfg: cfg, reg: cfg.Registry, store: store, ids: ids{tag: nodeTag(cfg.NodeID)}, log: cfg.Logger, now: time.Now,
		node: poolvol.WithStore(store, blockSize, cfg.Logger), devs: attacherDevices{vols},
	}
	im.mu.pulls = map[exportset.Digest]*transfer{}
	im.mu.pushes = map[string]*transfer{}
	im.mu.digests = map[string]exportset.Digest{}
	im.mu.pushed = map[exportset.Digest]blockstore.SnapshotID{}
	im.mu.failed = map[string]failure{}
	return im
}

// digest returns the image a snapshot handle names in the registry.
func (im *images) digest(ctx context.Context, handle string) (exportset.Digest, error) {
	im.mu.Lock()
	d, ok := im.mu.digests[handle]
	im.mu.Unlock()
	if ok {
		return d, nil
	}
	d, err := im.reg.Resolve(ctx, handle)
	if err != nil {
		return "", err
	}
	im.mu.Lock()
	im.mu.digests[handle] = d
	im.mu.Unlock()
	return d, nil
}

// held returns the snapshot of the pool that holds image d: one this process pushed, or one a
// pull made.
func (im *images) held(ctx context.Context, d exportset.Digest) (blockstore.SnapshotInfo, bool, error) {
	im.mu.Lock()
	id, pushed := im.mu.pushed[d]
	im.mu.Unlock()
	if pushed {
		info, err := im.store.SnapshotInfo(ctx, id)
		if err == nil {
			return info, true, nil
		}
		if !errors.Is(err, blockstore.ErrNotFound) {
			return info, false, err
		}
		im.mu.Lock()
		delete(im.mu.pushed, d)
		im.mu.Unlock()
	}
	info, err := im.store.LookupSnapshot(ctx, pulledName(d))
	if errors.Is(err, blockstore.ErrNotFound) {
		return info, false, nil
	}
	return info, err == nil, err
}

// lookup is the pull sinks' Lookup: the snapshot of an ancestor the pool holds.
func (im *images) lookup(d exportset.Digest) (blockstore.SnapshotID, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, ok, err := im.held(ctx, d)
	if err != nil {
		im.log.Warn("looking for an image in the pool", "digest", d, "err", err)
	}
	return info.ID, ok
}

// clonable returns the snapshot of this pool to clone for a snapshot handle that names none of
// its own: the image the handle names in the registry, pulled first if the pool lacks it. It
// waits for the pull until shortly before ctx's deadline, then answers ABORTED with the
// pull's progress (the pull goes on; a retry joins it).
func (im *images) clonable(ctx context.Context, handle string) (blockstore.SnapshotInfo, error) {
	d, err := im.digest(ctx, handle)
	if err != nil {
		return blockstore.SnapshotInfo{}, registryError(err, "snapshot %s is not in this node's pool; its image in registry %s", handle, im.reg)
	}
	if info, ok, err := im.held(ctx, d); err != nil || ok {
		return info, mapError(err, "image %s (snapshot %s)", d, handle)
	}
	t := im.startPull(d, handle)
	wait := 30 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		wait = left - min(left/10, 2*time.Second)
	}
	timer := time.NewTimer(max(wait, 0))
	defer timer.Stop()
	select {
	case <-t.done:
		if t.err != nil {
			return blockstore.SnapshotInfo{}, registryError(t.err, "pull of image %s (snapshot %s) from %s", d, handle, im.reg)
		}
		return t.snap, nil
	case <-timer.C:
		done, total := t.chunks()
		return blockstore.SnapshotInfo{}, &rpcError{code: codes.Aborted,
			msg: fmt.Sprintf("pull of image %s (snapshot %s) from %s in progress: %d/%d chunks", d, handle, im.reg, done, total),
			err: errPullInProgress}
	case <-ctx.Done():
		return blockstore.SnapshotInfo{}, ctxError(ctx.Err())
	}
}

// errPullInProgress: the pull of the image goes on in the background; retry.
var errPullInProgress = errors.New("retry: the pull goes on in the background")

// startPull starts pulling image d, or returns the pull of d that runs.
func (im *images) startPull(d exportset.Digest, handle string) *transfer {
	im.mu.Lock()
	defer im.mu.Unlock()
	if t := im.mu.pulls[d]; t != nil {
		return t
	}
	t := newTransfer()
	im.mu.pulls[d] = t
	im.running.Go(func() {
		snap, err := im.pull(d, handle, t)
		im.mu.Lock()
		delete(im.mu.pulls, d)
		if err != nil {
			im.mu.failed[handle] = failure{err: err, at: im.now()}
		} else {
			delete(im.mu.failed, handle)
		}
		im.mu.Unlock()
		t.snap, t.err = snap, err
		close(t.done)
	})
	return t
}

// pull pulls image d into the pool (context.Background: no caller's deadline cuts it short).
func (im *images) pull(d exportset.Digest, handle string, t *transfer) (blockstore.SnapshotInfo, error) {
	ctx := context.Background()
	// A pull that finished since the caller looked (or one an earlier process made).
	if info, ok, err := im.held(ctx, d); err != nil || ok {
		return info, err
	}
	start := im.now()
	im.log.Info("pulling image", "digest", d, "snapshot", handle, "registry", im.reg.String())
	sink := &poolvol.Sink{Node: im.node, Lookup: im.lookup, Volume: pullPrefix + d.Hex(), ID: pullPrefix + d.Hex(), Snapshot: pulledName(d), Resume: true}
	res, err := im.reg.Pull(ctx, exportset.PullRequest{Ref: string(d), Sink: sink, Progress: t.report})
	if err != nil {
		im.log.Error("pull failed", "digest", d, "snapshot", handle, "err", err)
		return blockstore.SnapshotInfo{}, err
	}
	snap, _ := sink.Committed()
	im.log.Info("image pulled", "digest", d, "snapshot", handle, "base", res.Base, "chunks", res.Chunks, "resumed", res.Resumed, "kept", res.Kept,
		"fetchedBytes", res.FetchedBytes, "writtenBytes", res.WrittenBytes, "seconds", im.now().Sub(start).Seconds())
	return snap, nil
}

// native returns the snapshot a handle names in this pool, if it is one of this node's.
func (im *images) native(ctx context.Context, handle string) (blockstore.SnapshotInfo, bool, error) {
	ref, err := im.ids.parseSnapshotHandle(handle)
	if err != nil {
		return blockstore.SnapshotInfo{}, false, nil
	}
	info, err := im.store.SnapshotInfo(ctx, ref.id)
	if errors.Is(err, blockstore.ErrNotFound) || err == nil && !ref.names(info) {
		return info, false, nil
	}
	return info, err == nil, err
}

// startPush starts pushing snapshot snap under the name handle, unless a push of it runs.
func (im *images) startPush(p cluster.Placement, snap blockstore.SnapshotInfo) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.mu.pushes[p.Handle] != nil {
		return
	}
	t := newTransfer()
	im.mu.pushes[p.Handle] = t
	im.running.Go(func() {
		d, err := im.push(p, snap, t)
		im.mu.Lock()
		delete(im.mu.pushes, p.Handle)
		if err != nil {
			im.mu.failed[p.Handle] = failure{err: err, at: im.now()}
		} else {
			delete(im.mu.failed, p.Handle)
			im.mu.digests[p.Handle] = d
			im.mu.pushed[d] = snap.ID
		}
		im.mu.Unlock()
		t.err = err
		close(t.done)
	})
}

// push pushes snapshot snap as the image of placement p, named by its handle.
func (im *images) push(p cluster.Placement, snap blockstore.SnapshotInfo, t *transfer) (exportset.Digest, error) {
	ctx := context.Background()
	meta := p.Image
	if meta.Name == "" {
		meta.Name = p.Handle
	}
	if meta.Created.IsZero() {
		meta.Created = snap.Created
	}
	start := im.now()
	im.log.Info("pushing image", "snapshot", p.Handle, "image", meta.Name, "registry", im.reg.String())
	name := pushPrefix + p.Handle
	// What a push that was interrupted (the plugin killed) left: its clone (and the device of
	// an earlier version's push).
	if err := im.devs.Detach(ctx, name); err != nil {
		return "", fmt.Errorf("driver: push %s: detach what an earlier push left: %w", p.Handle, err)
	}
	if old, err := im.store.LookupVolume(ctx, name); err == nil {
		im.log.Info("deleting what an interrupted push left", "volume", name)
		if err := im.store.DeleteVolume(ctx, old.ID); err != nil {
			return "", fmt.Errorf("driver: push %s: delete the leftover volume %s: %w", p.Handle, name, err)
		}
	} else if !errors.Is(err, blockstore.ErrNotFound) {
		return "", fmt.Errorf("driver: push %s: %w", p.Handle, err)
	}
	src, err := im.node.NewSource(ctx, snap.ID, name, name)
	if err != nil {
		return "", fmt.Errorf("driver: push %s: %w", p.Handle, err)
	}
	defer func() {
		if err := src.Close(ctx); err != nil {
			im.log.Warn("releasing a push's source", "snapshot", p.Handle, "err", err)
		}
	}()
	res, err := im.reg.Push(ctx, exportset.PushRequest{Source: src, Image: meta, Name: p.Handle, Progress: t.report})
	if err != nil {
		im.log.Error("push failed", "snapshot", p.Handle, "err", err)
		return "", fmt.Errorf("driver: push %s to %s: %w", p.Handle, im.reg, err)
	}
	im.log.Info("image pushed", "snapshot", p.Handle, "digest", res.Digest, "uploaded", res.Uploaded,
		"uploadedBytes", res.UploadedBytes, "present", res.Present, "seconds", im.now().Sub(start).Seconds())
	return res.Digest, nil
}

// run deletes what transfers of an earlier run of the plugin left, then syncs every interval
// until ctx ends.
func (im *images) run(ctx context.Context, interval time.Duration) {
	im.cleanup(ctx)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := im.sync(ctx); err != nil && ctx.Err() == nil {
			im.log.Warn("registry sync", "registry", im.reg.String(), "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sync reads the placements, starts the pushes and pre-pulls they ask of this node, and writes
// the node's report.
func (im *images) sync(ctx context.Context) error {
	t := im.reg.Target()
	ps, bad, err := cluster.Placements(ctx, t)
	for _, b := range bad {
		im.log.Warn("a placement this plugin cannot read", "err", b)
	}
	rep := cluster.NodeReport{Node: im.cfg.NodeID, Updated: im.now().UTC()}
	if err == nil {
		placed := map[exportset.Digest]bool{}
		complete := len(bad) == 0
		for _, p := range ps {
			if s, ok := im.syncOne(ctx, p); ok {
				rep.Images = append(rep.Images, s)
			}
			if d, derr := im.digest(ctx, p.Handle); derr == nil {
				placed[d] = true
			} else if !errors.Is(derr, exportset.ErrNotFound) {
				complete = false
			}
		}
		if complete {
			im.dropUnplaced(ctx, placed)
		}
	} else {
		rep.Error = err.Error()
	}
	if perr := cluster.PutReport(ctx, t, rep); perr != nil {
		return errors.Join(err, perr)
	}
	return err
}

// syncOne does what placement p asks of this node and says where the image stands here; false:
// the node has nothing to do with it.
func (im *images) syncOne(ctx context.Context, p cluster.Placement) (cluster.ImageState, bool) {
	s := cluster.ImageState{Handle: p.Handle}
	im.mu.Lock()
	push, fail := im.mu.pushes[p.Handle], im.mu.failed[p.Handle]
	im.mu.Unlock()
	d, derr := im.digest(ctx, p.Handle)
	if derr != nil && !errors.Is(derr, exportset.ErrNotFound) {
		s.State, s.Message = cluster.StateFailed, derr.Error()
		return s, true
	}
	s.Digest = d
	snap, native, err := im.native(ctx, p.Handle)
	if err != nil {
		s.State, s.Message = cluster.StateFailed, err.Error()
		return s, true
	}
	if native {
		switch {
		case d != "":
			s.State, s.Pushed = cluster.StateHeld, true
			im.mu.Lock()
			im.mu.pushed[d] = snap.ID
			im.mu.Unlock()
		case push != nil:
			s.State = cluster.StatePushing
			s.Done, s.Total = push.chunks()
		case fail.err != nil && im.now().Sub(fail.at) < retryAfter:
			s.State, s.Message = cluster.StateFailed, fail.err.Error()
		default:
			im.startPush(p, snap)
			s.State = cluster.StatePushing
		}
		return s, true
	}
	if d == "" {
		return s, false // not pushed yet
	}
	if _, ok, err := im.held(ctx, d); err != nil || ok {
		if err != nil {
			s.State, s.Message = cluster.StateFailed, err.Error()
		} else {
			s.State = cluster.StateHeld
		}
		return s, true
	}
	im.mu.Lock()
	pull := im.mu.pulls[d]
	im.mu.Unlock()
	switch {
	case pull != nil:
	case !slices.Contains(p.Nodes, im.cfg.NodeID):
		if fail.err != nil {
			s.State, s.Message = cluster.StateFailed, fail.err.Error()
			return s, true
		}
		return s, false
	case fail.err != nil && im.now().Sub(fail.at) < retryAfter:
		s.State, s.Message = cluster.StateFailed, fail.err.Error()
		return s, true
	default:
		pull = im.startPull(d, p.Handle)
	}
	s.State = cluster.StatePulling
	s.Done, s.Total = pull.chunks()
	return s, true
}

// dropUnplaced deletes the images this node pulled whose digest no placement names any more
// (their DataImage's snapshot is gone): the clones made of them keep their data. placed must
// come from a complete reading of the placements.
func (im *images) dropUnplaced(ctx context.Context, placed map[exportset.Digest]bool) {
	snaps, err := im.store.ListSnapshots(ctx)
	if err != nil {
		im.log.Warn("listing the pool's snapshots", "err", err)
		return
	}
	for _, s := range snaps {
		hex, ok := strings.CutPrefix(s.Name, pulledPrefix)
		if !ok {
			continue
		}
		d := exportset.Digest("sha256:" + hex)
		im.mu.Lock()
		pulling := im.mu.pulls[d] != nil
		im.mu.Unlock()
		if !d.Valid() || placed[d] || pulling {
			continue
		}
		if err := im.store.DeleteSnapshot(ctx, s.ID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
			im.log.Warn("deleting a pulled image no placement names", "digest", d, "err", err)
			continue
		}
		im.log.Info("deleted a pulled image no placement names", "digest", d)
	}
}

// keptPullAge is how long the volume of an interrupted pull is kept for the next pull of its
// image to resume (a CreateVolume's retry, a placement's sync) before cleanup deletes it.
const keptPullAge = 24 * time.Hour

// cleanup deletes the volumes (and the devices of earlier versions) of pushes and pulls that
// no transfer of this process runs: an earlier plugin was stopped in the middle of them. A
// pull left this way made no image (pulls are atomic); its volume is kept for keptPullAge
// (the next pull of the image resumes it), then deleted. A push is run again by the next sync.
func (im *images) cleanup(ctx context.Context) {
	vols, err := im.store.ListVolumes(ctx)
	if err != nil {
		im.log.Warn("listing the pool's volumes", "err", err)
		return
	}
	for _, v := range vols {
		pull, isPull := strings.CutPrefix(v.Name, pullPrefix)
		push, isPush := strings.CutPrefix(v.Name, pushPrefix)
		if !isPull && !isPush {
			continue
		}
		im.mu.Lock()
		running := isPull && im.mu.pulls[exportset.Digest("sha256:"+pull)] != nil || isPush && im.mu.pushes[push] != nil
		im.mu.Unlock()
		if running {
			continue
		}
		if isPull && im.now().Sub(v.Created) < keptPullAge {
			im.log.Info("keeping what an interrupted pull left: the next pull of the image resumes it", "volume", v.Name, "created", v.Created)
			continue
		}
		if err := im.devs.Detach(ctx, v.Name); err != nil {
			im.log.Warn("detaching what an interrupted transfer left", "volume", v.Name, "err", err)
			continue
		}
		if err := im.store.DeleteVolume(ctx, v.ID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
			im.log.Warn("deleting what an interrupted transfer left", "volume", v.Name, "err", err)
			continue
		}
		im.log.Info("deleted what an interrupted transfer left", "volume", v.Name)
	}
}
