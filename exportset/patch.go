package exportset

import (
	"bytes"
	"encoding/binary"
)

// A patch is the payload of an object that changes some blocks of a chunk (docs/export-sets.md):
//
//	"DIPATCH1"                                    8 bytes, the magic
//	records, in ascending offset, not overlapping:
//	  offset  uint32 little-endian               first byte in the chunk, a multiple of the block size
//	  length  uint32 little-endian               bytes, a positive multiple of the block size
//	  kind    uint8                              1: data follows (length bytes); 2: the range reads as zeros
//	  data    [length]byte                       kind 1 only
//
// A record ends within the chunk. A patch has at least one record.

const (
	patchMagic      = "DIPATCH1"
	patchHeaderSize = 9
	kindData        = 1
	kindZero        = 2
	// minPatchSize is the size of the smallest patch: the magic and one zero record.
	minPatchSize = int64(len(patchMagic) + patchHeaderSize)
)

// patchRecord is one record of a patch: data to write at off, or (data nil) length bytes to
// zero.
type patchRecord struct {
	off, length int64
	data        []byte // nil for a zero record
}

// maxPatchSize bounds a patch's payload: a record per block, each with its data.
func maxPatchSize(chunkSize int64, blockSize int) int64 {
	return int64(len(patchMagic)) + chunkSize/int64(blockSize)*patchHeaderSize + chunkSize
}

// encodePatch returns the payload of a patch made of recs (ascending, not overlapping).
func encodePatch(recs []patchRecord) []byte {
	n := len(patchMagic)
	for _, r := range recs {
		n += patchHeaderSize + len(r.data)
	}
	b := make([]byte, 0, n)
	b = append(b, patchMagic...)
	for _, r := range recs {
		b = binary.LittleEndian.AppendUint32(b, uint32(r.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(r.length))
		if r.data != nil {
			b = append(b, kindData)
			b = append(b, r.data...)
		} else {
			b = append(b, kindZero)
		}
	}
	return b
}

// decodePatch decodes a patch for a chunk of chunkLen bytes of an image of blockSize blocks,
// strictly (ErrMalformed naming the record and the rule). The records' data alias b.
func decodePatch(b []byte, chunkLen int64, blockSize int) ([]patchRecord, error) {
	if !bytes.HasPrefix(b, []byte(patchMagic)) {
		return nil, malformed("patch: no %q magic", patchMagic)
	}
	b = b[len(patchMagic):]
	bs := int64(blockSize)
	var recs []patchRecord
	var end int64
	for i := 0; len(b) > 0; i++ {
		if len(b) < patchHeaderSize {
			return nil, malformed("patch record %d: %d bytes left, a record header has %d", i, len(b), patchHeaderSize)
		}
		r := patchRecord{off: int64(binary.LittleEndian.Uint32(b)), length: int64(binary.LittleEndian.Uint32(b[4:]))}
		kind := b[8]
		b = b[patchHeaderSize:]
		switch {
		case r.off%bs != 0 || r.length%bs != 0 || r.length == 0:
			return nil, malformed("patch record %d: offset %d length %d: want multiples of the block size %d, length positive", i, r.off, r.length, blockSize)
		case r.off < end:
			return nil, malformed("patch record %d: offset %d: records must be ascending and not overlap (the previous one ends at %d)", i, r.off, end)
		case r.off+r.length > chunkLen:
			return nil, malformed("patch record %d: offset %d length %d: past the chunk's %d bytes", i, r.off, r.length, chunkLen)
		}
		switch kind {
		case kindData:
			if int64(len(b)) < r.length {
				return nil, malformed("patch record %d: %d bytes of data, %d left", i, r.length, len(b))
			}
			r.data = b[:r.length:r.length]
			b = b[r.length:]
		case kindZero:
		default:
			return nil, malformed("patch record %d: kind %d: want %d (data) or %d (zeros)", i, kind, kindData, kindZero)
		}
		end = r.off + r.length
		recs = append(recs, r)
	}
	if len(recs) == 0 {
		return nil, malformed("patch: no record")
	}
	return recs, nil
}

// applyPatch applies recs to buf, a chunk's bytes.
func applyPatch(buf []byte, recs []patchRecord) {
	for _, r := range recs {
		if r.data != nil {
			copy(buf[r.off:], r.data)
		} else {
			clear(buf[r.off : r.off+r.length])
		}
	}
}

// diffRecords returns the records that turn old into cur (slices of equal length, whole
// blocks, starting at byte at of the chunk): each run of changed blocks becomes a zero record
// where cur's blocks are all zero, and a data record (aliasing cur) otherwise.
func diffRecords(old, cur []byte, at int64, blockSize int) []patchRecord {
	var recs []patchRecord
	bs := blockSize
	for i := 0; i < len(cur); {
		if bytes.Equal(old[i:i+bs], cur[i:i+bs]) {
			i += bs
			continue
		}
		zero := allZero(cur[i : i+bs])
		j := i + bs
		for j < len(cur) && !bytes.Equal(old[j:j+bs], cur[j:j+bs]) && allZero(cur[j:j+bs]) == zero {
			j += bs
		}
		r := patchRecord{off: at + int64(i), length: int64(j - i)}
		if !zero {
			r.data = cur[i:j:j]
		}
		recs = append(recs, r)
		i = j
	}
	return recs
}

// allZero reports whether b holds only zeros.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
