package blockstore

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is the storage under a pool: a regular file or a block device. All pool I/O goes through
// it, so tests can substitute one that injects crashes, errors and latency.
//
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt and may be called concurrently. The pool
// issues I/O in whole blocks, except for an overwrite in place of part of a block, which writes
// just those bytes (with DirectIO only when they are 4 KiB-aligned; otherwise the whole block).
//
// A File that reads through a cache of its own may also have a method DropCache() error that
// evicts the cache's clean contents; Open calls it first, so that recovery reads what the
// storage holds (after a failed Sync, a cache may show writes that never reached it).
//
// A File whose completed writes outlive the process that made them for as long as the kernel
// that took them runs (they are in its page cache or on the storage) may also have a method
// Boot() [16]byte naming that kernel's boot (on Linux its boot_id; all zeros: unknown). The pool
// records it with each checkpoint, and recovery under the same boot replays every journal
// record a killed process wrote, flushed or not; under another boot (after a power loss or a
// reboot), or without the method, only the records a commit covered (journal.go).
//
// A File may also have a method WriteAtCached(p []byte, off int64) (int, error) that writes
// through the kernel's page cache, also when its WriteAt bypasses it (DirectIO), coherently
// with ReadAt and covered by Sync: the pool writes its journal with it, before each change it
// describes returns, so it should cost a copy, not a device write or a lock that waits for
// the data I/O in flight (the pool's own files copy into a shared mapping).
type File interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable (fdatasync).
	Sync() error
	// PunchHole tells the storage that the byte range holds no data any more. The range must
	// read back as zeros afterwards or keep its old contents; the pool never relies on either.
	PunchHole(off, length int64) error
	// Size returns the size of the storage in bytes.
	Size() (int64, error)
	Close() error
}

// fileBoot returns f's Boot (see File), all zeros (unknown) if it has none.
func fileBoot(f File) [16]byte {
	if b, ok := f.(interface{ Boot() [16]byte }); ok {
		return b.Boot()
	}
	return [16]byte{}
}

// journalWriter returns what the pool writes its journal with: f's WriteAtCached if it has one
// (see File), else f.
func journalWriter(f File) io.WriterAt {
	if c, ok := f.(interface {
		WriteAtCached(b []byte, off int64) (int, error)
	}); ok {
		return writerAtFunc(c.WriteAtCached)
	}
	return f
}

// writerAtFunc makes an io.WriterAt of a function.
type writerAtFunc func(b []byte, off int64) (int, error)

func (w writerAtFunc) WriteAt(b []byte, off int64) (int, error) { return w(b, off) }

// createFile makes a new pool file at path atomically (see Create).
func createFile(path string, opts Options) (*Pool, error) {
	fail := func(err error) (*Pool, error) { return nil, fmt.Errorf("blockstore: create pool %s: %w", path, err) }
	if _, err := os.Lstat(path); err == nil {
		return fail(fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".creating")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	f, err := openOSFile(tmp, true, opts.Size, opts.Preallocate, opts.DirectIO)
	if err != nil {
		return fail(err)
	}
	p, err := CreateOn(f, opts)
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	// link(2), unlike rename(2), never replaces what is at path.
	if err := os.Link(tmp, path); err != nil {
		p.Close()
		os.Remove(tmp)
		return fail(err)
	}
	if err := os.Remove(tmp); err != nil {
		p.Close()
		return fail(err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		p.Close()
		return fail(err)
	}
	return p, nil
}

// syncDir makes the entries of directory dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// osFile is a File on a regular file or block device.
type osFile struct {
	f      *os.File
	direct bool
	block  bool     // a block device
	boot   [16]byte // the kernel's boot_id, read at open; zero if unreadable

	// windows are the parts of the file mapped (MAP_SHARED) for WriteAtCached, by index
	// (offset / mapWindow), each mapped at its first use and unmapped by Close.
	mapMu   sync.Mutex
	windows map[int64][]byte
}

// mapWindow is the size and alignment of the parts of a pool file WriteAtCached maps.
const mapWindow = 2 << 20

const directAlign = 4096

var alignedPool = sync.Pool{New: func() any { b := alignedBuf(1 << 20); return &b }}

// alignedBuf returns a buffer of n bytes whose start is aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	if off != 0 {
		off = directAlign - off
	}
	return b[off : off+n : off+n]
}

func aligned(p []byte) bool {
	return len(p) == 0 || uintptr(unsafe.Pointer(&p[0]))&(directAlign-1) == 0
}

// lockWait is how long an open waits for a pool file's lock held elsewhere before it fails
// with ErrInUse.
const lockWait = 2 * time.Second

// openOSFile opens path, creating a file of size bytes when create is set. A block device is
// opened exclusively (O_EXCL): the open fails with EBUSY while a file system on it is mounted or
// something else claims it (device-mapper, md, swap, another exclusive opener), and while the
// pool is open nobody can mount it or claim it. A regular file is locked (flock, exclusive,
// waiting at most lockWait) for as long as it is open: a second open, in this process or
// another, fails with ErrInUse. The lock goes with the file's description, so the kernel drops
// it when the process holding it dies: a data plane that was killed leaves no lock behind.
func openOSFile(path string, create bool, size int64, prealloc, direct bool) (*osFile, error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	} else if isDevice(path) {
		flags |= os.O_EXCL
	}
	if direct {
		flags |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if errors.Is(err, unix.EBUSY) && !create {
		return nil, fmt.Errorf("%w: %w (the device is in use: mounted, or held by device-mapper, md, swap or another exclusive opener)", ErrInUse, err)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Mode().IsRegular() {
		// A lock held by an open file description outlives its Close while a child forked by
		// another thread of the holder has not yet exec'd (the child's copy of the descriptor
		// is closed at exec): so a lock that is taken is retried for a while before the open
		// is refused.
		for deadline := time.Now().Add(lockWait); ; {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == unix.EINTR || err == unix.EWOULDBLOCK && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			break
		}
		if err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: another open of the pool file holds its lock (a data plane, a daemon or a pool check may be running)", ErrInUse)
			}
			return nil, fmt.Errorf("lock the pool file: %w", err)
		}
	}
	of := &osFile{f: f, direct: direct, block: fi.Mode()&os.ModeDevice != 0, boot: bootID()}
	if create && !of.block {
		if prealloc {
			err = unix.Fallocate(int(f.Fd()), 0, 0, size)
		} else {
			err = f.Truncate(size)
		}
		if err != nil {
			of.Close()
			os.Remove(path)
			return nil, fmt.Errorf("size pool file %s to %d bytes: %w", path, size, err)
		}
	}
	return of, nil
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error) {
	if !o.direct || aligned(p) {
		return o.f.ReadAt(p, off)
	}
	return o.bounce(p, off, false)
}

func (o *osFile) WriteAt(p []byte, off int64) (int, error) {
	if !o.direct || aligned(p) {
		return o.f.WriteAt(p, off)
	}
	return o.bounce(p, off, true)
}

// WriteAtCached writes p at off through the page cache, also when the file was opened with
// DirectIO (see File): it copies p into a shared mapping of the file. A store to a mapped page
// is in the page cache at once, survives the process and is covered by fdatasync; unlike a
// buffered write(2) it takes no inode lock (ext4 takes it exclusively for a buffered write,
// which would wait for every direct write in flight to the pool file and hold back the next).
// A fault while copying (the page could not be read in, or the file system found no space
// for a hole) is returned as an error.
func (o *osFile) WriteAtCached(p []byte, off int64) (n int, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			err = fmt.Errorf("write %d bytes at %d through the page cache: a memory fault in the file's mapping (a page could not be read in or given space, or the file shrank)", len(p), off+int64(n))
		}
	}()
	for n < len(p) {
		at := off + int64(n)
		w, err := o.window(at / mapWindow)
		if err != nil {
			return n, err
		}
		inner := at % mapWindow
		if inner >= int64(len(w)) {
			return n, fmt.Errorf("write at %d: past the end of the file", at)
		}
		n += copy(w[inner:], p[n:])
	}
	return n, nil
}

// window returns window i of the file (see osFile.windows), mapping it if needed.
func (o *osFile) window(i int64) ([]byte, error) {
	o.mapMu.Lock()
	defer o.mapMu.Unlock()
	if w, ok := o.windows[i]; ok {
		return w, nil
	}
	size, err := o.Size()
	if err != nil {
		return nil, err
	}
	n := min(mapWindow, size-i*mapWindow)
	if n <= 0 {
		return nil, fmt.Errorf("map at %d: past the end of the file (%d bytes)", i*mapWindow, size)
	}
	w, err := unix.Mmap(int(o.f.Fd()), i*mapWindow, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes at %d: %w", n, i*mapWindow, err)
	}
	if o.windows == nil {
		o.windows = make(map[int64][]byte)
	}
	o.windows[i] = w
	return w, nil
}

// Boot returns the boot_id of the running kernel (see File), all zeros if it was unreadable.
func (o *osFile) Boot() [16]byte { return o.boot }

// bootID reads the running kernel's boot_id (a random UUID chosen at boot).
func bootID() [16]byte {
	var id [16]byte
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return id
	}
	h := strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")
	if n, err := hex.Decode(id[:], []byte(h)); err != nil || n != len(id) || len(h) != 2*len(id) {
		return [16]byte{}
	}
	return id
}

// bounce performs direct I/O for a buffer that is not aligned in memory through aligned buffers.
func (o *osFile) bounce(p []byte, off int64, write bool) (int, error) {
	bp := alignedPool.Get().(*[]byte)
	defer alignedPool.Put(bp)
	buf := *bp
	done := 0
	for done < len(p) {
		n := min(len(buf), len(p)-done)
		var err error
		if write {
			copy(buf, p[done:done+n])
			_, err = o.f.WriteAt(buf[:n], off+int64(done))
		} else {
			var k int
			k, err = o.f.ReadAt(buf[:n], off+int64(done))
			copy(p[done:], buf[:k])
			if err != nil {
				return done + k, err
			}
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (o *osFile) Sync() error { return unix.Fdatasync(int(o.f.Fd())) }

func (o *osFile) PunchHole(off, length int64) error {
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	err := unix.Fallocate(int(o.f.Fd()), mode, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil // the storage cannot punch holes; the blocks stay allocated there
	}
	return err
}

// DropCache evicts the file's clean pages from the page cache (posix_fadvise DONTNEED), so that
// reads return what the disk holds. After a failed fdatasync, Linux may keep pages it could not
// write back marked clean, showing data the disk does not have; a pool opened afterwards must not
// build on them. Dirty pages stay (DONTNEED starts their write-back): what a killed process
// wrote is still read. With O_DIRECT only the journal's pages (WriteAtCached) are cached.
func (o *osFile) DropCache() error {
	return unix.Fadvise(int(o.f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

func (o *osFile) Size() (int64, error) {
	if o.block {
		return o.f.Seek(0, io.SeekEnd)
	}
	fi, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (o *osFile) Close() error {
	o.mapMu.Lock()
	for i, w := range o.windows {
		unix.Munmap(w)
		delete(o.windows, i)
	}
	o.mapMu.Unlock()
	return o.f.Close()
}

// isDevice reports whether path names an existing block device.
func isDevice(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeDevice != 0
}
