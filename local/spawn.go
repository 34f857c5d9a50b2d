package local

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// spawn is a background process to start: the daemon (Connect) or the home's data plane
// (NewDaemon).
type spawn struct {
	what       string // "dataimage daemon", "data plane", for messages
	home       string
	executable string // "" = this program
	args       []string
	logPath    string        // where its output is appended
	timeout    time.Duration // how long to wait for it to answer
	// ready reports whether it answers (a short call).
	ready func(ctx context.Context) error
	// held reports whether a process of its kind holds its lock: one started concurrently
	// by another caller, which is waited for when the one started here exits at once.
	held func() bool
}

// start starts the process detached (its own session, so that neither the caller's exit nor
// a signal to the caller's group reaches it; working directory /), its output appended to
// logPath, and waits until it answers. When the started process exits first, another that
// holds the lock (a concurrent start) is waited for instead; else its log's tail says why. Its
// failures are ErrUnavailable.
func (s spawn) start(ctx context.Context) error {
	exe := s.executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("local: start the %s: %w", s.what, err)
		}
	}
	if err := os.MkdirAll(s.home, 0o711); err != nil {
		return fmt.Errorf("local: start the %s: %w", s.what, err)
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("local: start the %s: %w", s.what, err)
	}
	cmd := exec.Command(exe, s.args...)
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("local: start the %s (%s): %w", s.what, exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return &Error{Kind: ErrUnavailable, Message: fmt.Sprintf("the %s started for %s (pid %d) did not answer within %v; its log %s ends with:\n%s",
				s.what, s.home, cmd.Process.Pid, s.timeout, s.logPath, engine.TailFile(s.logPath, 20))}
		case err := <-exited:
			exited = nil
			if !s.held() {
				return &Error{Kind: ErrUnavailable, Message: fmt.Sprintf("the %s started for %s exited (%v); its log %s ends with:\n%s",
					s.what, s.home, err, s.logPath, engine.TailFile(s.logPath, 20))}
			}
			// Another one holds the lock: wait for it to answer.
		case <-tick.C:
			if err := s.ready(ctx); err == nil {
				return nil
			}
		}
	}
}
