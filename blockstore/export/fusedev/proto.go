package fusedev

// The classic /dev/fuse protocol, the part this package speaks (include/uapi/linux/fuse.h; the
// layouts are those of protocol 7.45, Linux 6.18, and have not changed for these messages since
// 7.9 except where noted). Every structure is padded to 8 bytes, native byte order.

import "unsafe"

const (
	kernelVersion = 7
	// ourMinor is the newest protocol minor this package speaks; the connection runs at the
	// smaller of this and the kernel's. Nothing in the messages it serves differs between 7.28
	// and 7.45; 7.40 brought FUSE_NOTIFY_RESEND.
	ourMinor = 45
	// minMinor is the oldest protocol minor served: 7.28 brought max_pages, without which the
	// kernel cuts requests to 128 KiB.
	minMinor = 28
)

// Node IDs of the file system: the root directory and the one file in it. They never change, so a
// server that adopts a connection answers for the inodes the kernel already knows.
const (
	rootID = 1
	fileID = 2
	// fileGeneration is the generation of fileID.
	fileGeneration = 1
)

// Opcodes (enum fuse_opcode).
const (
	opLookup        = 1
	opForget        = 2
	opGetattr       = 3
	opSetattr       = 4
	opReadlink      = 5
	opSymlink       = 6
	opMknod         = 8
	opMkdir         = 9
	opUnlink        = 10
	opRmdir         = 11
	opRename        = 12
	opLink          = 13
	opOpen          = 14
	opRead          = 15
	opWrite         = 16
	opStatfs        = 17
	opRelease       = 18
	opFsync         = 20
	opSetxattr      = 21
	opGetxattr      = 22
	opListxattr     = 23
	opRemovexattr   = 24
	opFlush         = 25
	opInit          = 26
	opOpendir       = 27
	opReaddir       = 28
	opReleasedir    = 29
	opFsyncdir      = 30
	opAccess        = 34
	opCreate        = 35
	opInterrupt     = 36
	opDestroy       = 38
	opPoll          = 40
	opNotifyReply   = 41
	opBatchForget   = 42
	opFallocate     = 43
	opRename2       = 45
	opTmpfile       = 51
	opCopyFileRange = 47
)

// Notification codes (enum fuse_notify_code), sent in fuse_out_header.error with unique 0.
const (
	notifyInvalInode = 2
	notifyResend     = 7
)

// uniqueResend marks a request the kernel sends again after FUSE_NOTIFY_RESEND
// (FUSE_UNIQUE_RESEND); the reply carries the unique as received.
const uniqueResend = 1 << 63

// INIT flags (fuse_init_in.flags | fuse_init_in.flags2 << 32).
const (
	initAsyncRead      = 1 << 0
	initBigWrites      = 1 << 5
	initAutoInvalData  = 1 << 12
	initAsyncDIO       = 1 << 15
	initParallelDirops = 1 << 18
	initMaxPages       = 1 << 22
	initInitExt        = 1 << 30
	initHasResend      = 1 << 39
	initRequestTimeout = 1 << 42
)

// FOPEN flags (fuse_open_out.open_flags).
const (
	fopenDirectIO             = 1 << 0
	fopenParallelDirectWrites = 1 << 6
)

// fuse_setattr_in.valid
const fattrSize = 1 << 3

// fallocate modes (linux/falloc.h); FALLOC_FL_WRITE_ZEROES is new in Linux 6.17.
const (
	fallocKeepSize    = 0x01
	fallocPunchHole   = 0x02
	fallocZeroRange   = 0x10
	fallocWriteZeroes = 0x80
)

// fuse_in_header
type inHeader struct {
	Len         uint32
	Opcode      uint32
	Unique      uint64
	NodeID      uint64
	UID         uint32
	GID         uint32
	PID         uint32
	TotalExtlen uint16
	Padding     uint16
}

// fuse_out_header
type outHeader struct {
	Len    uint32
	Error  int32
	Unique uint64
}

// fuse_init_in (7.36 and later; earlier kernels send the first 16 bytes)
type initIn struct {
	Major        uint32
	Minor        uint32
	MaxReadahead uint32
	Flags        uint32
	Flags2       uint32
	Unused       [11]uint32
}

// fuse_init_out
type initOut struct {
	Major               uint32
	Minor               uint32
	MaxReadahead        uint32
	Flags               uint32
	MaxBackground       uint16
	CongestionThreshold uint16
	MaxWrite            uint32
	TimeGran            uint32
	MaxPages            uint16
	MapAlignment        uint16
	Flags2              uint32
	MaxStackDepth       uint32
	RequestTimeout      uint16
	Unused              [11]uint16
}

// fuse_attr
type attr struct {
	Ino       uint64
	Size      uint64
	Blocks    uint64
	Atime     uint64
	Mtime     uint64
	Ctime     uint64
	Atimensec uint32
	Mtimensec uint32
	Ctimensec uint32
	Mode      uint32
	Nlink     uint32
	UID       uint32
	GID       uint32
	Rdev      uint32
	Blksize   uint32
	Flags     uint32
}

// fuse_entry_out
type entryOut struct {
	NodeID         uint64
	Generation     uint64
	EntryValid     uint64
	AttrValid      uint64
	EntryValidNsec uint32
	AttrValidNsec  uint32
	Attr           attr
}

// fuse_attr_out
type attrOut struct {
	AttrValid     uint64
	AttrValidNsec uint32
	Dummy         uint32
	Attr          attr
}

// fuse_setattr_in
type setattrIn struct {
	Valid     uint32
	Padding   uint32
	Fh        uint64
	Size      uint64
	LockOwner uint64
	Atime     uint64
	Mtime     uint64
	Ctime     uint64
	Atimensec uint32
	Mtimensec uint32
	Ctimensec uint32
	Mode      uint32
	Unused4   uint32
	UID       uint32
	GID       uint32
	Unused5   uint32
}

// fuse_open_out
type openOut struct {
	Fh        uint64
	OpenFlags uint32
	BackingID int32
}

// fuse_read_in
type readIn struct {
	Fh        uint64
	Offset    uint64
	Size      uint32
	ReadFlags uint32
	LockOwner uint64
	Flags     uint32
	Padding   uint32
}

// fuse_write_in
type writeIn struct {
	Fh         uint64
	Offset     uint64
	Size       uint32
	WriteFlags uint32
	LockOwner  uint64
	Flags      uint32
	Padding    uint32
}

// fuse_write_out
type writeOut struct {
	Size    uint32
	Padding uint32
}

// fuse_fallocate_in
type fallocateIn struct {
	Fh      uint64
	Offset  uint64
	Length  uint64
	Mode    uint32
	Padding uint32
}

// fuse_kstatfs (fuse_statfs_out)
type kstatfs struct {
	Blocks  uint64
	Bfree   uint64
	Bavail  uint64
	Files   uint64
	Ffree   uint64
	Bsize   uint32
	Namelen uint32
	Frsize  uint32
	Padding uint32
	Spare   [6]uint32
}

// fuse_dirent, followed by the name padded to 8 bytes
type dirent struct {
	Ino     uint64
	Off     uint64
	Namelen uint32
	Type    uint32
}

// fuse_notify_inval_inode_out
type notifyInvalInodeOut struct {
	Ino uint64
	Off int64
	Len int64
}

const (
	inHeaderSize  = int(unsafe.Sizeof(inHeader{}))
	outHeaderSize = int(unsafe.Sizeof(outHeader{}))
	writeInSize   = int(unsafe.Sizeof(writeIn{}))
	direntSize    = int(unsafe.Sizeof(dirent{}))
)

// The sizes the kernel expects; a layout mistake fails to compile.
var (
	_ [40]struct{}  = [inHeaderSize]struct{}{}
	_ [16]struct{}  = [outHeaderSize]struct{}{}
	_ [64]struct{}  = [unsafe.Sizeof(initIn{})]struct{}{}
	_ [64]struct{}  = [unsafe.Sizeof(initOut{})]struct{}{}
	_ [88]struct{}  = [unsafe.Sizeof(attr{})]struct{}{}
	_ [128]struct{} = [unsafe.Sizeof(entryOut{})]struct{}{}
	_ [104]struct{} = [unsafe.Sizeof(attrOut{})]struct{}{}
	_ [88]struct{}  = [unsafe.Sizeof(setattrIn{})]struct{}{}
	_ [16]struct{}  = [unsafe.Sizeof(openOut{})]struct{}{}
	_ [40]struct{}  = [unsafe.Sizeof(readIn{})]struct{}{}
	_ [40]struct{}  = [writeInSize]struct{}{}
	_ [32]struct{}  = [unsafe.Sizeof(fallocateIn{})]struct{}{}
	_ [80]struct{}  = [unsafe.Sizeof(kstatfs{})]struct{}{}
	_ [24]struct{}  = [direntSize]struct{}{}
	_ [24]struct{}  = [unsafe.Sizeof(notifyInvalInodeOut{})]struct{}{}
)
