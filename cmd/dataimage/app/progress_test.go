package app

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// timedEvent is a build event at a time since the build's start.
type timedEvent struct {
	at time.Duration
	e  wire.Event
}

// buildEvents are the events of a build that restores 1 GiB in 16 seconds, 64 MiB a second,
// with a few engine log lines.
func buildEvents() []timedEvent {
	const total = 1 << 30
	evs := []timedEvent{
		{0, wire.Event{Step: "volume", Message: "creating a 32 GiB volume"}},
		{400 * time.Millisecond, wire.Event{Step: "filesystem", Message: "making an ext4 file system"}},
		{time.Second, wire.Event{Step: "restore", Message: "restoring 2 backups (1.0 GiB)", Total: total}},
	}
	for i := 1; i <= 16; i++ {
		at := time.Second + time.Duration(i)*time.Second
		if i == 9 {
			evs = append(evs, timedEvent{at, wire.Event{Step: "restore", Message: "restoring pg_wal.tar", Done: int64(i) << 26, Total: total}})
			evs = append(evs, timedEvent{at, wire.Event{Step: "restore", Log: "tar: pg_wal.tar: 12 members\n"}})
			continue
		}
		evs = append(evs, timedEvent{at, wire.Event{Step: "restore", Done: int64(i) << 26, Total: total}})
	}
	// The end of the input may be reported twice (the last file's end, the restore's end).
	evs = append(evs, timedEvent{17 * time.Second, wire.Event{Step: "restore", Done: total, Total: total}})
	evs = append(evs,
		timedEvent{17500 * time.Millisecond, wire.Event{Step: "start", Message: "starting postgres 15.18 (recovery)"}},
		timedEvent{18 * time.Second, wire.Event{Step: "start", Log: "LOG:  redo done at 0/2000100"}},
		timedEvent{19 * time.Second, wire.Event{Step: "start", Log: "LOG:  database system is ready to accept connections"}},
		timedEvent{19 * time.Second, wire.Event{Step: "checkpoint"}},
		timedEvent{20 * time.Second, wire.Event{Step: "stop", Message: "stopping the server"}},
		timedEvent{61 * time.Second, wire.Event{Step: "freeze", Message: "freezing the volume as image sales-2024"}},
	)
	return evs
}

// feed runs events through a progress display and returns what it wrote, with the terminal's
// control sequences made visible.
func feed(tty, verbose bool, width int, evs []timedEvent) string {
	var buf bytes.Buffer
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	start := now
	p := newProgress(&buf, tty, width, verbose, func() time.Time { return now })
	for _, te := range evs {
		now = start.Add(te.at)
		p.event(te.e)
	}
	p.finish()
	return strings.NewReplacer("\r", "<CR>", "\x1b[K", "<EL>").Replace(buf.String())
}

func TestProgressTerminal(t *testing.T) {
	out := feed(true, false, 80, buildEvents())
	golden(t, "progress-tty.golden", []byte(out))

	lines := strings.Split(out, "\n")
	for _, l := range lines {
		// Every bar drawn fits 80 columns minus one, whatever the counts.
		for _, draw := range strings.Split(l, "<CR>") {
			draw = strings.TrimSuffix(draw, "<EL>")
			if len(draw) > 79 {
				t.Errorf("line of %d columns on an 80-column terminal: %q", len(draw), draw)
			}
		}
	}
	if strings.Contains(out, "LOG:") || strings.Contains(out, "12 members") {
		t.Errorf("engine log lines shown without -v:\n%s", out)
	}
	// The bar is redrawn in place (one line for all of restore's counts) and kept when the
	// step ends, complete.
	if n := strings.Count(out, "<CR>restore    ["); n != 17 {
		t.Errorf("restore bar drawn %d times, want 17 (once for each count)", n)
	}
	if !strings.Contains(out, "<CR>restore    [============================] 1 GiB / 1 GiB  100%  64 MiB/s<EL>\n[ 17.5s] start") {
		t.Errorf("complete bar not left on a line of its own:\n%s", out)
	}
}

func TestProgressTerminalVerbose(t *testing.T) {
	out := feed(true, true, 80, buildEvents())
	golden(t, "progress-tty-verbose.golden", []byte(out))
	for _, want := range []string{
		"<CR><EL>[ 10.0s] restore    | tar: pg_wal.tar: 12 members\n", // the bar cleared, the line, the bar again
		"[ 18.0s] start      | LOG:  redo done at 0/2000100\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verbose output lacks %q:\n%s", want, out)
		}
	}
}

func TestProgressLines(t *testing.T) {
	out := feed(false, false, 0, buildEvents())
	golden(t, "progress-lines.golden", []byte(out))
	if strings.ContainsAny(out, "\r\x1b") || strings.Contains(out, "<CR>") {
		t.Errorf("control characters in output for a non-terminal:\n%q", out)
	}
	want := []string{
		"[  0.0s] volume     creating a 32 GiB volume",
		"[  0.4s] filesystem making an ext4 file system",
		"[  1.0s] restore    restoring 2 backups (1.0 GiB)",
		"[  6.0s] restore    320 MiB / 1 GiB   31%  64 MiB/s",
		"[ 10.0s] restore    restoring pg_wal.tar",
		"[ 15.0s] restore    896 MiB / 1 GiB   87%  64 MiB/s",
		"[ 17.0s] restore    1 GiB / 1 GiB  100%  64 MiB/s",
		"[ 17.5s] start      starting postgres 15.18 (recovery)",
		"[ 19.0s] checkpoint",
		"[ 20.0s] stop       stopping the server",
		"[  1m1s] freeze     freezing the volume as image sales-2024",
		"",
	}
	if got := strings.Split(out, "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got lines:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
}

func TestProgressLinesVerbose(t *testing.T) {
	out := feed(false, true, 0, buildEvents())
	for _, want := range []string{
		"[ 10.0s] restore    | tar: pg_wal.tar: 12 members\n",
		"[ 19.0s] start      | LOG:  database system is ready to accept connections\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verbose output lacks %q:\n%s", want, out)
		}
	}
}

func TestProgressRate(t *testing.T) {
	// A rate needs half a second of samples; then it is the mean over the last five seconds.
	var buf bytes.Buffer
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	p := newProgress(&buf, false, 0, false, func() time.Time { return now })
	p.event(wire.Event{Step: "restore", Total: 100 << 20})
	now = now.Add(100 * time.Millisecond)
	p.event(wire.Event{Step: "restore", Done: 1 << 20, Total: 100 << 20})
	if _, ok := p.rateLocked(); ok {
		t.Errorf("a rate after 100ms of samples")
	}
	// 10 seconds at 1 MiB/s, then 5 seconds at 4 MiB/s: the rate forgets the slow start.
	done := int64(1 << 20)
	for range 10 {
		now = now.Add(time.Second)
		done += 1 << 20
		p.event(wire.Event{Step: "restore", Done: done, Total: 100 << 20})
	}
	if r, ok := p.rateLocked(); !ok || r != 1<<20 {
		t.Errorf("rate at 1 MiB/s = %v, %v", r, ok)
	}
	for range 5 {
		now = now.Add(time.Second)
		done += 4 << 20
		p.event(wire.Event{Step: "restore", Done: done, Total: 100 << 20})
	}
	if r, ok := p.rateLocked(); !ok || r != 4<<20 {
		t.Errorf("rate at 4 MiB/s = %v MiB/s, %v", r/(1<<20), ok)
	}
	if len(p.samples) > 7 {
		t.Errorf("%d samples kept, want those of the last 5 seconds and one more", len(p.samples))
	}
}

func TestBar(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		width       int
		want        string
	}{
		{0, 100, 10, ">         "},
		{9, 100, 10, ">         "},
		{10, 100, 10, ">         "},
		{11, 100, 10, ">         "},
		{20, 100, 10, "=>        "},
		{37, 100, 10, "==>       "},
		{99, 100, 10, "========> "},
		{100, 100, 10, "=========="},
		{150, 100, 10, "=========="},
		{-5, 100, 10, ">         "},
		{5, 0, 4, "    "},
	} {
		if got := bar(tc.done, tc.total, tc.width); got != tc.want {
			t.Errorf("bar(%d, %d, %d) = %q, want %q", tc.done, tc.total, tc.width, got, tc.want)
		}
		if got := bar(tc.done, tc.total, tc.width); len(got) != tc.width {
			t.Errorf("bar(%d, %d, %d) is %d wide", tc.done, tc.total, tc.width, len(got))
		}
	}
	_ = fmt.Sprint()
}
