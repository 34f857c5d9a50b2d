package blockstore_test

import (
	"errors"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// TestPoolFileLocked: an open pool file is locked: a second blockstore.Open, in this process or while
// another process holds the file's lock, fails with blockstore.ErrInUse and changes nothing; the lock goes
// with Close, and with the death of the process that held it (SIGKILL).
func TestPoolFileLocked(t *testing.T) {
	p, path := mustCreate(t, 64<<20, blockstore.Options{})
	if _, err := p.CreateVolume("v", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := blockstore.Open(path, blockstore.Options{}); !errors.Is(err, blockstore.ErrInUse) {
		t.Fatalf("a second blockstore.Open while the pool is open: %v, want blockstore.ErrInUse", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// Another process holds the lock (flock(1) takes the same flock(2) lock), then dies.
	flock, err := exec.LookPath("flock")
	if err != nil {
		t.Skip("needs flock(1) (util-linux)")
	}
	// --close: flock(1) itself holds the lock, not the command it runs.
	holder := exec.Command(flock, "--exclusive", "--close", path, "sleep", "600")
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-holder.Process.Pid, syscall.SIGKILL); _ = holder.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		q, err := blockstore.Open(path, blockstore.Options{})
		if errors.Is(err, blockstore.ErrInUse) {
			break
		}
		if err == nil {
			q.Close() // flock(1) has not taken the lock yet: it waits for ours
		}
		if time.Now().After(deadline) {
			t.Fatalf("blockstore.Open while flock(1) holds the pool file: %v, want blockstore.ErrInUse", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := holder.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	p, err = blockstore.Open(path, blockstore.Options{})
	if err != nil {
		t.Fatalf("blockstore.Open after the lock holder died: %v", err)
	}
	defer p.Close()
	if _, err := p.LookupVolume("v"); err != nil {
		t.Fatalf("the refused Opens changed the pool: %v", err)
	}
}
