package poolvol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
)

// Devices makes volumes block devices of this node: nodevolume's attachments without a file
// system.
type Devices interface {
	// Attach makes the volume a block device under the export id and returns its path.
	Attach(ctx context.Context, id string, vol blockstore.VolumeID) (string, error)
	// Detach tears the device of id down (flushing the volume); an id that is not attached is
	// not an error.
	Detach(ctx context.Context, id string) error
}

// WithDevices returns the node whose pool store reaches (in another process: the data plane)
// and whose volumes are read and written through the block devices devs makes, named by the
// sources' and sinks' export ids. blockSize is the pool's.
func WithDevices(store Store, devs Devices, blockSize int, log *slog.Logger) *Node {
	return &Node{store: store, blockSize: blockSize, log: discardIfNil(log),
		open: func(ctx context.Context, id string, vol blockstore.VolumeInfo, write bool) (handle, error) {
			// What an interrupted push or pull left under the id goes first.
			if err := devs.Detach(ctx, id); err != nil {
				return nil, fmt.Errorf("detach %s: %w", id, err)
			}
			path, err := devs.Attach(ctx, id, vol.ID)
			if err != nil {
				return nil, err
			}
			flags := os.O_RDONLY
			if write {
				// A pull writes with direct I/O: each chunk goes down to the data plane as
				// it is written, by the pull's workers in parallel, while the next chunks
				// download. Through the page cache the whole image would be written back
				// by the final flush alone, after the last download (2.3× the time,
				// BENCHMARKS.md section 14).
				flags = os.O_RDWR | unix.O_DIRECT
			}
			f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, errors.Join(err, devs.Detach(context.WithoutCancel(ctx), id))
			}
			return &deviceHandle{f: f, id: id, devs: devs, direct: write, align: blockSize}, nil
		}}
}

// deviceHandle is a volume's block device, open.
type deviceHandle struct {
	f    *os.File
	id   string
	devs Devices
	// direct: f does direct I/O, whose buffers, offsets and lengths are multiples of align
	// (the pool's block size, the device's logical block size); others go through a bounce
	// buffer.
	direct bool
	align  int
}

func (h *deviceHandle) ReadAt(b []byte, off int64) (int, error) {
	if !h.direct || h.aligned(b, off) {
		return h.f.ReadAt(b, off)
	}
	bb, lo := h.bounce(b, off)
	n, err := h.f.ReadAt(bb, off-int64(lo))
	n = max(0, min(n-lo, len(b)))
	copy(b, bb[lo:lo+n])
	if err == nil && n < len(b) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (h *deviceHandle) WriteAt(b []byte, off int64) (int, error) {
	if !h.direct || h.aligned(b, off) {
		return h.f.WriteAt(b, off)
	}
	bb, lo := h.bounce(b, off)
	if lo != 0 || len(bb) != len(b) {
		// Read-modify-write of the blocks the write covers in part.
		if _, err := h.f.ReadAt(bb, off-int64(lo)); err != nil {
			return 0, err
		}
	}
	copy(bb[lo:], b)
	if _, err := h.f.WriteAt(bb, off-int64(lo)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// aligned reports whether direct I/O can take b at off as it is.
func (h *deviceHandle) aligned(b []byte, off int64) bool {
	a := h.align
	return len(b) > 0 && off%int64(a) == 0 && len(b)%a == 0 && uintptr(unsafe.Pointer(&b[0]))%uintptr(a) == 0
}

// bounce returns an aligned buffer covering the blocks of b at off, and where b starts in it.
func (h *deviceHandle) bounce(b []byte, off int64) ([]byte, int) {
	a := int64(h.align)
	start := off / a * a
	end := (off + int64(len(b)) + a - 1) / a * a
	return alignedBuffer(int(end-start), h.align), int(off - start)
}

// alignedBuffer returns n bytes whose address is a multiple of align.
func alignedBuffer(n, align int) []byte {
	buf := make([]byte, n+align)
	skip := (align - int(uintptr(unsafe.Pointer(&buf[0]))%uintptr(align))) % align
	return buf[skip : skip+n : skip+n]
}

// zero punches the range out of the device (the export unmaps whole blocks and zeroes the
// rest); a device that cannot (EOPNOTSUPP) gets zeros written.
func (h *deviceHandle) zero(off, length int64) error {
	err := unix.Fallocate(int(h.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	zeros := alignedBuffer(int(min(length, 1<<20)), h.align)
	for length > 0 {
		n := min(length, int64(len(zeros)))
		if _, err := h.f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

func (h *deviceHandle) flush() error { return h.f.Sync() }

// close closes the device and detaches it (once).
func (h *deviceHandle) close(ctx context.Context) error {
	if h.f == nil {
		return nil
	}
	err := h.f.Close()
	h.f = nil
	if derr := h.devs.Detach(ctx, h.id); derr != nil {
		err = errors.Join(err, fmt.Errorf("detach %s: %w", h.id, derr))
	}
	return err
}
