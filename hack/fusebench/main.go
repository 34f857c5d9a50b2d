// Command fusebench measures the kernel path of an export: fio 4K random reads and writes at
// queue depth 32 on the loop device of an exported pool volume, against a loop device on a raw
// file in the same run, with the CPU time of this process (which serves the export) per I/O and,
// optionally, a CPU profile of the serving side.
//
// It is a measuring tool for issue 12 (the export's request loop), kept here until the bench
// programs settle in bench/. Run as root:
//
//	go run ./hack/fusebench -dir /var/tmp/fb -rounds 4 -slice 15s -cpuprofile /tmp/fb
//
// Each workload alternates raw and store slices (raw first in even rounds), as make bench does;
// the ratio is the median of the per-round IOPS ratios.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/blockstore/export/filedisk"
)

const mib = 1 << 20

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fusebench:", err)
		os.Exit(1)
	}
}

type config struct {
	dir        string
	size       int64
	rounds     int
	slice      time.Duration
	rw         []string
	qd         int
	bs         int
	cpuprofile string
	perf       string
	perfstat   bool
	disk       string // "pool" or "file"
}

func run() error {
	var c config
	var rw string
	flag.StringVar(&c.dir, "dir", "/var/tmp/fusebench", "scratch directory (pool file, raw file, export state)")
	flag.Int64Var(&c.size, "size", 1<<30, "volume and raw file size in bytes")
	flag.IntVar(&c.rounds, "rounds", 4, "alternating rounds per workload")
	flag.DurationVar(&c.slice, "slice", 15*time.Second, "fio runtime per side per round")
	flag.StringVar(&rw, "rw", "randread,randwrite", "fio workloads")
	flag.IntVar(&c.qd, "qd", 32, "fio iodepth")
	flag.IntVar(&c.bs, "bs", 4096, "fio block size")
	flag.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of the store side per workload to PREFIX-<rw>.pprof")
	flag.StringVar(&c.perf, "perf", "", "record the whole system with perf (cpu-clock, call graphs) during the first store slice per workload to PREFIX-<rw>.perf")
	flag.BoolVar(&c.perfstat, "perfstat", false, "count this process's system calls (perf stat, syscall tracepoints) during the first store slice per workload, and print them per I/O")
	flag.StringVar(&c.disk, "disk", "pool", "what the export serves: pool (a thick DirectIO pool volume), file (an O_DIRECT file) or zero (no I/O: the cost of the kernel path alone)")
	flag.Parse()
	c.rw = strings.Split(rw, ",")

	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	rawPath := filepath.Join(c.dir, "base.raw")
	if err := fill(rawPath, c.size); err != nil {
		return err
	}
	defer os.Remove(rawPath)
	rawDev, err := losetup(rawPath)
	if err != nil {
		return err
	}
	defer exec.Command("losetup", "-d", rawDev).Run()

	var disk export.Disk
	switch c.disk {
	case "pool":
		path := filepath.Join(c.dir, "bench.pool")
		os.Remove(path)
		defer os.Remove(path)
		p, err := blockstore.Create(path, blockstore.Options{Size: 2 * c.size, DirectIO: true, Preallocate: true})
		if err != nil {
			return err
		}
		defer p.Close()
		info, err := p.CreateVolume("bench", c.size)
		if err != nil {
			return err
		}
		vol, err := p.Volume(info.ID)
		if err != nil {
			return err
		}
		buf := make([]byte, mib)
		for i := range buf {
			buf[i] = byte(i*7 + 1)
		}
		for off := int64(0); off < c.size; off += mib {
			if _, err := vol.WriteAt(buf, off); err != nil {
				return err
			}
		}
		if err := p.Flush(); err != nil {
			return err
		}
		disk = vol
	case "file":
		path := filepath.Join(c.dir, "bench.file")
		if err := fill(path, c.size); err != nil {
			return err
		}
		defer os.Remove(path)
		fd, err := filedisk.Open(path, syscall.O_DIRECT)
		if err != nil {
			return err
		}
		defer fd.Close()
		disk = fd
	case "zero":
		disk = zeroDisk{size: c.size}
	default:
		return fmt.Errorf("-disk %q: want pool, file or zero", c.disk)
	}

	exp, err := export.Detect(export.Options{StateDir: filepath.Join(c.dir, "export")})
	if err != nil {
		return err
	}
	dev, err := exp.Export("fusebench", disk)
	if err != nil {
		return err
	}
	defer dev.Close()
	fmt.Printf("raw %s, store %s (%s, %s)\n", rawDev, dev.Path(), exp.Name(), c.disk)

	for _, rw := range c.rw {
		var raw, store side
		var ratios []float64
		var prof *os.File
		if c.cpuprofile != "" {
			if prof, err = os.Create(c.cpuprofile + "-" + rw + ".pprof"); err != nil {
				return err
			}
		}
		for r := range c.rounds {
			order := []bool{false, true}
			if r%2 == 1 {
				order = []bool{true, false}
			}
			var iops [2]float64
			for _, isStore := range order {
				path, s := rawDev, &raw
				if isStore {
					path, s = dev.Path(), &store
					if prof != nil {
						if err := pprof.StartCPUProfile(prof); err != nil {
							return err
						}
					}
				}
				var rec *exec.Cmd
				if isStore && r == 0 && c.perf != "" {
					rec = exec.Command("perf", "record", "-q", "-e", "cpu-clock", "-a", "-g", "-o", c.perf+"-"+rw+".perf")
					if err := rec.Start(); err != nil {
						return fmt.Errorf("perf record: %w", err)
					}
				}
				var stat *exec.Cmd
				statOut := filepath.Join(c.dir, "perfstat.csv")
				if isStore && r == 0 && c.perfstat {
					stat = exec.Command("perf", "stat", "-x", ",", "-o", statOut, "-p", strconv.Itoa(os.Getpid()), "-e", strings.Join(statEvents, ","))
					if err := stat.Start(); err != nil {
						return fmt.Errorf("perf stat: %w", err)
					}
				}
				res, use, err := runFIO(path, rw, c)
				if rec != nil {
					rec.Process.Signal(syscall.SIGINT)
					rec.Wait()
				}
				if stat != nil {
					stat.Process.Signal(syscall.SIGINT)
					stat.Wait()
					if err == nil {
						printStat(statOut, rw, res.ios)
					}
				}
				if isStore && prof != nil {
					pprof.StopCPUProfile()
					// One profile per workload: later rounds append to a fresh file each time
					// would be lost, so profile the first store slice only.
					prof.Close()
					prof = nil
				}
				if err != nil {
					return err
				}
				s.add(res, use)
				iops[b2i(isStore)] = res.iops()
			}
			ratios = append(ratios, iops[1]/iops[0])
		}
		slices.Sort(ratios)
		med := ratios[len(ratios)/2]
		if len(ratios)%2 == 0 {
			med = (ratios[len(ratios)/2-1] + ratios[len(ratios)/2]) / 2
		}
		fmt.Printf("%s bs=%d qd=%d: raw %.0f IOPS, store %.0f IOPS, ratio %.2f× (rounds %.2f–%.2f); CPU/IO this process raw %.1f µs, store %.1f µs; context switches/IO store %.2f; max clat raw %s store %s\n",
			rw, c.bs, c.qd, raw.iops(), store.iops(), med, ratios[0], ratios[len(ratios)-1],
			raw.cpuPerIO(), store.cpuPerIO(), store.csPerIO(), raw.maxClat, store.maxClat)
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// side sums the slices of one side.
type side struct {
	ios     int64
	dur     time.Duration
	use     usage
	maxClat time.Duration
}

func (s *side) add(r fioRes, use usage) {
	s.ios += r.ios
	s.dur += r.dur
	s.use.cpu += use.cpu
	s.use.cs += use.cs
	s.maxClat = max(s.maxClat, r.maxClat)
}

func (s side) iops() float64 { return float64(s.ios) / s.dur.Seconds() }

func (s side) cpuPerIO() float64 {
	if s.ios == 0 {
		return 0
	}
	return float64(s.use.cpu.Nanoseconds()) / float64(s.ios) / 1e3
}

func (s side) csPerIO() float64 {
	if s.ios == 0 {
		return 0
	}
	return float64(s.use.cs) / float64(s.ios)
}

type fioRes struct {
	ios     int64
	dur     time.Duration
	maxClat time.Duration
}

func (r fioRes) iops() float64 { return float64(r.ios) / r.dur.Seconds() }

// runFIO runs one slice on path and returns fio's totals and the CPU time this process used
// meanwhile.
func runFIO(path, rw string, c config) (fioRes, usage, error) {
	args := []string{"--name=bench", "--filename=" + path, "--ioengine=libaio", "--direct=1",
		"--rw=" + rw, "--bs=" + strconv.Itoa(c.bs), "--iodepth=" + strconv.Itoa(c.qd), "--numjobs=1",
		"--output-format=json", "--time_based", fmt.Sprintf("--runtime=%dms", c.slice.Milliseconds()),
		"--norandommap", "--randrepeat=0"}
	u0 := selfUsage()
	out, err := exec.Command("fio", args...).Output()
	use := selfUsage().sub(u0)
	if err != nil {
		return fioRes{}, usage{}, fmt.Errorf("fio %s: %w", strings.Join(args, " "), err)
	}
	i := strings.Index(string(out), "{")
	if i < 0 {
		return fioRes{}, usage{}, fmt.Errorf("fio: no JSON: %q", out)
	}
	var o struct {
		Jobs []struct {
			Error       int `json:"error"`
			Read, Write struct {
				TotalIOs int64 `json:"total_ios"`
				Runtime  int64 `json:"runtime"`
				ClatNS   struct {
					Max float64 `json:"max"`
				} `json:"clat_ns"`
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out[i:], &o); err != nil {
		return fioRes{}, usage{}, err
	}
	if len(o.Jobs) != 1 || o.Jobs[0].Error != 0 {
		return fioRes{}, usage{}, fmt.Errorf("fio: job failed: %s", out)
	}
	d := o.Jobs[0].Read
	if strings.Contains(rw, "write") {
		d = o.Jobs[0].Write
	}
	return fioRes{ios: d.TotalIOs, dur: time.Duration(d.Runtime) * time.Millisecond, maxClat: time.Duration(d.ClatNS.Max)}, use, nil
}

// statEvents are the system calls -perfstat counts: the request loop's (/dev/fuse reads,
// replies, waits) and the pool's I/O (synchronous or AIO).
var statEvents = []string{"syscalls:sys_enter_read", "syscalls:sys_enter_writev", "syscalls:sys_enter_write",
	"syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_pread64", "syscalls:sys_enter_pwrite64",
	"syscalls:sys_enter_io_submit", "syscalls:sys_enter_io_getevents", "syscalls:sys_enter_futex", "context-switches"}

// printStat prints the counts of perf stat's CSV output per I/O.
func printStat(path, rw string, ios int64) {
	b, err := os.ReadFile(path)
	if err != nil || ios == 0 {
		fmt.Fprintln(os.Stderr, "fusebench: perf stat:", err)
		return
	}
	var parts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		n, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", strings.TrimPrefix(f[2], "syscalls:sys_enter_"), n/float64(ios)))
	}
	fmt.Printf("%s: per I/O of the first store slice: %s\n", rw, strings.Join(parts, ", "))
}

// usage is what this process used so far: CPU time, and context switches (voluntary and not).
type usage struct {
	cpu time.Duration
	cs  int64
}

func (u usage) sub(v usage) usage { return usage{cpu: u.cpu - v.cpu, cs: u.cs - v.cs} }

func selfUsage() usage {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return usage{}
	}
	return usage{cpu: time.Duration(u.Utime.Nano() + u.Stime.Nano()), cs: u.Nvcsw + u.Nivcsw}
}

// fill writes a file of size bytes of non-zero data (so nothing reads as a hole).
func fill(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, mib)
	for i := range buf {
		buf[i] = byte(i*13 + 5)
	}
	for off := int64(0); off < size; off += mib {
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func losetup(path string) (string, error) {
	out, err := exec.Command("losetup", "--direct-io=on", "--sector-size", "4096", "--find", "--show", path).Output()
	if err != nil {
		return "", fmt.Errorf("losetup: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// zeroDisk reads zeros and drops writes: the export's kernel path with no disk I/O behind it.
type zeroDisk struct{ size int64 }

func (zeroDisk) ReadAt(p []byte, off int64) (int, error)  { clear(p); return len(p), nil }
func (zeroDisk) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (zeroDisk) Flush() error                             { return nil }
func (zeroDisk) Discard(off, n int64) error               { return nil }
func (d zeroDisk) Size() int64                            { return d.size }
