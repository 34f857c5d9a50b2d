package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/internal/atomicfile"
	"github.com/dataimage/dataimage/internal/units"
)

// The Check memory measurement (section "check"): peak resident memory of Check on a pool with
// many GiB mapped, the streaming Check of this tree against the Check before it (one map of
// every used block), each in a process of its own (checkchild).
//
// Mapping 64 GiB for real would take 64 GiB of disk and minutes of writes. Check never reads
// data blocks, only the superblock, catalog, tree nodes and refcount pages, so the pool is
// built on a file that stores only what is not zeros (zeroFile: a write of zeros punches a
// hole): the volumes are written with zeros, every mapped block is a real block of the pool
// with its refcount, its tree entries and its nodes, and the disk holds only the metadata.
// The trees are realistic: an image volume written whole, a snapshot of it, and two clones
// that each rewrite 1 MiB every few MiB, which copies leaves and makes the blocks those leaves
// share referenced twice.

// checkRun is one Check measured in a child process.
type checkRun struct {
	name    string
	build   string // "this tree" or the old commit
	mode    string // exclusive or readonly
	budget  int64  // CheckOptions.MemoryBytes (0: default)
	res     childResult
	err     error
	skipped string // why it did not run
}

// childResult is checkchild's output.
type childResult struct {
	RSSOpen    int64
	Peak       int64
	Seconds    float64
	CPUSeconds float64
	Passes     int
	Nodes      uint64
	DataBlocks uint64
	Used       uint64
	OK         bool
	Err        string
}

type checkResult struct {
	mapped     int64 // distinct bytes mapped (blocks with data)
	logical    int64 // bytes mapped summed over volumes and the snapshot
	poolBytes  int64
	diskBytes  int64 // allocated on disk for the pool file
	build      time.Duration
	oldCommit  string
	commitNote string
	loadavg    string // /proc/loadavg when the Checks ran
	runs       []checkRun
}

// checkMemory builds the pool and measures each Check.
func (b *bench) checkMemory() (*checkResult, error) {
	res := &checkResult{}
	gib64 := int64(b.checkGiB) * gib
	base, clone := gib64*3/4, gib64/8
	res.mapped, res.logical = base+2*clone, 3*base
	res.poolBytes = gib64 + gib64/4 + gib
	path := filepath.Join(b.dir, "check.pool")
	defer removeFile(path)
	start := time.Now()
	if err := b.buildCheckPool(path, res.poolBytes, base, clone); err != nil {
		return nil, fmt.Errorf("build the pool: %w", err)
	}
	res.build = time.Since(start)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err == nil {
		res.diskBytes = st.Blocks * 512
	}
	b.logf("  pool built in %s: %s mapped (%s over the volumes and the snapshot), %s on disk", roundDur(res.build), units.FormatBytes(res.mapped), units.FormatBytes(res.logical), units.FormatBytes(res.diskBytes))

	bin := filepath.Join(b.dir, "checkchild")
	newBin, oldBin := bin+"-new", bin+"-old"
	if out, err := execCommand("go", "build", "-o", newBin, "./bench/storebench/checkchild"); err != nil {
		return nil, fmt.Errorf("build checkchild: %v: %s", err, out)
	}
	oldErr := b.buildOldChild(res, oldBin)
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(la)); len(f) >= 3 {
			res.loadavg = strings.Join(f[:3], " ")
		}
	}

	res.runs = []checkRun{
		{name: "before: exclusive Check (a map of every used block)", build: "old", mode: "exclusive"},
		{name: "exclusive Check, default budget (64 MiB)", build: "new", mode: "exclusive"},
		{name: "read-only Check, default budget (64 MiB)", build: "new", mode: "readonly"},
		{name: "read-only Check, 8 MiB budget", build: "new", mode: "readonly", budget: 8 * mib},
	}
	for i := range res.runs {
		r := &res.runs[i]
		exe := newBin
		if r.build == "old" {
			if oldErr != nil {
				r.skipped = oldErr.Error()
				continue
			}
			exe = oldBin
		}
		b.logf("  %s", r.name)
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(b.ctx, exe, path, r.mode, strconv.FormatInt(r.budget, 10))
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			r.err = fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
			b.logf("    %v", r.err)
			continue
		}
		out := stdout.String()
		if err := json.Unmarshal([]byte(out), &r.res); err != nil {
			r.err = fmt.Errorf("checkchild output %q: %w", out, err)
			continue
		}
		if r.res.Err != "" || !r.res.OK {
			r.err = fmt.Errorf("check: ok=%v %s", r.res.OK, r.res.Err)
		}
		b.logf("    peak RSS %s (after Open %s), %s (CPU %s), %d passes, %d nodes, %d data blocks",
			units.FormatBytes(r.res.Peak), units.FormatBytes(r.res.RSSOpen), roundDur(secs(r.res.Seconds)), roundDur(secs(r.res.CPUSeconds)), r.res.Passes, r.res.Nodes, r.res.DataBlocks)
	}
	return res, nil
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// buildCheckPool maps base bytes into an image volume, snapshots it, and makes two clones that
// each rewrite clone bytes, 1 MiB at a time spread over the whole volume.
func (b *bench) buildCheckPool(path string, size, base, clone int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	p, err := blockstore.CreateOn(&zeroFile{f: f}, blockstore.Options{})
	if err != nil {
		return err
	}
	defer func() {
		if p != nil {
			p.Close()
		}
	}()
	vol, err := newVolume(p, "image", base)
	if err != nil {
		return err
	}
	zero := alignedBuf(mib)
	for done := int64(0); done < base; done += 4 * gib {
		n := min(4*gib, base-done)
		// Two writers (this machine's cores), 1 MiB sequential writes each.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for w := range int64(2) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for off := done + w*mib; off < done+n && errs[w] == nil; off += 2 * mib {
					_, errs[w] = vol.WriteAt(zero, off)
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("write the image: %w", err)
		}
		if err := p.Flush(); err != nil {
			return err
		}
		b.logf("  image: %s of %s mapped", units.FormatBytes(done+n), units.FormatBytes(base))
	}
	snap, err := p.CreateSnapshot(vol.ID(), "image")
	if err != nil {
		return err
	}
	writes := clone / mib
	stride := base / writes / mib * mib
	for c := range int64(2) {
		info, err := p.Clone(snap.ID, fmt.Sprintf("clone-%d", c), 0)
		if err != nil {
			return err
		}
		cv, err := p.Volume(info.ID)
		if err != nil {
			return err
		}
		for i := range writes {
			if _, err := cv.WriteAt(zero, i*stride+c*stride/2/mib*mib); err != nil {
				return fmt.Errorf("write clone %d: %w", c, err)
			}
		}
		if err := p.Flush(); err != nil {
			return err
		}
		b.logf("  clone %d: %s rewritten, 1 MiB every %s", c, units.FormatBytes(clone), units.FormatBytes(stride))
	}
	err = p.Close()
	p = nil
	return err
}

// buildOldChild builds checkchild from the commit before the streaming Check: the parent of
// the first commit whose blockstore/check.go defines CheckWith (-checkbase overrides).
func (b *bench) buildOldChild(res *checkResult, bin string) error {
	commit := b.checkBase
	if commit == "" {
		out, err := execCommand("git", "log", "--format=%H", "-S", "func (p *Pool) CheckWith(", "--", "blockstore/check.go")
		lines := strings.Fields(out)
		if err != nil || len(lines) == 0 {
			return fmt.Errorf("cannot find the commit that introduced CheckWith in git history (%v); pass -checkbase", err)
		}
		commit = lines[len(lines)-1] + "^"
	}
	full, err := execCommand("git", "rev-parse", "--verify", commit+"^{commit}")
	if err != nil {
		return fmt.Errorf("git rev-parse %s: %v", commit, err)
	}
	res.oldCommit = strings.TrimSpace(full)
	if subj, err := execCommand("git", "log", "-1", "--format=%s", res.oldCommit); err == nil {
		res.commitNote = strings.TrimSpace(subj)
	}
	src := filepath.Join(b.dir, "old-src")
	if err := os.Mkdir(src, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(src)
	archive := exec.Command("git", "archive", "--format=tar", res.oldCommit)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return err
	}
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		return err
	}
	if err := archive.Run(); err != nil {
		return fmt.Errorf("git archive %s: %w", res.oldCommit, err)
	}
	if err := untar.Wait(); err != nil {
		return fmt.Errorf("untar %s: %w", res.oldCommit, err)
	}
	// The same child program, built against the old block store.
	dst := filepath.Join(src, "bench/storebench/checkchild")
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	for _, name := range []string{"main.go", "check_old.go"} {
		data, err := os.ReadFile(filepath.Join("bench/storebench/checkchild", name))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, name), data, 0o600); err != nil {
			return err
		}
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-tags", "oldcheck", "-o", abs, "./bench/storebench/checkchild")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the old checkchild at %s: %v: %s", res.oldCommit, err, out)
	}
	return nil
}

// zeroFile is a blockstore.File on which a write of nothing but zeros punches a hole instead
// of writing: it reads back the same, and the disk keeps only what is not zeros.
type zeroFile struct{ f *os.File }

var zeros = make([]byte, mib)

func isZeros(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

func (z *zeroFile) ReadAt(p []byte, off int64) (int, error) { return z.f.ReadAt(p, off) }

func (z *zeroFile) WriteAt(p []byte, off int64) (int, error) {
	if !isZeros(p) {
		return z.f.WriteAt(p, off)
	}
	if err := z.PunchHole(off, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (z *zeroFile) Sync() error { return unix.Fdatasync(int(z.f.Fd())) }

func (z *zeroFile) PunchHole(off, length int64) error {
	return unix.Fallocate(int(z.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (z *zeroFile) Size() (int64, error) {
	fi, err := z.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (z *zeroFile) Close() error { return z.f.Close() }

var _ blockstore.File = (*zeroFile)(nil)

// ---- the report section ----

const (
	checkBegin = "<!-- check section: begin -->"
	checkEnd   = "<!-- check section: end -->"
)

func (r *report) checkSection(w0 *strings.Builder) {
	c := r.check
	if c == nil {
		return
	}
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	w("%s\n## Check (fsck): peak memory on a pool with %s mapped\n\n", checkBegin, units.FormatBytes(c.mapped))
	w("**Reproduce:** `go run ./bench/storebench -only check` prints this section; with `-write` it replaces it in BENCHMARKS.md (the rest of the file stays); a full `make bench` measures it too. `-checkgib N` sets what is mapped (default 64).\n\n")
	w("A pool of 4 KiB blocks (a sparse file of %s) holds an image volume with %s written, a snapshot of it, and two clones of the snapshot that each rewrite %s (1 MiB every few MiB, which copies the leaves they touch and leaves the other blocks of those leaves referenced twice): %s of distinct blocks mapped, %s over the volumes and the snapshot. ",
		units.FormatBytes(c.poolBytes), units.FormatBytes(c.mapped-c.mapped/4), units.FormatBytes(c.mapped/8), units.FormatBytes(c.mapped), units.FormatBytes(c.logical))
	w("Check reads tree nodes, catalog and refcount pages but never data, so the pool was written with zeros on a file that punches a hole for a write of zeros (`zeroFile` in bench/storebench/checkmem.go): every mapped block is a real pool block with its refcount, tree entries and nodes, and the disk held only the metadata (%s allocated). Building it took %s.\n\n", units.FormatBytes(c.diskBytes), roundDur(c.build))
	w("Each Check runs in a process of its own (`checkchild`): it opens the pool with default options, returns freed memory to the OS, resets the peak resident set size (`echo 5 > /proc/self/clear_refs`), runs the Check, and reads the peak (`VmHWM` in /proc/self/status). **During Check** is that peak minus the resident set right before the Check. ")
	if c.oldCommit != "" {
		w("*Before* is the same program built with `-tags oldcheck` from commit %s (%q), the parent of the commit that made Check stream its recount, whose exclusive Check counted references in a map of every used block.\n\n", c.oldCommit[:min(12, len(c.oldCommit))], c.commitNote)
	} else {
		w("\n\n")
	}
	w("| Check | peak RSS | RSS after Open | during Check | passes | CPU time | wall time | nodes | data blocks |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, run := range c.runs {
		switch {
		case run.skipped != "":
			w("| %s | not measured: %s | | | | | | | |\n", run.name, run.skipped)
		case run.err != nil && run.res.Peak == 0:
			w("| %s | failed: %v | | | | | | | |\n", run.name, run.err)
		default:
			note := ""
			if run.err != nil {
				note = fmt.Sprintf(" (**%v**)", run.err)
			}
			w("| %s%s | %s | %s | **%s** | %d | %s | %s | %d | %d |\n", run.name, note, fmtMiB(float64(run.res.Peak)), fmtMiB(float64(run.res.RSSOpen)),
				fmtMiB(float64(run.res.Peak-run.res.RSSOpen)), run.res.Passes, roundDur(secs(run.res.CPUSeconds)), roundDur(secs(run.res.Seconds)), run.res.Nodes, run.res.DataBlocks)
		}
	}
	w("\nCPU time is the child's user and system time during the Check; wall time depends on what else the machine ran (load average when the Checks started: %s, on %d CPUs).\n\n", c.loadavg, runtime.NumCPU())
	w("The old Check's memory grows with the blocks in use (a Go map entry per block); the streaming Check's with its budget (4 bytes per block of a window) plus one bit per block of the pool for the tree nodes a pass has reached, whatever is mapped. A smaller budget costs passes: each pass reads every tree node again.\n%s\n\n", checkEnd)
}

// spliceCheckSection replaces the check section of the report file at path with section (or
// inserts it before the analysis if the file has none) and writes the file atomically.
func spliceCheckSection(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(old)
	i, j := strings.Index(s, checkBegin), strings.Index(s, checkEnd)
	switch {
	case i >= 0 && j > i:
		s = s[:i] + strings.TrimSuffix(section, "\n\n") + s[j+len(checkEnd):]
	case i < 0 && j < 0:
		k := strings.Index(s, "## Analysis of misses")
		if k < 0 {
			return errors.New("no check section and no analysis section to put it before")
		}
		s = s[:k] + section + s[k:]
	default:
		return errors.New("a broken check section (one marker without the other)")
	}
	return atomicfile.WriteFile(path, []byte(s), 0o644)
}
