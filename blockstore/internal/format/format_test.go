package format

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// ---- helpers shared with fuzz_test.go ----

// testGeometry returns a valid superblock for a pool of poolBlocks blocks of bs bytes with a
// journal of journalBlocks blocks and the fewest refcount pages that cover the data region.
func testGeometry(bs uint32, poolBlocks, journalBlocks uint64) *Superblock {
	perPage := uint64(RCPerPage(int(bs)))
	avail := poolBlocks - 2 - journalBlocks
	pages := (avail + perPage + 1) / (perPage + 2) // pages*perPage >= avail - 2*pages

	return &Superblock{
		Version:       Version,
		BlockSize:     bs,
		Fanout:        uint32(NodeCapacity(int(bs))),
		PoolBlocks:    poolBlocks,
		JournalStart:  2,
		JournalBlocks: journalBlocks,
		RCStart:       2 + journalBlocks,
		RCPages:       pages,
		DataStart:     2 + journalBlocks + 2*pages,
		NextVolumeID:  1,
		NextSnapID:    1,
		Created:       1_700_000_000_000_000_000,
		OverProvision: 1000,
	}
}

// testSuperblock is a pool of 10000 4-KiB blocks after a few checkpoints.
func testSuperblock() *Superblock {
	sb := testGeometry(4096, 10000, 64)
	sb.Generation = 7
	sb.CheckpointLSN = 1234
	sb.CatalogHead = sb.DataStart + 10
	sb.CatalogBlocks = 2
	sb.NodeBlocks = 42
	sb.NextVolumeID = 5
	sb.NextSnapID = 3
	sb.Boot = [16]byte{0x80, 0xab, 0x5e, 0x5a, 15: 0x6b}
	return sb
}

func encodeSuperblock(sb *Superblock) []byte {
	b := make([]byte, SuperblockSize)
	EncodeSuperblock(b, sb)
	return b
}

func encodeNode(bs int, pbn uint64, level uint8, entries []uint64) []byte {
	b := make([]byte, bs)
	EncodeNode(b, pbn, level, entries)
	return b
}

func encodeRCPage(bs int, index uint32, gen uint64, counts []uint32) []byte {
	b := make([]byte, bs)
	EncodeRCPage(b, index, gen, counts)
	return b
}

func encodeCatalogBlock(bs int, pbn, next uint64, payload []byte) []byte {
	b := make([]byte, bs)
	EncodeCatalogBlock(b, pbn, next, payload)
	return b
}

// The reseal helpers recompute the checksum of a structure after a test changed its bytes, so
// the test (or fuzzer) reaches the checks behind the checksum.

func resealSuperblock(b []byte) { le.PutUint32(b[8:], Checksum(b[12:SuperblockSize])) }
func resealNode(b []byte)       { le.PutUint32(b[4:], Checksum(b[8:])) }
func resealRCPage(b []byte)     { le.PutUint32(b[0:], Checksum(b[4:])) }
func resealCatalogBlock(b []byte) {
	le.PutUint32(b[4:], Checksum(b[8:]))
}

// resealRecord recomputes the checksum of the record at the start of b if its length field
// fits in b.
func resealRecord(b []byte) {
	if len(b) < RecordHeaderSize {
		return
	}
	if n := RecordHeaderSize + int(le.Uint16(b[16:])); n <= len(b) {
		le.PutUint32(b[4:], Checksum(b[8:n]))
	}
}

// requireRejected asserts that err reports a damaged structure with one of the sentinel errors.
func requireRejected(t testing.TB, err error, msgAndArgs ...any) {
	t.Helper()
	require.Error(t, err, msgAndArgs...)
	if !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrMagic) && !errors.Is(err, ErrInvalid) {
		require.Failf(t, "error wraps none of ErrChecksum, ErrMagic, ErrInvalid", "%v %s", err, fmt.Sprint(msgAndArgs...))
	}
}

// forEachBitFlip calls fn with a copy of b that has one bit flipped, for every bit in b[:n].
func forEachBitFlip(b []byte, n int, fn func(bit int, flipped []byte)) {
	flipped := bytes.Clone(b)
	for bit := 0; bit < 8*n; bit++ {
		flipped[bit/8] ^= 1 << (bit % 8)
		fn(bit, flipped)
		flipped[bit/8] ^= 1 << (bit % 8)
	}
}

func randomEntries(rng *rand.Rand, n int) []uint64 {
	e := make([]uint64, n)
	for i := range e {
		if rng.IntN(3) > 0 {
			e[i] = rng.Uint64N(MaxPoolBlocks)
		}
	}
	return e
}

func randomCounts(rng *rand.Rand, n int) []uint32 {
	c := make([]uint32, n)
	for i := range c {
		c[i] = rng.Uint32() >> rng.IntN(32)
	}
	return c
}

// ---- basics ----

func TestChecksumIsCastagnoli(t *testing.T) {
	// The CRC-32C check value (RFC 3720, B.4).
	require.Equal(t, uint32(0xE3069283), Checksum([]byte("123456789")))
}

func TestValidBlockSize(t *testing.T) {
	for _, tc := range []struct {
		bs   int
		want bool
	}{
		{0, false}, {-4096, false}, {2048, false}, {4095, false}, {4096, true}, {6144, false},
		{8192, true}, {16384, true}, {32768, true}, {65536, true}, {65537, false}, {131072, false},
	} {
		require.Equal(t, tc.want, ValidBlockSize(tc.bs), "block size %d", tc.bs)
	}
}

func TestRecordTypeString(t *testing.T) {
	require.Equal(t, "map", RecMap.String())
	require.Equal(t, "revert", RecRevert.String())
	require.Equal(t, "record-type(0)", RecordType(0).String())
	require.Equal(t, "commit", RecCommit.String())
	require.Equal(t, "record-type(12)", RecordType(12).String())
}

// ---- superblock ----

func TestSuperblockRoundTrip(t *testing.T) {
	maxBytes64K := testGeometry(65536, math.MaxInt64/65536, 4096)
	maxBytes64K.CatalogHead, maxBytes64K.CatalogBlocks = maxBytes64K.PoolBlocks-1, 1
	max4K := testGeometry(4096, MaxPoolBlocks, 65536)
	max4K.Generation, max4K.CheckpointLSN = math.MaxUint64, math.MaxUint64
	max4K.NextVolumeID, max4K.NextSnapID = math.MaxUint64, math.MaxUint64
	max4K.NodeBlocks, max4K.OverProvision, max4K.Created = math.MaxUint64, math.MaxUint32, math.MinInt64
	fanout2 := testGeometry(8192, 1000, 2)
	fanout2.Fanout = 2
	for _, tc := range []struct {
		name string
		sb   *Superblock
	}{
		{"new pool", testGeometry(4096, 10000, 64)},
		{"after checkpoints", testSuperblock()},
		{"smallest", testGeometry(4096, 2+2+2+1, 2)},
		{"fanout 2", fanout2},
		{"largest 64K pool", maxBytes64K},
		{"largest 4K pool, extreme counters", max4K},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, size := range []int{SuperblockSize, MinBlockSize, int(tc.sb.BlockSize)} {
				b := make([]byte, size)
				EncodeSuperblock(b, tc.sb)
				require.True(t, allZero(b[SuperblockSize:]), "bytes past SuperblockSize written")
				got, err := DecodeSuperblock(b)
				require.NoError(t, err)
				require.Equal(t, tc.sb, got)
			}
		})
	}
}

func TestSuperblockEncodeOverwritesStaleBytes(t *testing.T) {
	b := bytes.Repeat([]byte{0xA5}, SuperblockSize)
	EncodeSuperblock(b, testSuperblock())
	require.Equal(t, encodeSuperblock(testSuperblock()), b)
}

func TestSuperblockBitFlips(t *testing.T) {
	b := encodeSuperblock(testSuperblock())
	forEachBitFlip(b, SuperblockSize, func(bit int, flipped []byte) {
		_, err := DecodeSuperblock(flipped)
		requireRejected(t, err, "bit ", bit)
	})
}

func TestSuperblockTruncated(t *testing.T) {
	b := encodeSuperblock(testSuperblock())
	for n := range SuperblockSize {
		_, err := DecodeSuperblock(b[:n])
		require.ErrorIs(t, err, ErrInvalid, "%d bytes", n)
	}
}

func TestSuperblockRejectsWrongMagicAndChecksum(t *testing.T) {
	_, err := DecodeSuperblock(make([]byte, MinBlockSize))
	require.ErrorIs(t, err, ErrMagic, "never written")
	b := encodeSuperblock(testSuperblock())
	b[SuperblockSize-1] = 1
	_, err = DecodeSuperblock(b)
	require.ErrorIs(t, err, ErrChecksum, "reserved byte changed")
}

// A pool of any version from MinVersion to Version opens (older ones are upgraded by their first
// checkpoint); others are refused, naming the version.
func TestSuperblockVersions(t *testing.T) {
	for v := uint32(MinVersion); v <= Version; v++ {
		sb := testSuperblock()
		sb.Version = v
		got, err := DecodeSuperblock(encodeSuperblock(sb))
		require.NoError(t, err, "version %d", v)
		require.Equal(t, v, got.Version)
	}
}

func TestSuperblockInconsistentGeometry(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(sb *Superblock)
		field  string // must be named in the error
	}{
		{"version 0", func(sb *Superblock) { sb.Version = 0 }, "version"},
		{"version past this build's", func(sb *Superblock) { sb.Version = Version + 1 }, "version"},
		{"block size 0", func(sb *Superblock) { sb.BlockSize = 0 }, "block size"},
		{"block size 2048", func(sb *Superblock) { sb.BlockSize = 2048 }, "block size"},
		{"block size not a power of two", func(sb *Superblock) { sb.BlockSize = 12288 }, "block size"},
		{"block size 128K", func(sb *Superblock) { sb.BlockSize = 131072 }, "block size"},
		{"block size 2^31", func(sb *Superblock) { sb.BlockSize = 1 << 31 }, "block size"},
		{"fanout 0", func(sb *Superblock) { sb.Fanout = 0 }, "fanout"},
		{"fanout 1", func(sb *Superblock) { sb.Fanout = 1 }, "fanout"},
		{"fanout over capacity", func(sb *Superblock) { sb.Fanout = uint32(NodeCapacity(4096)) + 1 }, "fanout"},
		{"pool blocks over 2^48", func(sb *Superblock) { sb.PoolBlocks = MaxPoolBlocks + 1 }, "pool blocks"},
		{"pool blocks 2^64-1", func(sb *Superblock) { sb.PoolBlocks = math.MaxUint64 }, "pool blocks"},
		{"pool bytes overflow int64", func(sb *Superblock) {
			*sb = *testGeometry(65536, MaxPoolBlocks, 4096)
		}, "pool blocks"},
		{"journal start 0", func(sb *Superblock) { sb.JournalStart = 0 }, "journal"},
		{"journal start 3", func(sb *Superblock) { sb.JournalStart, sb.RCStart, sb.DataStart = 3, sb.RCStart+1, sb.DataStart+1 }, "journal"},
		{"journal of 1 block", func(sb *Superblock) { sb.JournalBlocks, sb.RCStart, sb.DataStart = 1, 3, 3+2*sb.RCPages }, "journal"},
		{"journal fills the pool", func(sb *Superblock) { sb.JournalBlocks = sb.PoolBlocks }, "journal"},
		{"refcount region overlaps journal", func(sb *Superblock) { sb.RCStart-- }, "refcount region"},
		{"refcount region after a gap", func(sb *Superblock) { sb.RCStart++ }, "refcount region"},
		{"refcount pages exceed the pool", func(sb *Superblock) { sb.RCPages = sb.PoolBlocks }, "refcount pages"},
		{"data region overlaps refcount pages", func(sb *Superblock) { sb.DataStart-- }, "data region"},
		{"data region after a gap", func(sb *Superblock) { sb.DataStart++ }, "data region"},
		{"no data region", func(sb *Superblock) { sb.PoolBlocks = sb.DataStart }, "pool blocks"},
		{"pool smaller than metadata", func(sb *Superblock) { sb.PoolBlocks = sb.RCStart + 1 }, "pool blocks"},
		{"refcount pages do not cover data", func(sb *Superblock) { sb.RCPages--; sb.DataStart -= 2 }, "refcount pages"},
		{"catalog head in the superblock", func(sb *Superblock) { sb.CatalogHead = 1 }, "catalog head"},
		{"catalog head in the journal", func(sb *Superblock) { sb.CatalogHead = sb.JournalStart }, "catalog head"},
		{"catalog head in the refcount region", func(sb *Superblock) { sb.CatalogHead = sb.DataStart - 1 }, "catalog head"},
		{"catalog head past the pool", func(sb *Superblock) { sb.CatalogHead = sb.PoolBlocks }, "catalog head"},
		{"catalog blocks without a head", func(sb *Superblock) { sb.CatalogHead = 0 }, "catalog blocks"},
		{"catalog head without blocks", func(sb *Superblock) { sb.CatalogBlocks = 0 }, "catalog blocks"},
		{"catalog blocks exceed the data region", func(sb *Superblock) { sb.CatalogBlocks = sb.PoolBlocks - sb.DataStart + 1 }, "catalog blocks"},
		{"next volume ID 0", func(sb *Superblock) { sb.NextVolumeID = 0 }, "next volume ID"},
		{"next snapshot ID 0", func(sb *Superblock) { sb.NextSnapID = 0 }, "next snapshot ID"},

		// Geometries that passed validation through uint64 wrap-around before it bounded every
		// region by PoolBlocks first.
		{"journal size wraps the refcount start to 0", func(sb *Superblock) {
			sb.JournalBlocks, sb.RCStart = math.MaxUint64-1, 0
			sb.DataStart = 2 * sb.RCPages
		}, "journal"},
		{"refcount pages wrap the data start", func(sb *Superblock) {
			sb.PoolBlocks = sb.RCStart + 2 + 900
			sb.RCPages = 1<<63 + 1 // 2*RCPages wraps to 2, RCPages*1020 wraps to 1020
			sb.DataStart = sb.RCStart + 2
		}, "refcount pages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb := testSuperblock()
			tc.change(sb)
			_, err := DecodeSuperblock(encodeSuperblock(sb))
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, "superblock: "+ErrInvalid.Error()+": "+tc.field+" ")
		})
	}
}

// ---- converter-tree nodes ----

func TestNodeRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name    string
		bs      int
		pbn     uint64
		level   uint8
		entries []uint64
	}{
		{"full 4K leaf", 4096, 100, 0, randomEntries(rng, NodeCapacity(4096))},
		{"full 4K root", 4096, 101, MaxHeight - 1, randomEntries(rng, NodeCapacity(4096))},
		{"empty full node", 4096, 102, 1, make([]uint64, NodeCapacity(4096))},
		{"fanout 2", 4096, 1, 3, []uint64{0, 7}},
		{"fanout 4, largest values", 8192, MaxPoolBlocks - 1, 2, []uint64{math.MaxUint64, 1, 0, math.MaxUint64}},
		{"full 64K node", 65536, 1 << 40, 4, randomEntries(rng, NodeCapacity(65536))},
		{"64K buffer, fanout 510", 65536, 9, 0, randomEntries(rng, 510)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeNode(tc.bs, tc.pbn, tc.level, tc.entries)
			level, entries, err := DecodeNode(b, tc.pbn, nil)
			require.NoError(t, err)
			require.Equal(t, tc.level, level)
			require.Equal(t, tc.entries, entries)

			// dst is reused.
			dst := make([]uint64, 3, max(3, len(tc.entries)))
			_, entries, err = DecodeNode(b, tc.pbn, dst)
			require.NoError(t, err)
			require.Equal(t, tc.entries, entries)
			require.Same(t, &dst[:1][0], &entries[0], "entries not appended to dst[:0]")
		})
	}
}

func TestNodeEncodeOverwritesStaleBytes(t *testing.T) {
	entries := []uint64{1, 2, 3}
	b := bytes.Repeat([]byte{0xFF}, 4096)
	EncodeNode(b, 5, 1, entries)
	require.Equal(t, encodeNode(4096, 5, 1, entries), b)
}

func TestNodeBitFlips(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, fanout := range []int{NodeCapacity(4096), 4} {
		b := encodeNode(4096, 77, 2, randomEntries(rng, fanout))
		forEachBitFlip(b, len(b), func(bit int, flipped []byte) {
			_, _, err := DecodeNode(flipped, 77, nil)
			requireRejected(t, err, "fanout ", fanout, " bit ", bit)
		})
	}
}

func TestNodeMisdirected(t *testing.T) {
	for _, pbn := range []uint64{0, 1, 1000, 1 << 32, MaxPoolBlocks - 1} {
		b := encodeNode(4096, pbn, 0, []uint64{1, 2, 3, 4})
		for _, other := range []uint64{pbn + 1, pbn - 1, pbn ^ 1<<32, pbn ^ 1<<47, 0} {
			if other == pbn {
				continue
			}
			_, _, err := DecodeNode(b, other, nil)
			require.ErrorIs(t, err, ErrInvalid, "written for %d, read at %d", pbn, other)
			require.ErrorContains(t, err, "misdirected")
		}
	}
}

func TestNodeTruncated(t *testing.T) {
	b := encodeNode(8192, 9, 0, []uint64{1, 2, 3, 4})
	for _, n := range []int{0, 1, NodeHeaderSize, NodeHeaderSize + 8*4, MinBlockSize - 1} {
		_, _, err := DecodeNode(b[:n], 9, nil)
		require.ErrorIs(t, err, ErrInvalid, "%d bytes", n)
	}
	// Half of a node written in a bigger block: the checksum covers the whole block.
	_, _, err := DecodeNode(b[:MinBlockSize], 9, nil)
	require.ErrorIs(t, err, ErrChecksum)
}

func TestNodeRejectsBadFields(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(b []byte)
	}{
		{"level MaxHeight", func(b []byte) { b[8] = MaxHeight }},
		{"level 255", func(b []byte) { b[8] = 255 }},
		{"0 entries", func(b []byte) { le.PutUint32(b[12:], 0) }},
		{"1 entry", func(b []byte) { le.PutUint32(b[12:], 1) }},
		{"entries past the block", func(b []byte) { le.PutUint32(b[12:], uint32(NodeCapacity(4096))+1) }},
		{"2^32-1 entries", func(b []byte) { le.PutUint32(b[12:], math.MaxUint32) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeNode(4096, 3, 1, []uint64{1, 2, 3})
			tc.change(b)
			resealNode(b)
			_, _, err := DecodeNode(b, 3, nil)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
	_, _, err := DecodeNode(make([]byte, 4096), 0, nil)
	require.ErrorIs(t, err, ErrMagic, "never written")
}

// ---- refcount pages ----

func TestRCPageRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		name   string
		bs     int
		index  uint32
		gen    uint64
		counts []uint32
	}{
		{"full 4K page", 4096, 0, 1, randomCounts(rng, RCPerPage(4096))},
		{"partial last page", 4096, 17, 99, randomCounts(rng, 300)},
		{"no counts", 4096, 3, 2, []uint32{}},
		{"all zero counts", 4096, 4, 3, make([]uint32, RCPerPage(4096))},
		{"largest values", 16384, math.MaxUint32, math.MaxUint64, []uint32{math.MaxUint32, 0, math.MaxUint32}},
		{"full 64K page", 65536, 1 << 20, 1 << 40, randomCounts(rng, RCPerPage(65536))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeRCPage(tc.bs, tc.index, tc.gen, tc.counts)
			counts := make([]uint32, len(tc.counts))
			gen, ok, err := DecodeRCPage(b, tc.index, counts)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, tc.gen, gen)
			require.Equal(t, tc.counts, counts)

			// Counts past the encoded ones read as zero, up to the page capacity.
			counts = make([]uint32, RCPerPage(tc.bs))
			_, ok, err = DecodeRCPage(b, tc.index, counts)
			require.NoError(t, err)
			require.True(t, ok)
			require.True(t, allZero(u32bytes(counts[len(tc.counts):])))
		})
	}
}

func u32bytes(c []uint32) []byte {
	b := make([]byte, 4*len(c))
	for i, v := range c {
		le.PutUint32(b[4*i:], v)
	}
	return b
}

func TestRCPageEncodeOverwritesStaleBytes(t *testing.T) {
	b := bytes.Repeat([]byte{0x5A}, 4096)
	EncodeRCPage(b, 2, 3, []uint32{4, 5})
	require.Equal(t, encodeRCPage(4096, 2, 3, []uint32{4, 5}), b)
}

func TestRCPageNeverWritten(t *testing.T) {
	for _, bs := range []int{4096, 65536} {
		counts := []uint32{7, 7}
		gen, ok, err := DecodeRCPage(make([]byte, bs), 5, counts)
		require.NoError(t, err)
		require.False(t, ok)
		require.Zero(t, gen)
	}
}

func TestRCPageBitFlips(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{RCPerPage(4096), 10} {
		b := encodeRCPage(4096, 9, 12, randomCounts(rng, n))
		counts := make([]uint32, n)
		forEachBitFlip(b, len(b), func(bit int, flipped []byte) {
			_, ok, err := DecodeRCPage(flipped, 9, counts)
			requireRejected(t, err, n, " counts, bit ", bit)
			require.False(t, ok)
		})
	}
}

func TestRCPageMisdirected(t *testing.T) {
	b := encodeRCPage(4096, 9, 12, []uint32{1, 2, 3})
	for _, other := range []uint32{0, 8, 10, 9 ^ 1<<31} {
		_, ok, err := DecodeRCPage(b, other, make([]uint32, 3))
		require.ErrorIs(t, err, ErrInvalid, "page 9 read as %d", other)
		require.False(t, ok)
	}
}

func TestRCPageTruncatedOrTooManyCounts(t *testing.T) {
	b := encodeRCPage(8192, 1, 1, []uint32{1, 2, 3})
	for _, n := range []int{0, RCHeaderSize, MinBlockSize - 1} {
		_, _, err := DecodeRCPage(b[:n], 1, make([]uint32, 3))
		require.ErrorIs(t, err, ErrInvalid, "%d bytes", n)
	}
	_, _, err := DecodeRCPage(b[:MinBlockSize], 1, make([]uint32, 3))
	require.ErrorIs(t, err, ErrChecksum, "half of an 8K page")

	_, _, err = DecodeRCPage(b, 1, make([]uint32, RCPerPage(len(b))+1))
	require.ErrorIs(t, err, ErrInvalid, "more counts than a page holds")
}

// ---- catalog blocks ----

func TestCatalogBlockRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		bs      int
		pbn     uint64
		next    uint64
		payload []byte
	}{
		{"empty", 4096, 100, 0, []byte{}},
		{"partial", 4096, 100, 0, random(1000)},
		{"full, chained", 4096, 100, 101, random(4096 - CatalogHeaderSize)},
		{"block number over 2^32", 4096, 1<<32 + 5, 1<<40 + 6, random(17)},
		{"largest block number", 8192, MaxPoolBlocks - 1, math.MaxUint64, random(8192 - CatalogHeaderSize)},
		{"full 64K block", 65536, 7, 8, random(65536 - CatalogHeaderSize)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeCatalogBlock(tc.bs, tc.pbn, tc.next, tc.payload)
			payload, next, err := DecodeCatalogBlock(b, tc.pbn)
			require.NoError(t, err)
			require.Equal(t, tc.payload, payload)
			require.Equal(t, tc.next, next)
		})
	}
}

func TestCatalogBlockEncodeOverwritesStaleBytes(t *testing.T) {
	b := bytes.Repeat([]byte{0xC3}, 4096)
	EncodeCatalogBlock(b, 1, 2, []byte("abc"))
	require.Equal(t, encodeCatalogBlock(4096, 1, 2, []byte("abc")), b)
}

func TestCatalogBlockEncodeRejectsOversizedInput(t *testing.T) {
	require.Panics(t, func() { EncodeCatalogBlock(make([]byte, 4096), 1, 0, make([]byte, 4096-CatalogHeaderSize+1)) })
	require.Panics(t, func() { EncodeCatalogBlock(make([]byte, 4096), MaxPoolBlocks, 0, nil) })
}

func TestCatalogBlockBitFlips(t *testing.T) {
	b := encodeCatalogBlock(4096, 1<<32+3, 55, bytes.Repeat([]byte("catalog!"), 300))
	forEachBitFlip(b, len(b), func(bit int, flipped []byte) {
		_, _, err := DecodeCatalogBlock(flipped, 1<<32+3)
		requireRejected(t, err, "bit ", bit)
	})
}

func TestCatalogBlockMisdirected(t *testing.T) {
	for _, pbn := range []uint64{1, 1000, 1<<32 - 1, 1 << 32, MaxPoolBlocks - 1} {
		b := encodeCatalogBlock(4096, pbn, 0, []byte("x"))
		for _, other := range []uint64{pbn + 1, pbn - 1, pbn ^ 1<<32, pbn ^ 1<<47, pbn | 1<<48, 0} {
			if other == pbn {
				continue
			}
			_, _, err := DecodeCatalogBlock(b, other)
			require.ErrorIs(t, err, ErrInvalid, "written for %d, read at %d", pbn, other)
			require.ErrorContains(t, err, "misdirected")
		}
	}
}

func TestCatalogBlockTruncatedOrBadLength(t *testing.T) {
	b := encodeCatalogBlock(8192, 4, 0, []byte("payload"))
	for _, n := range []int{0, CatalogHeaderSize, MinBlockSize - 1} {
		_, _, err := DecodeCatalogBlock(b[:n], 4)
		require.ErrorIs(t, err, ErrInvalid, "%d bytes", n)
	}
	_, _, err := DecodeCatalogBlock(b[:MinBlockSize], 4)
	require.ErrorIs(t, err, ErrChecksum, "half of an 8K block")

	b = encodeCatalogBlock(4096, 4, 0, []byte("payload"))
	le.PutUint16(b[8:], 4096-CatalogHeaderSize+1)
	resealCatalogBlock(b)
	_, _, err = DecodeCatalogBlock(b, 4)
	require.ErrorIs(t, err, ErrInvalid, "payload longer than the block")

	_, _, err = DecodeCatalogBlock(make([]byte, 4096), 0)
	require.ErrorIs(t, err, ErrMagic, "never written")
}
