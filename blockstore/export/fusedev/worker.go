package fusedev

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/blockio"
)

// A slot is the buffer of one request, anonymous memory (page-aligned, outside the Go heap,
// touched only where used):
//
//	[0, pageSize)        a reply other than read data: header, then payload
//	[reqOff, dataOff)    a request's header and arguments: exactly those of READ and WRITE
//	[dataOff, ...)       a WRITE's data as the kernel copies it in, page-aligned for a Disk that
//	                     does direct I/O; or the data of a READ's reply
const (
	pageSize = 4096
	reqOff   = 2*pageSize - inHeaderSize - writeInSize
	dataOff  = 2 * pageSize
)

// slot is one request being served: its buffer, and the descriptor it was read from and is
// answered on.
type slot struct {
	s   *Server
	fd  int
	buf []byte
	iov [2]unix.Iovec
	n   int // length of the request read into buf
	h   inHeader
	arg []byte
}

type worker struct {
	s      *Server
	fd     int
	ep     int    // epoll set: fd (EPOLLEXCLUSIVE) and s.stopfd
	mem    []byte // the slots' buffers
	slots  []slot
	events [2]unix.EpollEvent

	// With a Disk that takes batches (blockio.BatchDisk): the worker reads up to len(slots)
	// requests before serving any, and does the Disk I/O of their READs and WRITEs in one
	// batch.
	batcher blockio.Batcher
	ops     []blockio.Op
	opSlot  []int       // slot of ops[i]
	other   []int       // slots of the other requests
	done    func(i int) // answers the request of ops[i] (w.finishOp)
}

func newWorker(s *Server, fd int) (*worker, error) {
	slotSize := (dataOff + int(s.p.MaxWrite) + pageSize + pageSize - 1) &^ (pageSize - 1)
	nslots := 1
	bd, batch := s.disk.(blockio.BatchDisk)
	batch = batch && s.batch > 1
	if batch {
		nslots = s.batch
	}
	mem, err := unix.Mmap(-1, 0, nslots*slotSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, &os.SyscallError{Syscall: "mmap worker buffers", Err: err}
	}
	w := &worker{s: s, fd: fd, ep: -1, mem: mem, slots: make([]slot, nslots)}
	for i := range w.slots {
		w.slots[i] = slot{s: s, fd: fd, buf: mem[i*slotSize : (i+1)*slotSize : (i+1)*slotSize]}
	}
	if batch {
		if w.batcher, err = bd.NewBatcher(nslots); err != nil {
			// E.g. fs.aio-max-nr reached: this worker serves one request at a time.
			s.log.Warn("worker serves requests one by one: no disk batcher", "err", err)
			w.batcher = nil
		}
	}
	if w.batcher != nil {
		w.done = w.finishOp
		w.ops = make([]blockio.Op, 0, nslots)
		w.opSlot = make([]int, 0, nslots)
		w.other = make([]int, 0, nslots)
	}
	if w.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		w.close()
		return nil, &os.SyscallError{Syscall: "epoll_create1", Err: err}
	}
	if err := unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}); err != nil {
		w.close()
		return nil, &os.SyscallError{Syscall: "epoll_ctl /dev/fuse", Err: err}
	}
	if err := unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, s.stopfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(s.stopfd)}); err != nil {
		w.close()
		return nil, &os.SyscallError{Syscall: "epoll_ctl eventfd", Err: err}
	}
	return w, nil
}

func (w *worker) close() {
	if w.ep >= 0 {
		unix.Close(w.ep)
	}
	if w.batcher != nil {
		if err := w.batcher.Close(); err != nil {
			w.s.log.Error("close disk batcher", "err", err)
		}
	}
	if err := unix.Munmap(w.mem); err != nil {
		w.s.log.Error("unmap worker buffers", "err", err)
	}
}

// worker reads, serves and answers requests on fd until the server stops, the connection ends,
// or it has been idle for idleTimeout while other workers run. The caller counted it in
// s.workers and s.idle.
func (s *Server) worker(fd int) {
	defer s.wg.Done()
	w, err := newWorker(s, fd)
	if err != nil {
		s.idle.Add(-1)
		s.workers.Add(-1)
		s.fail(err)
		return
	}
	defer w.close()
	for !s.stopping.Load() {
		n, errno := w.read(&w.slots[0])
		switch errno {
		case 0:
		case unix.EAGAIN:
			woken, err := w.wait()
			if err != nil {
				s.fail(err)
				goto out
			}
			if !woken && s.retire() {
				s.idle.Add(-1)
				return
			}
			continue
		case unix.EINTR, unix.ENOENT: // ENOENT: the request was interrupted while being read
			continue
		case unix.ENODEV, unix.ECONNABORTED:
			// Unmounted or aborted: every worker sees it (the device polls readable).
			s.stopping.Store(true)
			goto out
		default:
			s.fail(&os.SyscallError{Syscall: "read /dev/fuse", Err: errno})
			goto out
		}
		if s.idle.Add(-1) == 0 {
			s.spawn()
		}
		w.slots[0].n = n
		if w.batcher == nil {
			w.slots[0].serve(n)
		} else {
			w.serveBatch(w.gather())
		}
		s.idle.Add(1)
	}
out:
	s.idle.Add(-1)
	s.workers.Add(-1)
}

// gather reads more requests, after the one in slot 0, while there are some waiting and free
// slots, and returns how many slots hold one. What ends it other than an empty queue (the
// connection's end, an error) the next read in the worker's loop sees again.
func (w *worker) gather() int {
	n := 1
	for n < len(w.slots) && !w.s.stopping.Load() {
		k, errno := w.read(&w.slots[n])
		if errno == unix.EINTR || errno == unix.ENOENT {
			continue
		}
		if errno != 0 {
			break
		}
		w.slots[n].n = k
		n++
	}
	return n
}

// serveBatch serves the requests in the first n slots: the Disk I/O of the READs and WRITEs in
// one batch, each answered as soon as its I/O completed, then the others.
func (w *worker) serveBatch(n int) {
	w.ops, w.opSlot, w.other = w.ops[:0], w.opSlot[:0], w.other[:0]
	for i := range n {
		sl := &w.slots[i]
		h, arg, ok := sl.header(sl.n)
		if !ok {
			continue
		}
		sl.h, sl.arg = h, arg
		if op, ok := sl.diskOp(h, arg); ok {
			w.ops = append(w.ops, op)
			w.opSlot = append(w.opSlot, i)
		} else {
			w.other = append(w.other, i)
		}
	}
	if len(w.ops) > 0 {
		w.batcher.Do(w.ops, w.done) // each answered as soon as its I/O completed
		clear(w.ops)                // no buffers kept past the batch
	}
	for _, i := range w.other {
		sl := &w.slots[i]
		sl.dispatch(sl.h, sl.arg)
		sl.arg = nil
	}
}

// finishOp answers the request of ops[k].
func (w *worker) finishOp(k int) {
	sl := &w.slots[w.opSlot[k]]
	sl.finish(sl.h, &w.ops[k])
}

// read reads one request into sl's buffer at reqOff. The descriptor is non-blocking, so the call
// does not wait: a raw system call, which the scheduler need not know about.
func (w *worker) read(sl *slot) (int, unix.Errno) {
	b := sl.buf[reqOff:]
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(w.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), errno
}

// wait waits until a request may be there or the server stops. It reports false after
// idleTimeout without either.
func (w *worker) wait() (bool, error) {
	for {
		n, err := unix.EpollWait(w.ep, w.events[:], int(idleTimeout.Milliseconds()))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return false, &os.SyscallError{Syscall: "epoll_wait", Err: err}
		}
		return n > 0, nil
	}
}

// payload returns the reply area after the header.
func (w *slot) payload() []byte { return w.buf[outHeaderSize:pageSize] }

// reply answers request unique with errno (0: success) and the first n bytes of payload().
func (w *slot) reply(unique uint64, errno unix.Errno, n int) {
	h := (*outHeader)(unsafe.Pointer(&w.buf[0]))
	*h = outHeader{Len: uint32(outHeaderSize + n), Error: -int32(errno), Unique: unique}
	w.iov[0] = unix.Iovec{Base: &w.buf[0], Len: uint64(outHeaderSize + n)}
	w.send(w.iov[:1])
}

// replyData answers request unique with data (in the buffer at dataOff), header and data in one
// writev.
func (w *slot) replyData(unique uint64, data []byte) {
	h := (*outHeader)(unsafe.Pointer(&w.buf[0]))
	*h = outHeader{Len: uint32(outHeaderSize + len(data)), Unique: unique}
	w.iov[0] = unix.Iovec{Base: &w.buf[0], Len: uint64(outHeaderSize)}
	if len(data) == 0 {
		w.send(w.iov[:1])
		return
	}
	w.iov[1] = unix.Iovec{Base: &data[0], Len: uint64(len(data))}
	w.send(w.iov[:2])
}

func (w *slot) send(iov []unix.Iovec) {
	switch errno := writev(w.fd, iov); errno {
	case 0:
	case unix.ENOENT:
		// The request is gone: interrupted and given up, or the connection was aborted.
	case unix.ENODEV:
		// The connection ended; the next read says so.
	default:
		w.s.log.Error("FUSE reply failed", "err", fmt.Errorf("writev /dev/fuse: %w", errno))
	}
}

// writev writes iov to fd in one system call. Writes to /dev/fuse do not block: a raw system call.
func writev(fd int, iov []unix.Iovec) unix.Errno {
	_, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	return errno
}

func ptr[T any](v *T) unsafe.Pointer { return unsafe.Pointer(v) }

// ptrBytes returns the memory of *v as bytes.
func ptrBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}
