package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// RunDaemon runs the daemon of cfg.Home until ctx ends: it takes the home's lock (one daemon
// per home), opens the daemon (NewDaemon), serves (Serve) and closes it (Close). A second
// daemon for the same home fails with ErrAlreadyExists, naming the first one's pid.
func RunDaemon(ctx context.Context, cfg Config) error {
	s, err := cfg.settings()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.Home, 0o711); err != nil {
		return fmt.Errorf("local: make home: %w", err)
	}
	unlock, err := lockHome(s.lockPath())
	if err != nil {
		return err
	}
	defer unlock()
	cfg.Home = s.Home
	d, err := NewDaemon(cfg)
	if err != nil {
		return err
	}
	serr := d.Serve(ctx)
	return errors.Join(serr, d.Close())
}

// lockHome takes the lock file at path (flock, released when the process ends however it ends)
// and writes this process's pid in it.
func lockHome(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("local: lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(b[:n]))
			return nil, fmt.Errorf("local: a daemon (pid %s) serves this home already (lock %s): %w", pid, path, ErrAlreadyExists)
		}
		return nil, fmt.Errorf("local: lock %s: %w", path, err)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("local: write the pid into the lock file %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
