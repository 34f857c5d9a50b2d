package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/blockstore/provision"
)

// DefaultSocket is where a node's data plane serves its API unless told otherwise
// (cmd/dataimage-dataplane --socket, cmd/dataimage-csi --dataplane-socket): next to the
// exports' state (export.DefaultStateDir), on the node's tmpfs.
const DefaultSocket = "/run/dataimage/dataplane/dataplane.sock"

// Config configures a data plane process (Run). The mains (dataimage-dataplane, and
// `dataimage dataplane` for the local daemon) fill it from flags; nothing here reads the
// environment.
type Config struct {
	// Socket is the API's unix socket (absolute). Required. One data plane runs per socket:
	// Run holds the lock file Socket+".lock" while it runs.
	Socket string
	// Pool is the pool: a file, or a block device. Required.
	Pool string
	// PoolSize makes a pool where there is none (a file that does not exist; a blank device,
	// with it as the confirmation); 0: an existing pool only (package provision).
	PoolSize int64
	// Preallocate makes a new pool file thick.
	Preallocate bool
	// PoolFormatNonBlank makes a pool on a device that holds something (its contents are
	// lost); never on one in use or that fails reads. Needs PoolSize.
	PoolFormatNonBlank bool
	// OverProvisionRatio replaces the pool's over-provisioning bound (0: the pool's own).
	OverProvisionRatio float64
	// Export forces an export method ("": the best this node has); ExportStateDir holds the
	// exports' state (default export.DefaultStateDir; a tmpfs).
	Export         string
	ExportStateDir string
	// Holder is the socket of the FUSE holder (holder.Run: cmd/dataimage-fuse-holder, or
	// `dataimage fuse-holder` for the local daemon) that keeps the exports' connections open
	// across the death of this process ("": none; an export's I/O fails once its data plane
	// is gone). With it, a data plane that starts serves again the exports an earlier one
	// left (startExports), and one that stops hands them over rather than draining them.
	Holder string
	// StateDir holds the data plane's record of each export (records.go; default: "exports"
	// beside the socket). It must outlive the process as long as the exports' kernel state
	// does: a tmpfs is right.
	StateDir string
	// FUSESysctlDir is where the kernel's FUSE settings are read (default FUSESysctlDir).
	FUSESysctlDir string
	// Version is the data plane's build, reported by the API.
	Version string
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
}

// drainTimeout bounds how long the stop waits for the exports' I/O in flight (Local.Drain).
// With the API's grace period (30 s) and the checkpoint it fits the chart's
// terminationGracePeriodSeconds (60).
const drainTimeout = 20 * time.Second

func (c Config) complete() (Config, error) {
	if c.ExportStateDir == "" {
		c.ExportStateDir = export.DefaultStateDir
	}
	if c.FUSESysctlDir == "" {
		c.FUSESysctlDir = FUSESysctlDir
	}
	if c.StateDir == "" && c.Socket != "" {
		c.StateDir = filepath.Join(filepath.Dir(c.Socket), "exports")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Socket == "" || !filepath.IsAbs(c.Socket):
		return c, wrapf(ErrInvalid, "socket %q: want an absolute path", c.Socket)
	case c.Pool == "":
		return c, wrapf(ErrInvalid, "no pool")
	case c.PoolFormatNonBlank && c.PoolSize == 0:
		return c, wrapf(ErrInvalid, "formatting a non-blank device needs a pool size (it applies only when a pool is made)")
	case c.OverProvisionRatio < 0:
		return c, wrapf(ErrInvalid, "over-provisioning ratio %v: must not be negative", c.OverProvisionRatio)
	}
	return c, nil
}

// Run is the data plane process: it takes the socket's lock (waiting while another data plane
// holds it), checks the kernel's FUSE settings, opens (recovers, or makes) the pool, detects
// the export method, serves again what an earlier data plane left, and serves the API on the
// socket until ctx ends. Then it stops: API calls in flight finish; with a holder the exports
// are handed over (Local.Handover: no new request is read, what was read is answered and
// flushed, and the connections wait in the holder for the next data plane), without one their
// I/O drains (Local.Drain: what was submitted completes and is flushed, later I/O waits until
// the process exits, then fails); the pool is closed (a checkpoint). Nothing is unexported: the
// exports' kernel state outlives the process (docs/driver.md, "Stopping the data plane").
//
// Start-up order: the pool is recovered first (every write acknowledged before the previous
// process died is replayed), then the exports an earlier process left are served again where
// the holder kept their connections (startExports: the kernel resends what that process had
// read and not answered), before the socket serves.
func Run(ctx context.Context, c Config) error {
	c, err := c.complete()
	if err != nil {
		return err
	}
	log := c.Logger
	unlock, err := lockSocket(ctx, c.Socket, log)
	if err != nil {
		return err
	}
	defer unlock()
	if err := CheckFUSERequestTimeouts(c.FUSESysctlDir); err != nil {
		return err
	}
	if ok, err := IOFlusher(); err != nil || !ok {
		log.Warn("the data plane is not an I/O flusher: serving writeback under memory pressure may deadlock (run it with CAP_SYS_RESOURCE)", "err", err)
	}
	pool, err := openPool(c)
	if err != nil {
		return err
	}
	rec := pool.Recovery()
	log.Info("pool open", "pool", c.Pool, "recoveredRecords", rec.Records, "checkpointLSN", rec.CheckpointLSN, "lastLSN", rec.LastLSN,
		"took", rec.Duration)
	exp, err := export.Detect(export.Options{StateDir: c.ExportStateDir, Method: c.Export, Logger: log, Holder: c.Holder})
	if err != nil {
		return errors.Join(err, pool.Close())
	}
	local := NewLocal(pool, exp, log)
	local.recs = records{dir: c.StateDir}
	if err := startExports(ctx, local, log); err != nil {
		return errors.Join(err, pool.Close())
	}
	lis, err := Listen(c.Socket)
	if err != nil {
		return errors.Join(err, pool.Close())
	}
	log.Info("serving", "socket", c.Socket, "export", exp.Name(), "version", c.Version)
	serr := NewServer(local, c.Version, log).Serve(ctx, lis)
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	stop, what := local.Drain, "drain"
	if c.Holder != "" {
		stop, what = local.Handover, "hand over"
	}
	if derr := stop(dctx); derr != nil {
		log.Error(what, "err", derr)
		serr = errors.Join(serr, derr)
	}
	cancel()
	if cerr := pool.Close(); cerr != nil {
		serr = errors.Join(serr, fmt.Errorf("dataplane: close the pool: %w", cerr))
	}
	log.Info("stopped")
	return serr
}

// startExports takes over what an earlier data plane process left, before the socket serves.
// The kernel side of each export it made is still there (the loop device, the FUSE mount), and
// so is its record (records.go: the volume and the attrs). An export whose connection the holder
// kept (Leftover.Held) and that has a record is served again under it (Local.adopt): the
// record's volume behind the device the kernel still has, with the record's attrs, so that the
// control planes find it exported (and adopt it in turn, nodevolume.New). The others are
// leftovers, whose I/O fails (no holder kept them: none runs, or it died while no data plane
// did; or a record is missing): the control plane (package nodevolume) tears them down once
// nothing of its own uses them, and their records go with them. Records with no kernel state
// left are stale and removed.
func startExports(ctx context.Context, l *Local, log *slog.Logger) error {
	recs, bad, err := l.recs.load()
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		log.Warn("files that are not export records in the state directory; ignored", "dir", l.recs.dir, "files", bad)
	}
	left, err := l.Leftovers(ctx)
	if err != nil {
		return err
	}
	for _, lo := range left {
		rec, ok := recs[lo.ID]
		delete(recs, lo.ID)
		if ok && lo.Held && lo.Mounted {
			start := time.Now()
			e, err := l.adopt(rec)
			if err == nil {
				log.Info("export of an earlier data plane served again", "export", lo.ID, "volume", rec.Volume, "device", e.Device,
					"took", time.Since(start).Round(time.Microsecond))
				continue
			}
			log.Error("serve again an export of an earlier data plane; its I/O fails until the volume is detached and attached again",
				"export", lo.ID, "volume", rec.Volume, "err", err)
			continue
		}
		log.Warn("export left by an earlier data plane; its I/O fails until the volume is detached and attached again",
			"export", lo.ID, "devices", lo.Devices, "mounted", lo.Mounted, "held", lo.Held, "recorded", ok, "volume", rec.Volume)
	}
	for id := range recs {
		if err := l.recs.remove(id); err != nil {
			return err
		}
		log.Info("removed the record of an export that is gone", "export", id)
	}
	return nil
}

// openPool opens the pool, making it only where that destroys nothing (package provision): a
// file that does not exist, or a blank device, and only with a pool size.
func openPool(c Config) (*blockstore.Pool, error) {
	opts := blockstore.Options{OverProvisionRatio: c.OverProvisionRatio, DirectIO: true, Logger: c.Logger,
		Size: c.PoolSize, Preallocate: c.Preallocate}
	p, _, err := provision.Open(c.Pool, provision.Options{Pool: opts, Create: c.PoolSize > 0, FormatNonBlank: c.PoolFormatNonBlank})
	switch {
	case errors.Is(err, provision.ErrNoPool):
		return nil, fmt.Errorf("%w (a pool is made only with --pool-size: a new file of that size, or the whole blank device)", err)
	case errors.Is(err, provision.ErrNotBlank) && !errors.Is(err, provision.ErrInUse) && !c.PoolFormatNonBlank:
		return nil, fmt.Errorf("%w (erase it first, e.g. wipefs --all %s for the signatures blkid knows, or give --pool-format-nonblank to make it a pool anyway)", err, c.Pool)
	}
	return p, err
}

// lockSocket takes the lock file socket+".lock" (flock, released when the process ends however
// it ends), waiting while another data plane holds it (the one a new one replaces, still
// stopping) until ctx ends. It writes this process's pid into the file.
func lockSocket(ctx context.Context, socket string, log *slog.Logger) (unlock func(), err error) {
	path := socket + ".lock"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("dataplane: lock file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dataplane: lock file: %w", err)
	}
	start, logged := time.Now(), time.Time{}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("dataplane: lock %s: %w", path, err)
		}
		if time.Since(logged) >= 10*time.Second {
			b := make([]byte, 32)
			n, _ := f.ReadAt(b, 0)
			log.Info("another data plane holds the socket's lock; waiting for it to stop", "lock", path, "pid", strings.TrimSpace(string(b[:n])),
				"waited", time.Since(start).Round(time.Second))
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("dataplane: another data plane holds %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			log.Warn("write the pid into the lock file", "lock", path, "err", err)
		}
	}
	return func() { f.Close() }, nil
}

// LockHolder reports whether a data plane holds the lock of socket (Run holds socket+".lock"
// while it runs, from before its socket listens until after it has closed the pool), and the
// pid it wrote in the lock file (0 if unreadable). A data plane that was killed holds nothing:
// the kernel released its lock.
func LockHolder(socket string) (pid int, held bool, err error) {
	path := socket + ".lock"
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("dataplane: lock file: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		return 0, false, nil // nobody holds it (our shared lock goes with the close)
	} else if !errors.Is(err, unix.EWOULDBLOCK) {
		return 0, false, fmt.Errorf("dataplane: lock %s: %w", path, err)
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, _ = strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid, true, nil
}
