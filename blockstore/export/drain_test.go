package export_test

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestDrainWaitsForSubmittedIO: Device.Drain returns only once a write submitted before it has
// been answered (it holds in the Disk until released), a write submitted during the drain goes
// on after it, both land, and the device keeps its configuration (direct I/O) and serves on.
func TestDrainWaitsForSubmittedIO(t *testing.T) {
	needRoot(t)
	p, _ := newPool(t, 64<<20)
	vol := newVolume(t, p, "v", 16<<20)
	e, _ := newExporter(t)
	disk := &nodetest.HoldingDisk{Disk: vol}
	dev, err := e.Export("drain", disk)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, dev.Close()) })
	f, err := os.OpenFile(dev.Path(), os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer f.Close()
	dioBefore, err := os.ReadFile("/sys/block/" + dev.Path()[len("/dev/"):] + "/loop/dio")
	require.NoError(t, err)

	entered, release := disk.Hold()
	t.Cleanup(release)
	first := make(chan error, 1)
	go func() { _, err := f.WriteAt(pattern(1, 4096), 0); first <- err }()
	<-entered // the write is in the server, unanswered

	drained := make(chan error, 1)
	go func() { drained <- dev.Drain() }()
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a write submitted before it was unanswered", err)
	case <-time.After(500 * time.Millisecond):
	}
	// Submitted during the drain: it waits in the kernel (the queue is frozen).
	second := make(chan error, 1)
	go func() { _, err := f.WriteAt(pattern(2, 4096), 4096); second <- err }()

	release()
	require.NoError(t, <-first)
	require.NoError(t, <-drained)
	require.NoError(t, <-second)
	require.Equal(t, pattern(1, 4096), readVolume(t, vol, 0, 4096))
	require.Equal(t, pattern(2, 4096), readVolume(t, vol, 4096, 4096))

	dioAfter, err := os.ReadFile("/sys/block/" + dev.Path()[len("/dev/"):] + "/loop/dio")
	require.NoError(t, err)
	require.Equal(t, string(dioBefore), string(dioAfter), "direct I/O unchanged")
	_, err = f.WriteAt(pattern(3, 4096), 8192)
	require.NoError(t, err)
	require.Equal(t, pattern(3, 4096), readVolume(t, vol, 8192, 4096))
	require.NoError(t, dev.Drain(), "nothing in flight: returns at once")
}
