package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/nodevolume"
)

// recover carries on with the clones a previous daemon left running (it was killed or
// restarted: their exports live in the data plane, their file systems stay mounted, their
// servers run on), and cleans up the rest of what it left, in the order the kernel needs: the
// servers that still run on its other mounts, then those mounts, then the exports under them,
// then the pool objects no catalog entry accounts for (and entries whose object is gone).
func (d *Daemon) recover() error {
	adopted := d.adoptClones()
	d.killLeftServers(adopted)
	if err := d.unmountLeftovers(adopted); err != nil {
		return err
	}
	// The daemon owns its mount points and the servers on them, and restarts the clones itself:
	// what a previous daemon left and no adopted clone uses is torn down, never kept
	// (nodevolume's doc on leftovers).
	for _, at := range d.vols.All() {
		if adopted[at.ID()] {
			continue
		}
		d.log.Warn("tearing down an export a previous daemon made", "export", at.ID(), "device", at.DevicePath())
		if err := d.vols.Detach(d.ctx, at.ID(), ""); err != nil {
			return fmt.Errorf("local: tear down the export %s a previous daemon made: %w", at.ID(), err)
		}
	}
	for _, l := range d.vols.Leftovers() {
		d.log.Warn("tearing down an export a previous daemon left", "export", l.ID, "devices", l.Devices, "mountedAt", l.MountPoints)
		if err := d.vols.Detach(d.ctx, l.ID, ""); err != nil {
			return fmt.Errorf("local: tear down the export %s a previous daemon left: %w", l.ID, err)
		}
	}
	return d.reconcile()
}

// adoptClones carries on with the clones a previous daemon left serving: those the catalog
// says run whose volume the data plane still exports, whose file system is mounted at the
// clone's mount point, and whose server still runs and answers (engine.Engine.Adopt). Their
// run-time state is restored as it was (the server is watched again); nothing of them is
// touched. It returns their export ids. A clone that fails any of these is left to the cleanup
// and started again (startClones).
func (d *Daemon) adoptClones() map[string]bool {
	adopted := map[string]bool{}
	mounted, err := mountPoints()
	if err != nil {
		d.log.Warn("clones a previous daemon left cannot be adopted", "err", err)
		return adopted
	}
	for name, r := range d.mu.cat.Clones {
		mnt, id := d.cfg.cloneMount(name), cloneExportID(name)
		at, ok := d.vols.Get(id)
		if !r.Running || r.Deleting || !ok || at.MountPoint() != mnt || !mounted[mnt] {
			continue
		}
		log := d.log.With("clone", name, "pid", r.PID)
		eng, err := d.lookupEngine(r.Engine, r.Version)
		if err != nil {
			log.Warn("clone left by a previous daemon: its engine is gone; starting it again", "err", err)
			continue
		}
		ctx, cancel := context.WithTimeout(d.ctx, adoptTimeout)
		inst, err := eng.Adopt(ctx, mnt, engine.StartOptions{RuntimeDir: d.cfg.cloneRun(name), ListenAddress: d.cfg.ListenAddress, Port: r.Port})
		cancel()
		if err != nil {
			log.Warn("clone left by a previous daemon: its server cannot be adopted; starting it again", "err", err)
			continue
		}
		d.mu.Lock()
		rt := d.runtimeLocked(name)
		rt.dev, rt.inst, rt.failure = at, inst, ""
		d.mu.Unlock()
		d.watch(name, rt, inst)
		adopted[id] = true
		log.Info("clone adopted: its server and its volume ran on across the daemon's restart", "serverPID", inst.PID(), "device", at.DevicePath())
	}
	return adopted
}

// adoptTimeout bounds the adoption of one clone's server (a query through its socket).
const adoptTimeout = 30 * time.Second

// killLeftServers kills the servers a previous daemon left running on the file systems of the
// home's mounts but the adopted clones' (by export id): first those the catalog records (when
// /proc/<pid>/cmdline shows that the process is that clone's server: a pid may have been
// reused), then any process still working in a directory under those mounts (a server started
// by an operation that was interrupted before it was recorded, and the server's children).
// Their file systems are about to be unmounted, so a clean shutdown is not possible: the servers
// recover from their logs at the next start.
func (d *Daemon) killLeftServers(adopted map[string]bool) {
	ents, err := os.ReadDir(d.cfg.mntDir())
	if err != nil {
		d.log.Warn("servers a previous daemon left", "err", err)
		return
	}
	for _, e := range ents {
		if adopted[cloneExportID(e.Name())] {
			continue
		}
		dir := filepath.Join(d.cfg.mntDir(), e.Name()) + "/"
		var pids []int
		if r := d.mu.cat.Clones[e.Name()]; r != nil && r.PID > 0 && strings.Contains(cmdline(r.PID), dir) {
			d.log.Warn("killing the server a previous daemon left", "clone", r.Name, "pid", r.PID)
			pids = append(pids, r.PID)
		}
		if err := killUnder(dir, pids); err != nil {
			d.log.Warn("servers a previous daemon left", "err", err)
		}
	}
}

// mountPoints returns the mount points of this mount namespace.
func mountPoints() (map[string]bool, error) {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("local: read mounts: %w", err)
	}
	out := make(map[string]bool, len(infos))
	for _, mi := range infos {
		out[mi.MountPoint] = true
	}
	return out, nil
}

// killUnder kills (SIGKILL) the processes pids and every process working under dir (which ends
// in '/', see processesUnder), and waits until none is left there: the children of a killed
// server take a moment to notice their parent's death. Then the file system can be unmounted,
// and a server started on the data without meeting its predecessor's processes.
func killUnder(dir string, pids []int) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("local: kill process %d working in %s: %w", pid, dir, err)
			}
		}
		pids = processesUnder(dir)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("local: processes %v still work in %s", pids, dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cmdline returns the command line of process pid, arguments separated by spaces ("" if gone).
func cmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// processesUnder lists the processes (other than this one) whose working directory is under dir
// (which ends in '/') or whose command line names a path under it.
func processesUnder(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cwd, _ := os.Readlink("/proc/" + e.Name() + "/cwd")
		if strings.HasPrefix(cwd+"/", dir) || strings.Contains(cmdline(pid), dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountLeftovers unmounts every file system mounted under the home's mounts directory but the
// adopted clones' (by export id; this daemon has mounted nothing yet) and removes the mount
// points.
func (d *Daemon) unmountLeftovers(adopted map[string]bool) error {
	mnt := d.cfg.mntDir()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("local: read mounts: %w", err)
	}
	keep := func(p string) bool {
		name, _, _ := strings.Cut(strings.TrimPrefix(p, mnt+"/"), "/")
		return adopted[cloneExportID(name)]
	}
	var points []string
	for _, mi := range infos {
		if strings.HasPrefix(mi.MountPoint, mnt+"/") && !keep(mi.MountPoint) {
			points = append(points, mi.MountPoint)
		}
	}
	// Deepest first.
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		d.log.Warn("unmounting a file system a previous daemon left", "mountPoint", p)
		// A daemon that died saving a revision left it frozen, and a frozen file system
		// cannot be unmounted; not frozen (EINVAL) is the usual answer.
		_ = nodevolume.Thaw(p)
		if err := unmountRetry(p); err != nil {
			return fmt.Errorf("local: unmount %s, left by a previous daemon: %w", p, err)
		}
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		return fmt.Errorf("local: read %s: %w", mnt, err)
	}
	for _, e := range ents {
		p := filepath.Join(mnt, e.Name())
		if keep(p) {
			continue
		}
		if err := os.Remove(p); err != nil {
			d.log.Warn("cannot remove a mount point a previous daemon left", "mountPoint", p, "err", err)
		}
	}
	return nil
}

// unmountRetry unmounts the file system at p, retrying for a few seconds while it is busy (the
// processes that used it may take a moment to exit).
func unmountRetry(p string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Unmount(p, 0)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // unmounted, or not a mount point (any more)
		case !errors.Is(err, unix.EBUSY) || time.Now().After(deadline):
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keptPullAge is how long the volume of an interrupted pull is kept for the next pull of its
// image to resume, before reconcile deletes it.
const keptPullAge = 24 * time.Hour

// reconcile makes the catalog and the pool agree: it finishes deletions that were interrupted,
// deletes the pool objects no entry accounts for (an interrupted build or create; an
// interrupted pull's volume once it is older than keptPullAge), and drops the entries whose
// pool object is gone.
func (d *Daemon) reconcile() error {
	cat := d.mu.cat
	poolSnaps, err := d.store.ListSnapshots(storeCtx)
	if err != nil {
		return fmt.Errorf("local: list the pool's snapshots: %w", err)
	}
	poolVols, err := d.store.ListVolumes(storeCtx)
	if err != nil {
		return fmt.Errorf("local: list the pool's volumes: %w", err)
	}
	snaps := map[string]bool{}
	for _, s := range poolSnaps {
		if keepSnapshot(cat, s.Name) {
			snaps[s.Name] = true
			continue
		}
		d.log.Warn("deleting a snapshot no catalog entry accounts for", "snapshot", s.Name, "id", s.ID)
		if err := d.store.DeleteSnapshot(storeCtx, s.ID); err != nil {
			return fmt.Errorf("local: delete snapshot %q (id %d), left by an interrupted operation: %w", s.Name, s.ID, err)
		}
	}
	vols := map[string]bool{}
	for _, v := range poolVols {
		if name, ok := strings.CutPrefix(v.Name, clonePrefix); ok && cat.Clones[name] != nil && !cat.Clones[name].Deleting {
			vols[v.Name] = true
			continue
		}
		if strings.HasPrefix(v.Name, pullPrefix) && d.now().Sub(v.Created) < keptPullAge {
			d.log.Info("keeping what an interrupted pull left: the next pull of the image resumes it", "volume", v.Name)
			continue
		}
		d.log.Warn("deleting a volume no catalog entry accounts for", "volume", v.Name, "id", v.ID)
		if err := d.store.DeleteVolume(storeCtx, v.ID); err != nil {
			return fmt.Errorf("local: delete volume %q (id %d), left by an interrupted operation: %w", v.Name, v.ID, err)
		}
	}
	return d.commit(func(c *catalog) error {
		for name, r := range c.Images {
			if !snaps[imageObject(name)] {
				if !r.Deleting {
					d.log.Warn("dropping an image whose snapshot is gone from the pool", "image", name)
				}
				delete(c.Images, name)
			}
		}
		for name, r := range c.Clones {
			if !vols[cloneObject(name)] {
				if !r.Deleting {
					d.log.Warn("dropping a clone whose volume is gone from the pool", "clone", name)
				}
				delete(c.Clones, name)
				continue
			}
			r.Revisions = slices.DeleteFunc(r.Revisions, func(rv Revision) bool {
				if snaps[revObject(name, rv.Name)] {
					return false
				}
				d.log.Warn("dropping a revision whose snapshot is gone from the pool", "clone", name, "revision", rv.Name)
				return true
			})
			if c.Images[r.Image] == nil {
				d.log.Warn("the image of a clone is gone; the clone keeps its data but cannot be reset to the image", "clone", name, "image", r.Image)
			}
		}
		return nil
	})
}

// keepSnapshot reports whether a snapshot of the pool is accounted for by the catalog.
func keepSnapshot(cat *catalog, name string) bool {
	if image, ok := strings.CutPrefix(name, imagePrefix); ok {
		r := cat.Images[image]
		return r != nil && !r.Deleting
	}
	if rest, ok := strings.CutPrefix(name, revPrefix); ok {
		clone, rev, ok := strings.Cut(rest, "/")
		if !ok {
			return false
		}
		r := cat.Clones[clone]
		if r == nil || r.Deleting {
			return false
		}
		_, ok = r.revision(rev)
		return ok
	}
	return false
}

// lookupSnapshot finds a pool snapshot by name, as an API error naming what when it is missing.
func (d *Daemon) lookupSnapshot(name, what string) (blockstore.SnapshotInfo, error) {
	s, err := d.store.LookupSnapshot(storeCtx, name)
	if errors.Is(err, blockstore.ErrNotFound) {
		return s, &kindError{kind: ErrNotFound, err: fmt.Errorf("local: %s: snapshot %q is missing from the pool: %w", what, name, err)}
	}
	if err != nil {
		return s, fmt.Errorf("local: %s: look up snapshot %q: %w", what, name, err)
	}
	return s, nil
}

// lookupVolume finds a pool volume by name, as an API error naming what when it is missing.
func (d *Daemon) lookupVolume(name, what string) (blockstore.VolumeInfo, error) {
	v, err := d.store.LookupVolume(storeCtx, name)
	if errors.Is(err, blockstore.ErrNotFound) {
		return v, &kindError{kind: ErrNotFound, err: fmt.Errorf("local: %s: volume %q is missing from the pool: %w", what, name, err)}
	}
	if err != nil {
		return v, fmt.Errorf("local: %s: look up volume %q: %w", what, name, err)
	}
	return v, nil
}
