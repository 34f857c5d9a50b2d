package blockstore_test

// A pool file whose file system fills up: writes that need new space fail with ErrHostFull
// (ErrNoSpace, ENOSPC), nothing else fails, the pool never fails for good, survives a crash
// in that state, and serves again once space is freed.

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

// hostFile is a sparse pool file on a file system of limited capacity: a faultfs.File whose
// 4 KiB units get space when first written and lose it when punched out. A write that needs
// more units than are left writes what fits and fails with ENOSPC, as a full file system does.
type hostFile struct {
	*faultfs.File
	mu       sync.Mutex
	alloc    map[int64]bool // units with space
	capacity int            // units the file may hold; < 0: unlimited
}

func newHostFile(size int64) *hostFile {
	return &hostFile{File: faultfs.New(size), alloc: map[int64]bool{}, capacity: -1}
}

// fill leaves room for extra more units; limit(-1) lifts the limit.
func (h *hostFile) fill(extra int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.capacity = len(h.alloc) + extra
}

func (h *hostFile) unlimit() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.capacity = -1
}

func (h *hostFile) WriteAt(p []byte, off int64) (int, error) {
	h.mu.Lock()
	n := len(p)
	for u := off / faultfs.Unit; u*faultfs.Unit < off+int64(len(p)); u++ {
		if h.alloc[u] {
			continue
		}
		if h.capacity >= 0 && len(h.alloc) >= h.capacity {
			n = int(max(u*faultfs.Unit-off, 0))
			break
		}
		h.alloc[u] = true
	}
	h.mu.Unlock()
	if n < len(p) {
		if n > 0 {
			if _, err := h.File.WriteAt(p[:n], off); err != nil {
				return 0, err
			}
		}
		return n, &os.PathError{Op: "write", Path: "pool", Err: syscall.ENOSPC}
	}
	return h.File.WriteAt(p, off)
}

func (h *hostFile) PunchHole(off, length int64) error {
	if err := h.File.PunchHole(off, length); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for u := (off + faultfs.Unit - 1) / faultfs.Unit; (u+1)*faultfs.Unit <= off+length; u++ {
		delete(h.alloc, u)
	}
	return nil
}

// restart is the file after a power loss now (faultfs.File.Restart), on the same file system.
func (h *hostFile) restart(rng *rand.Rand, keep float64) *hostFile {
	h.mu.Lock()
	defer h.mu.Unlock()
	alloc := make(map[int64]bool, len(h.alloc))
	for u := range h.alloc {
		alloc[u] = true
	}
	return &hostFile{File: h.File.Restart(rng, faultfs.Loss{Keep: keep}), alloc: alloc, capacity: h.capacity}
}

func requireHostFull(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err, "the file system should be full")
	require.ErrorIs(t, err, blockstore.ErrHostFull)
	require.ErrorIs(t, err, blockstore.ErrNoSpace)
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.NotErrorIs(t, err, blockstore.ErrFailed)
}

// hostModel is the expected contents of one volume.
type hostModel struct {
	vol  *blockstore.Volume
	want []byte
}

// write writes data at off and updates the model: with what was written, or, when the write
// fails, with what each block holds, which must be its old or its new contents.
func (m *hostModel) write(t *testing.T, data []byte, off int64) error {
	t.Helper()
	_, err := m.vol.WriteAt(data, off)
	if err == nil {
		copy(m.want[off:], data)
		return nil
	}
	got := mustRead(t, m.vol, off, len(data))
	for b := 0; b < len(data); b += 4096 {
		old, neu := m.want[off+int64(b):][:4096], data[b:][:4096]
		if !bytes.Equal(got[b:b+4096], old) && !bytes.Equal(got[b:b+4096], neu) {
			t.Fatalf("a failed write left block at %d with neither old nor new data", off+int64(b))
		}
	}
	copy(m.want[off:], got)
	return err
}

func (m *hostModel) verify(t *testing.T, vol *blockstore.Volume, what string) {
	t.Helper()
	mustEqual(t, mustRead(t, vol, 0, len(m.want)), m.want, what)
}

// The file system fills up under a pool: writes into new blocks fail with ErrHostFull, the
// pool stays healthy (reads, overwrites in place, Flush of what fits in the journal, a
// read-only Check); a checkpoint that does not fit fails and undoes itself; commits that need
// one fail honestly (their records wait); a crash in that state reopens, even while the file
// system is still full; and everything works again once space is freed, without a reopen.
func TestHostFullIsTransient(t *testing.T) {
	const bs = 4096
	h := newHostFile(32 << 20)
	p, err := blockstore.CreateOn(h, blockstore.Options{JournalSize: 64 << 10})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	info, err := p.CreateVolume("v", 16<<20)
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	m := &hostModel{vol: vol, want: make([]byte, 16<<20)}
	require.NoError(t, m.write(t, pattern(1, 4<<20), 0))
	mustCheck(t, p)
	// Changes since that checkpoint: new blocks mapped (dirty tree nodes), committed.
	require.NoError(t, m.write(t, pattern(2, 1<<20), 8<<20))
	require.NoError(t, p.Flush())

	h.fill(0)
	// Writes into new blocks fail; the pool stays healthy.
	for i := range 4 {
		requireHostFull(t, m.write(t, pattern(byte(3+i), 64<<10), 12<<20+int64(i)*(64<<10)))
		require.NoError(t, p.Health())
	}
	// Space freed inside the pool file counts: a discard's blocks are punched out when it is
	// committed, which a write that meets a full file system does before it tries again.
	require.NoError(t, vol.Discard(1<<20, 256<<10))
	clear(m.want[1<<20 : 1<<20+256<<10])
	require.NoError(t, m.write(t, pattern(8, 256<<10), 12<<20), "written into the space the discard freed")
	requireHostFull(t, m.write(t, pattern(8, 64<<10), 13<<20))
	// What is there reads back; blocks the volume owns are overwritten in place.
	m.verify(t, vol, "after ENOSPC")
	require.NoError(t, m.write(t, pattern(9, 1<<20), 0))
	require.NoError(t, p.Flush(), "records that fit in the journal are committed")
	// A checkpoint has nowhere to write its tree nodes and catalog: it fails, changes nothing
	// durable, and the pool goes on.
	_, err = p.Check(false)
	requireHostFull(t, err)
	require.NoError(t, p.Health())
	rep, err := p.CheckWith(readOnly)
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v %v", rep, rep.RefcountErrors)
	acked := bytes.Clone(m.want) // flushed: must survive a crash

	// Commits until the journal is full: then a commit must checkpoint, cannot, and fails.
	atSnap := bytes.Clone(m.want) // what each snapshot taken below holds
	var snapErr error
	for i := 0; i < 10000 && snapErr == nil; i++ {
		var s blockstore.SnapshotInfo
		if s, snapErr = p.CreateSnapshot(info.ID, fmt.Sprintf("s%d", i)); snapErr == nil {
			snapErr = p.DeleteSnapshot(s.ID)
		}
	}
	requireHostFull(t, snapErr)
	// The change that failed to commit (a snapshot, or the delete of one) holds in memory but
	// is not durable: a crash brings the snapshot back. Until the change is durable, the
	// volume's blocks are not its own on disk, so a write copies them rather than overwrite
	// them in place, and finds no room.
	requireHostFull(t, m.write(t, pattern(10, 64<<10), 64<<10))
	requireHostFull(t, p.Flush())
	require.NoError(t, p.Health())
	m.verify(t, vol, "with commits failing")

	// A crash now: the pool opens although its recovery checkpoint cannot be written, holds
	// what was flushed, and refuses commits until there is space.
	for seed := range uint64(4) {
		img := h.restart(rand.New(rand.NewPCG(seed, 1)), float64(seed)/3)
		q, err := blockstore.OpenOn(img, blockstore.Options{})
		require.NoError(t, err, "open while the file system is full")
		qv, _ := q.Volume(info.ID)
		got := mustRead(t, qv, 0, len(acked))
		for b := 0; b < len(acked); b += bs {
			if !bytes.Equal(got[b:b+bs], acked[b:b+bs]) && !bytes.Equal(got[b:b+bs], m.want[b:b+bs]) {
				t.Fatalf("crash %d: block at %d holds neither the flushed data nor a later write", seed, b)
			}
		}
		for _, s := range q.Snapshots() {
			sv, err := q.SnapshotView(s.ID)
			require.NoError(t, err)
			mustEqual(t, mustRead(t, sv, 0, len(atSnap)), atSnap, fmt.Sprintf("crash %d: snapshot %s", seed, s.Name))
		}
		rep, err := q.CheckWith(readOnly)
		require.NoError(t, err)
		require.True(t, rep.OK(), "%v %v", rep, rep.RefcountErrors)
		require.NoError(t, q.Flush(), "nothing waits to be committed")
		// The journal counts as full until a checkpoint: a change cannot be committed.
		_, err = q.CreateSnapshot(info.ID, "after-crash")
		requireHostFull(t, err)
		require.NoError(t, q.Health())
		img.unlimit()
		require.NoError(t, q.Flush(), "space freed: the checkpoint is written")
		_, err = q.LookupSnapshot("after-crash")
		require.NoError(t, err, "the change that failed to commit is applied and now durable")
		mustCheck(t, q)
		require.NoError(t, q.Close())
	}

	// Space freed: the same pool (not reopened) commits, writes and checkpoints again.
	h.unlimit()
	require.NoError(t, p.Flush())
	require.NoError(t, m.write(t, pattern(11, 2<<20), 12<<20))
	require.NoError(t, p.Flush())
	mustCheck(t, p)
	m.verify(t, vol, "after space was freed")
	require.NoError(t, p.Close())
	p, err = blockstore.OpenOn(h.restart(rand.New(rand.NewPCG(9, 9)), 0), blockstore.Options{})
	require.NoError(t, err)
	vol, _ = p.Volume(info.ID)
	m.verify(t, vol, "after reopen")
	mustCheck(t, p)
}

// The same on a real file system: a small ext4 on a loop device holds a sparse pool file larger
// than itself. Writes fill it, fail with ErrHostFull and leave the pool healthy; deleting a
// filler file lets writes, Flush and checkpoints succeed again without a reopen.
func TestPoolFileOnFullFileSystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach a loop device and mount")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is missing (hack/install-deps.sh installs e2fsprogs)")
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		require.NoError(t, err, "%s %v: %s", name, args, out)
		return strings.TrimSpace(string(out))
	}
	dir := t.TempDir()
	backing := filepath.Join(dir, "disk")
	require.NoError(t, os.WriteFile(backing, nil, 0o600))
	require.NoError(t, os.Truncate(backing, 48<<20))
	dev := run("losetup", "--find", "--show", backing)
	t.Cleanup(func() { run("losetup", "--detach", dev) })
	run("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", dev)
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o700))
	run("mount", "-t", "ext4", dev, mnt)
	t.Cleanup(func() { run("umount", mnt) })
	syncfs := func() {
		d, err := os.Open(mnt)
		require.NoError(t, err)
		defer d.Close()
		require.NoError(t, unix.Syncfs(int(d.Fd())))
	}

	filler := filepath.Join(mnt, "filler")
	require.NoError(t, os.WriteFile(filler, pattern(5, 8<<20), 0o600))
	path := filepath.Join(mnt, "pool")
	const poolSize = 128 << 20 // larger than the file system
	p, err := blockstore.Create(path, blockstore.Options{Size: poolSize, JournalSize: 128 << 10})
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			p.Close()
		}
	})
	info, err := p.CreateVolume("v", 96<<20)
	require.NoError(t, err)
	vol, _ := p.Volume(info.ID)
	m := &hostModel{vol: vol, want: make([]byte, 96<<20)}

	// Fill the file system: 1 MiB writes, then smaller ones, until a 4 KiB write fails.
	off, full := int64(0), 0
	for chunk := 1 << 20; chunk >= 4096; chunk /= 4 {
		for {
			require.Less(t, off+int64(chunk), int64(len(m.want)), "the volume filled before the file system")
			err := m.write(t, pattern(byte(off>>20), chunk), off)
			if err != nil {
				requireHostFull(t, err)
				full++
				break
			}
			off += int64(chunk)
			if off%(4<<20) == 0 {
				require.NoError(t, p.Flush(), "Flush while filling up")
			}
		}
	}
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(mnt, &st))
	t.Logf("file system full after %d MiB written into the pool (%d blocks free); %d writes failed", off>>20, st.Bavail, full)
	require.NoError(t, p.Health())
	m.verify(t, vol, "after ENOSPC")
	require.NoError(t, m.write(t, pattern(77, 256<<10), 0), "overwrite in place needs no space")
	require.NoError(t, p.Flush(), "the journal has room: Flush commits")
	rep, err := p.CheckWith(readOnly)
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v %v", rep, rep.RefcountErrors)

	// Commits until the journal is full and a checkpoint must be written: it cannot, and the
	// commit fails (the pool does not).
	var snapErr error
	for i := 0; i < 10000 && snapErr == nil; i++ {
		var s blockstore.SnapshotInfo
		if s, snapErr = p.CreateSnapshot(info.ID, fmt.Sprintf("s%d", i)); snapErr == nil {
			snapErr = p.DeleteSnapshot(s.ID)
		}
	}
	requireHostFull(t, snapErr)
	requireHostFull(t, p.Flush())
	require.NoError(t, p.Health())

	// Free space on the file system: the same pool serves again.
	require.NoError(t, os.Remove(filler))
	syncfs()
	require.NoError(t, p.Flush())
	for i := range 4 {
		require.NoError(t, m.write(t, pattern(byte(100+i), 1<<20), off+int64(i)<<20))
	}
	require.NoError(t, p.Flush())
	mustCheck(t, p)
	m.verify(t, vol, "after space was freed")
	require.NoError(t, p.Close())
	closed = true

	p, err = blockstore.Open(path, blockstore.Options{})
	require.NoError(t, err)
	closed = false
	vol, _ = p.Volume(info.ID)
	m.verify(t, vol, "after reopen")
	rep, err = p.CheckWith(readOnly)
	require.NoError(t, err)
	require.True(t, rep.OK())
	mustCheckClose(t, p)
	closed = true
	require.False(t, errors.Is(p.Health(), blockstore.ErrFailed))
}
