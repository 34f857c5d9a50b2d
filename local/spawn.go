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
	// owner, when set, returns the pid of the process that holds the lock (0: none or
	// unknown), for a kind of process that waits for the lock instead of exiting (the data
	// plane, which waits for the one it replaces): when another one answers, the one started
	// here is waiting for that one's lock and is stopped, so that it does not take over later.
	owner func() int
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
			if err := s.ready(ctx); err != nil {
				continue
			}
			if exited != nil && s.owner != nil {
				if pid := s.owner(); pid > 0 && pid != cmd.Process.Pid {
					s.stopLoser(cmd.Process, pid, exited)
				}
			}
			return nil
		}
	}
}

// stopLoser stops p, started by start, which waits for the lock that process winner holds (a
// concurrent start won): SIGTERM, SIGKILL after spawnLoserTimeout. It waits until p has exited.
func (s spawn) stopLoser(p *os.Process, winner int, exited <-chan error) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(spawnLoserTimeout):
		_ = p.Kill()
		<-exited
	}
	// Its log says it waited; this says why it went.
	if f, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|syscall.O_CLOEXEC, 0); err == nil {
		fmt.Fprintf(f, "%s: the %s pid %d was stopped: pid %d, started at the same time, serves %s\n",
			time.Now().UTC().Format(time.RFC3339Nano), s.what, p.Pid, winner, s.home)
		f.Close()
	}
}

// spawnLoserTimeout bounds how long a process that lost a concurrent start may take to stop.
const spawnLoserTimeout = 10 * time.Second
