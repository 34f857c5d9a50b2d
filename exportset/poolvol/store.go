package poolvol

import (
	"context"
	"log/slog"

	"github.com/dataimage/dataimage/blockstore"
)

// IOStore is a Store that also moves its volumes' data: a data plane's (dataplane.Store has
// these methods, over its socket).
type IOStore interface {
	Store
	ReadVolume(ctx context.Context, id blockstore.VolumeID, off int64, b []byte) error
	WriteVolume(ctx context.Context, id blockstore.VolumeID, off int64, b []byte) error
	ZeroVolume(ctx context.Context, id blockstore.VolumeID, off, length int64) error
	FlushVolume(ctx context.Context, id blockstore.VolumeID) error
}

// WithStore returns the node whose pool store reaches (in another process: the data plane),
// its volumes' data moving through the store's calls in pieces of at most maxIO bytes.
// blockSize is the pool's.
//
// Earlier versions read and wrote the volumes through block devices (a fuse-loop export per
// push or pull). Over the data plane's socket a pull of a 512 MiB image runs at about the
// speed of the raw download, through the loop device and FUSE at 0.7 of it even with direct
// I/O (BENCHMARKS.md section 14); and a push or pull holds no device that a crash could leave.
func WithStore(store IOStore, blockSize int, log *slog.Logger) *Node {
	return &Node{store: store, blockSize: blockSize, log: discardIfNil(log),
		open: func(ctx context.Context, _ string, vol blockstore.VolumeInfo, _ bool) (handle, error) {
			return storeHandle{s: store, vol: vol.ID, ctx: ctx}, nil
		}}
}

// maxIO bounds the data of one store call (the data plane takes up to 64 MiB).
const maxIO = 16 << 20

// storeHandle is a volume read and written through its store's calls, with the context of
// the push or pull that opened it.
type storeHandle struct {
	s   IOStore
	vol blockstore.VolumeID
	ctx context.Context
}

func (h storeHandle) ReadAt(b []byte, off int64) (int, error) {
	return h.pieces(b, off, h.s.ReadVolume)
}

func (h storeHandle) WriteAt(b []byte, off int64) (int, error) {
	return h.pieces(b, off, h.s.WriteVolume)
}

// pieces calls do on b at off in pieces of at most maxIO bytes.
func (h storeHandle) pieces(b []byte, off int64, do func(context.Context, blockstore.VolumeID, int64, []byte) error) (int, error) {
	done := 0
	for done < len(b) {
		n := min(len(b)-done, maxIO)
		if err := do(h.ctx, h.vol, off+int64(done), b[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (h storeHandle) zero(off, length int64) error { return h.s.ZeroVolume(h.ctx, h.vol, off, length) }
func (h storeHandle) flush() error                 { return h.s.FlushVolume(h.ctx, h.vol) }
func (h storeHandle) close(context.Context) error  { return nil }
