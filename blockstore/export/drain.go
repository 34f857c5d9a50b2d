package export

import (
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// Drain waits for the requests in the loop device's queue. LOOP_SET_STATUS64 with the device's
// own status changes nothing, but the loop driver freezes its request queue around it
// (drivers/block/loop.c, loop_set_status: blk_mq_freeze_queue; measured on Linux 6.18 by
// TestDrainWaitsForSubmittedIO): the freeze waits until every request that entered the queue
// has completed, and holds new ones at the queue's entry until it ends. The FUSE server keeps
// serving meanwhile, so the requests complete. The loop driver serializes the work of a device
// behind a flush (it fsyncs the FUSE file synchronously), so requests queued there can wait for
// several flushes before they reach the FUSE server: without the freeze, a stop would find them
// not yet received.
func (dev *fuseDevice) Drain() error {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.mu.detached || dev.mu.closed {
		return dev.fail("drain", invalidf("device is closed"))
	}
	if err := loopDrain(dev.loop); err != nil {
		return dev.fail("drain loop device", err)
	}
	return nil
}

// loopDrain freezes and unfreezes loop device n's request queue (see fuseDevice.Drain).
func loopDrain(n int) error {
	f, err := openLoop(n, os.O_RDWR)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return fmt.Errorf("LOOP_GET_STATUS64: %w", err)
	}
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), info); err != nil {
		return fmt.Errorf("LOOP_SET_STATUS64: %w", err)
	}
	return nil
}

// Handover stops the FUSE server for the next process (see Device.Handover), once the holder
// says it holds the connection.
func (dev *fuseDevice) Handover() error {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.mu.detached || dev.mu.closed {
		return dev.fail("hand over", invalidf("device is closed"))
	}
	if !dev.held {
		return dev.fail("hand over", wrapf(ErrNoHolder, "this exporter has no holder (Options.Holder)"))
	}
	keys, err := dev.e.link.keys()
	if err != nil {
		return dev.fail("hand over", err)
	}
	if !slices.Contains(keys, dev.dir) {
		return dev.fail("hand over", wrapf(ErrNoHolder, "the holder does not hold the connection (it restarted, and this process has not put it back yet)"))
	}
	if err := dev.conn.srv.Stop(); err != nil {
		return dev.fail("hand over", err)
	}
	dev.log.Info("handed over: the connection waits in the holder for the next process", "device", dev.Path())
	return nil
}
