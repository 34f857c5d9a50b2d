package mariadb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// xbChunk writes one chunk as mariabackup does.
func xbChunk(typ byte, path string, offset uint64, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString(xbMagic)
	b.WriteByte(0)
	b.WriteByte(typ)
	_ = binary.Write(&b, binary.LittleEndian, uint32(len(path)))
	b.WriteString(path)
	if typ == xbPayload {
		_ = binary.Write(&b, binary.LittleEndian, uint64(len(payload)))
		_ = binary.Write(&b, binary.LittleEndian, offset)
		_ = binary.Write(&b, binary.LittleEndian, crc32.ChecksumIEEE(payload))
		b.Write(payload)
	}
	return b.Bytes()
}

func xbStream(chunks ...[]byte) []byte { return bytes.Join(chunks, nil) }

func TestForwardXBStream(t *testing.T) {
	good := xbStream(
		xbChunk(xbPayload, "ibdata1", 0, []byte("0123456789")),
		xbChunk(xbPayload, "ibdata1", 10, []byte("abc")),
		xbChunk(xbEOF, "ibdata1", 0, nil),
		xbChunk(xbPayload, "shop/t.ibd", 0, []byte("rows")),
		xbChunk(xbEOF, "shop/t.ibd", 0, nil),
	)
	var out bytes.Buffer
	lim := &restoreLimits{}
	if err := forwardXBStream(bytes.NewReader(good), &out, "b.xb", lim); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), good) {
		t.Fatal("the stream is not forwarded as it is")
	}
	if lim.bytes != 17 || lim.members != 3 { // ibdata1, shop/, shop/t.ibd
		t.Fatalf("counted %d bytes, %d members; want 17, 3", lim.bytes, lim.members)
	}

	flipped := bytes.Clone(good)
	flipped[len(xbChunk(xbPayload, "ibdata1", 0, []byte("0123456789")))-1] ^= 1
	for _, tc := range []struct {
		name   string
		stream []byte
		lim    restoreLimits
		is     error
		want   string
	}{
		{"empty", nil, restoreLimits{}, engine.ErrFormat, "b.xb: an empty stream"},
		{"cut in a payload", good[:14+len("ibdata1")+20+5], restoreLimits{}, errTruncated, "b.xb: truncated: the stream ends in the middle of ibdata1 (5 of the 10 bytes of the chunk at offset 0)"},
		{"cut in a header", good[:5], restoreLimits{}, errTruncated, "b.xb: truncated: the stream ends in a chunk header at offset 0 (5 bytes of it)"},
		{"no end of file", good[:len(good)-len(xbChunk(xbEOF, "shop/t.ibd", 0, nil))], restoreLimits{}, errTruncated, "the stream ends before the end of shop/t.ibd (no end-of-file chunk)"},
		{"checksum", flipped, restoreLimits{}, engine.ErrFormat, "chunk at offset 0 (ibdata1, bytes 0 to 10): checksum "},
		{"not a stream", []byte("XBSTCK02xxxxxxxxxxxxxx"), restoreLimits{}, engine.ErrFormat, `not an xbstream chunk at offset 0`},
		{"escape", xbChunk(xbPayload, "../etc/passwd", 0, []byte("x")), restoreLimits{}, engine.ErrFormat, `path "../etc/passwd" leaves the target directory`},
		{"absolute", xbChunk(xbPayload, "/etc/passwd", 0, []byte("x")), restoreLimits{}, engine.ErrFormat, `path "/etc/passwd" is absolute`},
		{"quicklz", xbChunk(xbPayload, "ibdata1.qp", 0, []byte("x")), restoreLimits{}, engine.ErrFormat, "ibdata1.qp is compressed by mariabackup --compress"},
		{"bytes", good, restoreLimits{maxBytes: 12}, engine.ErrRestoreLimit, "b.xb: ibdata1 takes the restore past the limit of 12 bytes"},
		{"sparse bytes", xbChunk(xbPayload, "big", 1<<40, []byte("x")), restoreLimits{maxBytes: 1 << 30}, engine.ErrRestoreLimit, "big takes the restore past the limit"},
		{"members", good, restoreLimits{maxMembers: 2}, engine.ErrRestoreLimit, "b.xb: shop/t.ibd is past the limit of 2 files and directories"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			lim := tc.lim
			err := forwardXBStream(bytes.NewReader(tc.stream), &out, "b.xb", &lim)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant %v with %q", err, tc.is, tc.want)
			}
		})
	}
}

func FuzzForwardXBStream(f *testing.F) {
	f.Add(xbStream(xbChunk(xbPayload, "a", 0, []byte("x")), xbChunk(xbEOF, "a", 0, nil)), int64(0), int64(0))
	f.Add(xbChunk(xbPayload, "d/e/f", 3, []byte("xyz")), int64(4), int64(2))
	f.Fuzz(func(t *testing.T, stream []byte, maxBytes, maxMembers int64) {
		var out bytes.Buffer
		lim := &restoreLimits{maxBytes: maxBytes, maxMembers: maxMembers}
		err := forwardXBStream(bytes.NewReader(stream), &out, "f", lim)
		if err == nil && !bytes.Equal(out.Bytes(), stream) {
			t.Fatal("a stream accepted is not forwarded as it is")
		}
		if err == nil && (maxBytes > 0 && lim.bytes > maxBytes || maxMembers > 0 && lim.members > maxMembers) {
			t.Fatalf("accepted past the limits: %+v", lim)
		}
		if !bytes.HasPrefix(stream, out.Bytes()) {
			t.Fatal("forwarded what the stream does not hold")
		}
	})
}
