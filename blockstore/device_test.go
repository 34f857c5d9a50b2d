package blockstore_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
)

// A pool on a block device (a loop device here) is used whole, survives a reopen, and
// Discard reaches the device.
func TestPoolOnBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach a loop device")
	}
	dev := attachLoop(t, 64<<20)

	for _, direct := range []bool{false, true} {
		p, err := blockstore.Create(dev, blockstore.Options{Size: 1 << 20, DirectIO: direct}) // Size is ignored for a device
		require.NoError(t, err)
		st := p.Stats()
		require.Greater(t, st.PhysicalBytes, int64(60<<20), "the whole 64 MiB device is used")
		info, err := p.CreateVolume("v", 16<<20)
		require.NoError(t, err)
		vol, _ := p.Volume(info.ID)
		data := pattern(7, 3<<20+123)
		_, err = vol.WriteAt(data, 4096+17)
		require.NoError(t, err)
		snap, err := p.CreateSnapshot(info.ID, "s")
		require.NoError(t, err)
		require.NoError(t, vol.Discard(0, 1<<20))
		require.NoError(t, p.Close())

		p, err = blockstore.Open(dev, blockstore.Options{DirectIO: direct})
		require.NoError(t, err)
		sv, err := p.SnapshotView(snap.ID)
		require.NoError(t, err)
		mustEqual(t, mustRead(t, sv, 4096+17, len(data)), data, "snapshot on the device")
		vol, _ = p.Volume(info.ID)
		mustEqual(t, mustRead(t, vol, 0, 1<<20), make([]byte, 1<<20), "discarded range")
		mustCheckClose(t, p)
	}
}

// attachLoop attaches a loop device over a new file of size bytes, detached at cleanup, and
// returns its path. REQUIRES root.
func attachLoop(t testing.TB, size int64) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.WriteFile(backing, nil, 0o600))
	require.NoError(t, os.Truncate(backing, size))
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	require.NoError(t, err, "losetup: %s", out)
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}
