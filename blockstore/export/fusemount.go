package export

// The FUSE side of an export is served by package fusedev, our own /dev/fuse request loop: it
// opens the connection close-on-exec and mounts it with mount(2) (no process this one starts
// inherits the connection, so the kernel aborts it when this process dies with nobody holding
// it), negotiates INIT, and answers each request inline in a worker against the Disk.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/blockio"
	"github.com/dataimage/dataimage/blockstore/export/fusedev"
)

// diskName is the name of the file that is the Disk, in the root of the export's mount.
const diskName = fusedev.FileName

// fuseMaxWrite is the largest FUSE read or write (the kernel may clamp it): 1 MiB less one page.
const fuseMaxWrite = fusedev.DefaultMaxWrite

// fuseMaxBackground bounds the asynchronous requests the kernel keeps in flight to the server.
// With FUSE_ASYNC_DIO the loop device's direct I/O reaches FUSE asynchronously, so this is the
// queue depth into the server. FUSE_ASYNC_DIO is what matters: 4 KiB random I/O at queue depth
// 32 on 2 cores went from 6.1k to 19.9k read IOPS and 5.5k to 17.0k write IOPS with it; 128
// instead of the kernel default 12 measured within noise there (19.9k vs 18.9k), and is kept
// for nodes with more cores.
const fuseMaxBackground = 128

// fuseWorkers bounds the requests an export's server serves at once for a Disk that takes its
// I/O one request at a time (fusedev.Config.MaxWorkers): the Disk is synchronous, so this is the
// queue depth it sees. The server reads from one descriptor: no clones (FUSE_DEV_IOC_CLONE).
// Measured with hack/fusebench (4 KiB random I/O at queue depth 32, pool volume, 2 cores): 4, 8,
// 16 and 64 workers, with 0, 1 or 3 clones, all gave the same IOPS within the noise (reads 0.28
// to 0.55 of a loop device over a raw file, writes 0.33 to 0.72) and 50 to 100 µs of CPU per I/O
// in the server, 2.2 to 3.1 context switches per I/O: the cost is each request's synchronous
// pool I/O (a zero Disk serves 52k IOPS, 1.9 times the raw loop device, at 8 µs per I/O).
const fuseWorkers = 64

// fuseBatchWorkers and fuseBatch configure the server of a Disk that takes batches (a pool
// volume, blockio.BatchDisk): each worker reads up to fuseBatch waiting requests and submits
// their pool I/O at once, and a few workers keep the queue full while others wait for their
// batch. Measured with hack/fusebench (same setup as above, 2 rounds of 6 s, a machine at load
// 8-16): 64 workers serving one request each 0.35× / 0.60× (reads / writes) at 57 / 72 µs of CPU
// per I/O; batches of 32 with 2 workers 0.66-0.92× / 0.92-1.24×, 25-35 µs; with 4 workers
// 0.70-0.82× / 0.69-1.38×, 26-44 µs; with 8 workers 0.60× / 1.04×, 32-41 µs. More workers make
// more, smaller batches (more system calls per I/O); 4 rather than 2 keeps I/O going while
// some wait for a flush.
const (
	fuseBatchWorkers = 4
	fuseBatch        = 32
)

// fuseSource is the source of an export's FUSE mount, as /proc/self/mountinfo shows it.
func fuseSource(id string) string { return "dataimage:" + id }

// fuseConn is an export's FUSE connection and its server.
type fuseConn struct {
	fds []int // the connection's descriptors (Mount's, then its clones); closed by close
	srv *fusedev.Server
}

// mountFUSE mounts a new FUSE connection at dir whose one file is to be a Disk, negotiates INIT,
// and returns the connection's descriptors and what INIT negotiated. Nothing serves it yet. On
// failure nothing is left mounted.
func mountFUSE(dir, id string, bs int, log *slog.Logger) ([]int, fusedev.Params, error) {
	fd, err := fusedev.Mount(dir, fuseSource(id), fuseMaxWrite)
	if err != nil {
		return nil, fusedev.Params{}, err
	}
	fds := []int{fd}
	fail := func(err error) ([]int, fusedev.Params, error) {
		_, uerr := unmount(dir)
		closeFDs(fds)
		return nil, fusedev.Params{}, errors.Join(err, uerr)
	}
	p, err := fusedev.Init(fd, fusedev.InitOptions{MaxWrite: fuseMaxWrite, MaxBackground: fuseMaxBackground, BlockSize: bs})
	if err != nil {
		return fail(fmt.Errorf("FUSE INIT: %w", err))
	}
	if p.RequestTimeout != 0 {
		log.Warn("FUSE requests time out on this node (fs.fuse.default_request_timeout / max_request_timeout): a server that stalls longer aborts the export",
			"timeout", p.RequestTimeout)
	}
	return fds, p, nil
}

// serveFUSE serves d on the connection mounted at dir, new (Serve) or left by an earlier server
// (adopt: Adopt). On failure the connection is as it was and fds are still the caller's.
func serveFUSE(dir string, fds []int, p fusedev.Params, d Disk, adopt bool, log *slog.Logger) (*fuseConn, error) {
	cfg := fusedev.Config{Logger: log, MaxWorkers: fuseWorkers}
	if _, ok := d.(blockio.BatchDisk); ok {
		cfg.MaxWorkers, cfg.Batch = fuseBatchWorkers, fuseBatch
	}
	serve := fusedev.Serve
	if adopt {
		serve = fusedev.Adopt
	}
	srv, err := serve(fds, p, d, cfg)
	if err != nil {
		return nil, err
	}
	c := &fuseConn{fds: fds, srv: srv}
	if err := pollProbe(dir); err != nil {
		if serr := srv.Stop(); serr != nil {
			log.Error("stop the FUSE server after a failed probe", "err", serr)
		}
		return nil, err
	}
	return c, nil
}

// close waits for the server to end (after the unmount) and closes the connection's descriptors.
func (c *fuseConn) close() {
	if c.srv != nil {
		c.srv.Wait()
	}
	closeFDs(c.fds)
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// pollProbe opens and polls the export's file once: the server answers FUSE_POLL with ENOSYS, and
// the kernel never asks again. Otherwise the first os.OpenFile of the file in this process would
// poll it when the Go runtime registers the file with epoll, a call that holds its thread's P
// while it waits for this very server (with GOMAXPROCS=1, forever). The file is opened with
// open(2), never registered.
func pollProbe(dir string) error {
	path := filepath.Join(dir, diskName)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open for the poll probe", Path: path, Err: err}
	}
	defer unix.Close(fd)
	// The result does not matter: the request is what tells the kernel.
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return nil
}

// openDisk opens the export's file for the loop device, with open(2) and not os.OpenFile: a
// blocking descriptor, which the Go runtime does not register with epoll.
func openDisk(dir string) (*os.File, error) {
	path := filepath.Join(dir, diskName)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
