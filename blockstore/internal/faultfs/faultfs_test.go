package faultfs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func read(t *testing.T, f *File, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, f *File, b []byte, off int64) {
	t.Helper()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A power loss keeps what was synced, and of the rest what Loss says: nothing, the last version
// of each page, or (torn) each sector from some version.
func TestRestart(t *testing.T) {
	f := New(4 * Unit)
	write(t, f, fill(1, 2*Unit), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	write(t, f, fill(2, Unit), 0)
	write(t, f, fill(3, Unit), 0)
	write(t, f, fill(4, 10), Unit+100) // part of a page

	rng := rand.New(rand.NewPCG(1, 2))
	if got := read(t, f.Restart(rng, Loss{}), 0, 2*Unit); !bytes.Equal(got, fill(1, 2*Unit)) {
		t.Fatal("Keep 0 kept an unsynced write")
	}
	last := f.Restart(rng, Loss{Keep: 1})
	if got := read(t, last, 0, Unit); !bytes.Equal(got, fill(3, Unit)) {
		t.Fatal("Keep 1 did not keep the last version")
	}
	if got := read(t, last, Unit+100, 10); !bytes.Equal(got, fill(4, 10)) {
		t.Fatal("Keep 1 lost a partial write")
	}
	mixed := false
	for range 50 {
		g := read(t, f.Restart(rng, Loss{Keep: 0.5, Torn: true}), 0, Unit)
		seen := map[byte]bool{}
		for s := 0; s < Unit; s += Sector {
			sec := g[s : s+Sector]
			if !bytes.Equal(sec, fill(sec[0], Sector)) || sec[0] < 1 || sec[0] > 3 {
				t.Fatalf("sector %d holds no version of itself: %x", s/Sector, sec[:8])
			}
			seen[sec[0]] = true
		}
		mixed = mixed || len(seen) > 1
		p := read(t, f.Restart(rng, Loss{Keep: 0.5}), 0, Unit)
		if !bytes.Equal(p, fill(p[0], Unit)) {
			t.Fatal("a page torn without Torn")
		}
	}
	if !mixed {
		t.Fatal("Torn never mixed the versions of a page")
	}
}

// A failed fdatasync reports the error once: the dirty pages are forgotten (the next Sync
// succeeds without writing them), each of their sectors reached the disk or not, and the cache
// shows the new data or what the disk holds. DropCache makes reads show the disk.
func TestFailedSync(t *testing.T) {
	lost := false
	for seed := range uint64(20) {
		f := New(2 * Unit)
		f.Seed(seed)
		write(t, f, fill(7, 2*Unit), 0)
		f.FailAfter(0)
		if err := f.Sync(); !errors.Is(err, ErrInjected) {
			t.Fatalf("Sync: %v", err)
		}
		if kind, off := f.Injected(); kind != "sync" || off != -1 {
			t.Fatalf("Injected: %s at %d", kind, off)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("the error is reported once: %v", err)
		}
		disk := read(t, f.Restart(rand.New(rand.NewPCG(1, 1)), Loss{Keep: 1}), 0, 2*Unit)
		for s := 0; s < 2*Unit; s += Sector {
			if c := disk[s]; (c != 0 && c != 7) || !bytes.Equal(disk[s:s+Sector], fill(c, Sector)) {
				t.Fatalf("sector %d holds neither version", s/Sector)
			}
		}
		lost = lost || !bytes.Equal(disk, fill(7, 2*Unit))
		cache := read(t, f, 0, 2*Unit)
		for pg := 0; pg < 2; pg++ {
			c, d := cache[pg*Unit:(pg+1)*Unit], disk[pg*Unit:(pg+1)*Unit]
			if !bytes.Equal(c, fill(7, Unit)) && !bytes.Equal(c, d) {
				t.Fatalf("page %d: the cache shows neither the write nor the disk", pg)
			}
		}
		if err := f.DropCache(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(read(t, f, 0, 2*Unit), disk) {
			t.Fatal("after DropCache reads do not show the disk")
		}
	}
	if !lost {
		t.Fatal("a failed Sync never lost a sector")
	}
}

// A failed write reports the error, and each sector it covers holds the old or the new bytes.
func TestFailedWrite(t *testing.T) {
	f := New(Unit)
	f.FailAfter(0)
	if _, err := f.WriteAt(fill(9, Unit-200), 100); !errors.Is(err, ErrInjected) {
		t.Fatalf("WriteAt: %v", err)
	}
	got := read(t, f, 0, Unit)
	for s := 0; s < Unit; s += Sector {
		lo, hi := max(s, 100), min(s+Sector, Unit-100)
		if c := got[lo]; (c != 0 && c != 9) || !bytes.Equal(got[lo:hi], fill(c, hi-lo)) {
			t.Fatalf("sector %d holds neither version", s/Sector)
		}
	}
	if !bytes.Equal(got[:100], fill(0, 100)) || !bytes.Equal(got[Unit-100:], fill(0, 100)) {
		t.Fatal("a failed write changed bytes outside its range")
	}
}

// CrashAtSync loses power at the chosen Sync: it and everything after fail, nothing of the
// writes since the last Sync is durable.
func TestCrashAtSync(t *testing.T) {
	f := New(Unit)
	f.CrashAtSync(1)
	write(t, f, fill(1, Unit), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	write(t, f, fill(2, Unit), 0)
	if err := f.Sync(); !errors.Is(err, ErrCrashed) {
		t.Fatalf("the second Sync: %v", err)
	}
	if _, err := f.WriteAt(fill(3, 1), 0); !errors.Is(err, ErrCrashed) {
		t.Fatalf("a write after the crash: %v", err)
	}
	if got := read(t, f.Restart(rand.New(rand.NewPCG(1, 1)), Loss{}), 0, Unit); !bytes.Equal(got, fill(1, Unit)) {
		t.Fatal("the disk does not hold the last synced contents")
	}
}

// A process kill and a clean reopen keep the boot; a power loss boots the machine again.
func TestBoot(t *testing.T) {
	f := New(4 * Unit)
	boot := f.Boot()
	if boot == [16]byte{} || New(Unit).Boot() == boot {
		t.Fatalf("boot %x: zero, or shared with another machine", boot)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	if f.Restart(rng, Loss{}).Boot() == boot || f.RestartKeeping(func(int64) bool { return true }).Boot() == boot {
		t.Fatal("a power loss kept the boot")
	}
	killed := f.AfterKill()
	if killed.Boot() != boot || killed.Reopen().Boot() != boot {
		t.Fatal("a process kill or a reopen changed the boot")
	}
}
