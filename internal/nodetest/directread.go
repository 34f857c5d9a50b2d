package nodetest

import (
	"bytes"
	"errors"
	"os/exec"
	"time"
)

// ErrDeadline: DirectReadWithin had no answer before its deadline.
var ErrDeadline = errors.New("no answer before the deadline")

// DirectReadWithin reads the first 4 KiB of path with O_DIRECT in a process of its own (dd),
// and returns its output and how it ended: ErrDeadline if it had not within d (a read blocked in
// D state cannot be killed: the process is left to the test's cleanup, which must end what
// blocks it, e.g. abort the FUSE connection).
func DirectReadWithin(path string, d time.Duration) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command("dd", "if="+path, "of=/dev/null", "bs=4096", "count=1", "iflag=direct")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(d):
		return "", ErrDeadline
	}
}
