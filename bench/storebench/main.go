// Command storebench measures the block store against a raw file and qcow2 on the same disk,
// in one run, and prints a Markdown report (BENCHMARKS.md with -write).
//
// Every throughput is reported next to a baseline measured in the same run on the same disk:
// a raw file opened with O_DIRECT, accessed with pread/pwrite, while the pool is opened with
// Options{DirectIO: true}, so neither goes through the page cache. Store and baseline runs
// alternate as A B B A A B B A to cancel drift, and each ratio is the median of the rounds. Latencies of snapshot, clone and revert are reported
// next to the latency of a bare fdatasync measured in between them.
//
// Usage (from the module root; hack/bench.sh and `make bench` run it):
//
//	go run ./bench/storebench [-quick] [-write] [-dir /var/tmp]
//
// The default run takes about 12 minutes plus the Check memory section (-only check: about
// 10 minutes on a loaded 2-CPU machine, most of it the old Check; it needs git history and the
// Go toolchain to build the old Check); -quick about 2 minutes. Sections 6 to 8 (csi, kdev,
// ext4) need root, fio, mkfs.ext4, losetup, /dev/fuse and loop devices; whatever they set up
// (loop devices, mounts, exports) is torn down on return, on errors and on a signal. Scratch files live in a
// temporary directory under -dir, removed at the end (also on Ctrl-C).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/internal/atomicfile"
)

// config holds the command-line settings.
type config struct {
	dir       string
	quick     bool
	write     bool
	out       string
	dur       time.Duration
	reps      int
	noQEMU    bool
	bsSweep   bool
	memGiB    int
	verbose   bool
	fillLeaf  int // 1 TiB volume: leaf regions given one block each
	rounds    int
	only      string
	cpuProf   string
	blkProf   string
	mtxProf   string
	checkGiB  int    // Check memory: GiB mapped
	checkBase string // Check memory: the commit of the old Check ("" finds it in git history)
}

// runs reports whether a section is part of this run (-only).
func (c config) runs(section string) bool {
	if c.only == "" {
		return true
	}
	for _, s := range strings.Split(c.only, ",") {
		if s == section {
			return true
		}
	}
	return false
}

// bench is one benchmark run.
type bench struct {
	config
	dir     string   // scratch directory of this run
	raw     *os.File // the raw-file baseline, O_DIRECT, prefilled
	rawPath string
	rawSize int64
	volSize int64
	log     io.Writer
	start   time.Time
	ctx     context.Context // ends on a signal
	undo    *undoStack      // kernel state to tear down (loop devices, mounts, exports)
}

func main() {
	var c config
	flag.StringVar(&c.dir, "dir", "/var/tmp", "directory for scratch files (a temporary directory is made and removed in it); its disk is the one measured")
	flag.BoolVar(&c.quick, "quick", false, "smoke run of about two minutes: 1 s per test, 4 KiB blocks only, fewer repetitions, smaller ext4 file")
	flag.BoolVar(&c.write, "write", false, "also write the report to -out")
	flag.StringVar(&c.out, "out", "BENCHMARKS.md", "file written with -write")
	flag.DurationVar(&c.dur, "duration", 0, "duration of each store-vs-raw comparison (half raw, half store); default 5s, 1s with -quick")
	flag.IntVar(&c.rounds, "rounds", 0, "rounds of alternating raw and store slices per comparison; default 4, 2 with -quick")
	flag.IntVar(&c.reps, "reps", 0, "repetitions of each snapshot/clone/revert latency measurement; default 50, 10 with -quick")
	flag.BoolVar(&c.noQEMU, "noqemu", false, "skip the qemu-img comparison")
	flag.IntVar(&c.memGiB, "memgib", 0, "GiB mapped by the larger pool of the memory goal (the smaller maps 1/16 of it, at least 256 MiB; the transient table at most 4 GiB); default 16, 1 with -quick")
	flag.IntVar(&c.fillLeaf, "fillleaves", 0, "1 TiB volume: 2 MiB regions given one 4 KiB block each; default 16384, 2048 with -quick")
	flag.BoolVar(&c.verbose, "v", true, "progress on stderr")
	flag.StringVar(&c.only, "only", "", "comma-separated sections to run: perf, thick, qemu, lat, snapread, mem, bs, csi, kdev, ext4, restart, check (default all; a partial report cannot be written, except -only check, which replaces its section of -out)")
	flag.IntVar(&c.checkGiB, "checkgib", 0, "GiB mapped by the pool of the Check memory measurement; default 64, 4 with -quick")
	flag.StringVar(&c.checkBase, "checkbase", "", "commit whose Check is measured as the old one (default: the parent of the commit that introduced CheckWith)")
	flag.StringVar(&c.cpuProf, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&c.blkProf, "blockprofile", "", "write a goroutine blocking profile of the whole run to this file")
	flag.StringVar(&c.mtxProf, "mutexprofile", "", "write a mutex contention profile of the whole run to this file")
	flag.Parse()
	c.bsSweep = !c.quick
	if c.dur == 0 {
		c.dur = 5 * time.Second
		if c.quick {
			c.dur = time.Second
		}
	}
	if c.rounds == 0 {
		c.rounds = 4
		if c.quick {
			c.rounds = 2
		}
	}
	if c.reps == 0 {
		c.reps = 50
		if c.quick {
			c.reps = 10
		}
	}
	if c.memGiB == 0 {
		c.memGiB = 16
		if c.quick {
			c.memGiB = 1
		}
	}
	if c.fillLeaf == 0 {
		c.fillLeaf = 16384
		if c.quick {
			c.fillLeaf = 2048
		}
	}
	if c.checkGiB == 0 {
		c.checkGiB = 64
		if c.quick {
			c.checkGiB = 4
		}
	}
	if c.only != "" && c.only != "check" && c.write {
		fmt.Fprintln(os.Stderr, "storebench: -write needs every section (or -only check); drop -only")
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "storebench:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp(c.dir, "dataimage-bench-")
	if err != nil {
		return err
	}
	// Remove the scratch directory on return and on a signal.
	undo := &undoStack{}
	done := make(chan struct{})
	defer func() {
		close(done)
		undo.runAll()
		os.RemoveAll(dir)
	}()
	go func() {
		select {
		case <-ctx.Done():
			undo.runAll()
			os.RemoveAll(dir)
			fmt.Fprintln(os.Stderr, "storebench: interrupted; scratch files removed")
			os.Exit(130)
		case <-done:
		}
	}()

	b := &bench{config: c, dir: dir, volSize: perfVolSize, rawSize: perfVolSize, start: time.Now(), log: io.Discard, ctx: ctx, undo: undo}
	if c.verbose {
		b.log = os.Stderr
	}
	rep := &report{cfg: c, started: b.start}
	rep.machine = machineInfo(dir)

	b.rawPath = filepath.Join(dir, "base.raw")
	b.logf("raw baseline: writing %d MiB to %s (O_DIRECT)", b.rawSize/mib, b.rawPath)
	b.raw, err = createRaw(b.rawPath, b.rawSize)
	if err != nil {
		return err
	}
	defer b.raw.Close()

	if c.cpuProf != "" {
		f, err := os.Create(c.cpuProf)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	if c.blkProf != "" {
		runtime.SetBlockProfileRate(1000)
		defer writeProfile("block", c.blkProf)
	}
	if c.mtxProf != "" {
		runtime.SetMutexProfileFraction(5)
		defer writeProfile("mutex", c.mtxProf)
	}

	if c.runs("perf") {
		b.logf("store vs raw, 4 KiB blocks")
		rows, meta, err := b.perf(perfOpts{bs: 4 * kib, qds: []int{1, 32}, full: true})
		if err != nil {
			return fmt.Errorf("store vs raw: %w", err)
		}
		rep.perf = rows
		rep.metas = append(rep.metas, meta)
		rep.bsRows = append(rep.bsRows, rows...)
	}

	if c.runs("thick") {
		b.logf("clone first writes on a thick pool (Preallocate: true)")
		rows, _, err := b.perf(perfOpts{bs: 4 * kib, qds: []int{1, 32}, thick: true})
		if err != nil {
			return fmt.Errorf("thick pool: %w", err)
		}
		rep.perf = insertAfterCOW(rep.perf, rows)
	}

	if !c.noQEMU && c.runs("qemu") {
		b.logf("qcow2 peer (qemu-img bench)")
		q, err := b.qemu()
		if err != nil {
			rep.qemuErr = err
			b.logf("  qemu-img: %v", err)
		}
		rep.qemu = q
	}

	if c.runs("lat") {
		b.logf("snapshot, clone and revert latency")
		lat, err := b.latency()
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		rep.lat = lat
	}

	if c.runs("snapread") {
		b.logf("readers of one volume while another is snapshotted, and alone")
		res, err := b.snapshotReaders()
		if err != nil {
			return fmt.Errorf("readers while snapshots are taken: %w", err)
		}
		rep.snapRead = res
	}

	if c.runs("mem") {
		b.logf("memory and metadata per GiB mapped")
		mem, err := b.memory()
		if err != nil {
			return fmt.Errorf("memory: %w", err)
		}
		rep.mem = mem
	}

	if c.bsSweep && c.runs("bs") {
		for _, bs := range []int{16 * kib, 64 * kib} {
			b.logf("block size %d KiB", bs/kib)
			rows, meta, err := b.perf(perfOpts{bs: bs, qds: []int{1}})
			if err != nil {
				return fmt.Errorf("block size %d: %w", bs, err)
			}
			rep.bsRows = append(rep.bsRows, rows...)
			rep.metas = append(rep.metas, meta)
		}
	}

	if c.runs("csi") {
		b.logf("CSI round trips (gRPC on a unix socket)")
		res, err := b.csiRoundTrips()
		if err != nil {
			return fmt.Errorf("csi: %w", err)
		}
		rep.csi = res
	}

	if c.runs("kdev") {
		b.logf("fio through the kernel block device (export) vs a loop device on a raw file")
		res, err := b.kernelDevice()
		if err != nil {
			return fmt.Errorf("fio on the exported device: %w", err)
		}
		rep.kdev = res
	}

	if c.runs("ext4") {
		b.logf("fio on ext4 in a clone vs ext4 on a loop device on a raw file")
		res, err := b.ext4Clone()
		if err != nil {
			return fmt.Errorf("ext4 in a clone: %w", err)
		}
		rep.ext4 = res
	}

	if c.runs("restart") {
		b.logf("fio on a published block volume across restarts of the data plane and the plugin")
		res, err := b.restarts()
		if err != nil {
			return fmt.Errorf("restarts: %w", err)
		}
		rep.restart = res
	}

	if c.runs("check") {
		b.logf("Check (fsck) memory on a pool with %d GiB mapped", c.checkGiB)
		res, err := b.checkMemory()
		if err != nil {
			return fmt.Errorf("check memory: %w", err)
		}
		rep.check = res
	}

	rep.elapsed = time.Since(b.start)
	if c.only == "check" {
		var section strings.Builder
		rep.checkSection(&section)
		fmt.Print(section.String())
		if c.write {
			if err := spliceCheckSection(c.out, section.String()); err != nil {
				return fmt.Errorf("write %s: %w", c.out, err)
			}
			b.logf("replaced the check section of %s", c.out)
		}
		return nil
	}
	md := rep.markdown()
	fmt.Print(md)
	if c.write {
		if err := atomicfile.WriteFile(c.out, []byte(md+keptPart(c.out)), 0o644); err != nil {
			return err
		}
		b.logf("wrote %s", c.out)
	}
	b.logf("done in %s", rep.elapsed.Round(time.Second))
	return nil
}

// imageMarker starts the data image part of the report file, written by
// bench/imagebench; rewriting the block store part keeps it.
const imageMarker = "<!-- imagebench:"

// keptPart returns the data image part of the report file at path ("" if none).
func keptPart(path string) string {
	old, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	i := strings.Index(string(old), imageMarker)
	if i < 0 {
		return ""
	}
	return "\n" + string(old[i:])
}

// writeProfile writes the named runtime/pprof profile to path.
func writeProfile(name, path string) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup(name).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "storebench:", err)
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "[%5.0fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func removeFile(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "storebench:", err)
	}
}

// cmdOutput runs a command and returns its trimmed output, or "" if it fails.
func cmdOutput(name string, args ...string) string {
	out, err := execCommand(name, args...)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}
