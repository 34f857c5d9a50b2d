package fusedev

// The file system: a root directory holding one regular file, FileName, that is the Disk. Every
// open of the file is FOPEN_DIRECT_IO (no page cache in FUSE: the loop device above has its own,
// and direct I/O keeps one copy of the data) with FOPEN_PARALLEL_DIRECT_WRITES (without it the
// kernel takes the inode lock exclusively for each direct write). Attributes are never cached
// (the size changes behind the kernel's back when the Disk grows); the name is, for an hour.
// Nothing here keeps state between requests: open files have no handles, lookups are not
// counted, so a server that adopts a connection answers every request as the first would have.

import (
	"bytes"
	"errors"
	"io"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/blockio"
)

// FileName is the name of the file that is the Disk, in the root of the mount.
const FileName = "disk"

const entryValidSeconds = 3600

// serve answers the request of n bytes at reqOff.
func (w *slot) serve(n int) {
	if h, arg, ok := w.header(n); ok {
		w.dispatch(h, arg)
	}
}

// header checks and counts the request of n bytes at reqOff, and returns its header and
// arguments; a malformed one it answers (if it can) and reports false.
func (w *slot) header(n int) (inHeader, []byte, bool) {
	req := w.buf[reqOff : reqOff+n]
	if n < inHeaderSize {
		w.s.log.Error("FUSE request too short", "len", n)
		return inHeader{}, nil, false
	}
	h := *(*inHeader)(unsafe.Pointer(&req[0]))
	if int(h.Len) != n {
		w.s.log.Error("FUSE request length mismatch", "len", n, "header", h.Len, "opcode", h.Opcode)
		w.reply(h.Unique, unix.EIO, 0)
		return inHeader{}, nil, false
	}
	w.s.requests.Add(1)
	if h.Unique&uniqueResend != 0 {
		w.s.resent.Add(1)
	}
	return h, req[inHeaderSize:], true
}

// dispatch serves a request whose header checked out.
func (w *slot) dispatch(h inHeader, arg []byte) {
	s := w.s
	switch h.Opcode {
	case opForget, opBatchForget, opInterrupt, opNotifyReply:
		// No reply. Lookups are not counted (the inodes are fixed); the loop device's requests
		// are never interrupted, and serving one to its end answers the interrupt too.
	case opLookup:
		name, _, _ := bytes.Cut(arg, []byte{0})
		if h.NodeID != rootID {
			w.reply(h.Unique, unix.ENOTDIR, 0)
			return
		}
		if string(name) != FileName {
			w.reply(h.Unique, unix.ENOENT, 0)
			return
		}
		out := (*entryOut)(unsafe.Pointer(&w.payload()[0]))
		*out = entryOut{NodeID: fileID, Generation: fileGeneration, EntryValid: entryValidSeconds}
		s.fileAttr(&out.Attr)
		w.reply(h.Unique, 0, int(unsafe.Sizeof(*out)))
	case opGetattr:
		out := (*attrOut)(unsafe.Pointer(&w.payload()[0]))
		*out = attrOut{}
		if !s.attr(h.NodeID, &out.Attr) {
			w.reply(h.Unique, unix.ENOENT, 0)
			return
		}
		w.reply(h.Unique, 0, int(unsafe.Sizeof(*out)))
	case opSetattr:
		w.setattr(h, arg)
	case opOpen:
		w.open(h, fileID, unix.EISDIR, fopenDirectIO|fopenParallelDirectWrites)
	case opOpendir:
		w.open(h, rootID, unix.ENOTDIR, 0)
	case opRead, opWrite:
		w.readWrite(h, arg)
	case opFsync, opFlush:
		// Flush (a close of a descriptor) flushes too: closes are rare (the loop device keeps its
		// file open), and whoever closes after writing gets their writes made durable.
		if err := s.disk.Flush(); err != nil {
			w.reply(h.Unique, s.errno("flush", 0, 0, err), 0)
			return
		}
		w.reply(h.Unique, 0, 0)
	case opRelease, opReleasedir, opDestroy:
		w.reply(h.Unique, 0, 0)
	case opFallocate:
		if len(arg) < int(unsafe.Sizeof(fallocateIn{})) {
			w.reply(h.Unique, unix.EINVAL, 0)
			return
		}
		in := *(*fallocateIn)(unsafe.Pointer(&arg[0]))
		w.reply(h.Unique, s.allocate(h.NodeID, in), 0)
	case opStatfs:
		out := (*kstatfs)(unsafe.Pointer(&w.payload()[0]))
		// The loop device takes its discard granularity from f_bsize.
		bs := uint64(s.p.BlockSize)
		*out = kstatfs{Blocks: uint64(s.disk.Size()) / bs, Bsize: uint32(bs), Frsize: uint32(bs), Namelen: 255}
		w.reply(h.Unique, 0, int(unsafe.Sizeof(*out)))
	case opReaddir:
		w.readdir(h, arg)
	case opSymlink, opMknod, opMkdir, opUnlink, opRmdir, opRename, opRename2, opLink, opCreate, opTmpfile:
		w.reply(h.Unique, unix.EPERM, 0)
	case opInit:
		w.reply(h.Unique, unix.EPROTO, 0) // answered once, by Init
	default:
		// POLL, xattrs, ACCESS, FSYNCDIR, LSEEK, COPY_FILE_RANGE, locks, ioctls, ...: ENOSYS,
		// after which the kernel does without (no_poll, no_xattr, no_access: it stops asking)
		// or falls back to its generic code.
		w.reply(h.Unique, unix.ENOSYS, 0)
	}
}

func (w *slot) open(h inHeader, want uint64, wrongType unix.Errno, flags uint32) {
	switch h.NodeID {
	case want:
		out := (*openOut)(unsafe.Pointer(&w.payload()[0]))
		*out = openOut{OpenFlags: flags}
		w.reply(h.Unique, 0, int(unsafe.Sizeof(*out)))
	case rootID, fileID:
		w.reply(h.Unique, wrongType, 0)
	default:
		w.reply(h.Unique, unix.ENOENT, 0)
	}
}

// setattr accepts what does not change the file (times, mode, a truncate to the current size) and
// refuses a size change: the Disk's size changes only through the block store.
func (w *slot) setattr(h inHeader, arg []byte) {
	if len(arg) < int(unsafe.Sizeof(setattrIn{})) {
		w.reply(h.Unique, unix.EINVAL, 0)
		return
	}
	in := *(*setattrIn)(unsafe.Pointer(&arg[0]))
	switch h.NodeID {
	case fileID:
	case rootID:
		w.reply(h.Unique, unix.EPERM, 0)
		return
	default:
		w.reply(h.Unique, unix.ENOENT, 0)
		return
	}
	if in.Valid&fattrSize != 0 && int64(in.Size) != w.s.disk.Size() {
		w.reply(h.Unique, unix.EPERM, 0)
		return
	}
	out := (*attrOut)(unsafe.Pointer(&w.payload()[0]))
	*out = attrOut{}
	w.s.fileAttr(&out.Attr)
	w.reply(h.Unique, 0, int(unsafe.Sizeof(*out)))
}

// diskOp returns the Disk I/O of a well-formed READ or WRITE of the file, to be done in a batch
// and answered by finish; anything else (other requests, malformed ones) it reports false for.
func (w *slot) diskOp(h inHeader, arg []byte) (blockio.Op, bool) {
	if h.NodeID != fileID {
		return blockio.Op{}, false
	}
	switch h.Opcode {
	case opRead:
		if len(arg) < int(unsafe.Sizeof(readIn{})) {
			return blockio.Op{}, false
		}
		in := *(*readIn)(unsafe.Pointer(&arg[0]))
		if in.Size > w.s.p.MaxWrite || int64(in.Offset) < 0 {
			return blockio.Op{}, false
		}
		return blockio.Op{Buf: w.buf[dataOff : dataOff+int(in.Size)], Off: int64(in.Offset)}, true
	case opWrite:
		if len(arg) < writeInSize {
			return blockio.Op{}, false
		}
		in := *(*writeIn)(unsafe.Pointer(&arg[0]))
		data := arg[writeInSize:]
		if int(in.Size) != len(data) || int64(in.Offset) < 0 {
			return blockio.Op{}, false
		}
		return blockio.Op{Write: true, Buf: data, Off: int64(in.Offset)}, true
	}
	return blockio.Op{}, false
}

// finish answers the READ or WRITE whose Disk I/O op was (see diskOp).
func (w *slot) finish(h inHeader, op *blockio.Op) {
	if op.Write {
		if op.Err != nil {
			w.reply(h.Unique, w.s.errno("write", op.Off, int64(len(op.Buf)), op.Err), 0)
			return
		}
		out := (*writeOut)(unsafe.Pointer(&w.payload()[0]))
		*out = writeOut{Size: uint32(op.N)}
		w.reply(h.Unique, 0, int(unsafe.Sizeof(*out)))
		return
	}
	if op.Err != nil && op.N < len(op.Buf) && !errors.Is(op.Err, io.EOF) {
		w.reply(h.Unique, w.s.errno("read", op.Off, int64(len(op.Buf)), op.Err), 0)
		return
	}
	w.replyData(h.Unique, op.Buf[:op.N])
}

// readWrite serves a READ or WRITE on its own: malformed ones get their error, others a
// ReadAt or WriteAt.
func (w *slot) readWrite(h inHeader, arg []byte) {
	op, ok := w.diskOp(h, arg)
	if !ok {
		w.reply(h.Unique, w.malformed(h, arg), 0)
		return
	}
	if op.Write {
		op.N, op.Err = w.s.disk.WriteAt(op.Buf, op.Off)
	} else {
		op.N, op.Err = w.s.disk.ReadAt(op.Buf, op.Off)
	}
	w.finish(h, &op)
}

// malformed returns the error for a READ or WRITE that diskOp refused.
func (w *slot) malformed(h inHeader, arg []byte) unix.Errno {
	if h.Opcode == opRead && len(arg) < int(unsafe.Sizeof(readIn{})) || h.Opcode == opWrite && len(arg) < writeInSize {
		return unix.EINVAL
	}
	if h.NodeID != fileID {
		return unix.EISDIR
	}
	return unix.EINVAL
}

// allocate serves FALLOCATE: the loop device's discards (PUNCH_HOLE|KEEP_SIZE) and zeroing
// requests (ZERO_RANGE or WRITE_ZEROES). Plain allocation, which a thin disk cannot promise, and
// anything that would change the size are refused with EOPNOTSUPP (never ENOSYS: the kernel would
// then stop sending any fallocate).
func (s *Server) allocate(node uint64, in fallocateIn) unix.Errno {
	if node != fileID {
		return unix.EISDIR
	}
	o, n := int64(in.Offset), int64(in.Length)
	if o < 0 || n < 0 || o+n < o {
		return unix.EINVAL
	}
	if end := s.disk.Size(); o+n > end {
		if in.Mode&fallocKeepSize == 0 {
			return unix.EOPNOTSUPP
		}
		n = max(end-o, 0) // past the end there is nothing to discard or zero
	}
	if n == 0 {
		return 0
	}
	var err error
	switch in.Mode &^ fallocKeepSize {
	case fallocPunchHole:
		err = s.disk.Discard(o, n)
	case fallocZeroRange, fallocWriteZeroes:
		if s.zero != nil {
			err = s.zero.WriteZeroes(o, n)
		} else {
			err = s.disk.Discard(o, n)
		}
	default:
		return unix.EOPNOTSUPP
	}
	if err != nil {
		return s.errno("fallocate", o, n, err)
	}
	return 0
}

// readdir lists ".", ".." and the file, from the offset the kernel asks for.
func (w *slot) readdir(h inHeader, arg []byte) {
	if len(arg) < int(unsafe.Sizeof(readIn{})) {
		w.reply(h.Unique, unix.EINVAL, 0)
		return
	}
	in := *(*readIn)(unsafe.Pointer(&arg[0]))
	if h.NodeID != rootID {
		w.reply(h.Unique, unix.ENOTDIR, 0)
		return
	}
	ents := [...]struct {
		ino  uint64
		typ  uint32
		name string
	}{{rootID, unix.DT_DIR, "."}, {rootID, unix.DT_DIR, ".."}, {fileID, unix.DT_REG, FileName}}
	out := w.payload()
	limit := min(int(in.Size), len(out))
	n := 0
	for i := int(min(in.Offset, uint64(len(ents)))); i < len(ents); i++ {
		e := ents[i]
		size := (direntSize + len(e.name) + 7) &^ 7
		if n+size > limit {
			break
		}
		*(*dirent)(unsafe.Pointer(&out[n])) = dirent{Ino: e.ino, Off: uint64(i + 1), Namelen: uint32(len(e.name)), Type: e.typ}
		copy(out[n+direntSize:n+size], e.name)
		clear(out[n+direntSize+len(e.name) : n+size])
		n += size
	}
	w.reply(h.Unique, 0, n)
}

// attr fills the attributes of node, and reports whether it exists.
func (s *Server) attr(node uint64, a *attr) bool {
	switch node {
	case rootID:
		*a = attr{Ino: rootID, Mode: syscall.S_IFDIR | 0o755, Nlink: 2, UID: s.uid, GID: s.gid, Blksize: uint32(s.p.BlockSize)}
	case fileID:
		s.fileAttr(a)
	default:
		return false
	}
	return true
}

func (s *Server) fileAttr(a *attr) {
	size := s.disk.Size()
	*a = attr{
		Ino:     fileID,
		Size:    uint64(size),
		Blocks:  uint64(size+511) / 512,
		Mode:    syscall.S_IFREG | 0o600,
		Nlink:   1,
		UID:     s.uid,
		GID:     s.gid,
		Blksize: uint32(s.p.BlockSize),
	}
}

// errno maps a Disk error to what the kernel gets back, and logs it: a full pool or a full file
// system under it is ENOSPC (the writer sees "No space left on device"), an error carrying an
// errno is that errno, anything else EIO.
func (s *Server) errno(op string, off, n int64, err error) unix.Errno {
	e := Errno(err)
	s.log.Warn("disk I/O failed", "op", op, "off", off, "len", n, "errno", e.Error(), "err", err)
	return e
}

// Errno is the errno the kernel gets for a Disk error.
func Errno(err error) unix.Errno {
	var errno syscall.Errno
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return unix.ENOSPC
	case errors.As(err, &errno) && errno != 0:
		return errno
	}
	return unix.EIO
}
