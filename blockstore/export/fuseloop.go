package export

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/blockstore/export/holder"
)

// fuseLoop exports a Disk as a file in a FUSE file system of its own, mounted at
// StateDir/<id>, with a loop device in direct I/O mode on that file:
//
//	/dev/loopN --(direct I/O)--> StateDir/<id>/disk --(FUSE)--> fusedev.Server --> Disk
//
// Export order: mount FUSE, attach the loop device. Close order: detach the loop device (which
// ends its I/O on the file), flush the Disk, unmount FUSE, remove the directory. A step that
// fails leaves the later steps undone so that Close can be retried.
type fuseLoop struct {
	opts Options
	log  *slog.Logger
	link *holderLink // nil without Options.Holder

	mu struct {
		sync.Mutex
		// devs holds the ids this Exporter serves; nil while an Export is in progress.
		// Never held across mounts, ioctls or I/O.
		devs map[string]*fuseDevice
	}
}

func newFUSELoop(opts Options) (*fuseLoop, error) {
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, &Error{Op: "create state directory", Err: err}
	}
	// Loop devices report their backing files by resolved path.
	dir, err := filepath.EvalSymlinks(opts.StateDir)
	if err != nil {
		return nil, &Error{Op: "resolve state directory", Err: err}
	}
	opts.StateDir = dir
	e := &fuseLoop{opts: opts, log: opts.Logger.With("method", MethodFUSELoop)}
	if opts.Holder != "" {
		e.link = newHolderLink(opts.Holder, e.log)
	}
	e.mu.devs = map[string]*fuseDevice{}
	return e, nil
}

func (e *fuseLoop) Name() string { return MethodFUSELoop }

func (e *fuseLoop) Export(id string, d Disk) (Device, error) {
	return e.serveID("export", id, d, e.export)
}

// Adopt serves d on what an earlier process left of export id: the FUSE connection the holder
// kept (Leftover.Held), and the loop device on its file (attached anew if the earlier process
// died before it attached one). The kernel sends again the requests the earlier server had read
// and not answered (FUSE_NOTIFY_RESEND). On failure what was left stays as it was.
func (e *fuseLoop) Adopt(id string, d Disk) (Device, error) {
	return e.serveID("adopt", id, d, e.adopt)
}

// serveID checks id and d, reserves id, finds what is left of it in the kernel, and has serve
// make the device: it serves id from then on. If serve fails, id is free again.
func (e *fuseLoop) serveID(op, id string, d Disk, serve func(id string, d Disk, lo Leftover) (*fuseDevice, error)) (Device, error) {
	fail := func(op string, err error) error { return &Error{Op: op, ID: id, Err: err} }
	if !ValidID(id) {
		return nil, fail(op, invalidf("id %q: want 1 to 200 of [A-Za-z0-9._-], not starting with '.'", id))
	}
	bs := int64(e.opts.BlockSize)
	if size := d.Size(); size <= 0 || size%bs != 0 {
		return nil, fail(op, invalidf("disk size %d is not a positive multiple of the block size %d", size, bs))
	}
	e.mu.Lock()
	if _, ok := e.mu.devs[id]; ok {
		e.mu.Unlock()
		return nil, fail(op, ErrExists)
	}
	e.mu.devs[id] = nil // reserved
	e.mu.Unlock()

	lo, err := e.leftoversOf(id, false)
	if err != nil {
		e.forget(id)
		return nil, fail("look for leftovers", err)
	}
	dev, err := serve(id, d, lo)
	if err != nil {
		e.forget(id)
		return nil, err
	}
	e.mu.Lock()
	e.mu.devs[id] = dev
	e.mu.Unlock()
	return dev, nil
}

// export makes a new export of d: FUSE mount, the holder, the server, the loop device.
func (e *fuseLoop) export(id string, d Disk, lo Leftover) (*fuseDevice, error) {
	fail := func(op string, err error) error { return &Error{Op: op, ID: id, Err: err} }
	if len(lo.Devices) > 0 || lo.Mounted {
		return nil, fail("export", wrapf(ErrLeftovers, "devices %v, mounted %v: call Adopt or Cleanup", lo.Devices, lo.Mounted))
	}
	dir := e.dir(id)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fail("create directory", err)
	}

	log := e.log.With("id", id)
	bs := e.opts.BlockSize
	fds, p, err := mountFUSE(dir, id, bs, log)
	if err != nil {
		os.Remove(dir)
		return nil, fail("mount FUSE at "+dir, err)
	}
	dev := &fuseDevice{e: e, id: id, dir: dir, loop: -1, conn: &fuseConn{fds: fds}, disk: d, log: log}
	teardown := func(op string, err error) error {
		if cerr := dev.Close(); cerr != nil {
			dev.log.Error("tear down after failed export", "err", cerr)
		}
		return fail(op, err)
	}
	if e.link != nil {
		// Before anything reaches the connection: from here on, this process's death leaves it
		// to the holder.
		dev.held = true
		if err := e.link.put(dir, fds, marshalHeld(p)); err != nil {
			log.Warn("export not held: it ends with this process until the holder is back", "err", err)
		}
	}
	if dev.conn, err = serveFUSE(dir, fds, p, d, false, log); err != nil {
		dev.conn = &fuseConn{fds: fds}
		return nil, teardown("serve FUSE", err)
	}
	f, err := openDisk(dir)
	if err == nil {
		var dio bool
		dev.loop, dio, err = loopAttach(f, bs)
		f.Close()
		if err == nil && !dio {
			dev.log.Warn("loop device runs without direct I/O: data is cached twice", "device", dev.Path())
		}
		if err == nil {
			err = e.recordLoop(id, dev.loop)
		}
	}
	if err != nil {
		return nil, teardown("attach loop device", err)
	}
	dev.log.Info("exported", "device", dev.Path(), "size", d.Size(), "held", dev.held)
	return dev, nil
}

// adopt serves d on what an earlier process left of the export (see Adopt).
func (e *fuseLoop) adopt(id string, d Disk, lo Leftover) (*fuseDevice, error) {
	fail := func(op string, err error) error { return &Error{Op: op, ID: id, Err: err} }
	switch {
	case !lo.Mounted && len(lo.Devices) == 0:
		return nil, fail("adopt", ErrNotFound)
	case !lo.Mounted:
		return nil, fail("adopt", wrapf(ErrLeftovers, "devices %v without their FUSE mount: call Cleanup", lo.Devices))
	case len(lo.Devices) > 1:
		return nil, fail("adopt", wrapf(ErrLeftovers, "%d loop devices %v on one export: call Cleanup", len(lo.Devices), lo.Devices))
	case e.link == nil:
		return nil, fail("adopt", wrapf(ErrLeftovers, "no holder (Options.Holder) kept its connection: call Cleanup"))
	}
	loop := -1
	if len(lo.Devices) == 1 {
		if _, err := fmt.Sscanf(lo.Devices[0], "/dev/loop%d", &loop); err != nil {
			return nil, fail("adopt", fmt.Errorf("device %s: %w", lo.Devices[0], err))
		}
		if size := loopSize(loop); d.Size() < size {
			return nil, fail("adopt", invalidf("disk of %d bytes is smaller than the device %s of %d: not this export's disk", d.Size(), lo.Devices[0], size))
		}
	}
	dir := e.dir(id)
	fds, state, err := e.link.get(dir)
	if errors.Is(err, holder.ErrNotFound) {
		return nil, fail("adopt", wrapf(ErrLeftovers, "the holder does not hold its connection (it was not running, or restarted, while no server was): call Cleanup"))
	}
	if err != nil {
		return nil, fail("get the connection from the holder", err)
	}
	p, err := unmarshalHeld(state)
	if err != nil {
		closeFDs(fds)
		return nil, fail("adopt", err)
	}
	log := e.log.With("id", id)
	conn, err := serveFUSE(dir, fds, p, d, true, log)
	if err != nil {
		closeFDs(fds)
		switch {
		case errors.Is(err, fusedev.ErrDisconnected):
			err = fmt.Errorf("%w: %w: call Cleanup", ErrLeftovers, err)
		case errors.Is(err, fusedev.ErrUnsupported):
			err = fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		return nil, fail("serve the FUSE connection again", err)
	}
	dev := &fuseDevice{e: e, id: id, dir: dir, loop: loop, conn: conn, disk: d, log: log, held: true}
	if err := e.link.put(dir, fds, state); err != nil {
		log.Warn("export not held: it ends with this process until the holder is back", "err", err)
	}
	if loop < 0 {
		f, err := openDisk(dir)
		if err == nil {
			dev.loop, _, err = loopAttach(f, e.opts.BlockSize)
			f.Close()
		}
		if err == nil {
			err = e.recordLoop(id, dev.loop)
		}
		if err != nil {
			if dev.loop >= 0 {
				if derr := loopDetach(dev.loop); derr != nil {
					log.Error("detach the loop device after a failed adopt", "device", dev.Path(), "err", derr)
				}
			}
			// Handed back as it was: still the holder's, still mounted.
			e.link.forget(dir)
			if serr := conn.srv.Stop(); serr != nil {
				log.Error("stop serving after a failed adopt", "err", serr)
			}
			closeFDs(fds)
			return nil, fail("attach loop device", err)
		}
	} else if err := e.recordLoop(id, loop); err != nil {
		// Recorded again (a version before records did not): without a record the device is
		// found only by its path, while the mount namespace that attached it lives.
		log.Warn("record the loop device", "device", dev.Path(), "err", err)
	}
	log.Info("adopted", "device", dev.Path(), "size", d.Size())
	return dev, nil
}

func (e *fuseLoop) dir(id string) string { return filepath.Join(e.opts.StateDir, id) }

func (e *fuseLoop) forget(id string) {
	e.mu.Lock()
	delete(e.mu.devs, id)
	e.mu.Unlock()
}

// Leftovers lists the state directories, loop devices and FUSE mounts under StateDir that belong
// to no export of this Exporter, and the connections the holder holds for them. Its reads do not
// touch the mounts themselves, so a dead FUSE mount (ENOTCONN) is listed like any other. A holder
// that is not running holds nothing: its exports are listed as not held.
func (e *fuseLoop) Leftovers() ([]Leftover, error) {
	all, err := e.scan(true)
	if err != nil {
		return nil, &Error{Op: "list leftovers", Err: err}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Leftover
	for id, lo := range all {
		if _, ok := e.mu.devs[id]; !ok {
			out = append(out, *lo)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// scan returns the kernel state under StateDir by export id, and with held what the holder
// holds.
func (e *fuseLoop) scan(held bool) (map[string]*Leftover, error) {
	sd := e.opts.StateDir
	out := map[string]*Leftover{}
	get := func(id string) *Leftover {
		if out[id] == nil {
			out[id] = &Leftover{ID: id}
		}
		return out[id]
	}
	ents, err := os.ReadDir(sd) // names only: no stat of the mount points
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, de := range ents {
		if ValidID(de.Name()) {
			get(de.Name()).Dir = filepath.Join(sd, de.Name())
		}
	}
	loops, err := loopsBacking(sd)
	if err != nil {
		return nil, err
	}
	for n, backing := range loops {
		id, _, _ := strings.Cut(strings.TrimPrefix(backing, sd+"/"), "/")
		lo := get(id)
		lo.Devices = append(lo.Devices, loopPath(n))
		sort.Strings(lo.Devices)
	}
	// Devices whose mount namespace went (their backing file is no longer under sd).
	recorded, err := e.recordedLoops()
	if err != nil {
		return nil, err
	}
	for n, id := range recorded {
		if _, ok := loops[n]; ok {
			continue
		}
		lo := get(id)
		lo.Devices = append(lo.Devices, loopPath(n))
		sort.Strings(lo.Devices)
	}
	mounts, err := mountsUnder(sd)
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if id, ok := strings.CutPrefix(m.Point, sd+"/"); ok && !strings.Contains(id, "/") {
			get(id).Mounted = true
		}
	}
	if held && e.link != nil {
		keys, err := e.link.keys()
		if errors.Is(err, ErrNoHolder) {
			e.log.Warn("holder not running: it holds no export", "err", err)
			keys = nil
		} else if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if id, ok := strings.CutPrefix(k, sd+"/"); ok && ValidID(id) {
				get(id).Held = true
			}
		}
	}
	return out, nil
}

func (e *fuseLoop) leftoversOf(id string, held bool) (Leftover, error) {
	all, err := e.scan(held)
	if err != nil {
		return Leftover{}, err
	}
	if lo := all[id]; lo != nil {
		return *lo, nil
	}
	return Leftover{ID: id}, nil
}

// Cleanup tears down what an earlier export of id left: its connection in the holder, loop
// devices on its file, the FUSE mount (dead or alive) and the directory. The holder lets go of
// the connection first (once no device is busy), so that requests queued on it with nobody
// serving them fail instead of holding up the detach.
func (e *fuseLoop) Cleanup(id string) error {
	if !ValidID(id) {
		return &Error{Op: "clean up", ID: id, Err: invalidf("id %q", id)}
	}
	e.mu.Lock()
	_, ok := e.mu.devs[id]
	if !ok {
		e.mu.devs[id] = nil // no Export of id while we clean up
	}
	e.mu.Unlock()
	if ok {
		return &Error{Op: "clean up", ID: id, Err: wrapf(ErrExists, "served by this process: close its device")}
	}
	defer e.forget(id)
	lo, err := e.leftoversOf(id, true)
	if err != nil {
		return &Error{Op: "look for leftovers", ID: id, Err: err}
	}
	loops := make([]int, 0, len(lo.Devices))
	for _, dev := range lo.Devices {
		var n int
		if _, err := fmt.Sscanf(dev, "/dev/loop%d", &n); err != nil {
			continue
		}
		if err := loopInUse(n); err != nil {
			return &Error{Op: "clean up", ID: id, Device: dev, Err: err}
		}
		loops = append(loops, n)
	}
	dir := e.dir(id)
	if lo.Held {
		if err := e.link.drop(dir); err != nil {
			return &Error{Op: "drop the connection from the holder", ID: id, Err: err}
		}
		e.log.Info("dropped leftover connection from the holder", "id", id)
	}
	for _, n := range loops {
		if err := loopDetach(n); err != nil {
			return &Error{Op: "detach loop device", ID: id, Device: loopPath(n), Err: err}
		}
		e.log.Info("detached leftover loop device", "id", id, "device", loopPath(n))
	}
	if err := e.dropLoopRecord(id); err != nil {
		return &Error{Op: "remove the loop record", ID: id, Err: err}
	}
	if lo.Mounted {
		lazy, err := unmount(dir)
		if err != nil {
			return &Error{Op: "unmount FUSE", ID: id, Err: err}
		}
		e.log.Info("unmounted leftover FUSE mount", "id", id, "dir", dir, "lazy", lazy)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return &Error{Op: "remove directory", ID: id, Err: err}
	}
	return nil
}

// fuseDevice is one export: a loop device on the file of a FUSE server of this process.
type fuseDevice struct {
	e    *fuseLoop
	id   string
	dir  string
	loop int // loop device number; -1 before it is attached
	conn *fuseConn
	disk Disk
	log  *slog.Logger
	held bool // the holder holds the connection (or is to, once it is back)

	// mu serializes Resize and Close; I/O does not take it.
	mu struct {
		sync.Mutex
		detached  bool // the loop device is detached
		flushed   bool // the Disk was flushed after the detach
		unmounted bool // FUSE is unmounted
		closed    bool // everything is torn down
	}
}

func (dev *fuseDevice) Path() string {
	if dev.loop < 0 {
		return ""
	}
	return loopPath(dev.loop)
}

func (dev *fuseDevice) fail(op string, err error) error {
	return &Error{Op: op, ID: dev.id, Device: dev.Path(), Err: err}
}

// Resize makes the FUSE file and then the loop device take the Disk's current size.
func (dev *fuseDevice) Resize() error {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.mu.detached || dev.mu.closed {
		return dev.fail("resize", invalidf("device is closed"))
	}
	size := dev.disk.Size()
	if bs := int64(dev.e.opts.BlockSize); size <= 0 || size%bs != 0 {
		return dev.fail("resize", invalidf("disk size %d is not a positive multiple of the block size %d", size, bs))
	}
	// The loop device reads the size the kernel caches for the file: drop it (attributes are not
	// cached, but an inode's size is refreshed only by a GETATTR), and have the kernel fetch it.
	if err := dev.conn.srv.InvalidateFile(); err != nil {
		return dev.fail("resize: invalidate the FUSE file's size", err)
	}
	st, err := os.Stat(filepath.Join(dev.dir, diskName))
	if err != nil {
		return dev.fail("resize: stat FUSE file", err)
	}
	if st.Size() != size {
		return dev.fail("resize", fmt.Errorf("FUSE file is %d bytes, disk %d", st.Size(), size))
	}
	if err := loopSetCapacity(dev.loop); err != nil {
		return dev.fail("resize loop device", err)
	}
	if got := loopSize(dev.loop); got != size {
		return dev.fail("resize loop device", fmt.Errorf("device is %d bytes after LOOP_SET_CAPACITY, disk %d", got, size))
	}
	dev.log.Info("resized", "device", dev.Path(), "size", size)
	return nil
}

// Close detaches the loop device, flushes the Disk, unmounts FUSE (lazily if it stays busy) and
// removes the directory.
func (dev *fuseDevice) Close() error {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.mu.closed {
		return nil
	}
	if !dev.mu.detached {
		if dev.loop >= 0 {
			if err := loopDetach(dev.loop); err != nil {
				return dev.fail("detach loop device", err)
			}
			if err := dev.e.dropLoopRecord(dev.id); err != nil {
				dev.log.Warn("remove the loop record", "err", err)
			}
		}
		dev.mu.detached = true
	}
	if !dev.mu.flushed {
		// Writes that reached the device without a flush request (a buffered writer's close
		// syncs the page cache but sends no flush) become durable here.
		if err := dev.disk.Flush(); err != nil {
			return dev.fail("flush disk", err)
		}
		dev.mu.flushed = true
	}
	if !dev.mu.unmounted {
		lazy, err := unmount(dev.dir)
		if err != nil {
			return dev.fail("unmount FUSE at "+dev.dir, err)
		}
		dev.mu.unmounted = true
		if dev.held {
			// The connection is gone; the holder's copies would only keep a dead one. A holder
			// that cannot be reached holds nothing of this process (its exports go into it
			// again when it is back, and this one no longer is one).
			if err := dev.e.link.drop(dev.dir); err != nil && !errors.Is(err, ErrNoHolder) {
				dev.log.Warn("drop the connection from the holder", "err", err)
			}
		}
		if lazy {
			// The server serves until the last user lets go of the mount.
			dev.log.Warn("FUSE mount stayed busy: detached lazily", "dir", dev.dir)
			go dev.conn.close()
		} else {
			dev.conn.close() // the server's workers end once the kernel drops the connection
		}
	}
	if err := os.Remove(dev.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return dev.fail("remove directory", err)
	}
	dev.mu.closed = true
	if dev.loop >= 0 {
		dev.e.forget(dev.id)
		dev.log.Info("export closed", "device", dev.Path())
	}
	return nil
}
