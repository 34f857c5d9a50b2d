package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// devStat is what a block device's /sys stat file counts: requests completed and the time they
// took, summed over requests (so time / count is the mean latency of a request, from the
// device's queue to its completion). See Documentation/block/stat.rst.
type devStat struct {
	reads, writes, flushes    int64
	readMS, writeMS, flushMS  int64
	readSectors, writeSectors int64
}

// blockDevStat returns the stat file of the block device holding path's file system: the loop
// device of either side of the TPS comparison.
func blockDevStat(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", &os.PathError{Op: "stat", Path: path, Err: err}
	}
	f := fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev))
	if _, err := os.Stat(f); err != nil {
		return "", fmt.Errorf("%s is not on a block device: %w", path, err)
	}
	return f, nil
}

func readDevStat(file string) (devStat, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return devStat{}, err
	}
	f := strings.Fields(string(b))
	if len(f) < 17 {
		return devStat{}, fmt.Errorf("%s: %d fields, want at least 17 (a kernel with flush statistics)", file, len(f))
	}
	var v [17]int64
	for i := range v {
		if v[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return devStat{}, fmt.Errorf("%s: field %d: %w", file, i+1, err)
		}
	}
	return devStat{reads: v[0], readSectors: v[2], readMS: v[3], writes: v[4], writeSectors: v[6], writeMS: v[7],
		flushes: v[15], flushMS: v[16]}, nil
}

func (a devStat) sub(b devStat) devStat {
	return devStat{a.reads - b.reads, a.writes - b.writes, a.flushes - b.flushes, a.readMS - b.readMS,
		a.writeMS - b.writeMS, a.flushMS - b.flushMS, a.readSectors - b.readSectors, a.writeSectors - b.writeSectors}
}

func (a devStat) add(b devStat) devStat {
	return devStat{a.reads + b.reads, a.writes + b.writes, a.flushes + b.flushes, a.readMS + b.readMS,
		a.writeMS + b.writeMS, a.flushMS + b.flushMS, a.readSectors + b.readSectors, a.writeSectors + b.writeSectors}
}

// perTxn is n requests per transaction, of txns transactions.
func perTxn(n, txns int64) float64 { return float64(n) / float64(max(txns, 1)) }

// mean is the mean latency of n requests that took ms milliseconds in all.
func mean(ms, n int64) time.Duration {
	if n == 0 {
		return 0
	}
	return time.Duration(ms) * time.Millisecond / time.Duration(n)
}

// latency formats a mean request latency: µs below a millisecond, ms above.
func latency(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%d µs", d.Microseconds())
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}
