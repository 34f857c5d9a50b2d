package export

import (
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"

	"github.com/dataimage/dataimage/blockstore"
)

// A full pool and a full file system under the pool file reach the kernel as ENOSPC (the
// writer sees "No space left on device"), other errors as themselves or EIO.
func TestErrnoMapping(t *testing.T) {
	f := &diskFile{log: slog.New(slog.DiscardHandler)}
	hostFull := fmt.Errorf("%w: write block 7: %w", blockstore.ErrHostFull, &os.PathError{Op: "write", Path: "pool", Err: syscall.EDQUOT})
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{blockstore.ErrNoSpace, syscall.ENOSPC},
		{hostFull, syscall.ENOSPC},
		{fmt.Errorf("write: %w", syscall.EROFS), syscall.EROFS},
		{blockstore.ErrFailed, syscall.EIO},
	} {
		if got := f.errno("write", 0, 4096, tc.err); got != tc.want {
			t.Errorf("errno(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
