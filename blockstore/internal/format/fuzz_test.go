package format

import (
	"bytes"
	"math"
	"math/bits"
	"testing"

	"github.com/stretchr/testify/require"
)

// Each fuzz target checks, for any input: the decoder does not panic and does not write to its
// input; a rejection wraps ErrChecksum, ErrMagic or ErrInvalid; an accepted value holds the
// invariants the format promises, and re-encoding it then decoding again gives an equal value.
//
// Most targets take a reseal flag: with it, the input is zero-padded to the smallest size the
// decoder accepts and its checksum is recomputed, so the fuzzer gets past the checksum and
// explores the checks behind it. Without it, the input is decoded as it is.
//
// Targets for block-sized structures take a block as a prefix and a size: the block is the
// prefix zero-padded to size bytes (every encoder zero-pads past the structure's content). That
// keeps the fuzzer's inputs small: it minimizes each new interesting input by trying to remove
// every run of bytes, which for a 4-KiB input takes longer than a whole run's budget.
//
// Run one with: go test -run XXX -fuzz '^FuzzDecodeNode$' -fuzztime 30s ./blockstore/internal/format
// (or make fuzz for all of them).

// padded returns a copy of b, zero-padded to at least n bytes.
func padded(b []byte, n int) []byte {
	c := make([]byte, max(len(b), n))
	copy(c, b)
	return c
}

// prefix returns the compact form of block b that block expands again: b without its trailing
// zero bytes, and len(b).
func prefix(b []byte) ([]byte, uint32) { return bytes.TrimRight(b, "\x00"), uint32(len(b)) }

// block returns p zero-padded to size bytes, at most MaxBlockSize (unless p is longer), and at
// least MinBlockSize when reseal is set.
func block(p []byte, size uint32, reseal bool) []byte {
	n := int(min(size, MaxBlockSize))
	if reseal {
		n = max(n, MinBlockSize)
	}
	return padded(p, n)
}

// decodeUnchanged runs decode on b and fails if it wrote to b.
func decodeUnchanged(t *testing.T, b []byte, decode func()) {
	t.Helper()
	before := bytes.Clone(b)
	decode()
	require.Equal(t, before, b, "decoder wrote to its input")
}

func flipBit(b []byte, bit int) []byte {
	c := bytes.Clone(b)
	c[bit/8] ^= 1 << (bit % 8)
	return c
}

func FuzzDecodeSuperblock(f *testing.F) {
	valid := [][]byte{
		encodeSuperblock(testSuperblock()),
		encodeSuperblock(testGeometry(65536, math.MaxInt64/65536, 4096)),
		encodeSuperblock(testGeometry(4096, 7, 2)),
	}
	for _, b := range valid {
		f.Add(b, false)
		f.Add(b, true)
		f.Add(flipBit(b, 8*100+3), false)
		f.Add(b[:SuperblockSize-1], false)
	}
	bad := testSuperblock()
	bad.RCPages = 1<<63 + 1 // wrapped through validation before the fix
	f.Add(encodeSuperblock(bad), false)
	f.Add([]byte{}, true)
	f.Add(make([]byte, SuperblockSize), false)

	f.Fuzz(func(t *testing.T, b []byte, reseal bool) {
		if reseal {
			b = padded(b, SuperblockSize)
			resealSuperblock(b)
		}
		var sb *Superblock
		var err error
		decodeUnchanged(t, b, func() { sb, err = DecodeSuperblock(b) })
		if err != nil {
			requireRejected(t, err)
			require.Nil(t, sb)
			return
		}
		requireSaneGeometry(t, sb)

		again := encodeSuperblock(sb)
		sb2, err := DecodeSuperblock(again)
		require.NoError(t, err)
		require.Equal(t, sb, sb2)
	})
}

// requireSaneGeometry checks the layout of an accepted superblock with overflow-checked
// arithmetic: regions follow each other, the refcount pages cover the data region and the pool
// fits in an int64 byte offset.
func requireSaneGeometry(t *testing.T, sb *Superblock) {
	t.Helper()
	require.True(t, ValidBlockSize(int(sb.BlockSize)))
	require.GreaterOrEqual(t, sb.Fanout, uint32(2))
	require.LessOrEqual(t, int(sb.Fanout), NodeCapacity(int(sb.BlockSize)))

	hi, poolBytes := bits.Mul64(sb.PoolBlocks, uint64(sb.BlockSize))
	require.True(t, hi == 0 && poolBytes <= math.MaxInt64, "pool of %d blocks overflows int64", sb.PoolBlocks)
	require.LessOrEqual(t, sb.PoolBlocks, uint64(MaxPoolBlocks))

	rcStart, carry := bits.Add64(sb.JournalStart, sb.JournalBlocks, 0)
	require.True(t, carry == 0 && rcStart == sb.RCStart, "refcount region does not follow the journal")
	hi, rcBlocks := bits.Mul64(2, sb.RCPages)
	require.Zero(t, hi)
	dataStart, carry := bits.Add64(sb.RCStart, rcBlocks, 0)
	require.True(t, carry == 0 && dataStart == sb.DataStart, "data region does not follow the refcount region")
	require.Less(t, sb.DataStart, sb.PoolBlocks)

	hi, covered := bits.Mul64(sb.RCPages, uint64(RCPerPage(int(sb.BlockSize))))
	require.True(t, hi != 0 || covered >= sb.PoolBlocks-sb.DataStart, "refcount pages do not cover the data region")
	if sb.CatalogHead != 0 {
		require.True(t, sb.CatalogHead >= sb.DataStart && sb.CatalogHead < sb.PoolBlocks, "catalog head outside the data region")
	}
}

func FuzzDecodeNode(f *testing.F) {
	add := func(b []byte, pbn uint64, reseal bool) {
		p, size := prefix(b)
		f.Add(p, size, pbn, reseal)
	}
	small := encodeNode(4096, 7, 3, []uint64{0, 5, 0, 9})
	add(small, 7, false)
	add(small, 7, true)
	add(encodeNode(4096, 100, 0, []uint64{1<<40 + 1, 0, 3, math.MaxUint64, 0, 0, 0, 1}), 100, false)
	add(encodeNode(8192, 1<<40, MaxHeight-1, []uint64{1, 2}), 1<<40, false)
	add(encodeNode(65536, MaxPoolBlocks-1, 0, make([]uint64, 128)), MaxPoolBlocks-1, false)
	add(small, 8, false)                                // misdirected
	add(flipBit(small, 8*(NodeHeaderSize+9)), 7, false) // corrupt
	add(small[:MinBlockSize-1], 7, false)               // short
	add(make([]byte, 4096), 0, true)

	f.Fuzz(func(t *testing.T, p []byte, size uint32, pbn uint64, reseal bool) {
		b := block(p, size, reseal)
		if reseal {
			resealNode(b)
		}
		var level uint8
		var entries []uint64
		var err error
		decodeUnchanged(t, b, func() { level, entries, err = DecodeNode(b, pbn, nil) })
		if err != nil {
			requireRejected(t, err)
			return
		}
		require.Less(t, level, uint8(MaxHeight))
		require.GreaterOrEqual(t, len(entries), 2)
		require.LessOrEqual(t, len(entries), NodeCapacity(len(b)))

		again := make([]byte, len(b))
		EncodeNode(again, pbn, level, entries)
		level2, entries2, err := DecodeNode(again, pbn, nil)
		require.NoError(t, err)
		require.Equal(t, level, level2)
		require.Equal(t, entries, entries2)
		_, _, err = DecodeNode(again, pbn+1, nil)
		require.ErrorIs(t, err, ErrInvalid, "misdirected node accepted")
	})
}

func FuzzDecodeRCPage(f *testing.F) {
	add := func(b []byte, index uint32, ncounts uint16, reseal bool) {
		p, size := prefix(b)
		f.Add(p, size, index, ncounts, reseal)
	}
	small := encodeRCPage(4096, 0, 1, []uint32{1, 0, 2})
	add(small, 0, 3, false)
	add(small, 0, 3, true)
	add(small, 0, uint16(RCPerPage(4096)), false) // counts past the encoded ones
	add(encodeRCPage(4096, 3, 9, []uint32{math.MaxUint32, 1 << 20, 0, 0, 7}), 3, 5, false)
	add(encodeRCPage(65536, 1<<20, math.MaxUint64, []uint32{math.MaxUint32}), 1<<20, 1, false)
	add(small, 1, 3, false)                              // misdirected
	add(flipBit(small, 8*(RCHeaderSize+1)), 0, 3, false) // corrupt
	add(small, 0, uint16(RCPerPage(4096)+1), false)      // too many counts
	add(make([]byte, 4096), 0, 3, false)                 // never written
	add(small[:MinBlockSize-1], 0, 3, false)             // short

	f.Fuzz(func(t *testing.T, p []byte, size uint32, index uint32, ncounts uint16, reseal bool) {
		b := block(p, size, reseal)
		if reseal {
			resealRCPage(b)
		}
		counts := make([]uint32, ncounts)
		var gen uint64
		var ok bool
		var err error
		decodeUnchanged(t, b, func() { gen, ok, err = DecodeRCPage(b, index, counts) })
		if err != nil {
			requireRejected(t, err)
			require.False(t, ok)
			return
		}
		if !ok {
			require.True(t, allZero(b), "a page that is not all zero passed for never written")
			require.Zero(t, gen)
			return
		}
		require.LessOrEqual(t, len(counts), RCPerPage(len(b)))

		again := make([]byte, len(b))
		EncodeRCPage(again, index, gen, counts)
		counts2 := make([]uint32, len(counts))
		gen2, ok, err := DecodeRCPage(again, index, counts2)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, gen, gen2)
		require.Equal(t, counts, counts2)
		_, _, err = DecodeRCPage(again, index+1, counts2)
		require.ErrorIs(t, err, ErrInvalid, "misdirected refcount page accepted")
	})
}

func FuzzDecodeCatalogBlock(f *testing.F) {
	add := func(b []byte, pbn uint64, reseal bool) {
		p, size := prefix(b)
		f.Add(p, size, pbn, reseal)
	}
	small := encodeCatalogBlock(4096, 1<<32+1, 0, []byte("catalog"))
	add(small, 1<<32+1, false)
	add(small, 1<<32+1, true)
	add(encodeCatalogBlock(4096, 100, 101, EncodeCatalog(testCatalog())[:200]), 100, false)
	add(encodeCatalogBlock(65536, MaxPoolBlocks-1, 0, []byte{1, 2, 3}), MaxPoolBlocks-1, false)
	add(small, 1, false)                        // misdirected by 2^32
	add(flipBit(small, 8*10), 1<<32+1, false)   // corrupt block number
	add(small[:MinBlockSize-1], 1<<32+1, false) // short
	add(make([]byte, 4096), 0, true)

	f.Fuzz(func(t *testing.T, p []byte, size uint32, pbn uint64, reseal bool) {
		b := block(p, size, reseal)
		if reseal {
			resealCatalogBlock(b)
		}
		var payload []byte
		var next uint64
		var err error
		decodeUnchanged(t, b, func() { payload, next, err = DecodeCatalogBlock(b, pbn) })
		if err != nil {
			requireRejected(t, err)
			return
		}
		require.LessOrEqual(t, len(payload), len(b)-CatalogHeaderSize)
		require.Less(t, pbn, uint64(MaxPoolBlocks))

		again := make([]byte, len(b))
		EncodeCatalogBlock(again, pbn, next, payload)
		payload2, next2, err := DecodeCatalogBlock(again, pbn)
		require.NoError(t, err)
		require.Equal(t, payload, payload2)
		require.Equal(t, next, next2)
		for _, other := range []uint64{pbn + 1, pbn ^ 1<<32} {
			_, _, err = DecodeCatalogBlock(again, other)
			require.ErrorIs(t, err, ErrInvalid, "misdirected catalog block accepted at %d", other)
		}
	})
}

func FuzzDecodeCatalog(f *testing.F) {
	valid := EncodeCatalog(testCatalog())
	f.Add(valid)
	f.Add(EncodeCatalog(&Catalog{}))
	f.Add(EncodeCatalog(&Catalog{Volumes: testCatalog().Volumes[:1]}))
	f.Add(EncodeCatalog(&Catalog{Snapshots: testCatalog().Snapshots[:1]}))
	f.Add(valid[:len(valid)/2])                                    // truncated
	f.Add(append(bytes.Clone(valid), 0))                           // trailing byte
	f.Add([]byte{catalogVersion, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0}) // huge count
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, b []byte) {
		var c *Catalog
		var err error
		decodeUnchanged(t, b, func() { c, err = DecodeCatalog(b) })
		if err != nil {
			requireRejected(t, err)
			require.Nil(t, c)
			return
		}
		for _, v := range c.Volumes {
			require.LessOrEqual(t, len(v.Name), MaxNameLen)
			require.True(t, v.Height >= 1 && v.Height <= MaxHeight)
		}
		for _, s := range c.Snapshots {
			require.LessOrEqual(t, len(s.Name), MaxNameLen)
			require.True(t, s.Height >= 1 && s.Height <= MaxHeight)
		}

		again := EncodeCatalog(c)
		require.LessOrEqual(t, len(again), len(b), "a canonical encoding is never longer")
		c2, err := DecodeCatalog(again)
		require.NoError(t, err)
		require.Equal(t, c, c2)
	})
}

func FuzzDecodeRecord(f *testing.F) {
	for _, r := range testRecords() {
		b := AppendRecord(nil, &r)
		f.Add(b, false)
		f.Add(append(bytes.Clone(b), make([]byte, 40)...), false) // padding after it
		f.Add(flipBit(b, 8*len(b)-1), false)                      // corrupt
		f.Add(flipBit(b, 8*18), true)                             // bad type, resealed
		f.Add(b[:len(b)-1], false)                                // truncated
	}
	recs := testRecords()
	two := AppendRecord(AppendRecord(nil, &recs[0]), &recs[1])
	f.Add(two, false)
	f.Add(appendRecordV1(nil, &recs[1]), false)  // format version 1
	f.Add(make([]byte, RecordHeaderSize), false) // padding
	f.Add([]byte{}, false)

	f.Fuzz(func(t *testing.T, b []byte, reseal bool) {
		if reseal {
			b = bytes.Clone(b)
			resealRecord(b)
		}
		var r Record
		var n int
		var end bool
		var err error
		// The version 1 decoder holds to the same bounds, and never takes a current record.
		decodeUnchanged(t, b, func() { r, n, end, err = DecodeRecordV1(b) })
		if err == nil && !end {
			require.GreaterOrEqual(t, n, recordHeaderSizeV1)
			require.LessOrEqual(t, n, len(b))
			require.LessOrEqual(t, len(r.Name), MaxNameLen)
			require.Zero(t, r.Epoch)
			again, _, _, err := DecodeRecordV1(appendRecordV1(nil, &r))
			require.NoError(t, err)
			require.Equal(t, r, again)
		}
		decodeUnchanged(t, b, func() { r, n, end, err = DecodeRecord(b) })
		if end {
			require.NoError(t, err)
			require.Zero(t, n)
			return
		}
		if err != nil {
			requireRejected(t, err)
			require.Zero(t, n)
			return
		}
		require.GreaterOrEqual(t, n, RecordHeaderSize)
		require.LessOrEqual(t, n, len(b))
		require.LessOrEqual(t, n, MaxRecordSize)
		require.LessOrEqual(t, len(r.Name), MaxNameLen)
		require.True(t, r.Type >= RecMap && r.Type <= recTypeMax, "type %d", r.Type)

		again := AppendRecord(nil, &r)
		require.LessOrEqual(t, len(again), n, "a canonical encoding is never longer")
		r2, n2, end2, err := DecodeRecord(again)
		require.NoError(t, err)
		require.False(t, end2)
		require.Equal(t, len(again), n2)
		require.Equal(t, r, r2)
	})
}
