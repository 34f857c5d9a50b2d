// Package fusedev serves a Disk as the one regular file of a FUSE file system, speaking the
// classic /dev/fuse protocol itself, and serves a connection it did not make: one that a server
// which died (or stopped for an upgrade) left to a holder process (package holder).
//
// # The request loop
//
// Workers, goroutines each with buffers of their own, read requests from /dev/fuse, serve them
// inline against the Disk (a read lands in the buffer the reply is written from; a write is
// served from the buffer it was read into, page-aligned), and answer each with one write(2) or
// writev(2) of the header and the data: no copy, no handoff to another goroutine, no allocation.
// The descriptors are non-blocking: a worker that finds no request waits in epoll_wait on its own
// epoll set (EPOLLEXCLUSIVE, so a request wakes one waiter), where Stop can wake it too. A worker
// that takes a request while no other waits starts another, up to Config.MaxWorkers. Workers
// idle for idleTimeout exit, down to one.
//
// With a Disk that takes batches (blockio.BatchDisk, as a pool volume does), a worker that got a
// request reads the others waiting too, up to Config.Batch, and hands the reads and writes among
// them to the Disk as one batch, which submits their I/O at once (one system call, one wait);
// then it answers them, and serves the other requests. With a plain Disk, each request is served
// on its own and the workers serving at once are the queue depth the Disk sees.
//
// # Adoption
//
// Mount and Init make a connection and return its descriptor and Params (what INIT negotiated).
// Serve serves them. A holder keeps a copy of every descriptor and the Params; when the serving
// process dies, the connection stays (a FUSE connection ends when its last descriptor closes),
// requests queue in the kernel (no timeout: see RequestTimeout), and a new process Adopts it: it
// asks the kernel to queue again every request the dead server had read and not answered
// (FUSE_NOTIFY_RESEND, Linux 6.9; the kernel marks them in the unique's top bit) and serves on. The
// requests served twice are reads, writes of the same data to the same place, flushes and
// discards: doing them again changes nothing.
//
// Stop ends serving for a handover without touching the connection: no new request is read,
// those being served are answered, the Disk is flushed.
//
// It must not know loop devices, holders or the pool: it serves any Disk on a connection it is
// given.
package fusedev

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Disk is what a Server serves: export.Disk, whose contract is told there. Size may grow while
// served (call Server.InvalidateFile after it did).
type Disk interface {
	io.ReaderAt
	io.WriterAt
	Flush() error
	Discard(off, n int64) error
	Size() int64
}

// WriteZeroer is implemented by a Disk that zeroes ranges other than by discarding them.
type WriteZeroer interface {
	WriteZeroes(off, n int64) error
}

// Config configures a Server. Zero values pick the defaults.
type Config struct {
	// MaxWorkers bounds the workers, each serving one request or one batch at a time.
	// Default 64.
	MaxWorkers int
	// Batch is the most requests a worker reads before serving them, when the Disk takes its
	// I/O in batches (blockio.BatchDisk): their READs and WRITEs then go to the Disk in one
	// batch. Default 16; 1 serves each request on its own.
	Batch int
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
}

const (
	defaultMaxWorkers = 64
	defaultBatch      = 16
	// idleTimeout is how long a worker beyond the first waits for a request before it exits.
	idleTimeout = 2 * time.Second
)

// Server serves a Disk on a FUSE connection.
type Server struct {
	p     Params
	disk  Disk
	zero  WriteZeroer // disk's, or nil
	fds   []int
	log   *slog.Logger
	max   int32 // Config.MaxWorkers
	batch int   // Config.Batch
	uid   uint32
	gid   uint32

	stopfd   int         // eventfd in every worker's epoll set, readable once stopping
	stopping atomic.Bool // no worker reads another request
	workers  atomic.Int32
	idle     atomic.Int32 // workers looking for a request
	next     atomic.Uint32
	wg       sync.WaitGroup // workers
	done     chan struct{}  // closed when the last worker exited
	requests atomic.Uint64  // requests read
	resent   atomic.Uint64  // of which the kernel sent again (FUSE_NOTIFY_RESEND)

	mu struct {
		sync.Mutex
		err        error // what ended serving other than Stop or the connection's end
		stopped    bool  // Stop was called
		stopClosed bool  // stopfd is closed (the last worker exited)
	}
}

// Serve serves d on the connection whose descriptors are fds (the one from Mount, and clones of
// it) with the Params that Init returned. The descriptors stay the caller's: the Server never
// closes them, and sets them non-blocking. Serving ends when the connection does (Wait) or at Stop.
func Serve(fds []int, p Params, d Disk, cfg Config) (*Server, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	if len(fds) == 0 {
		return nil, wrapf(ErrInvalid, "no descriptors")
	}
	s, err := newServer(fds, p, d, cfg)
	if err != nil {
		return nil, err
	}
	s.start()
	return s, nil
}

// Adopt serves a connection that another server (dead, or stopped) served: it checks the
// connection is alive, asks the kernel to queue again the requests that server read and did not
// answer, and serves d on it like Serve. A kernel without FUSE_NOTIFY_RESEND (before 6.9) fails
// it with ErrUnsupported, a dead connection with ErrDisconnected; the descriptors are untouched.
func Adopt(fds []int, p Params, d Disk, cfg Config) (*Server, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	if len(fds) == 0 {
		return nil, wrapf(ErrInvalid, "no descriptors")
	}
	if !p.CanResend() {
		return nil, wrapf(ErrUnsupported, "the kernel cannot resend requests (FUSE_NOTIFY_RESEND needs Linux 6.9)")
	}
	s, err := newServer(fds, p, d, cfg)
	if err != nil {
		return nil, err
	}
	// Connected? The device polls POLLERR once the connection is gone.
	pfd := []unix.PollFd{{Fd: int32(fds[0]), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, 0); err != nil && err != unix.EINTR {
		s.closeStop()
		return nil, &os.SyscallError{Syscall: "poll /dev/fuse", Err: err}
	}
	if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
		s.closeStop()
		return nil, wrapf(ErrDisconnected, "adopt: connection aborted while unserved")
	}
	// Before any worker reads: a request a worker of this server had read would be queued again
	// too, and its reply discarded.
	if err := s.notify(notifyResend, nil); err != nil {
		s.closeStop()
		return nil, fmt.Errorf("FUSE_NOTIFY_RESEND: %w", err)
	}
	if p.RequestTimeout != 0 {
		s.log.Warn("the connection has a request timeout: a restart slower than it aborts the connection",
			"timeout", time.Duration(p.RequestTimeout)*time.Second)
	}
	s.start()
	return s, nil
}

func newServer(fds []int, p Params, d Disk, cfg Config) (*Server, error) {
	if cfg.MaxWorkers == 0 {
		cfg.MaxWorkers = defaultMaxWorkers
	}
	if cfg.MaxWorkers < 1 || cfg.MaxWorkers > 4096 {
		return nil, wrapf(ErrInvalid, "max workers %d: want 1 to 4096", cfg.MaxWorkers)
	}
	if cfg.Batch == 0 {
		cfg.Batch = defaultBatch
	}
	if cfg.Batch < 1 || cfg.Batch > 256 {
		return nil, wrapf(ErrInvalid, "batch %d: want 1 to 256", cfg.Batch)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, fd := range fds {
		if err := unix.SetNonblock(fd, true); err != nil {
			return nil, &os.SyscallError{Syscall: "set /dev/fuse non-blocking", Err: err}
		}
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, &os.SyscallError{Syscall: "eventfd", Err: err}
	}
	s := &Server{
		p: p, disk: d, fds: append([]int(nil), fds...), log: cfg.Logger, max: int32(cfg.MaxWorkers), batch: cfg.Batch,
		uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()),
		stopfd: stopfd, done: make(chan struct{}),
	}
	s.zero, _ = d.(WriteZeroer)
	return s, nil
}

func (s *Server) start() {
	s.workers.Store(1)
	s.idle.Store(1)
	s.wg.Add(1)
	go s.worker(s.fds[0])
	go func() {
		s.wg.Wait()
		s.closeStop()
		close(s.done)
	}()
}

func (s *Server) closeStop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.stopClosed {
		s.mu.stopClosed = true
		unix.Close(s.stopfd)
	}
}

// wakeLocked makes stopfd readable: every worker's epoll_wait returns, and stays returning
// (level-triggered). REQUIRES: s.mu.
func (s *Server) wakeLocked() {
	if s.mu.stopClosed {
		return
	}
	var one [8]byte
	one[0] = 1
	if _, err := unix.Write(s.stopfd, one[:]); err != nil && err != unix.EAGAIN {
		s.log.Error("wake workers", "err", err)
	}
}

// spawn starts another worker unless MaxWorkers run. A worker that takes the last idle slot calls
// it, so that a request arriving meanwhile finds a reader.
func (s *Server) spawn() {
	for {
		n := s.workers.Load()
		if n >= s.max || s.stopping.Load() {
			return
		}
		if s.workers.CompareAndSwap(n, n+1) {
			break
		}
	}
	s.idle.Add(1)
	s.wg.Add(1)
	fd := s.fds[int(s.next.Add(1))%len(s.fds)]
	go s.worker(fd)
}

// retire reports whether an idle worker may exit: one always stays.
func (s *Server) retire() bool {
	for {
		n := s.workers.Load()
		if n <= 1 {
			return false
		}
		if s.workers.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// Stop stops serving for a handover: workers read no new request, those being served are
// answered, then the Disk is flushed. The connection stays: requests wait in the kernel for the
// next server (Adopt). Stop returns the flush's error; it is idempotent.
func (s *Server) Stop() error {
	s.stopping.Store(true)
	s.mu.Lock()
	if !s.mu.stopped {
		s.mu.stopped = true
		s.wakeLocked()
	}
	s.mu.Unlock()
	<-s.done
	if err := s.disk.Flush(); err != nil {
		return fmt.Errorf("flush disk: %w", err)
	}
	return nil
}

// Wait returns when serving has ended: after Stop, or when the connection ended (unmounted or
// aborted). It returns an error only if serving failed otherwise.
func (s *Server) Wait() error {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.err
}

// Done is closed when serving has ended.
func (s *Server) Done() <-chan struct{} { return s.done }

// Stats are counts of a Server's work.
type Stats struct {
	// Requests is the number of requests read.
	Requests uint64
	// Resent is the number of those that the kernel sent again after FUSE_NOTIFY_RESEND: read
	// by an earlier server, which did not answer them.
	Resent uint64
	// Workers is the number of workers now.
	Workers int
}

// Stats returns counts of the server's work so far.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.requests.Load(), Resent: s.resent.Load(), Workers: int(s.workers.Load())}
}

// Params returns the connection's parameters.
func (s *Server) Params() Params { return s.p }

func (s *Server) fail(err error) {
	s.log.Error("FUSE server failed", "err", err)
	// The other workers stop too: a server that cannot read its requests serves none.
	s.stopping.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.err == nil {
		s.mu.err = err
	}
	s.wakeLocked()
}

// InvalidateFile tells the kernel that the file's size may have changed (after the Disk grew): its
// next stat asks the server.
func (s *Server) InvalidateFile() error {
	err := s.notify(notifyInvalInode, ptrBytes(&notifyInvalInodeOut{Ino: fileID, Off: -1}))
	if errors.Is(err, unix.ENOENT) { // the kernel has no inode cached: nothing to invalidate
		return nil
	}
	return err
}

// notify sends a notification to the kernel.
func (s *Server) notify(code int32, payload []byte) error {
	var hdr outHeader
	hdr.Len = uint32(outHeaderSize + len(payload))
	hdr.Error = code
	iov := [2]unix.Iovec{{Base: (*byte)(ptr(&hdr)), Len: uint64(outHeaderSize)}}
	n := 1
	if len(payload) > 0 {
		iov[1] = unix.Iovec{Base: &payload[0], Len: uint64(len(payload))}
		n = 2
	}
	if err := writev(s.fds[0], iov[:n]); err != 0 {
		if err == unix.ENODEV {
			return ErrDisconnected
		}
		if err == unix.EINVAL && code == notifyResend {
			return wrapf(ErrUnsupported, "FUSE_NOTIFY_RESEND: %v (needs Linux 6.9)", err)
		}
		return &os.SyscallError{Syscall: "write /dev/fuse", Err: err}
	}
	return nil
}
