package main

// Helpers of the kernel-path sections (7 and 8): an undo stack for the kernel state they set up
// (loop devices, mounts, exports), loop devices and mounts through the usual tools, and fio runs
// parsed from its JSON output.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// undoStack holds the teardown of kernel state set up by the run, so that it is undone on
// every path: by the code that set it up (normal return and errors) and, on a signal, by the
// handler in run. Each entry runs at most once.
type undoStack struct {
	mu      sync.Mutex // guards entries and next; held while an entry runs
	entries map[int]undoEntry
	next    int
}

type undoEntry struct {
	what string
	fn   func() error
}

// push records fn, which undoes what; the returned function runs it (once) and returns its
// error.
func (u *undoStack) push(what string, fn func() error) func() error {
	u.mu.Lock()
	if u.entries == nil {
		u.entries = map[int]undoEntry{}
	}
	id := u.next
	u.next++
	u.entries[id] = undoEntry{what: what, fn: fn}
	u.mu.Unlock()
	return func() error {
		u.mu.Lock()
		defer u.mu.Unlock()
		e, ok := u.entries[id]
		if !ok {
			return nil
		}
		delete(u.entries, id)
		if err := e.fn(); err != nil {
			return fmt.Errorf("%s: %w", e.what, err)
		}
		return nil
	}
}

// runAll undoes everything still recorded, newest first, and reports failures on stderr.
func (u *undoStack) runAll() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for id := u.next - 1; id >= 0; id-- {
		e, ok := u.entries[id]
		if !ok {
			continue
		}
		delete(u.entries, id)
		if err := e.fn(); err != nil {
			fmt.Fprintf(os.Stderr, "storebench: clean up %s: %v\n", e.what, err)
		}
	}
}

// keep reports an undo error on stderr: cleanup paths that cannot return it.
func keep(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "storebench: clean up:", err)
	}
}

// run runs a command under the run's context (a signal kills it) and returns its output.
func (b *bench) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// rawLoop attaches a loop device to path the way the brief of the comparison says
// (direct I/O, 4096-byte sectors) and returns it with its undo.
func (b *bench) rawLoop(path string) (dev string, undo func() error, err error) {
	out, err := b.run("losetup", "--direct-io=on", "--sector-size", "4096", "--find", "--show", path)
	if err != nil {
		return "", nil, err
	}
	dev = strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", nil, fmt.Errorf("losetup printed %q", out)
	}
	if dio, err := os.ReadFile("/sys/block/" + strings.TrimPrefix(dev, "/dev/") + "/loop/dio"); err != nil || strings.TrimSpace(string(dio)) != "1" {
		keep(exec.Command("losetup", "-d", dev).Run())
		return "", nil, fmt.Errorf("%s: direct I/O is not in effect", dev)
	}
	return dev, b.undo.push("detach "+dev, func() error {
		_, err := execCommand("losetup", "-d", dev)
		return err
	}), nil
}

// mount mounts dev (ext4) at dir, which it creates, and returns the undo: unmount (retried
// while busy, e.g. right after a killed fio, then lazily) and remove dir.
func (b *bench) mount(dev, dir string) (func() error, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if _, err := b.run("mount", "-t", "ext4", dev, dir); err != nil {
		os.Remove(dir)
		return nil, err
	}
	return b.undo.push("unmount "+dir, func() error {
		var err error
		for range 20 {
			if _, err = execCommand("umount", dir); err == nil {
				return os.Remove(dir)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, lerr := execCommand("umount", "-l", dir); lerr != nil {
			return errors.Join(err, lerr)
		}
		return os.Remove(dir)
	}), nil
}

// fioJob is one fio run: a single job on a block device or a file.
type fioJob struct {
	file    string
	rw      string // randread, randwrite, read, write
	bs      int
	qd      int
	size    int64         // bytes of the file or device used (0: the whole device)
	runtime time.Duration // time_based run of this length; 0: once over size
}

// fioArgs returns the fio command line of the job.
func (j fioJob) args() []string {
	a := []string{"--name=bench", "--filename=" + j.file, "--ioengine=libaio", "--direct=1",
		"--rw=" + j.rw, "--bs=" + strconv.Itoa(j.bs), "--iodepth=" + strconv.Itoa(j.qd), "--numjobs=1",
		"--output-format=json"}
	if j.size > 0 {
		a = append(a, "--size="+strconv.FormatInt(j.size, 10))
	}
	if j.runtime > 0 {
		a = append(a, "--time_based", fmt.Sprintf("--runtime=%dms", j.runtime.Milliseconds()), "--norandommap", "--randrepeat=0")
	}
	return a
}

// cmdline is the command for the report, with the device or file named generically.
func (j fioJob) cmdline(name string) string {
	var parts []string
	for _, a := range j.args() {
		switch {
		case strings.HasPrefix(a, "--filename="):
			a = "--filename=" + name
		case strings.HasPrefix(a, "--runtime="):
			a = "--runtime=T"
		}
		parts = append(parts, a)
	}
	return "fio " + strings.Join(parts, " ")
}

// fioRes is what one fio run reported for its direction.
type fioRes struct {
	ios      int64
	bytes    int64
	dur      time.Duration // fio's own runtime of the job
	p50, p99 time.Duration // completion latency percentiles
}

func (r fioRes) iops() float64 { return float64(r.ios) / r.dur.Seconds() }
func (r fioRes) mbps() float64 { return float64(r.bytes) / r.dur.Seconds() / 1e6 }

// fioOutput is the part of fio's JSON output read here.
type fioOutput struct {
	Jobs []struct {
		Error    int    `json:"error"`
		TotalErr int    `json:"total_err"` // errors fio went on past (--continue_on_error)
		Read     fioDir `json:"read"`
		Write    fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	IOBytes  int64 `json:"io_bytes"`
	TotalIOs int64 `json:"total_ios"`
	Runtime  int64 `json:"runtime"` // ms
	ClatNS   struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
	// LatNS is the total latency (submission to completion); Max is the longest request.
	LatNS struct {
		Max float64 `json:"max"`
	} `json:"lat_ns"`
}

// fio runs the job and parses its report.
func (b *bench) fio(j fioJob) (fioRes, error) {
	out, err := b.run("fio", j.args()...)
	if err != nil {
		return fioRes{}, err
	}
	return parseFIO(out, strings.Contains(j.rw, "write"))
}

// parseFIO reads the direction's totals from fio's JSON output (which fio may precede with
// notes on stdout).
func parseFIO(out string, write bool) (fioRes, error) {
	o, err := decodeFIO(out)
	if err != nil {
		return fioRes{}, err
	}
	if e := o.Jobs[0].Error; e != 0 {
		return fioRes{}, fmt.Errorf("fio: job error %d", e)
	}
	d := o.Jobs[0].Read
	if write {
		d = o.Jobs[0].Write
	}
	if d.TotalIOs == 0 || d.Runtime == 0 {
		return fioRes{}, fmt.Errorf("fio: no I/O reported")
	}
	pct := func(k string) time.Duration { return time.Duration(d.ClatNS.Percentile[k]) }
	return fioRes{ios: d.TotalIOs, bytes: d.IOBytes, dur: time.Duration(d.Runtime) * time.Millisecond,
		p50: pct("50.000000"), p99: pct("99.000000")}, nil
}

// decodeFIO decodes fio's JSON output of one job (which fio may precede with notes on stdout).
func decodeFIO(out string) (fioOutput, error) {
	var o fioOutput
	i := strings.Index(out, "{")
	if i < 0 {
		return o, fmt.Errorf("fio: no JSON in output: %q", out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &o); err != nil {
		return o, fmt.Errorf("fio: parse JSON: %w", err)
	}
	if len(o.Jobs) != 1 {
		return o, fmt.Errorf("fio: %d jobs in output, want 1", len(o.Jobs))
	}
	return o, nil
}

// fioPair is a fio comparison of a store side with a raw side, in the alternating rounds of
// comparePair.
type fioPair struct {
	raw, store []fioRes // one per round
	ratios     []float64
}

func (p fioPair) ratio() float64 { return median(p.ratios) }

// sideRate is a side's total rate over its rounds.
func sideRate(rs []fioRes, mbps bool) float64 {
	var t fioRes
	for _, r := range rs {
		t.ios += r.ios
		t.bytes += r.bytes
		t.dur += r.dur
	}
	if mbps {
		return t.mbps()
	}
	return t.iops()
}

// medianLat is the median over a side's rounds of their p50 (or p99) latency.
func medianLat(rs []fioRes, p99 bool) time.Duration {
	var v []float64
	for _, r := range rs {
		if p99 {
			v = append(v, float64(r.p99))
		} else {
			v = append(v, float64(r.p50))
		}
	}
	return time.Duration(median(v))
}

// compareFIO alternates raw and store fio runs (A B B A ...), each of d/rounds. raw and store
// run one slice each and return its result.
func (b *bench) compareFIO(raw, store func(time.Duration) (fioRes, error), mbps bool) (fioPair, error) {
	var p fioPair
	slice := b.dur / time.Duration(b.rounds)
	rate := func(r fioRes) float64 {
		if mbps {
			return r.mbps()
		}
		return r.iops()
	}
	for i := range b.rounds {
		var rr, sr fioRes
		var err error
		if i%2 == 0 {
			if rr, err = raw(slice); err == nil {
				sr, err = store(slice)
			}
		} else {
			if sr, err = store(slice); err == nil {
				rr, err = raw(slice)
			}
		}
		if err != nil {
			return p, err
		}
		p.raw = append(p.raw, rr)
		p.store = append(p.store, sr)
		p.ratios = append(p.ratios, rate(sr)/rate(rr))
	}
	return p, nil
}
