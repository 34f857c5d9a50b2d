package format

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// ---- catalog ----

func testCatalog() *Catalog {
	return &Catalog{
		Volumes: []VolumeEntry{
			{ID: 1, Name: "pg-main", Size: 10 << 30, Root: 1234, Height: 3, Created: 1_700_000_000_000_000_000},
			{ID: 2, Name: "", Size: 4096, Root: 0, Height: 1, Created: -1, Origin: 1},
			{ID: 3, Name: "ünïcødé/名前", Size: 1 << 40, Root: MaxPoolBlocks - 1, Height: MaxHeight, Created: 0, Origin: 2},
			{ID: math.MaxUint64, Name: strings.Repeat("n", MaxNameLen), Size: math.MaxUint64, Root: math.MaxUint64,
				Height: 2, Created: math.MinInt64, Origin: math.MaxUint64},
		},
		Snapshots: []SnapshotEntry{
			{ID: 1, Name: "nightly", Volume: 1, LSN: 99, Created: 1_700_000_000_000_000_001, Size: 10 << 30, Root: 1234, Height: 3},
			{ID: 2, Name: "", Volume: 3, LSN: 0, Created: math.MaxInt64, Size: 4096, Root: 0, Height: 1},
			{ID: math.MaxUint64, Name: strings.Repeat("s", MaxNameLen), Volume: math.MaxUint64, LSN: math.MaxUint64,
				Created: math.MinInt64, Size: math.MaxUint64, Root: math.MaxUint64, Height: MaxHeight},
		},
	}
}

func TestCatalogRoundTrip(t *testing.T) {
	full := testCatalog()
	many := &Catalog{}
	for i := range 1000 {
		many.Volumes = append(many.Volumes, VolumeEntry{ID: uint64(i + 1), Name: fmt.Sprintf("vol-%d", i), Size: 4096 * uint64(i+1), Height: 1})
		many.Snapshots = append(many.Snapshots, SnapshotEntry{ID: uint64(i + 1), Volume: uint64(i + 1), LSN: uint64(i), Height: 1})
	}
	for _, tc := range []struct {
		name string
		c    *Catalog
	}{
		{"empty", &Catalog{}},
		{"volumes only", &Catalog{Volumes: full.Volumes}},
		{"snapshots only", &Catalog{Snapshots: full.Snapshots}},
		{"both", full},
		{"many", many},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeCatalog(EncodeCatalog(tc.c))
			require.NoError(t, err)
			require.Equal(t, tc.c, got)
		})
	}
}

func TestCatalogTruncated(t *testing.T) {
	b := EncodeCatalog(testCatalog())
	for n := range len(b) {
		_, err := DecodeCatalog(b[:n])
		require.ErrorIs(t, err, ErrInvalid, "%d of %d bytes", n, len(b))
	}
}

func TestCatalogRejectsBadInput(t *testing.T) {
	valid := EncodeCatalog(testCatalog())
	uv := binary.AppendUvarint
	volume := func(name string, height byte) []byte {
		b := uv(nil, 1) // ID
		b = uv(b, uint64(len(name)))
		b = append(b, name...)
		b = uv(b, 4096)               // size
		b = uv(b, 0)                  // root
		b = append(b, height)         // height
		b = binary.AppendVarint(b, 0) // created
		return uv(b, 0)               // origin
	}
	catalog := func(vols ...[]byte) []byte {
		b := uv([]byte{catalogVersion}, uint64(len(vols)))
		for _, v := range vols {
			b = append(b, v...)
		}
		return uv(b, 0)
	}
	// The helpers above build what EncodeCatalog builds.
	ok, err := DecodeCatalog(catalog(volume("v", 1)))
	require.NoError(t, err)
	require.Equal(t, []VolumeEntry{{ID: 1, Name: "v", Size: 4096, Height: 1}}, ok.Volumes)

	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version 0", append([]byte{0}, valid[1:]...)},
		{"version 2", append([]byte{2}, valid[1:]...)},
		{"trailing byte", append(bytes.Clone(valid), 0)},
		{"huge volume count", uv([]byte{catalogVersion}, 1<<62)},
		{"volume count 2^64-1", uv([]byte{catalogVersion}, math.MaxUint64)},
		{"volume count past the bytes", append(uv([]byte{catalogVersion}, 2), volume("v", 1)...)},
		{"huge snapshot count", uv(uv([]byte{catalogVersion}, 0), 1<<40)},
		{"overlong varint", append([]byte{catalogVersion}, bytes.Repeat([]byte{0xFF}, 11)...)},
		{"name too long", catalog(volume(strings.Repeat("x", MaxNameLen+1), 1))},
		{"volume cut after its name length", catalog(volume("v", 1)[:2])},
		{"height 0", catalog(volume("v", 0))},
		{"height over MaxHeight", catalog(volume("v", MaxHeight+1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeCatalog(tc.b)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
}

func TestCatalogEncodeRejectsUndecodableEntries(t *testing.T) {
	require.Panics(t, func() {
		EncodeCatalog(&Catalog{Volumes: []VolumeEntry{{ID: 1, Name: strings.Repeat("x", MaxNameLen+1), Height: 1}}})
	})
	require.Panics(t, func() { EncodeCatalog(&Catalog{Volumes: []VolumeEntry{{ID: 1}}}) })
	require.Panics(t, func() { EncodeCatalog(&Catalog{Snapshots: []SnapshotEntry{{ID: 1, Height: MaxHeight + 1}}}) })
}

// ---- journal records ----

func testRecords() []Record {
	return []Record{
		{LSN: 1, Type: RecCreateVolume, Vol: 1, A: 10 << 30, Time: 1_700_000_000_000_000_000, Name: "pg-main"},
		{Epoch: 7, LSN: 2, Type: RecMap, Vol: 1, A: 100, B: 5000, C: 16},
		{LSN: 3, Type: RecUnmap, Vol: 1, A: 100, C: 1},
		{LSN: 4, Type: RecGrowVolume, Vol: 1, A: 20 << 30},
		{LSN: 5, Type: RecCreateSnapshot, Vol: 1, Snap: 1, Time: -5, Name: "nightly"},
		{LSN: 6, Type: RecCloneSnapshot, Vol: 2, Snap: 1, A: 20 << 30, Time: 7, Name: "clone ünïcødé"},
		{LSN: 7, Type: RecCloneVolume, Vol: 3, A: 4096, B: 2, Name: ""},
		{LSN: 8, Type: RecRevert, Vol: 1, Snap: 1},
		{LSN: 9, Type: RecDeleteSnapshot, Snap: 1},
		{LSN: 10, Type: RecDeleteVolume, Vol: 3},
		{Epoch: 7, LSN: 11, Type: RecCommit, A: 9},
		{Epoch: math.MaxUint64, LSN: math.MaxUint64, Type: RecCreateVolume, Vol: math.MaxUint64, Snap: math.MaxUint64, A: math.MaxUint64,
			B: math.MaxUint64, C: math.MaxUint64, Time: math.MinInt64, Name: strings.Repeat("n", MaxNameLen)},
		{LSN: 0, Type: RecMap, Time: math.MaxInt64},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range testRecords() {
		t.Run(fmt.Sprintf("%s/%d", r.Type, r.LSN), func(t *testing.T) {
			b := AppendRecord(nil, &r)
			require.LessOrEqual(t, len(b), MaxRecordSize)
			got, n, end, err := DecodeRecord(b)
			require.NoError(t, err)
			require.False(t, end)
			require.Equal(t, len(b), n)
			require.Equal(t, r, got)

			// Followed by padding, as in a journal block.
			got, n, _, err = DecodeRecord(append(b, make([]byte, 100)...))
			require.NoError(t, err)
			require.Equal(t, len(b), n)
			require.Equal(t, r, got)
		})
	}
}

func TestRecordSequence(t *testing.T) {
	recs := testRecords()
	b := []byte("prefix")
	for i := range recs {
		b = AppendRecord(b, &recs[i])
	}
	b = append(b, make([]byte, 64)...)
	var got []Record
	for off := len("prefix"); ; {
		r, n, end, err := DecodeRecord(b[off:])
		require.NoError(t, err)
		if end {
			require.Zero(t, n)
			break
		}
		got = append(got, r)
		off += n
	}
	require.Equal(t, recs, got)
}

func TestRecordEnd(t *testing.T) {
	for n := range RecordHeaderSize + 10 {
		_, k, end, err := DecodeRecord(make([]byte, n))
		require.NoError(t, err)
		require.True(t, end, "%d zero bytes", n)
		require.Zero(t, k)
	}
}

func TestRecordBitFlips(t *testing.T) {
	for _, r := range testRecords() {
		b := AppendRecord(nil, &r)
		padded := append(bytes.Clone(b), make([]byte, 512)...)
		for _, in := range [][]byte{b, padded} {
			forEachBitFlip(in, len(b), func(bit int, flipped []byte) {
				_, _, end, err := DecodeRecord(flipped)
				requireRejected(t, err, r.Type, " bit ", bit, " input ", len(in))
				require.False(t, end)
			})
		}
	}
}

func TestRecordTruncated(t *testing.T) {
	for _, r := range testRecords() {
		b := AppendRecord(nil, &r)
		// Too short for a header: the end of a journal block.
		for n := range RecordHeaderSize {
			_, _, end, err := DecodeRecord(b[:n])
			require.NoError(t, err)
			require.True(t, end)
		}
		for n := RecordHeaderSize; n < len(b); n++ {
			_, _, end, err := DecodeRecord(b[:n])
			require.ErrorIs(t, err, ErrInvalid, "%s record cut to %d of %d bytes", r.Type, n, len(b))
			require.False(t, end)
		}
	}
}

func TestRecordRejectsBadFields(t *testing.T) {
	base := Record{LSN: 5, Type: RecCreateVolume, Vol: 1, A: 4096, Name: "name"}
	for _, tc := range []struct {
		name   string
		change func(b []byte) []byte
		want   error
	}{
		{"bad magic", func(b []byte) []byte { b[0]++; return b }, ErrMagic},
		{"type 0", func(b []byte) []byte { le.PutUint16(b[18:], 0); resealRecord(b); return b }, ErrInvalid},
		{"type past the last", func(b []byte) []byte { le.PutUint16(b[18:], uint16(recTypeMax)+1); resealRecord(b); return b }, ErrInvalid},
		{"length past MaxRecordSize", func(b []byte) []byte {
			b = append(b, make([]byte, MaxRecordSize)...)
			le.PutUint16(b[16:], MaxRecordSize-RecordHeaderSize+1)
			resealRecord(b)
			return b
		}, ErrInvalid},
		{"name length past the payload", func(b []byte) []byte { b[len(b)-5]++; resealRecord(b); return b }, ErrInvalid},
		{"name length short of the payload", func(b []byte) []byte { b[len(b)-5]--; resealRecord(b); return b }, ErrInvalid},
		{"name too long", func(b []byte) []byte {
			b = b[:len(b)-5]
			b = binary.AppendUvarint(b, MaxNameLen+1)
			b = append(b, strings.Repeat("x", MaxNameLen+1)...)
			le.PutUint16(b[16:], uint16(len(b)-RecordHeaderSize))
			resealRecord(b)
			return b
		}, ErrInvalid},
		{"payload cut inside a varint", func(b []byte) []byte {
			b = append(b[:RecordHeaderSize], 0x80)
			le.PutUint16(b[16:], 1)
			resealRecord(b)
			return b
		}, ErrInvalid},
		{"payload ends before the time", func(b []byte) []byte {
			b = append(b[:RecordHeaderSize], 1, 0, 0, 0, 0) // vol, snap, a, b, c
			le.PutUint16(b[16:], 5)
			resealRecord(b)
			return b
		}, ErrInvalid},
		{"payload empty", func(b []byte) []byte {
			b = b[:RecordHeaderSize]
			le.PutUint16(b[16:], 0)
			resealRecord(b)
			return b
		}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.change(AppendRecord(nil, &base))
			_, _, end, err := DecodeRecord(b)
			require.ErrorIs(t, err, tc.want)
			require.False(t, end)
		})
	}
}

// appendRecordV1 appends r in the record format of format version 1 (no epoch), as a pool of
// that version holds them.
func appendRecordV1(b []byte, r *Record) []byte {
	v2 := AppendRecord(nil, r)
	start := len(b)
	b = append(b, v2[:recordHeaderSizeV1]...)
	b = append(b, v2[RecordHeaderSize:]...)
	h := b[start:]
	le.PutUint32(h[0:], recordMagicV1)
	le.PutUint32(h[4:], Checksum(h[8:]))
	return b
}

// Records of format version 1 decode with DecodeRecordV1 only, and current ones with
// DecodeRecord only: neither is ever taken for the other.
func TestRecordVersion1(t *testing.T) {
	recs := testRecords()
	var v1 []byte
	for i := range recs {
		v1 = appendRecordV1(v1, &recs[i])
	}
	v1 = append(v1, make([]byte, 64)...)
	for off, i := 0, 0; ; i++ {
		r, n, end, err := DecodeRecordV1(v1[off:])
		require.NoError(t, err)
		if end {
			require.Equal(t, len(recs), i)
			break
		}
		want := recs[i]
		want.Epoch = 0 // version 1 records have none
		require.Equal(t, want, r)
		_, _, end, err = DecodeRecord(v1[off:])
		require.ErrorIs(t, err, ErrMagic, "a version 1 record read as a current one")
		require.False(t, end)
		off += n
	}
	for _, r := range recs {
		_, _, end, err := DecodeRecordV1(AppendRecord(nil, &r))
		require.ErrorIs(t, err, ErrMagic, "a current record read as a version 1 one")
		require.False(t, end)
		for n := range recordHeaderSizeV1 {
			_, _, end, err := DecodeRecordV1(appendRecordV1(nil, &r)[:n])
			require.NoError(t, err)
			require.True(t, end)
		}
	}
}

func TestRecordEncodeRejectsLongName(t *testing.T) {
	require.Panics(t, func() { AppendRecord(nil, &Record{Type: RecCreateVolume, Name: strings.Repeat("x", MaxNameLen+1)}) })
}
