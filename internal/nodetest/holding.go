package nodetest

import (
	"sync"

	"github.com/dataimage/dataimage/blockstore/export"
)

// HoldingDisk is a Disk whose next write, once Hold is armed, waits until released: a request
// the kernel has submitted and its server has read and not answered yet.
type HoldingDisk struct {
	export.Disk
	mu      sync.Mutex
	armed   bool
	entered chan struct{} // closed when the held write begins
	release chan struct{} // the held write goes on once it is closed
}

// Hold arms the disk: the next write waits until release is called. entered is closed when it
// begins.
func (h *HoldingDisk) Hold() (entered <-chan struct{}, release func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.armed = true
	in, rel := make(chan struct{}), make(chan struct{})
	h.entered, h.release = in, rel
	var once sync.Once
	return in, func() { once.Do(func() { close(rel) }) }
}

// WriteAt writes through to the Disk, after waiting for the release if Hold armed it.
func (h *HoldingDisk) WriteAt(p []byte, off int64) (int, error) {
	h.mu.Lock()
	armed, entered, release := h.armed, h.entered, h.release
	h.armed = false
	h.mu.Unlock()
	if armed {
		close(entered)
		<-release
	}
	return h.Disk.WriteAt(p, off)
}
