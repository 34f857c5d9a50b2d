package fusedev

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A worker's buffer, anonymous memory (page-aligned, outside the Go heap, touched only where
// used):
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

type worker struct {
	s      *Server
	fd     int
	ep     int // epoll set: fd (EPOLLEXCLUSIVE) and s.stopfd
	buf    []byte
	events [2]unix.EpollEvent
	iov    [2]unix.Iovec
}

func newWorker(s *Server, fd int) (*worker, error) {
	size := dataOff + int(s.p.MaxWrite) + pageSize
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, &os.SyscallError{Syscall: "mmap worker buffer", Err: err}
	}
	w := &worker{s: s, fd: fd, ep: -1, buf: buf}
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
	if err := unix.Munmap(w.buf); err != nil {
		w.s.log.Error("unmap worker buffer", "err", err)
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
		n, errno := w.read()
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
		w.serve(n)
		s.idle.Add(1)
	}
out:
	s.idle.Add(-1)
	s.workers.Add(-1)
}

// read reads one request into the buffer at reqOff. The descriptor is non-blocking, so the call
// does not wait: a raw system call, which the scheduler need not know about.
func (w *worker) read() (int, unix.Errno) {
	b := w.buf[reqOff:]
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
func (w *worker) payload() []byte { return w.buf[outHeaderSize:pageSize] }

// reply answers request unique with errno (0: success) and the first n bytes of payload().
func (w *worker) reply(unique uint64, errno unix.Errno, n int) {
	h := (*outHeader)(unsafe.Pointer(&w.buf[0]))
	*h = outHeader{Len: uint32(outHeaderSize + n), Error: -int32(errno), Unique: unique}
	w.iov[0] = unix.Iovec{Base: &w.buf[0], Len: uint64(outHeaderSize + n)}
	w.send(w.iov[:1])
}

// replyData answers request unique with data (in the buffer at dataOff), header and data in one
// writev.
func (w *worker) replyData(unique uint64, data []byte) {
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

func (w *worker) send(iov []unix.Iovec) {
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
