package mariadb

// This file reads MariaDB binary log files far enough to plan a replay: the transactions
// (event groups) each holds, with their GTID, positions and time, so that the replay can stop
// exactly at a transaction's end, say where the data stands after it, and name what is missing
// or cut short. The events themselves are applied by mariadb-binlog and the client (replay.go).
//
// A binary log is the magic "\xfebin", then events, each with a 19-byte header (little endian):
// timestamp u32 | type u8 | server id u32 | event size u32 | end position u32 | flags u16. A
// transaction starts with a GTID event (its body: sequence number u64 | domain u32 | flags u8)
// and ends with an XID event or a COMMIT or ROLLBACK query, or, for a GTID flagged standalone
// (DDL), with the one event after it.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// binlogMagic starts every binary log file.
const binlogMagic = "\xfebin"

// Event types the scan looks at.
const (
	evQuery             = 2
	evFormatDescription = 15
	evXID               = 16
	evGTID              = 162
)

// gtidStandalone is the GTID event's flag of a transaction of one event (DDL).
const gtidStandalone = 0x01

// binlogHeaderSize is an event header's size (binlog format 4).
const binlogHeaderSize = 19

// gtid is a MariaDB global transaction ID: domain-server-sequence.
type gtid struct {
	domain, server uint32
	seq            uint64
}

func (g gtid) String() string { return fmt.Sprintf("%d-%d-%d", g.domain, g.server, g.seq) }

// parseGTID reads "domain-server-sequence".
func parseGTID(s string) (gtid, error) {
	parts := strings.Split(strings.TrimSpace(s), "-")
	if len(parts) != 3 {
		return gtid{}, fmt.Errorf("GTID %q: want domain-server-sequence, e.g. 0-1-42", s)
	}
	d, err1 := strconv.ParseUint(parts[0], 10, 32)
	sv, err2 := strconv.ParseUint(parts[1], 10, 32)
	n, err3 := strconv.ParseUint(parts[2], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return gtid{}, fmt.Errorf("GTID %q: want domain-server-sequence, e.g. 0-1-42", s)
	}
	return gtid{uint32(d), uint32(sv), n}, nil
}

// gtidPos is a GTID position: the last GTID of each replication domain.
type gtidPos map[uint32]gtid

// parseGTIDPos reads a GTID position, "0-1-42,1-2-7" ("" is the empty position).
func parseGTIDPos(s string) (gtidPos, error) {
	p := gtidPos{}
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		g, err := parseGTID(part)
		if err != nil {
			return nil, err
		}
		p[g.domain] = g
	}
	return p, nil
}

// String writes the position as MariaDB does, by domain.
func (p gtidPos) String() string {
	domains := make([]uint32, 0, len(p))
	for d := range p {
		domains = append(domains, d)
	}
	for i := 1; i < len(domains); i++ {
		for j := i; j > 0 && domains[j] < domains[j-1]; j-- {
			domains[j], domains[j-1] = domains[j-1], domains[j]
		}
	}
	parts := make([]string, len(domains))
	for i, d := range domains {
		parts[i] = p[d].String()
	}
	return strings.Join(parts, ",")
}

// binlogTx is one transaction (event group) of a binary log.
type binlogTx struct {
	gtid       gtid
	start, end int64     // the position of its GTID event and the end of its last event
	time       time.Time // when it committed: the timestamp of its last event (whole seconds)
}

// binlogFile is what a scan found in one binary log file.
type binlogFile struct {
	path string // on this machine
	name string // its base name, binlog.000002
	base string // the name without the sequence number, binlog
	seq  int    // the sequence number, 2
	txs  []binlogTx
	// end is the end of the last complete transaction (4 when there is none).
	end int64
	// cut, when not empty, says how the file ends in the middle of an event or a transaction.
	cut string
}

// binlogNameRE splits a binary log's name into its base and its sequence number.
var binlogNameRE = regexp.MustCompile(`^(.+)\.(\d{1,9})$`)

// splitBinlogName returns the base and the sequence number of a binary log's name.
func splitBinlogName(name string) (base string, seq int, ok bool) {
	m := binlogNameRE.FindStringSubmatch(name)
	if m == nil {
		return "", 0, false
	}
	n, err := strconv.Atoi(m[2])
	if err != nil {
		return "", 0, false
	}
	return m[1], n, true
}

// binlogName makes the name of sequence number seq in the style of like (its base and width).
func binlogName(like string, seq int) string {
	m := binlogNameRE.FindStringSubmatch(like)
	if m == nil {
		return fmt.Sprintf("%s.%06d", like, seq)
	}
	return fmt.Sprintf("%s.%0*d", m[1], len(m[2]), seq)
}

// scanBinlog reads the transactions of the binary log at path.
func scanBinlog(path string) (*binlogFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	bf := &binlogFile{path: path, name: filepath.Base(path), end: int64(len(binlogMagic))}
	if err := scanBinlogEvents(bufio.NewReaderSize(f, 1<<20), bf); err != nil {
		return nil, err
	}
	return bf, nil
}

// scanBinlogEvents reads the events of a binary log from r into bf.
func scanBinlogEvents(r *bufio.Reader, bf *binlogFile) error {
	var magic [4]byte
	if n, err := io.ReadFull(r, magic[:]); err != nil || string(magic[:]) != binlogMagic {
		return fmt.Errorf("%w: %s: not a binary log (starts % x, want fe 62 69 6e)", engine.ErrFormat, bf.path, magic[:n])
	}
	pos := int64(len(binlogMagic))
	checksum := 0 // bytes of checksum at the end of each event
	var open *binlogTx
	standalone := false
	var h [binlogHeaderSize]byte
	for {
		n, err := io.ReadFull(r, h[:])
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				bf.cut = fmt.Sprintf("it ends in the middle of an event header at offset %d (%d of its %d bytes)", pos, n, binlogHeaderSize)
				break
			}
			return fmt.Errorf("%s: %w", bf.path, err)
		}
		ts := binary.LittleEndian.Uint32(h[0:4])
		typ := h[4]
		server := binary.LittleEndian.Uint32(h[5:9])
		size := int64(binary.LittleEndian.Uint32(h[9:13]))
		if size < binlogHeaderSize {
			return fmt.Errorf("%w: %s: event at offset %d has a size of %d bytes: the file is corrupt", engine.ErrFormat, bf.path, pos, size)
		}
		body := size - binlogHeaderSize
		var head []byte // the part of the body read
		switch typ {
		case evFormatDescription:
			head = make([]byte, body)
		case evGTID:
			head = make([]byte, min(body, 13))
		case evQuery:
			head = make([]byte, min(body, 13))
		}
		if n, err := io.ReadFull(r, head); err != nil {
			bf.cut = fmt.Sprintf("it ends in the middle of an event at offset %d (%d of its %d bytes)", pos, binlogHeaderSize+n, size)
			break
		}
		rest := body - int64(len(head))
		ends := false // the event ends the open transaction
		switch typ {
		case evFormatDescription:
			// binlog version u16 | server version [50] | created u32 | header length u8 |
			// post-header lengths... | checksum algorithm u8 | checksum u32.
			if len(head) >= 57+5 && head[len(head)-5] == 1 {
				checksum = 4
			}
		case evGTID:
			if len(head) < 13 {
				return fmt.Errorf("%w: %s: GTID event at offset %d is %d bytes long", engine.ErrFormat, bf.path, pos, size)
			}
			open = &binlogTx{
				gtid:  gtid{domain: binary.LittleEndian.Uint32(head[8:12]), server: server, seq: binary.LittleEndian.Uint64(head[0:8])},
				start: pos,
				time:  time.Unix(int64(ts), 0).UTC(),
			}
			standalone = head[12]&gtidStandalone != 0
		case evXID:
			ends = true
		case evQuery:
			if open != nil && standalone {
				ends = true
				break
			}
			// thread id u32 | exec time u32 | db length u8 | error code u16 | status length u16 |
			// status | db | NUL | query | checksum.
			if len(head) < 13 {
				break
			}
			skip := int64(binary.LittleEndian.Uint16(head[11:13])) + int64(head[8]) + 1
			qlen := rest - skip - int64(checksum)
			if qlen < 0 || qlen > 8 || skip > rest {
				break
			}
			if _, err := r.Discard(int(skip)); err != nil {
				bf.cut = fmt.Sprintf("it ends in the middle of an event at offset %d", pos)
				break
			}
			q := make([]byte, qlen)
			if _, err := io.ReadFull(r, q); err != nil {
				bf.cut = fmt.Sprintf("it ends in the middle of an event at offset %d", pos)
				break
			}
			rest -= skip + qlen
			switch strings.ToUpper(string(q)) {
			case "COMMIT", "ROLLBACK":
				ends = true
			}
		}
		if bf.cut != "" {
			break
		}
		if d, err := r.Discard(int(rest)); err != nil {
			bf.cut = fmt.Sprintf("it ends in the middle of an event at offset %d (%d of its %d bytes)", pos, size-rest+int64(d), size)
			break
		}
		pos += size
		if ends && open != nil {
			open.end = pos
			open.time = time.Unix(int64(ts), 0).UTC()
			bf.txs = append(bf.txs, *open)
			bf.end = pos
			open = nil
		}
	}
	if open != nil && bf.cut == "" {
		bf.cut = fmt.Sprintf("it ends in the middle of the transaction of GTID %s, which starts at offset %d", open.gtid, open.start)
	}
	return nil
}
