package blockstore_test

import (
	"errors"
	"io"
	"testing"

	"github.com/dataimage/dataimage/blockstore"
)

func TestVolumeSnapshotCloneReopen(t *testing.T) {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	p, path := mustCreate(t, 64<<20, opts)
	info, err := p.CreateVolume("vol", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	vol, err := p.Volume(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	zero := mustRead(t, vol, 0, 8192)
	mustEqual(t, zero, make([]byte, 8192), "unmapped")
	a := pattern(1, 100000)
	if _, err := vol.WriteAt(a, 1000); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, mustRead(t, vol, 1000, len(a)), a, "after write")
	snap, err := p.CreateSnapshot(info.ID, "snap")
	if err != nil {
		t.Fatal(err)
	}
	b := pattern(2, 5000)
	if _, err := vol.WriteAt(b, 3000); err != nil {
		t.Fatal(err)
	}
	sv, err := p.SnapshotView(snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, mustRead(t, sv, 1000, len(a)), a, "snapshot stays point-in-time")
	if lb, err := p.SnapshotLogBytes(snap.ID); err != nil || lb != 8192 {
		t.Fatalf("snapshot log = %d, %v; want 8192 (the two blocks overwritten since)", lb, err)
	}
	clone, err := p.Clone(snap.ID, "clone", 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	cv, _ := p.Volume(clone.ID)
	mustEqual(t, mustRead(t, cv, 1000, len(a)), a, "clone reads the snapshot")
	mustEqual(t, mustRead(t, cv, 1<<20, 4096), make([]byte, 4096), "clone's grown part")
	ext, err := p.DiffVolume(snap.ID, info.ID)
	if err != nil || len(ext) != 1 || ext[0].Offset != 0 || ext[0].Length != 8192 {
		t.Fatalf("diff = %v, %v; want one extent [0, 8192)", ext, err)
	}
	if lb, err := p.SnapshotLogBytes(snap.ID); err != nil || lb != 0 {
		t.Fatalf("snapshot log with a clone sharing it = %d, %v; want 0", lb, err)
	}
	if err := p.DeleteVolume(info.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := vol.ReadAt(make([]byte, 10), 0); !errors.Is(err, blockstore.ErrNotFound) {
		t.Fatalf("read of deleted volume: %v", err)
	}
	mustCheck(t, p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p, err = blockstore.Open(path, blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustCheckClose(t, p) })
	sv, err = p.SnapshotView(snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, mustRead(t, sv, 1000, len(a)), a, "snapshot after reopen")
	cv, _ = p.Volume(clone.ID)
	mustEqual(t, mustRead(t, cv, 1000, len(a)), a, "clone after reopen")
	if n, err := cv.ReadAt(make([]byte, 10), 2<<20-5); n != 5 || err != io.EOF {
		t.Fatalf("read at end: %d, %v", n, err)
	}
}
