package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/exportset/poolvol"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
	"github.com/dataimage/dataimage/internal/keylock"
	"github.com/dataimage/dataimage/nodevolume"
)

// Daemon owns a home's pool and serves its images and clones: it implements Service in-process,
// and Serve serves it over HTTP on the home's socket.
//
// The home holds (directories 0711, so that the servers' OS users reach their data):
//
//	pool.img      the block store pool: images are snapshots image/<name>, clones volumes
//	              clone/<name>, revisions snapshots rev/<clone>/<revision>; builds use
//	              volumes build/<name>, graduations tmp/<name> (see names.go); the data plane
//	              owns it (dataplane.go)
//	dataplane.sock  the data plane's API, dataplane.sock.lock its lock, dataplane.log the
//	              output of a data plane the daemon started
//	catalog.json  images, clones and revisions (catalog.go), replaced atomically
//	daemon.sock   the API (server.go), daemon.lock the lock of RunDaemon, daemon.log the
//	              output of a daemon Connect started
//	mnt/<clone>   a clone's file system (the instance's root; its data in mnt/<clone>/data);
//	              builds mount at mnt/.build-<image>
//	run/<clone>   the server's runtime directory: socket, access rules, log (run/.build-<image>)
//	export/       the exports' state (FUSE mount points of the volumes' block devices)
//
// Locking: d.mu guards the catalog and the run-time state of the clones, and is never held
// across I/O beyond memory; d.saveMu serializes the catalog's writes (and their fsyncs) and
// guards nothing else; per-name locks (d.locks) serialize the operations on one image or clone,
// and are held across what those operations run (exec, mount, builds, servers).
type Daemon struct {
	cfg *settings
	log *slog.Logger
	// store is the home's data plane (dataplane.go): the pool and the volumes' exports.
	store *dataplane.Client
	// pv is the pool as pushes read it and pulls write it (remote.go): through the store and
	// the volumes' block devices (vols).
	pv *poolvol.Node
	// vols attaches the volumes of builds and clones (export, file system, mount); at start it
	// holds what a previous daemon left, which recover tears down.
	vols *nodevolume.Attacher
	// locks serializes the operations on one image or clone, by name, and lets operations on
	// different names run side by side. Keys: "image/<name>", "clone/<name>" (the pool object
	// names).
	locks keylock.Locks

	// ctx ends when Close starts: every operation's context ends with it.
	ctx    context.Context
	cancel context.CancelFunc
	// ops counts the operations in flight, which Close waits for.
	ops sync.WaitGroup

	// skew moves the daemon's clock (now) forward, in nanoseconds: tests age images and clones
	// with it.
	skew atomic.Int64

	enginesMu sync.Mutex
	engines   engine.Set // guarded by enginesMu; nil until discovered

	saveMu   sync.Mutex // serializes catalog writes
	savedGen uint64     // the catalog generation on disk; REQUIRES saveMu

	mu struct {
		sync.Mutex
		cat *catalog
		gen uint64 // incremented on every change of cat
		// closed is set when Close starts; operations then fail with ErrUnavailable.
		closed bool
		// pendingImages and pendingClones reserve the names being created (a clone's value is
		// its image, so that the image cannot be deleted meanwhile).
		pendingImages map[string]bool
		pendingClones map[string]string
		// clones is the run-time state of the clones, by name.
		clones map[string]*cloneRuntime
	}
}

// cloneRuntime is a clone's run-time state. Its fields change under Daemon.mu, by the holder of
// the clone's name lock, except failure (also set by the server's watcher).
type cloneRuntime struct {
	dev  *nodevolume.Attachment // the clone volume's attachment while its file system is mounted
	inst engine.Instance        // the server while it runs (or until it is found dead)
	// failure says why the server does not run although it should.
	failure string
}

// NewDaemon connects to the home's data plane (starting it, and so making the pool, at the
// first start: Config.DataPlane), reads the catalog, cleans up what a previous daemon left
// (servers, mounts, exports, pool objects of interrupted operations), and restarts the clones
// that were running.
func NewDaemon(cfg Config) (*Daemon, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	if err := makeHome(s); err != nil {
		return nil, err
	}
	log := s.Logger
	store, err := connectDataPlane(context.Background(), s)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg:     s,
		log:     log,
		store:   store,
		engines: s.Engines,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.mu.pendingImages = map[string]bool{}
	d.mu.pendingClones = map[string]string{}
	d.mu.clones = map[string]*cloneRuntime{}
	fail := func(err error) (*Daemon, error) {
		d.cancel()
		if serr := d.stopDataPlane(); serr != nil {
			log.Warn("stop the data plane", "err", serr)
		}
		store.Close()
		return nil, err
	}
	if d.mu.cat, err = d.loadCatalog(); err != nil {
		return fail(err)
	}
	if d.vols, err = nodevolume.New(d.ctx, store, log); err != nil {
		return fail(fmt.Errorf("local: %w", err))
	}
	if _, err := d.engineSet(); err != nil {
		log.Warn("no database engines found; builds and clones fail until one is installed", "err", err)
	}
	if err := d.recover(); err != nil {
		return fail(err)
	}
	d.startClones()
	st, err := store.Stats(d.ctx)
	if err != nil {
		return fail(fmt.Errorf("local: pool status: %w", err))
	}
	d.pv = poolvol.WithStore(store, st.BlockSize, log)
	d.ops.Go(d.superviseDataPlane)
	log.Info("daemon ready", "home", s.Home, "pool", s.poolPath(), "capacity", st.PhysicalBytes, "used", st.UsedBytes,
		"images", len(d.mu.cat.Images), "clones", len(d.mu.cat.Clones), "dataPlane", s.dataPlaneSocket())
	return d, nil
}

// makeHome makes the home and its directories. The database servers run as their own OS users
// and must reach the mounts and runtime directories: the home and its parents must be
// traversable by them (mode o+x), which is checked here rather than found by a server failing.
func makeHome(s *settings) error {
	if err := os.MkdirAll(s.Home, 0o711); err != nil {
		return fmt.Errorf("local: make home: %w", err)
	}
	for _, dir := range []struct {
		path string
		perm os.FileMode
	}{{s.mntDir(), 0o711}, {s.runDir(), 0o711}, {s.exportDir(), 0o700}} {
		if err := os.MkdirAll(dir.path, dir.perm); err != nil {
			return fmt.Errorf("local: make home: %w", err)
		}
		if err := os.Chmod(dir.path, dir.perm); err != nil {
			return fmt.Errorf("local: make home: %w", err)
		}
	}
	if os.Geteuid() != 0 {
		return nil // the servers run as this user
	}
	for dir := s.Home; ; dir = filepath.Dir(dir) {
		st, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("local: home: %w", err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("local: home %s: %w: %s is mode %#o, and the database servers (OS users postgres, mysql) must traverse it to reach their data; chmod o+x %s or choose another home",
				s.Home, ErrInvalid, dir, st.Mode().Perm(), dir)
		}
		if dir == "/" {
			return nil
		}
	}
}

// loadCatalog reads the catalog. An empty pool (a new one) gets an empty catalog written at
// once; a pool that holds volumes or snapshots but whose catalog is missing is refused, since
// reconciling would delete every object in it.
func (d *Daemon) loadCatalog() (*catalog, error) {
	path := d.cfg.catalogPath()
	_, statErr := os.Stat(path)
	cat, err := loadCatalog(path)
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		st, err := d.store.Stats(storeCtx)
		if err != nil {
			return nil, fmt.Errorf("local: pool status: %w", err)
		}
		if n := st.Volumes + st.Snapshots; n > 0 {
			return nil, fmt.Errorf("local: pool %s holds %d volumes and snapshots but the catalog %s is missing; restore it, or move the pool away to start anew",
				d.cfg.poolPath(), n, path)
		}
		data, err := json.Marshal(cat)
		if err != nil {
			return nil, fmt.Errorf("local: encode catalog: %w", err)
		}
		if err := writeCatalog(path, data); err != nil {
			return nil, err
		}
	}
	return cat, nil
}

// begin starts an operation: it fails once Close has started, and returns a context that also
// ends when Close starts, and the function that ends the operation.
func (d *Daemon) begin(ctx context.Context) (context.Context, func(), error) {
	d.mu.Lock()
	if d.mu.closed {
		d.mu.Unlock()
		return nil, nil, errorf(ErrUnavailable, "the dataimage daemon is shutting down")
	}
	d.ops.Add(1)
	d.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
		d.ops.Done()
	}, nil
}

// commit applies change to the catalog and writes it. change runs under d.mu and must only
// change memory; if it fails, nothing is written. A failed write leaves the change in memory,
// and the next successful commit writes it.
func (d *Daemon) commit(change func(c *catalog) error) error {
	d.mu.Lock()
	if err := change(d.mu.cat); err != nil {
		d.mu.Unlock()
		return err
	}
	d.mu.gen++
	gen := d.mu.gen
	data, err := json.MarshalIndent(d.mu.cat, "", "\t")
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("local: encode catalog: %w", err)
	}
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	if gen <= d.savedGen {
		return nil // a later state, which holds this change, is on disk already
	}
	if err := writeCatalog(d.cfg.catalogPath(), data); err != nil {
		return err
	}
	d.savedGen = gen
	return nil
}

// engineSet returns the engines builds and clones use, discovering them at the first call.
func (d *Daemon) engineSet() (engine.Set, error) {
	d.enginesMu.Lock()
	defer d.enginesMu.Unlock()
	if d.engines != nil {
		return d.engines, nil
	}
	set, err := registry.Discover()
	if err != nil {
		return nil, fmt.Errorf("local: discover database engines: %w", err)
	}
	if len(set) > 0 {
		d.engines = set
	}
	return set, nil
}

// lookupEngine returns the installed engine an image was built with. When it is missing, the
// engines are discovered again once (one may have been installed since the daemon started).
func (d *Daemon) lookupEngine(kind imagebuilder.Engine, version string) (engine.Engine, error) {
	set, err := d.engineSet()
	if err == nil {
		var e engine.Engine
		if e, err = set.Lookup(kind, version); err == nil {
			return e, nil
		}
	}
	if d.cfg.Engines == nil {
		d.enginesMu.Lock()
		d.engines = nil
		d.enginesMu.Unlock()
		if set, err2 := d.engineSet(); err2 == nil {
			if e, err2 := set.Lookup(kind, version); err2 == nil {
				return e, nil
			}
		}
	}
	return nil, err
}

// Close stops the clones' servers cleanly (a restarted daemon starts them again: their desired
// state stays running), unmounts their file systems, tears their exports down and stops the
// data plane (which closes the pool). Operations in flight are canceled and waited for.
func (d *Daemon) Close() error {
	d.mu.Lock()
	if d.mu.closed {
		d.mu.Unlock()
		return nil
	}
	d.mu.closed = true
	d.mu.Unlock()
	d.cancel()
	d.ops.Wait()

	d.mu.Lock()
	names := make([]string, 0, len(d.mu.clones))
	for name := range d.mu.clones {
		names = append(names, name)
	}
	d.mu.Unlock()
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
			defer cancel()
			errs[i] = d.release(ctx, name)
		})
	}
	wg.Wait()
	err := errors.Join(errs...)
	if cerr := d.commit(func(c *catalog) error {
		for _, r := range c.Clones {
			r.PID = 0
		}
		return nil
	}); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err == nil {
		err = d.stopDataPlane()
	}
	d.store.Close()
	if err != nil {
		d.log.Error("daemon closed with errors", "err", err)
		return err
	}
	d.log.Info("daemon closed", "home", d.cfg.Home)
	return nil
}

// now is the daemon's clock: the time, in UTC, moved by skew.
func (d *Daemon) now() time.Time {
	return time.Now().UTC().Add(time.Duration(d.skew.Load()))
}

// storeCtx is the context of the daemon's calls to its data plane's pool: not the operation's,
// which a client may cancel, because a change canceled half-way over the socket would leave the
// daemon not knowing whether it was made (the pool's own operations are not interruptible
// either). A data plane that is gone fails the calls at once (dataplane.ErrUnavailable).
var storeCtx = context.Background()

// stopTimeout bounds a server's clean shutdown; past it the server is killed.
const stopTimeout = 60 * time.Second
