package exportset

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func testManifest() *Manifest {
	d := func(c byte) Digest { return Digest(digestPrefix + strings.Repeat(string(c), 64)) }
	return &Manifest{
		Image: Image{Name: "sales-2024", Engine: "postgres", Version: "16", SourceType: "backup", Database: "sales",
			Tags: []string{"nightly"}, Definition: "name: sales-2024\nengine: postgres\n", LogPosition: "0/3000060",
			DataState: time.Date(2024, 5, 1, 12, 0, 0, 0, time.FixedZone("x", 3600)), Created: time.Date(2024, 5, 1, 13, 0, 0, 5, time.UTC)},
		BlockSize: 4096, Size: 8<<20 + 8192, ChunkSize: 4 << 20, Parent: d('a'),
		Chunks: []Chunk{
			{Index: 0, Objects: []Object{{Digest: d('b'), Size: 1000, Length: 4 << 20}}},
			{Index: 2, Objects: []Object{{Digest: d('c'), Size: 10, Length: 8192}, {Digest: d('d'), Size: 100, Length: 4113, Patch: true}}},
		},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := testManifest()
	b, err := m.Encode()
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(b, []byte(`{"formatVersion":1,`)), "%s", b)
	require.Contains(t, string(b), `"dataState":"2024-05-01T11:00:00Z"`, "times are encoded in UTC")
	got, err := DecodeManifest(b)
	require.NoError(t, err)
	again, err := got.Encode()
	require.NoError(t, err)
	require.Equal(t, string(b), string(again), "the same manifest encodes to the same bytes")
	require.Equal(t, int64(3), got.NumChunks())
	require.Equal(t, int64(8192), got.ChunkLen(2))
	require.Equal(t, int64(1110), got.StoredBytes())
	require.NotNil(t, got.chunk(2))
	require.Nil(t, got.chunk(1))
}

// TestDecodeManifestRefuses names a rule for each kind of bad manifest, and checks that the
// error names it.
func TestDecodeManifestRefuses(t *testing.T) {
	good, err := testManifest().Encode()
	require.NoError(t, err)
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		require.NoError(t, json.Unmarshal(good, &m))
		f(m)
		b, err := json.Marshal(m)
		require.NoError(t, err)
		return b
	}
	chunk := func(m map[string]any, i int) map[string]any { return m["chunks"].([]any)[i].(map[string]any) }
	object := func(m map[string]any, i, j int) map[string]any {
		return chunk(m, i)["objects"].([]any)[j].(map[string]any)
	}
	for _, tc := range []struct {
		name, want string
		b          []byte
		is         error
	}{
		{"not JSON", "not a JSON object", []byte("manifest"), ErrMalformed},
		{"no version", "formatVersion is missing", edit(func(m map[string]any) { delete(m, "formatVersion") }), ErrMalformed},
		{"version 2", "manifest format 2", edit(func(m map[string]any) { m["formatVersion"] = 2 }), ErrUnsupportedVersion},
		{"version string", "want an integer", edit(func(m map[string]any) { m["formatVersion"] = "1" }), ErrMalformed},
		{"unknown field", `unknown field "compression"`, edit(func(m map[string]any) { m["compression"] = "lz4" }), ErrMalformed},
		{"trailing data", "after top-level value", append(bytes.Clone(good), []byte(" {}")...), ErrMalformed},
		{"no name", "image.name", edit(func(m map[string]any) { m["image"].(map[string]any)["name"] = "" }), ErrMalformed},
		{"control character", "image.engine", edit(func(m map[string]any) { m["image"].(map[string]any)["engine"] = "pg\n" }), ErrMalformed},
		{"no created", "image.created", edit(func(m map[string]any) { delete(m["image"].(map[string]any), "created") }), ErrMalformed},
		{"block size", "blockSize 1000", edit(func(m map[string]any) { m["blockSize"] = 1000 }), ErrMalformed},
		{"size", "size 4097", edit(func(m map[string]any) { m["size"] = 4097 }), ErrMalformed},
		{"chunk size", "chunkSize 4100", edit(func(m map[string]any) { m["chunkSize"] = 4100 }), ErrMalformed},
		{"parent", "parent", edit(func(m map[string]any) { m["parent"] = "sha256:xyz" }), ErrMalformed},
		{"index past the end", "chunks[1].index 3", edit(func(m map[string]any) { chunk(m, 1)["index"] = 3 }), ErrMalformed},
		{"order", "ascending", edit(func(m map[string]any) { chunk(m, 1)["index"] = 0 }), ErrMalformed},
		{"no object", "0 objects", edit(func(m map[string]any) { chunk(m, 0)["objects"] = []any{} }), ErrMalformed},
		{"digest", "chunks[0].objects[0].digest", edit(func(m map[string]any) { object(m, 0, 0)["digest"] = "sha256:ABC" }), ErrMalformed},
		{"stored size", "chunks[0].objects[0].size", edit(func(m map[string]any) { object(m, 0, 0)["size"] = 0 }), ErrMalformed},
		{"full object past the chunk", "chunks[1].objects[0].length", edit(func(m map[string]any) { object(m, 1, 0)["length"] = 12288 }), ErrMalformed},
		{"full object after a patch", "only the first object", edit(func(m map[string]any) { delete(object(m, 1, 1), "patch") }), ErrMalformed},
		{"patch too short", "chunks[1].objects[1].length 16", edit(func(m map[string]any) { object(m, 1, 1)["length"] = 16 }), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeManifest(tc.b)
			require.ErrorIs(t, err, tc.is)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestPatchRoundTrip(t *testing.T) {
	const bs = 512
	old := bytes.Repeat([]byte{7}, 8*bs)
	cur := bytes.Clone(old)
	cur[bs+3] = 1                  // block 1 changed
	cur[2*bs] = 2                  // block 2 changed: one data record for blocks 1-2
	clear(cur[4*bs : 6*bs])        // blocks 4-5 zeroed: one zero record
	copy(cur[7*bs:], []byte{9, 9}) // block 7
	recs := diffRecords(old, cur, 0, bs)
	require.Len(t, recs, 3)
	require.Equal(t, patchRecord{off: 4 * bs, length: 2 * bs}, recs[1])
	payload := encodePatch(recs)
	got, err := decodePatch(payload, int64(len(old)), bs)
	require.NoError(t, err)
	buf := bytes.Clone(old)
	applyPatch(buf, got)
	require.Equal(t, cur, buf)
	require.Equal(t, payload, encodePatch(got), "patches encode canonically")
	require.Empty(t, diffRecords(cur, cur, 0, bs))
}

func TestDecodePatchRefuses(t *testing.T) {
	rec := func(off, n uint32, kind byte, data int) []byte {
		b := []byte{byte(off), byte(off >> 8), byte(off >> 16), byte(off >> 24), byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24), kind}
		return append(b, make([]byte, data)...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{[]byte(patchMagic)}, parts...), nil) }
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"no magic", "magic", []byte("DIPATCH2")},
		{"empty", "no record", cat()},
		{"short header", "bytes left", cat([]byte{1, 2, 3})},
		{"unaligned", "multiples of the block size", cat(rec(100, 512, kindZero, 0))},
		{"zero length", "length positive", cat(rec(0, 0, kindZero, 0))},
		{"past the chunk", "past the chunk", cat(rec(1024, 512, kindZero, 0))},
		{"overlap", "ascending", cat(rec(512, 512, kindZero, 0), rec(0, 512, kindZero, 0))},
		{"short data", "bytes of data", cat(rec(0, 512, kindData, 100))},
		{"kind", "kind 3", cat(rec(0, 512, 3, 0))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodePatch(tc.b, 1024, 512)
			require.ErrorIs(t, err, ErrMalformed)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestOpenObject(t *testing.T) {
	payload := bytes.Repeat([]byte("page"), 1024)
	stored := compress(payload)
	got, err := openObject(stored, DigestOf(payload), int64(len(payload)))
	require.NoError(t, err)
	require.Equal(t, payload, got)

	bad := bytes.Clone(stored)
	bad[len(bad)/2] ^= 0xff
	_, err = openObject(bad, DigestOf(payload), int64(len(payload)))
	require.ErrorIs(t, err, ErrCorrupt)
	_, err = openObject(stored, DigestOf([]byte("other")), int64(len(payload)))
	require.ErrorIs(t, err, ErrCorrupt)
	require.ErrorContains(t, err, "the payload's digest is "+string(DigestOf(payload)))
	_, err = openObject(stored, DigestOf(payload), int64(len(payload))-1)
	require.ErrorIs(t, err, ErrCorrupt, "a payload past its bound is refused")
}

func FuzzDecodeManifest(f *testing.F) {
	good, err := testManifest().Encode()
	require.NoError(f, err)
	f.Add(good)
	f.Add([]byte(`{"formatVersion":1}`))
	f.Add([]byte(`{"formatVersion":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("error of no kind: %v", err)
			}
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatalf("a decoded manifest does not encode: %v", err)
		}
		m2, err := DecodeManifest(enc)
		if err != nil {
			t.Fatalf("an encoded manifest does not decode: %v", err)
		}
		enc2, err := m2.Encode()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable: %v", err)
		}
	})
}

func FuzzDecodePatch(f *testing.F) {
	f.Add(encodePatch([]patchRecord{{off: 0, length: 512, data: make([]byte, 512)}, {off: 1024, length: 512}}), 2048, 512)
	f.Add([]byte(patchMagic), 4096, 4096)
	f.Fuzz(func(t *testing.T, b []byte, chunkLen, bs int) {
		if bs <= 0 || bs > 1<<16 || chunkLen <= 0 || chunkLen > 1<<20 {
			return
		}
		recs, err := decodePatch(b, int64(chunkLen), bs)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error of no kind: %v", err)
			}
			return
		}
		if !bytes.Equal(encodePatch(recs), b) {
			t.Fatal("a decoded patch does not encode to the same bytes")
		}
		buf := make([]byte, chunkLen)
		applyPatch(buf, recs) // within bounds, or it panics
	})
}
