package format

import (
	"encoding/binary"
	"fmt"
)

// RecordType says what a journal record does. Records are logical redo records: replaying them in
// LSN order on top of the checkpoint they follow rebuilds the in-memory state exactly.
type RecordType uint16

// Journal record types.
const (
	RecMap            RecordType = 1  // Vol: map A..A+C-1 to physical blocks B..B+C-1
	RecUnmap          RecordType = 2  // Vol: unmap logical blocks A..A+C-1
	RecCreateVolume   RecordType = 3  // Vol: new empty volume of A bytes named Name
	RecDeleteVolume   RecordType = 4  // Vol
	RecGrowVolume     RecordType = 5  // Vol: new size A bytes
	RecCreateSnapshot RecordType = 6  // Snap of Vol named Name at Time
	RecDeleteSnapshot RecordType = 7  // Snap
	RecCloneSnapshot  RecordType = 8  // Vol: new volume from snapshot Snap, size A bytes, named Name
	RecCloneVolume    RecordType = 9  // Vol: new volume from volume B, size A bytes, named Name
	RecRevert         RecordType = 10 // Vol: point back at snapshot Snap
	// RecCommit changes nothing: it says that every record up to LSN A, and the data those
	// records map, was durable (an fdatasync had returned) before it was written. Format
	// version 3.
	RecCommit  RecordType = 11
	recTypeMax RecordType = 11
)

func (t RecordType) String() string {
	names := [...]string{"", "map", "unmap", "create-volume", "delete-volume", "grow-volume",
		"create-snapshot", "delete-snapshot", "clone-snapshot", "clone-volume", "revert", "commit"}
	if t == 0 || t > recTypeMax {
		return fmt.Sprintf("record-type(%d)", uint16(t))
	}
	return names[t]
}

// Record is one journal record.
type Record struct {
	// Epoch is the generation of the checkpoint the record follows: replay takes only records
	// of the loaded checkpoint's generation, so records left in the journal by an older epoch
	// (a commit cut short by a crash, whose first block was lost) are never replayed. Records
	// of format version 1 have none (DecodeRecordV1 returns 0).
	Epoch   uint64
	LSN     uint64
	Type    RecordType
	Vol     uint64
	Snap    uint64
	A, B, C uint64
	Time    int64
	Name    string
}

// Record magics: each format version's records have their own, so a record of one version is
// never taken for one of another.
const (
	recordMagic   = 0x324A4944 // "DIJ2": format version 2
	recordMagicV1 = 0x524A4944 // "DIJR": format version 1
)

// RecordHeaderSize is the fixed part of an encoded record. Its layout:
//
//	 0  magic           uint32
//	 4  checksum        uint32: CRC-32C of bytes 8 to the end of the record
//	 8  LSN             uint64
//	16  payload length  uint16
//	18  type            uint16
//	20  epoch           uint64 (format version 2; a version 1 header ends at 20)
//
// The payload follows: Vol, Snap, A, B, C as uvarints, Time as a varint, then the name's
// length (uvarint) and bytes.
const RecordHeaderSize = 28

// recordHeaderSizeV1 is the header size of format version 1 records (no epoch).
const recordHeaderSizeV1 = 20

// MaxNameLen bounds volume and snapshot names.
const MaxNameLen = 255

// MaxRecordSize bounds an encoded record.
const MaxRecordSize = RecordHeaderSize + 6*binary.MaxVarintLen64 + binary.MaxVarintLen64 + 2 + MaxNameLen

// AppendRecord appends the encoding of r (in the current format) to b. REQUIRES
// len(r.Name) <= MaxNameLen: a longer name would make a record DecodeRecord rejects, which would
// end replay there.
func AppendRecord(b []byte, r *Record) []byte {
	if len(r.Name) > MaxNameLen {
		panic(fmt.Sprintf("format: journal record name of %d bytes, at most %d allowed", len(r.Name), MaxNameLen))
	}
	start := len(b)
	b = append(b, make([]byte, RecordHeaderSize)...)
	b = binary.AppendUvarint(b, r.Vol)
	b = binary.AppendUvarint(b, r.Snap)
	b = binary.AppendUvarint(b, r.A)
	b = binary.AppendUvarint(b, r.B)
	b = binary.AppendUvarint(b, r.C)
	b = binary.AppendVarint(b, r.Time)
	b = binary.AppendUvarint(b, uint64(len(r.Name)))
	b = append(b, r.Name...)
	h := b[start:]
	le.PutUint32(h[0:], recordMagic)
	le.PutUint64(h[8:], r.LSN)
	le.PutUint16(h[16:], uint16(len(h)-RecordHeaderSize))
	le.PutUint16(h[18:], uint16(r.Type))
	le.PutUint64(h[20:], r.Epoch)
	le.PutUint32(h[4:], Checksum(h[8:]))
	return b
}

// DecodeRecord parses the record (in the current format) at the start of b. It returns the
// record and its encoded length. end is true when b starts with padding (a zero magic) or is too
// short to hold a record header: the rest of the journal block is unused. A record of format
// version 1 fails with ErrMagic.
func DecodeRecord(b []byte) (r Record, n int, end bool, err error) {
	return decodeRecord(b, recordMagic, RecordHeaderSize)
}

// DecodeRecordV1 is DecodeRecord for the records of format version 1, which a pool of that
// version holds until its first checkpoint by this build. The record's Epoch is 0.
func DecodeRecordV1(b []byte) (r Record, n int, end bool, err error) {
	return decodeRecord(b, recordMagicV1, recordHeaderSizeV1)
}

func decodeRecord(b []byte, wantMagic uint32, hdr int) (r Record, n int, end bool, err error) {
	if len(b) < hdr {
		return r, 0, true, nil
	}
	magic := le.Uint32(b[0:])
	if magic == 0 {
		return r, 0, true, nil
	}
	if magic != wantMagic {
		return r, 0, false, fmt.Errorf("journal record: %w", ErrMagic)
	}
	plen := int(le.Uint16(b[16:]))
	n = hdr + plen
	if n > len(b) || n > MaxRecordSize {
		return r, 0, false, fmt.Errorf("journal record: %w: length %d", ErrInvalid, plen)
	}
	if le.Uint32(b[4:]) != Checksum(b[8:n]) {
		return r, 0, false, fmt.Errorf("journal record: %w", ErrChecksum)
	}
	r.LSN = le.Uint64(b[8:])
	r.Type = RecordType(le.Uint16(b[18:]))
	if r.Type == 0 || r.Type > recTypeMax {
		return r, 0, false, fmt.Errorf("journal record: %w: type %d", ErrInvalid, r.Type)
	}
	if hdr == RecordHeaderSize {
		r.Epoch = le.Uint64(b[20:])
	}
	p := b[hdr:n]
	var fields [5]uint64
	for i := range fields {
		v, k := binary.Uvarint(p)
		if k <= 0 {
			return r, 0, false, fmt.Errorf("journal record: %w: truncated field %d", ErrInvalid, i)
		}
		fields[i], p = v, p[k:]
	}
	r.Vol, r.Snap, r.A, r.B, r.C = fields[0], fields[1], fields[2], fields[3], fields[4]
	t, k := binary.Varint(p)
	if k <= 0 {
		return r, 0, false, fmt.Errorf("journal record: %w: truncated time", ErrInvalid)
	}
	r.Time, p = t, p[k:]
	nl, k := binary.Uvarint(p)
	if k <= 0 || nl > MaxNameLen || nl != uint64(len(p)-k) {
		return r, 0, false, fmt.Errorf("journal record: %w: name length", ErrInvalid)
	}
	r.Name = string(p[k:])
	return r, n, false, nil
}

// ---- catalog ----

// VolumeEntry is a volume as the catalog stores it.
type VolumeEntry struct {
	ID      uint64
	Name    string
	Size    uint64 // bytes
	Root    uint64 // root node, 0 for an empty tree
	Height  uint8
	Created int64
	Origin  uint64 // snapshot this volume was cloned from, 0 if none
}

// SnapshotEntry is a snapshot as the catalog stores it.
type SnapshotEntry struct {
	ID      uint64
	Name    string
	Volume  uint64
	LSN     uint64
	Created int64
	Size    uint64
	Root    uint64
	Height  uint8
}

// Catalog lists every volume and snapshot of a pool.
type Catalog struct {
	Volumes   []VolumeEntry
	Snapshots []SnapshotEntry
}

const catalogVersion = 1

// EncodeCatalog serializes c. REQUIRES every name be at most MaxNameLen bytes and every height
// be in [1, MaxHeight]: DecodeCatalog rejects anything else.
func EncodeCatalog(c *Catalog) []byte {
	b := []byte{catalogVersion}
	b = binary.AppendUvarint(b, uint64(len(c.Volumes)))
	for _, v := range c.Volumes {
		mustEncodable("volume", v.ID, v.Name, v.Height)
		b = binary.AppendUvarint(b, v.ID)
		b = appendString(b, v.Name)
		b = binary.AppendUvarint(b, v.Size)
		b = binary.AppendUvarint(b, v.Root)
		b = append(b, v.Height)
		b = binary.AppendVarint(b, v.Created)
		b = binary.AppendUvarint(b, v.Origin)
	}
	b = binary.AppendUvarint(b, uint64(len(c.Snapshots)))
	for _, s := range c.Snapshots {
		mustEncodable("snapshot", s.ID, s.Name, s.Height)
		b = binary.AppendUvarint(b, s.ID)
		b = appendString(b, s.Name)
		b = binary.AppendUvarint(b, s.Volume)
		b = binary.AppendUvarint(b, s.LSN)
		b = binary.AppendVarint(b, s.Created)
		b = binary.AppendUvarint(b, s.Size)
		b = binary.AppendUvarint(b, s.Root)
		b = append(b, s.Height)
	}
	return b
}

// mustEncodable panics on a catalog entry that DecodeCatalog would reject: writing it would
// leave a pool that cannot be opened.
func mustEncodable(kind string, id uint64, name string, height uint8) {
	if len(name) > MaxNameLen || height < 1 || height > MaxHeight {
		panic(fmt.Sprintf("format: %s %d: name of %d bytes (at most %d) or tree height %d (from 1 to %d)",
			kind, id, len(name), MaxNameLen, height, MaxHeight))
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, k := binary.Uvarint(d.b)
	if k <= 0 {
		d.err = fmt.Errorf("catalog: %w: truncated", ErrInvalid)
		return 0
	}
	d.b = d.b[k:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, k := binary.Varint(d.b)
	if k <= 0 {
		d.err = fmt.Errorf("catalog: %w: truncated", ErrInvalid)
		return 0
	}
	d.b = d.b[k:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = fmt.Errorf("catalog: %w: truncated", ErrInvalid)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// height reads a tree height, which must be in [1, MaxHeight].
func (d *decoder) height() uint8 {
	h := d.byte()
	if d.err == nil && (h < 1 || h > MaxHeight) {
		d.err = fmt.Errorf("catalog: %w: tree height %d", ErrInvalid, h)
	}
	return h
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > MaxNameLen || n > uint64(len(d.b)) {
		d.err = fmt.Errorf("catalog: %w: name length %d", ErrInvalid, n)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// count reads an element count and bounds it by the bytes left (each element takes ≥ min bytes).
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.err = fmt.Errorf("catalog: %w: %d entries in %d bytes", ErrInvalid, n, len(d.b))
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

// DecodeCatalog parses a serialized catalog.
func DecodeCatalog(b []byte) (*Catalog, error) {
	d := &decoder{b: b}
	if v := d.byte(); d.err == nil && v != catalogVersion {
		return nil, fmt.Errorf("catalog: %w: version %d", ErrInvalid, v)
	}
	c := &Catalog{}
	nv := d.count(7)
	for i := 0; i < nv && d.err == nil; i++ {
		c.Volumes = append(c.Volumes, VolumeEntry{
			ID: d.uvarint(), Name: d.string(), Size: d.uvarint(), Root: d.uvarint(),
			Height: d.height(), Created: d.varint(), Origin: d.uvarint(),
		})
	}
	ns := d.count(8)
	for i := 0; i < ns && d.err == nil; i++ {
		c.Snapshots = append(c.Snapshots, SnapshotEntry{
			ID: d.uvarint(), Name: d.string(), Volume: d.uvarint(), LSN: d.uvarint(),
			Created: d.varint(), Size: d.uvarint(), Root: d.uvarint(), Height: d.height(),
		})
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("catalog: %w: %d trailing bytes", ErrInvalid, len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return c, nil
}
