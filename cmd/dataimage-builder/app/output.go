package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/internal/units"
)

// progress shows a build's events and, at the end, its outcome.
type progress interface {
	event(builder.Event)
	finish(builder.Outcome)
}

// jsonProgress writes each event as one line of JSON on out (for the DataImage controller,
// which reads the pod's log); the outcome, for people, goes to errOut as one line.
type jsonProgress struct {
	mu     sync.Mutex // serializes the lines
	enc    *json.Encoder
	errOut io.Writer
}

func newJSONProgress(out, errOut io.Writer) *jsonProgress {
	return &jsonProgress{enc: json.NewEncoder(out), errOut: errOut}
}

func (p *jsonProgress) event(e builder.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.enc.Encode(e) // a closed stdout loses progress, not the build
}

func (p *jsonProgress) finish(o builder.Outcome) {
	fmt.Fprintln(p.errOut, "dataimage-builder: "+describe(o))
}

// textProgress writes progress for people: a line per step and per message, the bytes restored
// every few seconds and when all are, and (verbose) the engine's log lines.
type textProgress struct {
	w       io.Writer
	verbose bool
	now     func() time.Time
	every   time.Duration // between byte counts

	mu       sync.Mutex // guards the fields below
	start    time.Time
	lastStep string
	lastLine time.Time // of the last byte count
	lastDone int64
}

func newTextProgress(w io.Writer, verbose bool) *textProgress {
	return &textProgress{w: w, verbose: verbose, now: time.Now, every: 2 * time.Second}
}

func (p *textProgress) event(e builder.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.start.IsZero() {
		p.start = now
	}
	line := func(text string) {
		fmt.Fprintf(p.w, "[%7s] %-10s %s\n", now.Sub(p.start).Round(100*time.Millisecond), e.Step, text)
	}
	switch {
	case e.Log != "":
		if p.verbose {
			line("| " + e.Log)
		}
	case e.Message != "":
		line(e.Message)
		p.lastStep, p.lastLine, p.lastDone = e.Step, now, 0
	case e.Step != p.lastStep:
		line("")
		p.lastStep, p.lastLine, p.lastDone = e.Step, now, 0
	}
	if e.Total > 0 && e.Done != p.lastDone && (e.Done >= e.Total || now.Sub(p.lastLine) >= p.every) {
		line(fmt.Sprintf("%s / %s  %3d%%", units.FormatBytes(e.Done), units.FormatBytes(e.Total), e.Done*100/e.Total))
		p.lastLine, p.lastDone = now, e.Done
	}
}

func (p *textProgress) finish(o builder.Outcome) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, describe(o))
}

// writeTerminationLog writes the outcome to c.TerminationLog, in place: the kubelet
// bind-mounts that file into the container, so it cannot be replaced by a rename. A path
// whose directory is missing is skipped with a warning; the default path also when the file
// itself is missing (outside Kubernetes).
func writeTerminationLog(c Config, o builder.Outcome, log *slog.Logger) {
	path := c.TerminationLog
	if path == "" {
		return
	}
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		log.Warn("termination log not written: its directory is missing", "path", path, "err", err)
		return
	}
	flags := os.O_WRONLY | os.O_TRUNC
	if c.TerminationLogSet {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		log.Info("termination log not written: not running in Kubernetes", "path", path)
		return
	}
	if err == nil {
		_, err = f.Write(o.Encode())
		if serr := f.Sync(); err == nil && !errors.Is(serr, syscall.EINVAL) {
			err = serr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		log.Error("termination log not written", "path", path, "err", err)
	}
}
