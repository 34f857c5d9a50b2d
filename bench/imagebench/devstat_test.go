package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestReadDevStat(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "stat")
	// reads, merges, sectors, ticks; writes, merges, sectors, ticks; in flight, io ticks, queue
	// time; discards (4 fields); flushes, flush ticks.
	require.NoError(t, os.WriteFile(file, []byte("  100 5 800 50   200 0 3200 90  0 120 150  0 0 0 0  40 8\n"), 0o600))
	before, err := readDevStat(file)
	require.NoError(t, err)
	require.Equal(t, devStat{reads: 100, readSectors: 800, readMS: 50, writes: 200, writeSectors: 3200, writeMS: 90, flushes: 40, flushMS: 8}, before)

	require.NoError(t, os.WriteFile(file, []byte("  150 5 1200 80   260 0 4160 120  0 120 150  0 0 0 0  50 13\n"), 0o600))
	after, err := readDevStat(file)
	require.NoError(t, err)
	d := after.sub(before)
	require.Equal(t, devStat{reads: 50, readSectors: 400, readMS: 30, writes: 60, writeSectors: 960, writeMS: 30, flushes: 10, flushMS: 5}, d)
	require.Equal(t, 600*time.Microsecond, mean(d.readMS, d.reads))
	require.Equal(t, 500*time.Microsecond, mean(d.flushMS, d.flushes))
	require.Equal(t, time.Duration(0), mean(5, 0))
	require.Equal(t, d.add(d), devStat{reads: 100, readSectors: 800, readMS: 60, writes: 120, writeSectors: 1920, writeMS: 60, flushes: 20, flushMS: 10})

	// A field that is not a number: an error naming it, not a zero.
	require.NoError(t, os.WriteFile(file, []byte("100 5 800 50 200 0 x 90 0 120 150 0 0 0 0 40 8\n"), 0o600))
	_, err = readDevStat(file)
	require.ErrorContains(t, err, "field 7")

	// A kernel without flush statistics (before 5.5) has 11 or 15 fields: an error, not zeros.
	require.NoError(t, os.WriteFile(file, []byte("100 5 800 50 200 0 3200 90 0 120 150\n"), 0o600))
	_, err = readDevStat(file)
	require.ErrorContains(t, err, "11 fields")
}

func TestBlockDevStat(t *testing.T) {
	// /proc is not on a block device.
	_, err := blockDevStat("/proc")
	require.ErrorContains(t, err, "not on a block device")
	_, err = blockDevStat(filepath.Join(t.TempDir(), "missing"))
	require.Error(t, err)
}

func TestLatency(t *testing.T) {
	require.Equal(t, "468 µs", latency(468*time.Microsecond))
	require.Equal(t, "1.25 ms", latency(1250*time.Microsecond))
}
