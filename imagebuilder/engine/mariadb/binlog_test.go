package mariadb

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// binlogEvent writes one event (binlog format 4, CRC32 checksums) at position pos.
func binlogEvent(pos int64, ts uint32, typ byte, server uint32, body []byte) []byte {
	var b bytes.Buffer
	size := uint32(binlogHeaderSize + len(body) + 4)
	_ = binary.Write(&b, binary.LittleEndian, ts)
	b.WriteByte(typ)
	_ = binary.Write(&b, binary.LittleEndian, server)
	_ = binary.Write(&b, binary.LittleEndian, size)
	_ = binary.Write(&b, binary.LittleEndian, uint32(pos)+size)
	_ = binary.Write(&b, binary.LittleEndian, uint16(0))
	b.Write(body)
	b.Write([]byte{0, 0, 0, 0}) // the checksum, not checked by the scan
	return b.Bytes()
}

// testBinlog builds a binary log: a format description, a transaction ended by an XID, a DDL
// (standalone), and a non-transactional one ended by COMMIT.
func testBinlog() []byte {
	var b bytes.Buffer
	b.WriteString(binlogMagic)
	add := func(ts uint32, typ byte, body []byte) { b.Write(binlogEvent(int64(b.Len()), ts, typ, 1, body)) }
	fde := make([]byte, 57+5+1)
	fde[len(fde)-1] = 1 // CRC32 (the checksum itself is the event's last 4 bytes)
	add(100, evFormatDescription, fde[:len(fde)-0])
	gtidBody := func(seq uint64, flags byte) []byte {
		g := make([]byte, 13)
		binary.LittleEndian.PutUint64(g, seq)
		g[12] = flags
		return g
	}
	query := func(q string) []byte {
		h := make([]byte, 13) // db length 0, status length 0
		return append(append(h, 0), q...)
	}
	add(200, evGTID, gtidBody(5, 0))
	add(200, evQuery, query("BEGIN"))
	add(201, 30, []byte("row event"))
	add(202, evXID, []byte("xid12345"))
	add(300, evGTID, gtidBody(6, gtidStandalone))
	add(300, evQuery, query("CREATE TABLE t (x INT)"))
	add(400, evGTID, gtidBody(7, 0))
	add(400, evQuery, query("BEGIN"))
	add(400, evQuery, query("INSERT INTO m VALUES (1)"))
	add(401, evQuery, query("COMMIT"))
	return b.Bytes()
}

func TestScanBinlog(t *testing.T) {
	data := testBinlog()
	bf := &binlogFile{path: "binlog.000001"}
	if err := scanBinlogEvents(bufio.NewReader(bytes.NewReader(data)), bf); err != nil {
		t.Fatal(err)
	}
	if bf.cut != "" {
		t.Fatalf("cut: %s", bf.cut)
	}
	var got []string
	for _, tx := range bf.txs {
		got = append(got, tx.gtid.String()+"@"+tx.time.Format("05"))
	}
	if strings.Join(got, " ") != "0-1-5@22 0-1-6@00 0-1-7@41" {
		t.Fatalf("transactions %v", got)
	}
	if bf.end != int64(len(data)) || bf.txs[0].end != bf.txs[1].start {
		t.Fatalf("positions: end %d of %d, %+v", bf.end, len(data), bf.txs)
	}

	// Cut in the last transaction: the first two stay, and the cut is said.
	bf = &binlogFile{path: "binlog.000001"}
	if err := scanBinlogEvents(bufio.NewReader(bytes.NewReader(data[:len(data)-10])), bf); err != nil {
		t.Fatal(err)
	}
	if len(bf.txs) != 2 || !strings.Contains(bf.cut, "it ends in the middle of an event at offset") {
		t.Fatalf("cut file: %d transactions, cut %q", len(bf.txs), bf.cut)
	}
	err := scanBinlogEvents(bufio.NewReader(strings.NewReader("-- MariaDB dump")), &binlogFile{path: "x"})
	if !errors.Is(err, engine.ErrFormat) || !strings.Contains(err.Error(), "x: not a binary log") {
		t.Fatalf("not a binlog: %v", err)
	}
}

func FuzzScanBinlog(f *testing.F) {
	f.Add(testBinlog())
	f.Add([]byte(binlogMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		bf := &binlogFile{path: "f", end: 4}
		if err := scanBinlogEvents(bufio.NewReader(bytes.NewReader(data)), bf); err != nil {
			return
		}
		last := int64(4)
		for _, tx := range bf.txs {
			if tx.start < last || tx.end <= tx.start || tx.end > int64(len(data)) {
				t.Fatalf("transaction %+v after %d in %d bytes", tx, last, len(data))
			}
			last = tx.end
		}
	})
}

func TestBinlogNames(t *testing.T) {
	if b, n, ok := splitBinlogName("mariadb-bin.000042"); !ok || b != "mariadb-bin" || n != 42 {
		t.Fatalf("split = %q %d %v", b, n, ok)
	}
	if _, _, ok := splitBinlogName("binlog.index"); ok {
		t.Fatal("binlog.index has no sequence number")
	}
	if got := binlogName("binlog.000099", 100); got != "binlog.000100" {
		t.Fatalf("binlogName = %q", got)
	}
	p, err := parseGTIDPos("1-2-7,0-1-42")
	if err != nil || p.String() != "0-1-42,1-2-7" {
		t.Fatalf("parseGTIDPos = %v, %v", p, err)
	}
	if _, err := parseGTIDPos("0-1"); err == nil {
		t.Fatal("0-1 is no GTID")
	}
}
