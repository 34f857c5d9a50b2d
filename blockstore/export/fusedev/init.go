package fusedev

import (
	"encoding/json"
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ParamsVersion is the version of the meaning of Params (node IDs, what the file system shows).
// A server refuses to adopt a connection whose Params carry another version: it would answer
// for inodes the kernel does not know.
const ParamsVersion = 1

// Params are what a server needs to serve a connection it did not initialise: what INIT
// negotiated, and how the file system looks. They are JSON: the holder keeps them as bytes, and
// unknown fields are ignored, so that a newer server can add some.
type Params struct {
	// Version is ParamsVersion of the server that initialised the connection.
	Version int `json:"version"`
	// Minor is the negotiated protocol minor (the major is 7); KernelMinor the kernel's own.
	Minor       uint32 `json:"minor"`
	KernelMinor uint32 `json:"kernelMinor"`
	// Flags are the INIT flags the server asked for; KernelFlags those the kernel offered.
	Flags       uint64 `json:"flags"`
	KernelFlags uint64 `json:"kernelFlags"`
	// MaxWrite is the largest write (and read) request: a server's read buffer takes it whole.
	MaxWrite      uint32 `json:"maxWrite"`
	MaxPages      uint16 `json:"maxPages"`
	MaxBackground uint16 `json:"maxBackground"`
	// BlockSize is the file's st_blksize and the file system's statfs block size (the loop
	// device's discard granularity).
	BlockSize int `json:"blockSize"`
	// RequestTimeout is the kernel's request timeout of the connection in seconds, as the
	// sysctls set it at INIT (0: none; see RequestTimeout).
	RequestTimeout int `json:"requestTimeout"`
}

// CanResend reports whether the kernel can queue again the requests a dead server read but did
// not answer (FUSE_NOTIFY_RESEND, Linux 6.9).
func (p Params) CanResend() bool { return p.KernelFlags&initHasResend != 0 }

// Marshal returns p as JSON.
func (p Params) Marshal() []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // a struct of numbers always marshals
	}
	return b
}

// UnmarshalParams parses Params as Marshal wrote them (by this or another version), and checks
// that this server can serve them.
func UnmarshalParams(b []byte) (Params, error) {
	var p Params
	if err := json.Unmarshal(b, &p); err != nil {
		return p, wrapf(ErrInvalid, "params: %v", err)
	}
	return p, p.validate()
}

func (p Params) validate() error {
	switch {
	case p.Version != ParamsVersion:
		return wrapf(ErrInvalid, "params version %d: this server serves version %d", p.Version, ParamsVersion)
	case p.Minor < minMinor:
		return wrapf(ErrInvalid, "protocol minor %d: want at least %d", p.Minor, minMinor)
	case p.MaxWrite < 4096 || p.MaxWrite > 16<<20:
		return wrapf(ErrInvalid, "max write %d: want 4 KiB to 16 MiB", p.MaxWrite)
	}
	return validBlockSize(p.BlockSize)
}

func validBlockSize(bs int) error {
	switch bs {
	case 512, 1024, 2048, 4096:
		return nil
	}
	return wrapf(ErrInvalid, "block size %d: want 512, 1024, 2048 or 4096", bs)
}

// InitOptions are what Init asks of the kernel. Zero values pick the defaults.
type InitOptions struct {
	// MaxWrite is the largest read or write request. Default DefaultMaxWrite.
	MaxWrite int
	// MaxBackground bounds the asynchronous requests the kernel keeps in flight to the server:
	// with FUSE_ASYNC_DIO the loop device's direct I/O reaches the server asynchronously, so
	// this is the queue depth into it. Default 128.
	MaxBackground int
	// BlockSize is the file's block size (see Params.BlockSize). Default 4096.
	BlockSize int
}

// DefaultMaxWrite is 1 MiB less one page: the largest request is then a 1 MiB-aligned megabyte
// less a page, and a reply with its header fits in 1 MiB.
const DefaultMaxWrite = 1<<20 - 4096

// wantFlags are the INIT flags a server asks for, where the kernel offers them: asynchronous
// direct I/O (what makes the loop device's queue reach the server in parallel), requests larger
// than a page, max_pages, parallel lookups. Not asked: splice (the Disk's buffers are plain
// memory), writeback caching (every open is direct I/O), readdirplus, locks, ACLs, xattrs
// (answered ENOSYS once), request timeouts.
const wantFlags = initAsyncRead | initBigWrites | initAutoInvalData | initAsyncDIO | initParallelDirops | initMaxPages

func (o InitOptions) withDefaults() (InitOptions, error) {
	if o.MaxWrite == 0 {
		o.MaxWrite = DefaultMaxWrite
	}
	if o.MaxBackground == 0 {
		o.MaxBackground = 128
	}
	if o.BlockSize == 0 {
		o.BlockSize = 4096
	}
	if o.MaxWrite < 4096 || o.MaxWrite > 16<<20 || o.MaxWrite%4096 != 0 {
		return o, wrapf(ErrInvalid, "max write %d: want a multiple of 4 KiB from 4 KiB to 16 MiB", o.MaxWrite)
	}
	if o.MaxBackground < 1 || o.MaxBackground > 1<<15 {
		return o, wrapf(ErrInvalid, "max background %d: want 1 to 32768", o.MaxBackground)
	}
	return o, validBlockSize(o.BlockSize)
}

// Init answers the kernel's INIT request on a connection fresh from Mount, and returns what was
// negotiated. It reads one request: INIT is the first the kernel sends, and it holds every other
// until INIT is answered. A kernel that speaks a protocol older than 7.28 gets an error reply
// (every later request on the mount then fails) and Init fails with ErrProtocol.
func Init(fd int, opts InitOptions) (Params, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Params{}, err
	}
	// The kernel wants a buffer that would take a write of max_write: before INIT, 8 KiB.
	buf := make([]byte, 8192+opts.MaxWrite)
	n, err := readRequest(fd, buf)
	if err != nil {
		return Params{}, err
	}
	if n < inHeaderSize {
		return Params{}, wrapf(ErrProtocol, "INIT: short request of %d bytes", n)
	}
	h := (*inHeader)(unsafe.Pointer(&buf[0]))
	if h.Opcode != opInit {
		return Params{}, wrapf(ErrProtocol, "first request has opcode %d, want INIT", h.Opcode)
	}
	var in initIn
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in)), buf[inHeaderSize:n])
	kernelFlags := uint64(in.Flags)
	if in.Flags&initInitExt != 0 {
		kernelFlags |= uint64(in.Flags2) << 32
	}
	if in.Major != kernelVersion || in.Minor < minMinor {
		err := wrapf(ErrProtocol, "kernel speaks FUSE %d.%d, want %d.%d or later", in.Major, in.Minor, kernelVersion, minMinor)
		return Params{}, errors.Join(err, writeReply(fd, h.Unique, unix.EPROTO, nil))
	}
	timeout, err := RequestTimeout()
	if err != nil {
		return Params{}, errors.Join(err, writeReply(fd, h.Unique, unix.EIO, nil))
	}
	maxPages := (opts.MaxWrite + os.Getpagesize() - 1) / os.Getpagesize()
	out := initOut{
		Major:               kernelVersion,
		Minor:               min(in.Minor, ourMinor),
		MaxReadahead:        in.MaxReadahead,
		Flags:               uint32(wantFlags & kernelFlags),
		MaxBackground:       uint16(opts.MaxBackground),
		CongestionThreshold: uint16(opts.MaxBackground * 3 / 4),
		MaxWrite:            uint32(opts.MaxWrite),
		MaxPages:            uint16(maxPages),
	}
	p := Params{
		Version:        ParamsVersion,
		Minor:          out.Minor,
		KernelMinor:    in.Minor,
		Flags:          uint64(out.Flags),
		KernelFlags:    kernelFlags,
		MaxWrite:       out.MaxWrite,
		MaxPages:       out.MaxPages,
		MaxBackground:  out.MaxBackground,
		BlockSize:      opts.BlockSize,
		RequestTimeout: timeout,
	}
	if err := writeReply(fd, h.Unique, 0, unsafe.Slice((*byte)(unsafe.Pointer(&out)), unsafe.Sizeof(out))); err != nil {
		return Params{}, err
	}
	return p, nil
}

// readRequest reads one request from fd into buf, waiting for one if fd is non-blocking.
func readRequest(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		switch err {
		case nil:
			return n, nil
		case unix.EINTR, unix.ENOENT: // ENOENT: the request was interrupted while being read
			continue
		case unix.EAGAIN:
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1); err != nil && err != unix.EINTR {
				return 0, &os.SyscallError{Syscall: "poll /dev/fuse", Err: err}
			}
			continue
		case unix.ENODEV:
			return 0, ErrDisconnected
		default:
			return 0, &os.SyscallError{Syscall: "read /dev/fuse", Err: err}
		}
	}
}

// writeReply answers request unique with errno (0: success) and payload.
func writeReply(fd int, unique uint64, errno unix.Errno, payload []byte) error {
	msg := make([]byte, outHeaderSize+len(payload))
	*(*outHeader)(unsafe.Pointer(&msg[0])) = outHeader{Len: uint32(len(msg)), Error: -int32(errno), Unique: unique}
	copy(msg[outHeaderSize:], payload)
	if _, err := unix.Write(fd, msg); err != nil {
		if err == unix.ENODEV {
			return ErrDisconnected
		}
		return &os.SyscallError{Syscall: "write /dev/fuse", Err: err}
	}
	return nil
}
