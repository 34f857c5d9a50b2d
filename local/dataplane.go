package local

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/dataplane"
)

// The home's data plane is the process that owns the pool and serves the volumes' I/O to the
// kernel (package dataplane): the daemon reaches it over DataPlaneSocketPath and starts it when
// none answers there (Config.DataPlane). It outlives the daemon: a daemon that is killed or
// restarted leaves the clones' exports, and so their file systems' I/O, untouched. A clean
// Close of the daemon stops it once the daemon has released every volume.

// DataPlaneCommand is how a daemon starts its home's data plane (Config.DataPlane): Executable
// ("" = this program) with Args, which must run RunDataPlane for the home (the dataimage
// command's `dataplane` verb does).
type DataPlaneCommand struct {
	Executable string
	Args       []string
	// HolderArgs are the arguments of Executable that run the home's FUSE holder (RunHolder;
	// the dataimage command's `fuse-holder` verb), started before the data plane when none
	// answers (holder.go). Empty: none is started, and the clones' I/O fails when the data
	// plane dies.
	HolderArgs []string
}

// DataPlaneSocketPath is where the data plane of home serves its API.
func DataPlaneSocketPath(home string) string { return filepath.Join(home, "dataplane.sock") }

// DataPlaneLogPath is where a daemon sends the output of a data plane it starts.
func DataPlaneLogPath(home string) string { return filepath.Join(home, "dataplane.log") }

// dataPlaneStartTimeout bounds the wait for a started data plane to answer: it recovers the
// pool first (the journal since the last checkpoint).
const dataPlaneStartTimeout = 5 * time.Minute

// RunDataPlane runs the data plane of cfg.Home until ctx ends (dataplane.Run): it opens the
// home's pool, making it at the first start (cfg.PoolSize, cfg.Preallocate), and serves it and
// the exports on DataPlaneSocketPath. One runs per home (it waits while another holds the
// socket's lock).
func RunDataPlane(ctx context.Context, cfg Config) error {
	s, err := cfg.homeSettings()
	if err != nil {
		return err
	}
	return dataplane.Run(ctx, dataplane.Config{
		Socket:             s.dataPlaneSocket(),
		Pool:               s.poolPath(),
		PoolSize:           s.PoolSize,
		Preallocate:        s.Preallocate,
		OverProvisionRatio: DefaultOverProvisionRatio,
		ExportStateDir:     s.exportDir(),
		StateDir:           filepath.Join(s.Home, "dataplane"),
		Holder:             HolderSocketPath(s.Home),
		Logger:             s.Logger,
	})
}

// connectDataPlane returns a client of the home's data plane, starting it (s.DataPlane) when
// none answers.
func connectDataPlane(ctx context.Context, s *settings) (*dataplane.Client, error) {
	c := dataplane.NewClient(s.dataPlaneSocket())
	ready := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, _, err := c.Version(ctx)
		return err
	}
	err := ready(ctx)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, dataplane.ErrUnavailable) {
		c.Close()
		return nil, fmt.Errorf("local: the data plane of %s: %w", s.Home, err)
	}
	if s.DataPlane.Executable == "" && len(s.DataPlane.Args) == 0 {
		c.Close()
		return nil, errorf(ErrUnavailable, "no data plane answers at %s (start one: dataimage dataplane --home %s)", s.dataPlaneSocket(), s.Home)
	}
	if err := startHolder(ctx, s); err != nil {
		c.Close()
		return nil, err
	}
	s.Logger.Info("starting the data plane", "home", s.Home, "log", DataPlaneLogPath(s.Home))
	err = spawn{what: "data plane", home: s.Home, executable: s.DataPlane.Executable, args: s.DataPlane.Args,
		logPath: DataPlaneLogPath(s.Home), timeout: dataPlaneStartTimeout, ready: ready,
		held: func() bool {
			_, held, _ := dataplane.LockHolder(s.dataPlaneSocket())
			return held
		},
		owner: func() int {
			pid, _, _ := dataplane.LockHolder(s.dataPlaneSocket())
			return pid
		}}.start(ctx)
	if err != nil {
		c.Close()
		// A holder started for it holds nothing yet: it goes too.
		if serr := stopHolder(s.Home); serr != nil {
			s.Logger.Warn("stop the FUSE holder", "err", serr)
		}
		return nil, err
	}
	return c, nil
}

// dataPlaneCheckInterval is how often the daemon checks that its data plane runs.
const dataPlaneCheckInterval = time.Second

// superviseDataPlane starts a new data plane when the home's has died (killed, out of memory),
// so that the clones' I/O, which the FUSE holder keeps waiting in the kernel meanwhile, resumes
// without anyone running a command: every dataPlaneCheckInterval it looks whether the data
// plane's lock is held (it is while one runs), until the daemon closes. A data plane that hands
// over (SIGTERM, an upgrade) is replaced the same way; one that the daemon does not start
// (Config.DataPlane empty: run by hand) is left to whoever runs it.
func (d *Daemon) superviseDataPlane() {
	if d.cfg.DataPlane.Executable == "" && len(d.cfg.DataPlane.Args) == 0 {
		return
	}
	t := time.NewTicker(dataPlaneCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		if _, held, err := dataplane.LockHolder(d.cfg.dataPlaneSocket()); err != nil || held {
			continue
		}
		d.log.Warn("the data plane is gone: starting a new one", "home", d.cfg.Home)
		c, err := connectDataPlane(d.ctx, d.cfg)
		if err != nil {
			if d.ctx.Err() == nil {
				d.log.Warn("start the data plane", "err", err)
			}
			continue
		}
		c.Close()
	}
}

// stopDataPlane stops the home's data plane when it exports nothing (SIGTERM to the process
// that holds its lock: it drains and closes the pool) and waits until it has exited, for at
// most dataPlaneStopTimeout; then the FUSE holder, which holds nothing then (stopHolder). A data plane that still exports volumes is left running: their
// file systems are still mounted, and stopping it would fail their I/O.
func (d *Daemon) stopDataPlane() error {
	ctx, cancel := context.WithTimeout(context.Background(), dataPlaneStopTimeout)
	defer cancel()
	exports, err := d.store.ListExports(ctx)
	if err != nil {
		return fmt.Errorf("local: stop the data plane: %w", err)
	}
	if len(exports) > 0 {
		d.log.Warn("the data plane still exports volumes; leaving it running", "exports", len(exports))
		return nil
	}
	sock := d.cfg.dataPlaneSocket()
	pid, held, err := dataplane.LockHolder(sock)
	if err != nil || !held {
		return err
	}
	if pid <= 0 {
		return fmt.Errorf("local: stop the data plane: no pid in %s.lock", sock)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("local: stop the data plane (pid %d): %w", pid, err)
	}
	for {
		if _, held, err := dataplane.LockHolder(sock); err != nil || !held {
			d.log.Info("data plane stopped", "pid", pid)
			if err == nil {
				err = stopHolder(d.cfg.Home)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("local: the data plane (pid %d) did not stop within %v", pid, dataPlaneStopTimeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// dataPlaneStopTimeout bounds the wait for the data plane to stop: it drains (20 s at most)
// and checkpoints the pool.
const dataPlaneStopTimeout = 2 * time.Minute

// dataPlaneRunning reports whether a data plane holds home's data plane lock.
func dataPlaneRunning(home string) bool {
	_, held, _ := dataplane.LockHolder(DataPlaneSocketPath(home))
	return held
}

// homeSettings completes c and makes its home: what a process of the home (the data plane,
// the holder) does first.
func (c Config) homeSettings() (*settings, error) {
	s, err := c.settings()
	if err != nil {
		return nil, err
	}
	if err := makeHome(s); err != nil {
		return nil, err
	}
	return s, nil
}
