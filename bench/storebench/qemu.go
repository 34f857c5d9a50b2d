package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// qemuRow is one qemu-img bench run.
type qemuRow struct {
	test    string // "4K read" or "4K first write"
	format  string // "raw" or "qcow2"
	cluster int    // qcow2 cluster size
	qd      int
	count   int
	secs    float64
	cmd     string
}

func (r qemuRow) iops() float64 { return float64(r.count) / r.secs }

type qemuResult struct {
	version string
	aio     string
	rows    []qemuRow
}

// qemuPrimeStep is the odd factor of the stride: offsets k·step mod size visit every
// step/prime-sized unit of a power-of-two-sized image exactly once before repeating, in a
// scattered order (qemu-img bench only does strided I/O).
const qemuPrimeStep = 104729

var completedRE = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

func execCommand(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// qemu runs qemu-img bench on the raw baseline file and on qcow2 overlays backed by it.
func (b *bench) qemu() (*qemuResult, error) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, fmt.Errorf("qemu-img not found (hack/install-deps.sh installs qemu-utils): %w", err)
	}
	res := &qemuResult{version: firstLine(cmdOutput("qemu-img", "--version")), aio: "native"}
	size := b.rawSize
	// bench runs one qemu-img bench and returns the row.
	bench := func(image, format string, write bool, qd, count int, step int64) (qemuRow, error) {
		args := []string{"bench", "-f", format, "-t", "none", "-i", res.aio, "-d", strconv.Itoa(qd),
			"-c", strconv.Itoa(count), "-s", "4096", "-S", strconv.FormatInt(step, 10)}
		if write {
			args = append(args, "-w", "--pattern=90")
		}
		args = append(args, image)
		out, err := execCommand("qemu-img", args...)
		if err != nil {
			return qemuRow{}, err
		}
		m := completedRE.FindStringSubmatch(out)
		if m == nil {
			return qemuRow{}, fmt.Errorf("qemu-img bench: no timing in output %q", out)
		}
		secs, _ := strconv.ParseFloat(m[1], 64)
		if secs <= 0 {
			secs = 1e-3
		}
		return qemuRow{qd: qd, count: count, secs: secs, format: format,
			cmd: "qemu-img " + strings.Join(args[:len(args)-1], " ") + " " + filepath.Base(image)}, nil
	}
	overlayN := 0
	overlay := func(cluster int) (string, error) {
		overlayN++
		path := filepath.Join(b.dir, fmt.Sprintf("overlay-%d.qcow2", overlayN))
		_, err := execCommand("qemu-img", "create", "-q", "-f", "qcow2", "-b", b.rawPath, "-F", "raw",
			"-o", fmt.Sprintf("cluster_size=%d", cluster), path)
		return path, err
	}
	// measure calibrates the count on a short run (on a fresh image from mk, if given), then
	// runs for about b.dur/2 (the time each side gets in a store-vs-raw comparison, times 2
	// halves), capped at maxCount I/Os.
	measure := func(test string, mk func() (string, error), format string, cluster int, write bool, qd int, step int64, maxCount int) error {
		img, err := mk()
		if err != nil {
			return err
		}
		calib := min(maxCount/8, 200*qd)
		cr, err := bench(img, format, write, qd, calib, step)
		if err != nil {
			return err
		}
		if img != b.rawPath {
			removeFile(img)
			if img, err = mk(); err != nil {
				return err
			}
			defer func() { removeFile(img) }()
		}
		// Short calibration runs under-estimate the rate (start-up), so rerun, on a fresh
		// image, while the run was much shorter than wanted.
		rate := cr.iops()
		var r qemuRow
		for attempt := 0; ; attempt++ {
			count := min(max(int(rate*b.dur.Seconds()), 1000), maxCount)
			if r, err = bench(img, format, write, qd, count, step); err != nil {
				return err
			}
			if r.secs >= b.dur.Seconds()/2 || count == maxCount || attempt == 2 {
				break
			}
			rate = r.iops()
			if img != b.rawPath {
				removeFile(img)
				if img, err = mk(); err != nil {
					return err
				}
			}
		}
		r.test, r.cluster = test, cluster
		res.rows = append(res.rows, r)
		b.logf("  %s %s cluster %d qd %d: %.0f IOPS (%d I/Os in %.2f s)", format, test, cluster, qd, r.iops(), r.count, r.secs)
		return nil
	}

	// Probe linux-aio; fall back to threads.
	if _, err := bench(b.rawPath, "raw", false, 1, 10, 4096); err != nil {
		res.aio = "threads"
		if _, err := bench(b.rawPath, "raw", false, 1, 10, 4096); err != nil {
			return res, err
		}
	}
	rawImg := func() (string, error) { return b.rawPath, nil }
	for _, qd := range []int{1, 32} {
		step := int64(4096 * qemuPrimeStep)
		if err := measure("4K read", rawImg, "raw", 0, false, qd, step, 1<<30); err != nil {
			return res, err
		}
		if err := measure("4K write", rawImg, "raw", 0, true, qd, step, 1<<30); err != nil {
			return res, err
		}
	}
	for _, cluster := range []int{64 * kib, 4 * kib} {
		mk := func() (string, error) { return overlay(cluster) }
		for _, qd := range []int{1, 32} {
			if err := measure("4K read", mk, "qcow2", cluster, false, qd, int64(4096*qemuPrimeStep), 1<<30); err != nil {
				return res, err
			}
			// First writes: one 4 KiB write at the start of each cluster, each cluster once.
			units := size / int64(cluster)
			step := int64(cluster) * (qemuPrimeStep % units) // same offsets modulo the image size; -S must fit in 31 bits
			if err := measure("4K first write", mk, "qcow2", cluster, true, qd, step, int(units)); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// machineInfo describes the machine and the scratch directory's file system.
func machineInfo(dir string) [][2]string {
	var m [][2]string
	add := func(k, v string) {
		if v != "" {
			m = append(m, [2]string{k, v})
		}
	}
	add("nproc", cmdOutput("nproc"))
	add("CPU", cpuModel())
	add("memory", memTotal())
	add("kernel", cmdOutput("uname", "-srm"))
	add("OS", osRelease())
	add("Go", goVersion())
	add("qemu-img", firstLine(cmdOutput("qemu-img", "--version")))
	df := cmdOutput("df", "-T", dir)
	if lines := strings.Split(df, "\n"); len(lines) == 2 {
		f := strings.Fields(lines[1])
		if len(f) >= 7 {
			add("scratch dir", fmt.Sprintf("%s on %s, %s (`df -T`: %s)", filepath.Dir(dir), f[0], f[1], strings.Join(f, " ")))
		}
	}
	if dev := blockDevice(dir); dev != "" {
		add("disk", dev)
	}
	return m
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return ""
}

func osRelease() string {
	b, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

func goVersion() string {
	return runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// blockDevice names the device under dir and its queue settings, from lsblk.
func blockDevice(dir string) string {
	src := cmdOutput("findmnt", "-no", "SOURCE", "-T", dir)
	if src == "" {
		return ""
	}
	out := cmdOutput("lsblk", "-dno", "NAME,SIZE,ROTA,SCHED,MODEL", src)
	if out == "" {
		return src
	}
	return src + " (lsblk NAME SIZE ROTA SCHED MODEL: " + strings.Join(strings.Fields(out), " ") + ")"
}
