package nodevolume

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/internal/keylock"
)

// Attacher attaches volumes on this node through the node's data plane (its exports). Its
// methods are safe for concurrent use: calls for one id are serialized (per-id locks), calls for
// different ids run in parallel. Make one per process, with New.
type Attacher struct {
	devs    dataplane.Exports
	log     *slog.Logger
	mounter *mount.SafeFormatAndMount // mount.NewWithoutSystemd: safe for concurrent use (doc.go)
	locks   keylock.Locks             // by id: Attach, Detach, Resize

	mu struct {
		sync.Mutex
		// attached holds this Attacher's attachments by id, from the export until the
		// export's teardown (also while unmounted after a Detach that failed half-way): those
		// it made, and those New adopted (exports the data plane serves, which an earlier
		// process attached).
		attached map[string]*Attachment
		// left holds the leftovers New found, by id, until Attach or Detach tears them down.
		left map[string]Leftover
	}
}

// Spec says how to attach a volume.
type Spec struct {
	// ID names the attachment and its export: 1 to 200 of [A-Za-z0-9._-], not starting with
	// '.' (export.ValidID), unique on this node.
	ID string
	// Volume is the pool volume to attach.
	Volume blockstore.VolumeID
	// MountPoint is the absolute path where the file system is mounted (made if missing);
	// empty: the block device only.
	MountPoint string
	// FSType is the file system, "ext4" or "xfs"; required with a MountPoint.
	FSType string
	// Format makes the file system when the device has none, and checks one it has (fsck -a for
	// ext4) before mounting: k8s.io/mount-utils SafeFormatAndMount. Without Format, the device's
	// file system is mounted as it is, and a blank device fails to mount.
	Format bool
	// MountOptions are options for mount -o; xfs is mounted with nouuid besides.
	MountOptions []string
}

// The export attrs (dataplane.ExportSpec.Attrs) where an Attachment keeps what a process that
// adopts it needs: its mount point and file system.
const (
	attrMountPoint = "nodevolume.mountPoint"
	attrFSType     = "nodevolume.fsType"
)

// Attachment is an attached volume: its export, and its file system's mount point if it has
// one. Detach tears it down.
type Attachment struct {
	id         string
	volume     blockstore.VolumeID
	device     string // the export's block device
	mountPoint string // "" for a block device
	fsType     string
	// adopted: New found it exported by the data plane (an earlier process attached it).
	adopted bool
}

// ID returns the attachment's id (Spec.ID).
func (at *Attachment) ID() string { return at.id }

// DevicePath returns the block device node, e.g. /dev/loop3.
func (at *Attachment) DevicePath() string { return at.device }

// MountPoint returns where the file system is mounted; "" for a block device.
func (at *Attachment) MountPoint() string { return at.mountPoint }

// Volume returns the pool volume attached.
func (at *Attachment) Volume() blockstore.VolumeID { return at.volume }

// Adopted reports whether New found the attachment in place (exported by the data plane for an
// earlier process) rather than this Attacher making it.
func (at *Attachment) Adopted() bool { return at.adopted }

// New returns an Attacher that exports through the data plane devs. It adopts what the data
// plane exports (an earlier process attached it: the exports, and their file systems' mounts,
// outlive that process), and finds what an earlier data plane left (Leftovers). It changes
// nothing. A nil log discards.
func New(ctx context.Context, devs dataplane.Exports, log *slog.Logger) (*Attacher, error) {
	if devs == nil {
		return nil, wrapf(ErrInvalid, "no data plane")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Attacher{
		devs:    devs,
		log:     log,
		mounter: &mount.SafeFormatAndMount{Interface: mount.NewWithoutSystemd(""), Exec: utilexec.New()},
	}
	a.mu.attached = make(map[string]*Attachment)
	exports, err := devs.ListExports(ctx)
	if err != nil {
		return nil, fmt.Errorf("nodevolume: list the data plane's exports: %w", err)
	}
	for _, e := range exports {
		at := &Attachment{id: e.ID, volume: e.Volume, device: e.Device, mountPoint: e.Attrs[attrMountPoint], fsType: e.Attrs[attrFSType], adopted: true}
		a.mu.attached[e.ID] = at
		log.Info("volume attached by an earlier process adopted", "id", e.ID, "device", e.Device, "mountPoint", at.mountPoint)
	}
	left, err := a.findLeftovers(ctx)
	if err != nil {
		return nil, err
	}
	a.mu.left = make(map[string]Leftover, len(left))
	for _, l := range left {
		a.mu.left[l.ID] = l
	}
	return a, nil
}

func (s *Spec) check() error {
	switch {
	case !export.ValidID(s.ID):
		return wrapf(ErrInvalid, "id %q: want 1 to 200 of [A-Za-z0-9._-], not starting with '.'", s.ID)
	case s.Volume == 0:
		return wrapf(ErrInvalid, "%s: no volume", s.ID)
	case s.MountPoint == "" && (s.FSType != "" || s.Format || len(s.MountOptions) > 0):
		return wrapf(ErrInvalid, "%s: a file system type, format or mount options without a mount point", s.ID)
	case s.MountPoint == "":
		return nil
	case !filepath.IsAbs(s.MountPoint):
		return wrapf(ErrInvalid, "%s: mount point %q is not absolute", s.ID, s.MountPoint)
	case s.FSType != "ext4" && s.FSType != "xfs":
		return wrapf(ErrInvalid, "%s: file system %q: want ext4 or xfs", s.ID, s.FSType)
	}
	s.MountPoint = filepath.Clean(s.MountPoint)
	return nil
}

// Attach exports the volume as a block device and, with a MountPoint, mounts its file system
// there (making it first if Format is set and the device is blank). It waits for other calls
// on the id until ctx ends.
//
// Attaching an id that is attached as asked returns its Attachment (mounting the file system
// again if it is not mounted any more); attached otherwise, it fails with ErrConflict. What an
// earlier process left for the id is torn down first, unless its device is still mounted or
// bind-mounted somewhere: then Attach fails with an error wrapping export.ErrLeftovers and
// export.ErrBusy. On failure nothing that Attach made is left (export, mount point).
func (a *Attacher) Attach(ctx context.Context, s Spec) (*Attachment, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	unlock, err := a.locks.Lock(ctx, s.ID)
	if err != nil {
		return nil, fmt.Errorf("nodevolume: attach %s: %w", s.ID, err)
	}
	defer unlock()
	if at, ok := a.Get(s.ID); ok {
		live, err := a.served(ctx, at)
		if err != nil {
			return nil, fmt.Errorf("nodevolume: attach %s: %w", s.ID, err)
		}
		if live {
			return a.reattach(at, s)
		}
		// The data plane that served it has died since: what is left of it is a leftover now,
		// which the fresh attach below tears down if nothing uses it.
		a.log.Warn("attachment lost its export (the data plane restarted)", "id", s.ID, "device", at.device)
		a.forget(at.id)
	}
	if err := a.tearDownLeftover(ctx, s.ID); err != nil {
		return nil, fmt.Errorf("nodevolume: attach %s: clear what an earlier process left: %w", s.ID, err)
	}
	start := time.Now()
	attrs := map[string]string{}
	if s.MountPoint != "" {
		attrs[attrMountPoint], attrs[attrFSType] = s.MountPoint, s.FSType
	}
	e, err := a.devs.Export(ctx, dataplane.ExportSpec{ID: s.ID, Volume: s.Volume, Attrs: attrs})
	if err != nil {
		return nil, fmt.Errorf("nodevolume: attach %s: export it as a block device: %w", s.ID, err)
	}
	at := &Attachment{id: s.ID, volume: s.Volume, device: e.Device, mountPoint: s.MountPoint, fsType: s.FSType}
	if s.MountPoint != "" {
		made, err := makeMountPoint(s.MountPoint)
		if err == nil {
			err = a.mountFS(at, s)
		}
		if err != nil {
			var undo []error
			// The caller's context may have ended: the teardown runs to the end regardless.
			if uerr := a.devs.Unexport(context.WithoutCancel(ctx), s.ID); uerr != nil {
				undo = append(undo, fmt.Errorf("nodevolume: tear down the export %s: %w", s.ID, uerr))
				a.record(at) // still exported: Detach retries the teardown
			}
			if made {
				if rerr := os.Remove(s.MountPoint); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
					undo = append(undo, fmt.Errorf("nodevolume: remove the mount point: %w", rerr))
				}
			}
			return nil, errors.Join(append([]error{fmt.Errorf("nodevolume: attach %s: %w", s.ID, err)}, undo...)...)
		}
	}
	a.record(at)
	a.log.Debug("volume attached", "id", s.ID, "device", e.Device, "mountPoint", s.MountPoint, "fsType", s.FSType,
		"took", time.Since(start))
	return at, nil
}

// reattach answers Attach of an id this Attacher has attached (or adopted). REQUIRES the id's
// lock.
func (a *Attacher) reattach(at *Attachment, s Spec) (*Attachment, error) {
	if at.volume != s.Volume {
		return nil, wrapf(ErrConflict, "%s is attached for volume %d, not %d", s.ID, at.volume, s.Volume)
	}
	if at.mountPoint != s.MountPoint || at.fsType != s.FSType {
		have, want := "as a block device", "as a block device"
		if at.mountPoint != "" {
			have = fmt.Sprintf("at %s (%s)", at.mountPoint, at.fsType)
		}
		if s.MountPoint != "" {
			want = fmt.Sprintf("at %s (%s)", s.MountPoint, s.FSType)
		}
		return nil, wrapf(ErrConflict, "%s is attached %s, not %s", s.ID, have, want)
	}
	if s.MountPoint == "" {
		return at, nil
	}
	mounted, err := a.IsMountPoint(s.MountPoint)
	if err != nil {
		return nil, fmt.Errorf("nodevolume: attach %s: %w", s.ID, err)
	}
	if mounted {
		return at, nil
	}
	// Unmounted since (a Detach that failed after unmounting, or someone else): mount again.
	if _, err := makeMountPoint(s.MountPoint); err != nil {
		return nil, fmt.Errorf("nodevolume: attach %s: %w", s.ID, err)
	}
	if err := a.mountFS(at, s); err != nil {
		return nil, fmt.Errorf("nodevolume: attach %s: %w", s.ID, err)
	}
	return at, nil
}

// makeMountPoint makes dir (and its parents) unless it exists; made says whether it did.
func makeMountPoint(dir string) (made bool, err error) {
	if _, err := os.Lstat(dir); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return false, fmt.Errorf("make the mount point: %w", err)
	}
	return true, nil
}

// mountFS mounts the attachment's file system at s.MountPoint, making it first if s.Format is
// set and the device is blank.
func (a *Attacher) mountFS(at *Attachment, s Spec) error {
	opts := slices.Clone(s.MountOptions)
	if s.FSType == "xfs" {
		opts = append(opts, "nouuid") // clones of one image share the file system's UUID
	}
	if s.Format {
		if err := a.mounter.FormatAndMount(at.device, s.MountPoint, s.FSType, opts); err != nil {
			return fmt.Errorf("make a file system on %s if blank and mount it at %s as %s: %w", at.device, s.MountPoint, s.FSType, err)
		}
		return nil
	}
	if err := a.mounter.Mount(at.device, s.MountPoint, s.FSType, opts); err != nil {
		return fmt.Errorf("mount %s at %s as %s: %w", at.device, s.MountPoint, s.FSType, err)
	}
	return nil
}

func (a *Attacher) record(at *Attachment) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.mu.attached[at.id] = at
}

// Detach unmounts the file system at mountPoint (if mounted; "" for none) and at the
// attachment's own mount point, removes those directories, and tears down the export of id:
// this Attacher's, or what an earlier process left. It fails with an error wrapping
// export.ErrBusy, tearing nothing down, while the device is still mounted or its device node
// bind-mounted elsewhere (in this mount namespace), or held by another opener; a leftover's error
// wraps export.ErrLeftovers too. Detaching an id that is not attached and has no leftovers
// succeeds. It waits for other calls on the id until ctx ends.
func (a *Attacher) Detach(ctx context.Context, id, mountPoint string) error {
	if !export.ValidID(id) {
		return wrapf(ErrInvalid, "id %q", id)
	}
	unlock, err := a.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("nodevolume: detach %s: %w", id, err)
	}
	defer unlock()
	at, ours := a.Get(id)
	points := []string{}
	if mountPoint != "" {
		points = append(points, filepath.Clean(mountPoint))
	}
	if ours && at.mountPoint != "" && !slices.Contains(points, at.mountPoint) {
		points = append(points, at.mountPoint)
	}
	for _, p := range points {
		if err := mount.CleanupMountPoint(p, a.mounter, true); err != nil {
			return fmt.Errorf("nodevolume: detach %s: unmount %s: %w", id, p, err)
		}
	}
	if !ours {
		if err := a.tearDownLeftover(ctx, id); err != nil {
			return fmt.Errorf("nodevolume: detach %s: tear down what an earlier process left: %w", id, err)
		}
		return nil
	}
	users, err := mountsOf([]string{at.device})
	if err != nil {
		return fmt.Errorf("nodevolume: detach %s: %w", id, err)
	}
	if len(users) > 0 {
		return fmt.Errorf("nodevolume: detach %s: %w: %s is still mounted at %v", id, export.ErrBusy, at.device, users)
	}
	if err := a.devs.Unexport(ctx, id); err != nil {
		return fmt.Errorf("nodevolume: detach %s: tear down the export (%s): %w", id, at.device, err)
	}
	// A data plane that restarted since the attach does not serve the export any more (it
	// died with the earlier one, which left it behind): then that goes too.
	if err := a.tearDownLeftover(ctx, id); err != nil {
		return fmt.Errorf("nodevolume: detach %s: tear down what an earlier data plane left: %w", id, err)
	}
	a.forget(id)
	a.log.Debug("volume detached", "id", id, "mountPoints", points)
	return nil
}

// forget drops the attachment of id.
func (a *Attacher) forget(id string) {
	a.mu.Lock()
	delete(a.mu.attached, id)
	a.mu.Unlock()
}

// served reports whether the data plane still serves the export of at (it did not restart
// since, losing it).
func (a *Attacher) served(ctx context.Context, at *Attachment) (bool, error) {
	exports, err := a.devs.ListExports(ctx)
	if err != nil {
		return false, fmt.Errorf("list the data plane's exports: %w", err)
	}
	return slices.ContainsFunc(exports, func(e dataplane.Export) bool { return e.ID == at.id && e.Device == at.device }), nil
}

// Get returns the attachment of id, if this Attacher has one.
func (a *Attacher) Get(id string) (*Attachment, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.mu.attached[id]
	return at, ok
}

// All returns this Attacher's attachments, by id.
func (a *Attacher) All() []*Attachment {
	a.mu.Lock()
	out := make([]*Attachment, 0, len(a.mu.attached))
	for _, at := range a.mu.attached {
		out = append(out, at)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// Len returns the number of this Attacher's attachments.
func (a *Attacher) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.mu.attached)
}

// Resize makes the device of id follow its disk's size after the disk grew, then, if fsPath is
// not empty, grows the file system mounted there to the device's size (resize2fs, xfs_growfs;
// online). Growing what has its size already changes nothing. ErrNotAttached if this Attacher
// has not attached id.
func (a *Attacher) Resize(ctx context.Context, id, fsPath string) error {
	unlock, err := a.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("nodevolume: resize %s: %w", id, err)
	}
	defer unlock()
	at, ok := a.Get(id)
	if !ok {
		return wrapf(ErrNotAttached, "resize %s", id)
	}
	if err := a.devs.ResizeExport(ctx, id); err != nil {
		return fmt.Errorf("nodevolume: resize the block device %s of %s: %w", at.device, id, err)
	}
	if fsPath == "" {
		return nil
	}
	if _, err := mount.NewResizeFs(a.mounter.Exec).Resize(at.device, fsPath); err != nil {
		return fmt.Errorf("nodevolume: grow the file system of %s on %s mounted at %s: %w", id, at.device, fsPath, err)
	}
	return nil
}
