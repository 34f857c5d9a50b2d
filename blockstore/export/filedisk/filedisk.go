// Package filedisk serves a regular file as an export.Disk: what tests and benchmarks export
// when the block store is not what they look at (the kernel path of an export, a server's
// restart). Opened without O_DIRECT, what it acknowledges is in the page cache, so it survives
// the death of the process that wrote it. It must not know the block store: it is the baseline
// beside it.
package filedisk

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Disk is a file of a fixed size, read and written in place.
type Disk struct {
	f    *os.File
	size int64
}

// Open opens the file at path read-write with the extra flags (e.g. unix.O_DIRECT); the Disk's
// size is the file's size, which must be positive.
func Open(path string, flag int) (*Disk, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC|flag, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && st.Size() <= 0 {
		err = fmt.Errorf("filedisk: %s is empty", path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Disk{f: f, size: st.Size()}, nil
}

// ReadAt reads len(p) bytes at off (io.ReaderAt).
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) && n == len(p) {
		err = nil
	}
	return n, err
}

// WriteAt writes p at off (io.WriterAt).
func (d *Disk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }

// Flush makes the writes durable (fsync).
func (d *Disk) Flush() error { return d.f.Sync() }

// Discard punches a hole: the range reads as zeros.
func (d *Disk) Discard(off, n int64) error {
	if err := unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
		return &os.PathError{Op: "punch hole", Path: d.f.Name(), Err: err}
	}
	return nil
}

// Size is the file's size when it was opened.
func (d *Disk) Size() int64 { return d.size }

// Close closes the file.
func (d *Disk) Close() error { return d.f.Close() }
