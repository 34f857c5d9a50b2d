package app

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/internal/units"
)

// progress shows an image build's events for people. On a terminal, each step (and each new
// message within a step) is a line, and the bytes restored are a one-line bar redrawn in place:
//
//	restore    [=========>          ] 412 MiB / 1.1 GiB  37%  52 MiB/s
//
// Elsewhere (a file, a pipe, CI logs), each step is a line and the bytes restored are a line
// every interval, and one when the step's input is all read. The engine's log lines are shown
// only when verbose. event may be called from any goroutine; finish after the last event.
type progress struct {
	w        io.Writer
	tty      bool
	width    int // the terminal's columns; 0 = unknown
	verbose  bool
	now      func() time.Time
	interval time.Duration // between progress lines when not on a terminal

	// mu guards everything below.
	mu sync.Mutex
	// start is the first event's time: the build's start, as far as the screen knows.
	start time.Time
	// step and message are the step running and its last message.
	step, message string
	// done and total are the step's bytes so far and in all (total 0: no byte count yet).
	done, total int64
	// samples are recent (time, done) pairs of the step, for the rate.
	samples []sample
	// barShown: the terminal's current line holds the bar (no newline after it yet).
	barShown bool
	// lastDraw is when the bar was last drawn and drawnDone the count it showed (terminal);
	// lastLine is when the last line was written and finalLine whether the step's "all read"
	// line was (not a terminal).
	lastDraw, lastLine time.Time
	drawnDone          int64
	finalLine          bool
}

// sample is the bytes done at a time.
type sample struct {
	at   time.Time
	done int64
}

// Redraw and rate parameters.
const (
	redrawEvery    = 100 * time.Millisecond // at most 10 bar redraws a second
	rateWindow     = 5 * time.Second        // the rate is the mean over this much recent time
	minRateSpan    = 500 * time.Millisecond // shorter spans give no rate yet
	progressEvery  = 5 * time.Second        // between progress lines when not on a terminal
	stepColumn     = 10                     // width of the step name column
	countsColumns  = len("1023 MiB / 1023 MiB  100%  1023 MiB/s")
	minBarWidth    = 10
	maxBarWidth    = 40
	assumedColumns = 80
)

func newProgress(w io.Writer, tty bool, width int, verbose bool, now func() time.Time) *progress {
	return &progress{w: w, tty: tty, width: width, verbose: verbose, now: now, interval: progressEvery}
}

// event shows one build event.
func (p *progress) event(e wire.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.start.IsZero() {
		p.start = now
	}
	switch {
	case e.Step != "" && e.Step != p.step:
		p.endBarLocked()
		p.step, p.message = e.Step, e.Message
		p.done, p.total, p.samples, p.finalLine = 0, 0, p.samples[:0], false
		p.lineLocked(now, e.Message)
	case e.Message != "" && e.Message != p.message:
		p.endBarLocked()
		p.message = e.Message
		p.lineLocked(now, e.Message)
	}
	if e.Log != "" {
		if p.verbose {
			p.clearBarLocked()
			fmt.Fprintf(p.w, "%s %-*s | %s\n", p.elapsedLocked(now), stepColumn, p.step, strings.TrimRight(e.Log, "\r\n"))
			p.redrawLocked()
		}
		return
	}
	if e.Total <= 0 {
		return
	}
	p.done, p.total = e.Done, e.Total
	p.addSampleLocked(now)
	complete := p.done >= p.total
	if p.tty {
		changed := !p.barShown || p.done != p.drawnDone
		if changed && (complete || !p.barShown || now.Sub(p.lastDraw) >= redrawEvery) {
			p.drawLocked(now)
		}
		return
	}
	if complete && !p.finalLine || !complete && now.Sub(p.lastLine) >= p.interval {
		p.finalLine = complete
		p.lastLine = now
		p.lineLocked(now, p.countsLocked(now))
	}
}

// finish ends the display: the bar, if shown, stays as the last line.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endBarLocked()
}

// lineLocked writes a line for the current step: the elapsed time, the step, text.
func (p *progress) lineLocked(now time.Time, text string) {
	if p.lastLine.IsZero() || p.lastLine.Before(now) {
		p.lastLine = now
	}
	fmt.Fprintln(p.w, strings.TrimRight(fmt.Sprintf("%s %-*s %s", p.elapsedLocked(now), stepColumn, p.step, text), " "))
}

// elapsedLocked is the time since the build's start, as a fixed-width "[ 12.3s]".
func (p *progress) elapsedLocked(now time.Time) string {
	d := now.Sub(p.start)
	if d < time.Minute {
		return fmt.Sprintf("[%5.1fs]", d.Seconds())
	}
	return fmt.Sprintf("[%6s]", d.Truncate(time.Second).String())
}

// countsLocked writes "412 MiB / 1.1 GiB  37%  52 MiB/s" (no rate until there is one).
func (p *progress) countsLocked(now time.Time) string {
	pct := int64(100)
	if p.done < p.total {
		pct = p.done * 100 / p.total
	}
	s := fmt.Sprintf("%s / %s  %3d%%", units.FormatBytes(p.done), units.FormatBytes(p.total), pct)
	if r, ok := p.rateLocked(); ok {
		s += "  " + units.FormatBytes(int64(r)) + "/s"
	}
	return s
}

// addSampleLocked records the bytes done now, keeping one sample older than the window.
func (p *progress) addSampleLocked(now time.Time) {
	p.samples = append(p.samples, sample{now, p.done})
	drop := 0
	for drop < len(p.samples)-2 && !p.samples[drop+1].at.After(now.Add(-rateWindow)) {
		drop++
	}
	p.samples = append(p.samples[:0], p.samples[drop:]...)
}

// rateLocked is the bytes per second over the recent samples.
func (p *progress) rateLocked() (float64, bool) {
	if len(p.samples) < 2 {
		return 0, false
	}
	first, last := p.samples[0], p.samples[len(p.samples)-1]
	span := last.at.Sub(first.at)
	if span < minRateSpan {
		return 0, false
	}
	return float64(last.done-first.done) / span.Seconds(), true
}

// drawLocked (re)draws the bar on the terminal's current line.
func (p *progress) drawLocked(now time.Time) {
	cols := p.width
	if cols <= 0 {
		cols = assumedColumns
	}
	// step, space, [bar], space, counts at their widest; one column stays free so that the
	// terminal does not wrap. The bar's width does not change as the counts do.
	barWidth := min(max(cols-1-stepColumn-1-2-1-countsColumns, minBarWidth), maxBarWidth)
	fmt.Fprintf(p.w, "\r%-*s [%s] %s\x1b[K", stepColumn, p.step, bar(p.done, p.total, barWidth), p.countsLocked(now))
	p.barShown = true
	p.lastDraw, p.drawnDone = now, p.done
}

// redrawLocked draws the bar again after a line was written over it.
func (p *progress) redrawLocked() {
	if p.tty && p.total > 0 && !p.barShown {
		p.drawLocked(p.now())
	}
}

// clearBarLocked erases the bar from the terminal's current line.
func (p *progress) clearBarLocked() {
	if p.barShown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.barShown = false
	}
}

// endBarLocked leaves the bar, with the latest counts, as a line of its own.
func (p *progress) endBarLocked() {
	if p.barShown {
		if p.drawnDone != p.done {
			p.drawLocked(p.now())
		}
		fmt.Fprintln(p.w)
		p.barShown = false
	}
}

// bar draws done/total as width characters: "=====>    ", all '=' when complete.
func bar(done, total int64, width int) string {
	if total <= 0 || width <= 0 {
		return strings.Repeat(" ", max(width, 0))
	}
	done = min(max(done, 0), total)
	filled := int(done * int64(width) / total)
	if filled >= width {
		return strings.Repeat("=", width)
	}
	if filled == 0 {
		return ">" + strings.Repeat(" ", width-1)
	}
	return strings.Repeat("=", filled-1) + ">" + strings.Repeat(" ", width-filled)
}
