package blockstore

import (
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

// recorder is a File that logs each write (by pool region) and sync.
type recorder struct {
	*faultfs.File
	mu  sync.Mutex
	geo func() (bs int64, journal, rc, data uint64)
	ops []string
}

func (r *recorder) WriteAt(b []byte, off int64) (int, error) { return r.write(b, off, "") }

// WriteAtCached makes the pool write its journal through it (File), logged as "cached".
func (r *recorder) WriteAtCached(b []byte, off int64) (int, error) { return r.write(b, off, " cached") }

func (r *recorder) write(b []byte, off int64, how string) (int, error) {
	r.mu.Lock()
	what := "data"
	if r.geo != nil {
		bs, journal, rc, data := r.geo()
		switch blk := uint64(off / bs); {
		case blk < journal:
			what = "superblock"
		case blk < rc:
			what = "journal"
		case blk < data:
			what = "refcounts"
		}
	}
	r.ops = append(r.ops, "write "+what+how)
	r.mu.Unlock()
	return r.File.WriteAt(b, off)
}

func (r *recorder) Sync() error {
	r.mu.Lock()
	r.ops = append(r.ops, "sync")
	r.mu.Unlock()
	return r.File.Sync()
}

func (r *recorder) PunchHole(off, n int64) error { return r.File.PunchHole(off, n) }

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := r.ops
	r.ops = nil
	return ops
}

// TestCommitOrder checks the commit order written in journal.go against the file operations a
// Flush and a checkpoint issue.
func TestCommitOrder(t *testing.T) {
	rec := &recorder{File: faultfs.New(16 << 20)}
	p, err := CreateOn(rec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec.geo = func() (int64, uint64, uint64, uint64) {
		return int64(p.bs), p.geo.JournalStart, p.geo.RCStart, p.geo.DataStart
	}
	info, err := p.CreateVolume("v", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	vol, _ := p.Volume(info.ID)
	rec.take()

	// A write to a new block returns once its data and then its record are written (the
	// journal through the page cache); Flush syncs them, writes a commit record and syncs it.
	if _, err := vol.WriteAt(make([]byte, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{"write data", "write journal cached"}; !slices.Equal(got, want) {
		t.Fatalf("write issued %v, want %v", got, want)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{"sync", "write journal cached", "sync"}; !slices.Equal(got, want) {
		t.Fatalf("Flush after a write issued %v, want %v", got, want)
	}

	// A change without data (a commit of its own): its record and the commit record are
	// written at once, then synced.
	if _, err := p.CreateVolume("w", 1<<20); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{"write journal cached", "sync"}; !slices.Equal(got, want) {
		t.Fatalf("CreateVolume issued %v, want %v", got, want)
	}

	// An overwrite in place, then Flush: no record, one sync.
	if _, err := vol.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{"write data", "sync"}; !slices.Equal(got, want) {
		t.Fatalf("overwrite + Flush issued %v, want %v", got, want)
	}

	// A Flush with nothing to do issues nothing.
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("idle Flush issued %v", got)
	}

	// A checkpoint: catalog, nodes and refcount pages, sync, superblock, sync.
	if _, err := vol.WriteAt(make([]byte, 4096), 1<<19); err != nil {
		t.Fatal(err)
	}
	rec.take()
	p.commitMu.Lock()
	err = p.checkpoint()
	p.commitMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	got := rec.take()
	s := strings.Join(got, ",")
	last := len(got) - 1
	if last < 3 || got[last] != "sync" || got[last-1] != "write superblock" || got[last-2] != "sync" {
		t.Fatalf("checkpoint issued %s: want ... sync, write superblock, sync", s)
	}
	body := got[:last-2]
	for _, want := range []string{"write data", "write refcounts"} {
		if !slices.Contains(body, want) {
			t.Fatalf("checkpoint issued %s: no %q before the first sync", s, want)
		}
	}
	if slices.Contains(body, "sync") || slices.Contains(body, "write superblock") || slices.Contains(body, "write journal") {
		t.Fatalf("checkpoint issued %s: the superblock must follow every other write and one sync", s)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
