package local

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore/export/holder"
)

// The home's FUSE holder keeps a copy of each export's /dev/fuse connection (package holder),
// so that the clones' I/O survives the data plane's death: it waits in the kernel until the
// next data plane serves it again. The daemon starts it, detached, before the data plane
// (connectDataPlane) when none answers on HolderSocketPath and Config.DataPlane.HolderArgs says
// how; it runs as `dataimage fuse-holder`, the same program as the data plane, so that a local
// install is one binary. It changes rarely and outlives the data plane and the daemon; a clean
// Close of the daemon stops it once it holds nothing.

// HolderSocketPath is where the FUSE holder of home listens.
func HolderSocketPath(home string) string { return filepath.Join(home, "fuse-holder.sock") }

// HolderLogPath is where a daemon sends the output of a holder it starts.
func HolderLogPath(home string) string { return filepath.Join(home, "fuse-holder.log") }

// RunHolder runs the FUSE holder of cfg.Home until ctx ends (holder.Run on HolderSocketPath).
// A holder that answers there already is left alone: this one fails with ErrUnavailable
// rather than take its socket (the connections it holds would end with it).
func RunHolder(ctx context.Context, cfg Config) error {
	s, err := cfg.homeSettings()
	if err != nil {
		return err
	}
	path := HolderSocketPath(s.Home)
	if holderRunning(path) {
		return errorf(ErrUnavailable, "a FUSE holder runs already at %s", path)
	}
	l, err := holder.Listen(path)
	if err != nil {
		return fmt.Errorf("local: the FUSE holder: listen on %s: %w", path, err)
	}
	return holder.Run(ctx, l, s.Logger)
}

// holderRunning reports whether a holder answers at path.
func holderRunning(path string) bool {
	c, err := holder.Dial(path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// holderStartTimeout bounds the wait for a started holder to answer.
const holderStartTimeout = 30 * time.Second

// startHolder starts the home's holder (s.DataPlane.HolderArgs) unless one answers, and waits
// until it does. Without HolderArgs it starts none.
func startHolder(ctx context.Context, s *settings) error {
	path := HolderSocketPath(s.Home)
	if len(s.DataPlane.HolderArgs) == 0 || holderRunning(path) {
		return nil
	}
	s.Logger.Info("starting the FUSE holder", "home", s.Home, "log", HolderLogPath(s.Home))
	running := func() bool { return holderRunning(path) }
	return spawn{what: "FUSE holder", home: s.Home, executable: s.DataPlane.Executable, args: s.DataPlane.HolderArgs,
		logPath: HolderLogPath(s.Home), timeout: holderStartTimeout,
		ready: func(context.Context) error {
			if running() {
				return nil
			}
			return errorf(ErrUnavailable, "no FUSE holder answers at %s", path)
		},
		held: running}.start(ctx)
}

// stopHolder stops the home's holder (SIGTERM) if it holds nothing, and waits until it has
// exited, for at most holderStopTimeout. A holder that holds connections is left running:
// stopping it would end the exports whose data plane is not running.
func stopHolder(home string) error {
	path := HolderSocketPath(home)
	c, err := holder.Dial(path)
	if err != nil {
		return nil // none runs
	}
	defer c.Close()
	keys, err := c.List()
	if err != nil {
		return fmt.Errorf("local: stop the FUSE holder: %w", err)
	}
	if len(keys) > 0 {
		return nil
	}
	pid, err := c.PID()
	if err != nil {
		return fmt.Errorf("local: stop the FUSE holder: %w", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("local: stop the FUSE holder (pid %d): %w", pid, err)
	}
	deadline := time.Now().Add(holderStopTimeout)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("local: the FUSE holder (pid %d) did not stop within %v", pid, holderStopTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// holderStopTimeout bounds the wait for the holder to exit after SIGTERM.
const holderStopTimeout = 30 * time.Second
