package poolvol

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A handle doing direct I/O takes any buffer, offset and length: what is not aligned to the
// block size goes through a bounce buffer (read-modify-write of the blocks a write covers in
// part), and reads and writes land as on a file without direct I/O.
func TestDeviceHandleDirectUnaligned(t *testing.T) {
	const bs, size = 4096, 64 * 4096
	path := filepath.Join(t.TempDir(), "dev")
	require.NoError(t, os.WriteFile(path, make([]byte, size), 0o600))
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no direct I/O on %s: %v", filepath.Dir(path), err)
	}
	defer f.Close()
	h := &deviceHandle{f: f, direct: true, align: bs}
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		off := rng.Int64N(size - 1)
		n := 1 + rng.IntN(int(min(3*bs, size-off)))
		if i%4 == 0 { // aligned offset and length in an unaligned buffer
			off = off / bs * bs
			n = max(bs, n/bs*bs)
			n = int(min(int64(n), size-off))
		}
		// One byte into a larger buffer: never aligned to the block size.
		buf := make([]byte, n+1)[1:]
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		k, err := h.WriteAt(buf, off)
		require.NoError(t, err, "write %d bytes at %d", n, off)
		require.Equal(t, n, k)
		copy(model[off:], buf)

		roff := rng.Int64N(size - 1)
		rn := 1 + rng.IntN(int(min(3*bs, size-roff)))
		got := make([]byte, rn+1)[1:]
		k, err = h.ReadAt(got, roff)
		require.NoError(t, err, "read %d bytes at %d", rn, roff)
		require.Equal(t, rn, k)
		require.True(t, bytes.Equal(model[roff:roff+int64(rn)], got), "read %d bytes at %d after %d writes", rn, roff, i+1)
	}
	all, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(model, all), "the file holds what was written")
}
