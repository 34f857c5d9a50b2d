package poolvol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

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
				flags = os.O_RDWR
			}
			f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, errors.Join(err, devs.Detach(context.WithoutCancel(ctx), id))
			}
			return &deviceHandle{f: f, id: id, devs: devs}, nil
		}}
}

// deviceHandle is a volume's block device, open.
type deviceHandle struct {
	f    *os.File
	id   string
	devs Devices
}

func (h *deviceHandle) ReadAt(b []byte, off int64) (int, error)  { return h.f.ReadAt(b, off) }
func (h *deviceHandle) WriteAt(b []byte, off int64) (int, error) { return h.f.WriteAt(b, off) }

// zero punches the range out of the device (the export unmaps whole blocks and zeroes the
// rest); a device that cannot (EOPNOTSUPP) gets zeros written.
func (h *deviceHandle) zero(off, length int64) error {
	err := unix.Fallocate(int(h.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	zeros := make([]byte, min(length, 1<<20))
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
