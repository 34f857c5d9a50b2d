// Command checkchild opens a pool, runs one Check, and prints as JSON what it found and the
// process's resident memory right before the Check and at its peak during it. storebench runs
// it in a process of its own per measurement, built from this tree and (with -tags oldcheck,
// from the commit before Check streamed its recount) from the old one, so that both are the
// same program but for the block store.
//
// Usage: checkchild POOL MODE BUDGET, MODE being exclusive or readonly (the old build knows only
// exclusive), BUDGET CheckOptions.MemoryBytes (0: the default; ignored by the old build). The
// pool is not closed at the end, so that a read-only Check leaves the file as it was.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// result is what the child prints.
type result struct {
	RSSOpen    int64 // VmRSS after Open, right before the Check (bytes)
	Peak       int64 // VmHWM during the Check (bytes): the peak since the reset before it
	Seconds    float64
	CPUSeconds float64 // user and system time the process spent in the Check
	Passes     int
	Nodes      uint64
	DataBlocks uint64
	Used       uint64
	OK         bool
	Err        string `json:",omitempty"`
}

// summary is what check reports of a CheckReport.
type summary struct {
	passes            int
	nodes, data, used uint64
	ok                bool
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: checkchild POOL exclusive|readonly BUDGET")
		os.Exit(2)
	}
	budget, err := strconv.ParseInt(os.Args[3], 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "checkchild: budget:", err)
		os.Exit(2)
	}
	p, err := blockstore.Open(os.Args[1], blockstore.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "checkchild:", err)
		os.Exit(1)
	}
	debug.FreeOSMemory()
	var res result
	res.RSSOpen = status("VmRSS")
	// Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		fmt.Fprintln(os.Stderr, "checkchild: reset peak RSS:", err)
		os.Exit(1)
	}
	start, cpu0 := time.Now(), cpuTime()
	s, err := check(p, os.Args[2], budget)
	res.Seconds, res.CPUSeconds = time.Since(start).Seconds(), (cpuTime() - cpu0).Seconds()
	res.Peak = status("VmHWM")
	res.Passes, res.Nodes, res.DataBlocks, res.Used, res.OK = s.passes, s.nodes, s.data, s.used, s.ok
	if err != nil {
		res.Err = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
}

// cpuTime returns the user and system time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// status returns a size field of /proc/self/status in bytes.
func status(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if f := bytes.Fields(line); len(f) >= 2 && string(f[0]) == field+":" {
			v, _ := strconv.ParseInt(string(f[1]), 10, 64)
			return v << 10
		}
	}
	return 0
}
