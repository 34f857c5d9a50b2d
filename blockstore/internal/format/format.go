// Package format holds the on-disk encoding of a Dataimage pool: the superblock, converter-tree
// nodes, refcount pages, catalog blocks and journal records. Every structure carries a CRC-32C
// (Castagnoli) checksum; decoders never trust a length or index they have not bounded.
//
// Layout of a pool (in blocks of BlockSize bytes):
//
//	0, 1                       superblock slots A and B (alternating, highest valid generation wins)
//	JournalStart ..            journal region (JournalBlocks), restarted at each checkpoint
//	RCStart ..                 refcount pages, two slots per page (2*RCPages blocks)
//	DataStart .. PoolBlocks-1  data region: tree nodes, catalog blocks and data blocks
//
// All integers are little-endian.
//
// It must not know the store's in-memory state, its locks or its I/O: it turns bytes into values
// and back, and its decoders refuse what they cannot prove valid.
package format

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// Block sizes a pool may be created with.
const (
	MinBlockSize     = 4096
	MaxBlockSize     = 65536
	DefaultBlockSize = 4096
)

// On-disk format versions. A pool records its version in the superblock.
//
//	1  the first format.
//	2  journal records carry the generation of the checkpoint they follow (Record.Epoch) and
//	   have their own magic; replay takes only the loaded checkpoint's epoch.
//	3  journal records are written as they are appended, not at commit, and each commit ends
//	   with a RecCommit record; the superblock names the boot of the kernel that wrote the
//	   journal after it (Superblock.Boot). Records are encoded as in version 2.
//
// A build writes Version into new pools and opens pools from MinVersion to Version. A pool of
// an older version is read as it is (its journal with the old record format) and upgraded by the
// checkpoint that recovery takes: from then on it has Version, and builds older than Version
// refuse it (the superblock's version check names both).
const (
	Version    = 3
	MinVersion = 1
)

// MaxPoolBlocks bounds the size of a pool in blocks: block numbers fit in 48 bits.
const MaxPoolBlocks = 1 << 48

// MaxHeight bounds the height of a converter tree: node levels are below MaxHeight.
const MaxHeight = 16

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of b.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// ErrChecksum reports a structure whose stored checksum does not match its contents.
var ErrChecksum = errors.New("checksum mismatch")

// ErrMagic reports a structure that does not start with the expected magic number.
var ErrMagic = errors.New("bad magic")

// ErrInvalid reports a structure whose fields are out of range.
var ErrInvalid = errors.New("invalid field")

var le = binary.LittleEndian

// ValidBlockSize reports whether bs is a supported block size (a power of two in [4 KiB, 64 KiB]).
func ValidBlockSize(bs int) bool {
	return bs >= MinBlockSize && bs <= MaxBlockSize && bs&(bs-1) == 0
}

// ---- superblock ----

const superMagic = 0x44494D47534250 // "DIMGSBP"

// Superblock flags.
const (
	// FlagThick marks a pool whose file keeps all its space: freed blocks are not punched out,
	// so writes never wait for the file system to allocate.
	FlagThick  = 1 << 0
	knownFlags = FlagThick
)

// SuperblockSize is the number of bytes of a superblock slot that are used; the rest of the block is zero.
const SuperblockSize = 160

// Superblock describes the pool geometry and points at the last durable checkpoint.
type Superblock struct {
	Version       uint32
	BlockSize     uint32
	Fanout        uint32 // converter-tree entries used per node
	PoolBlocks    uint64 // total blocks in the pool
	JournalStart  uint64
	JournalBlocks uint64
	RCStart       uint64
	RCPages       uint64 // refcount pages; each has two slots
	DataStart     uint64
	Generation    uint64 // checkpoint generation; the slot with the highest valid one wins
	CheckpointLSN uint64 // last journal record whose effects the checkpoint includes
	CatalogHead   uint64 // first catalog block, 0 when the catalog is empty
	NextVolumeID  uint64
	NextSnapID    uint64
	Created       int64  // unix nanoseconds
	OverProvision uint32 // over-provisioning ratio × 100
	Flags         uint32 // FlagThick, ...
	NodeBlocks    uint64 // blocks held by tree nodes
	CatalogBlocks uint64 // blocks held by the catalog
	// Boot identifies the boot of the kernel that ran the process which wrote this superblock
	// (on Linux the boot_id): the journal records written after it went through that kernel's
	// page cache. Zero when unknown, and in superblocks of format versions 1 and 2.
	Boot [16]byte
}

// EncodeSuperblock writes sb into b (at least SuperblockSize bytes) with its checksum.
func EncodeSuperblock(b []byte, sb *Superblock) {
	clear(b[:SuperblockSize])
	le.PutUint64(b[0:], superMagic)
	le.PutUint32(b[12:], sb.Version)
	le.PutUint32(b[16:], sb.BlockSize)
	le.PutUint32(b[20:], sb.Fanout)
	le.PutUint64(b[24:], sb.PoolBlocks)
	le.PutUint64(b[32:], sb.JournalStart)
	le.PutUint64(b[40:], sb.JournalBlocks)
	le.PutUint64(b[48:], sb.RCStart)
	le.PutUint64(b[56:], sb.RCPages)
	le.PutUint64(b[64:], sb.DataStart)
	le.PutUint64(b[72:], sb.Generation)
	le.PutUint64(b[80:], sb.CheckpointLSN)
	le.PutUint64(b[88:], sb.CatalogHead)
	le.PutUint64(b[96:], sb.NextVolumeID)
	le.PutUint64(b[104:], sb.NextSnapID)
	le.PutUint64(b[112:], uint64(sb.Created))
	le.PutUint32(b[120:], sb.OverProvision)
	le.PutUint32(b[124:], sb.Flags)
	le.PutUint64(b[128:], sb.NodeBlocks)
	le.PutUint64(b[136:], sb.CatalogBlocks)
	copy(b[144:160], sb.Boot[:])
	le.PutUint32(b[8:], Checksum(b[12:SuperblockSize]))
}

// DecodeSuperblock parses and validates a superblock slot.
func DecodeSuperblock(b []byte) (*Superblock, error) {
	if len(b) < SuperblockSize {
		return nil, fmt.Errorf("superblock: %w: short buffer (%d bytes)", ErrInvalid, len(b))
	}
	if le.Uint64(b[0:]) != superMagic {
		return nil, fmt.Errorf("superblock: %w", ErrMagic)
	}
	if le.Uint32(b[8:]) != Checksum(b[12:SuperblockSize]) {
		return nil, fmt.Errorf("superblock: %w", ErrChecksum)
	}
	sb := &Superblock{
		Version:       le.Uint32(b[12:]),
		BlockSize:     le.Uint32(b[16:]),
		Fanout:        le.Uint32(b[20:]),
		PoolBlocks:    le.Uint64(b[24:]),
		JournalStart:  le.Uint64(b[32:]),
		JournalBlocks: le.Uint64(b[40:]),
		RCStart:       le.Uint64(b[48:]),
		RCPages:       le.Uint64(b[56:]),
		DataStart:     le.Uint64(b[64:]),
		Generation:    le.Uint64(b[72:]),
		CheckpointLSN: le.Uint64(b[80:]),
		CatalogHead:   le.Uint64(b[88:]),
		NextVolumeID:  le.Uint64(b[96:]),
		NextSnapID:    le.Uint64(b[104:]),
		Created:       int64(le.Uint64(b[112:])),
		OverProvision: le.Uint32(b[120:]),
		Flags:         le.Uint32(b[124:]),
		NodeBlocks:    le.Uint64(b[128:]),
		CatalogBlocks: le.Uint64(b[136:]),
		Boot:          [16]byte(b[144:160]),
	}
	if err := sb.validate(); err != nil {
		return nil, err
	}
	return sb, nil
}

// validate checks the geometry. PoolBlocks is bounded first and every region size is bounded by
// it before it appears in a sum or product, so no check can be passed by an overflow.
func (sb *Superblock) validate() error {
	bad := func(field, rule string) error {
		return fmt.Errorf("superblock: %w: %s %s", ErrInvalid, field, rule)
	}
	bs := uint64(sb.BlockSize)
	switch {
	case sb.Version < MinVersion || sb.Version > Version:
		return bad("version", fmt.Sprintf("is %d, this build reads %d to %d", sb.Version, MinVersion, Version))
	case !ValidBlockSize(int(sb.BlockSize)):
		return bad("block size", fmt.Sprintf("%d is not a power of two in [%d, %d]", sb.BlockSize, MinBlockSize, MaxBlockSize))
	case sb.Fanout < 2 || sb.Fanout > uint32(NodeCapacity(int(sb.BlockSize))):
		return bad("fanout", fmt.Sprintf("%d is outside [2, %d]", sb.Fanout, NodeCapacity(int(sb.BlockSize))))
	case sb.PoolBlocks > MaxPoolBlocks || sb.PoolBlocks > math.MaxInt64/bs:
		return bad("pool blocks", fmt.Sprintf("%d exceed 2^48 blocks or 2^63 bytes", sb.PoolBlocks))
	case sb.JournalStart != 2 || sb.JournalBlocks < 2 || sb.JournalBlocks >= sb.PoolBlocks:
		return bad("journal", fmt.Sprintf("region (%d blocks at %d) is malformed", sb.JournalBlocks, sb.JournalStart))
	case sb.RCStart != sb.JournalStart+sb.JournalBlocks:
		return bad("refcount region", "does not follow the journal")
	case sb.RCPages >= sb.PoolBlocks:
		return bad("refcount pages", fmt.Sprintf("%d exceed the pool", sb.RCPages))
	case sb.DataStart != sb.RCStart+2*sb.RCPages:
		return bad("data region", "does not follow the refcount region")
	case sb.DataStart >= sb.PoolBlocks:
		return bad("pool blocks", "leave no data region")
	case sb.RCPages*uint64(RCPerPage(int(sb.BlockSize))) < sb.PoolBlocks-sb.DataStart:
		return bad("refcount pages", "do not cover the data region")
	case sb.CatalogHead != 0 && (sb.CatalogHead < sb.DataStart || sb.CatalogHead >= sb.PoolBlocks):
		return bad("catalog head", "is outside the data region")
	case sb.CatalogBlocks > sb.PoolBlocks-sb.DataStart || (sb.CatalogBlocks == 0) != (sb.CatalogHead == 0):
		return bad("catalog blocks", fmt.Sprintf("%d do not fit the data region or disagree with catalog head %d", sb.CatalogBlocks, sb.CatalogHead))
	case sb.Flags&^knownFlags != 0:
		return bad("flags", fmt.Sprintf("%#x has bits this build does not know", sb.Flags))
	case sb.NextVolumeID == 0:
		return bad("next volume ID", "is 0")
	case sb.NextSnapID == 0:
		return bad("next snapshot ID", "is 0")
	}
	return nil
}

// ---- converter-tree nodes ----

const nodeMagic = 0x4E444944 // "DIDN"

// NodeHeaderSize is the size of a node header; entries follow it.
const NodeHeaderSize = 32

// NodeCapacity is the largest fanout a node of block size bs can hold.
func NodeCapacity(bs int) int { return (bs - NodeHeaderSize) / 8 }

// EncodeNode writes a tree node that lives at block pbn into b (one block).
// Entries hold physical block numbers; 0 means unmapped.
func EncodeNode(b []byte, pbn uint64, level uint8, entries []uint64) {
	clear(b[:NodeHeaderSize])
	le.PutUint32(b[0:], nodeMagic)
	b[8] = level
	le.PutUint32(b[12:], uint32(len(entries)))
	le.PutUint64(b[16:], pbn)
	off := NodeHeaderSize
	for _, e := range entries {
		le.PutUint64(b[off:], e)
		off += 8
	}
	clear(b[off:])
	le.PutUint32(b[4:], Checksum(b[8:]))
}

// DecodeNode parses the node stored at block pbn, checking magic, checksum, location and bounds.
// It appends the entries to dst[:0] and returns them with the node's level.
func DecodeNode(b []byte, pbn uint64, dst []uint64) (level uint8, entries []uint64, err error) {
	if len(b) < MinBlockSize {
		return 0, nil, fmt.Errorf("node: %w: short buffer (%d bytes)", ErrInvalid, len(b))
	}
	if le.Uint32(b[0:]) != nodeMagic {
		return 0, nil, fmt.Errorf("node: %w", ErrMagic)
	}
	if le.Uint32(b[4:]) != Checksum(b[8:]) {
		return 0, nil, fmt.Errorf("node: %w", ErrChecksum)
	}
	if got := le.Uint64(b[16:]); got != pbn {
		return 0, nil, fmt.Errorf("node: %w: written for block %d (misdirected write)", ErrInvalid, got)
	}
	n := int(le.Uint32(b[12:]))
	if n < 2 || n > NodeCapacity(len(b)) {
		return 0, nil, fmt.Errorf("node: %w: %d entries", ErrInvalid, n)
	}
	level = b[8]
	if level >= MaxHeight {
		return 0, nil, fmt.Errorf("node: %w: level %d", ErrInvalid, level)
	}
	entries = dst[:0]
	off := NodeHeaderSize
	for i := 0; i < n; i++ {
		entries = append(entries, le.Uint64(b[off:]))
		off += 8
	}
	return level, entries, nil
}

// ---- refcount pages ----

// RCHeaderSize is the size of a refcount page header.
const RCHeaderSize = 16

// RCPerPage is the number of refcounts held by one page of block size bs.
func RCPerPage(bs int) int { return (bs - RCHeaderSize) / 4 }

// EncodeRCPage writes refcount page index with generation gen into b (one block).
func EncodeRCPage(b []byte, index uint32, gen uint64, counts []uint32) {
	le.PutUint32(b[4:], index)
	le.PutUint64(b[8:], gen)
	off := RCHeaderSize
	for _, c := range counts {
		le.PutUint32(b[off:], c)
		off += 4
	}
	clear(b[off:])
	le.PutUint32(b[0:], Checksum(b[4:]))
}

// DecodeRCPage parses a refcount page slot. A slot that was never written (all zero) returns
// gen 0 and ok false with no error.
func DecodeRCPage(b []byte, index uint32, counts []uint32) (gen uint64, ok bool, err error) {
	if len(b) < MinBlockSize || len(counts) > RCPerPage(len(b)) {
		return 0, false, fmt.Errorf("refcount page: %w: buffer of %d bytes for %d counts", ErrInvalid, len(b), len(counts))
	}
	if le.Uint32(b[0:]) != Checksum(b[4:]) {
		if allZero(b) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("refcount page %d: %w", index, ErrChecksum)
	}
	if got := le.Uint32(b[4:]); got != index {
		return 0, false, fmt.Errorf("refcount page %d: %w: holds page %d", index, ErrInvalid, got)
	}
	gen = le.Uint64(b[8:])
	off := RCHeaderSize
	for i := range counts {
		counts[i] = le.Uint32(b[off:])
		off += 4
	}
	return gen, true, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ---- catalog blocks ----

const catalogMagic = 0x54434944 // "DICT"

// CatalogHeaderSize is the size of a catalog block header. Its layout:
//
//	 0  magic           uint32
//	 4  checksum        uint32: CRC-32C of bytes 8 to the end of the block
//	 8  payload length  uint16
//	10  block number    uint16: bits 32-47 of the block the header was written for
//	12  block number    uint32: bits 0-31
//	16  next block      uint64: 0 for the last block
//
// Bytes 10-11 were the upper half of a uint32 payload length, always 0, so a block below 2^32 is
// encoded as it always was.
const CatalogHeaderSize = 24

// EncodeCatalogBlock writes one block of the catalog byte stream into b (one block): payload
// continues in block next (0 for the last block). REQUIRES len(payload) <= len(b)-CatalogHeaderSize
// and pbn < MaxPoolBlocks.
func EncodeCatalogBlock(b []byte, pbn, next uint64, payload []byte) {
	if len(payload) > len(b)-CatalogHeaderSize || len(payload) > math.MaxUint16 || pbn >= MaxPoolBlocks {
		panic(fmt.Sprintf("format: catalog block %d of %d bytes cannot hold %d payload bytes", pbn, len(b), len(payload)))
	}
	le.PutUint32(b[0:], catalogMagic)
	le.PutUint16(b[8:], uint16(len(payload)))
	le.PutUint16(b[10:], uint16(pbn>>32))
	le.PutUint32(b[12:], uint32(pbn))
	le.PutUint64(b[16:], next)
	n := copy(b[CatalogHeaderSize:], payload)
	clear(b[CatalogHeaderSize+n:])
	le.PutUint32(b[4:], Checksum(b[8:]))
}

// DecodeCatalogBlock parses the catalog block at pbn and returns its payload and the next block.
// The payload aliases b.
func DecodeCatalogBlock(b []byte, pbn uint64) (payload []byte, next uint64, err error) {
	if len(b) < MinBlockSize {
		return nil, 0, fmt.Errorf("catalog block: %w: short buffer", ErrInvalid)
	}
	if le.Uint32(b[0:]) != catalogMagic {
		return nil, 0, fmt.Errorf("catalog block: %w", ErrMagic)
	}
	if le.Uint32(b[4:]) != Checksum(b[8:]) {
		return nil, 0, fmt.Errorf("catalog block: %w", ErrChecksum)
	}
	if got := uint64(le.Uint16(b[10:]))<<32 | uint64(le.Uint32(b[12:])); got != pbn {
		return nil, 0, fmt.Errorf("catalog block: %w: written for block %d (misdirected write)", ErrInvalid, got)
	}
	n := int(le.Uint16(b[8:]))
	if n > len(b)-CatalogHeaderSize {
		return nil, 0, fmt.Errorf("catalog block: %w: payload length %d", ErrInvalid, n)
	}
	return b[CatalogHeaderSize : CatalogHeaderSize+n], le.Uint64(b[16:]), nil
}
