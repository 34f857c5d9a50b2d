package postgres

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// WAL page header fields Detect checks (XLogLongPageHeaderData, access/xlog_internal.h): the
// first page of a segment has the long header, which records the segment and block sizes.
const (
	walLongHeaderSize = 40
	xlpLongHeader     = 0x0002 // xlp_info bit of the long header
	// walMagicHigh is the high byte every XLOG_PAGE_MAGIC has had (0xD0xx from 9.x, 0xD1xx
	// from 13): the low byte changes with every major version.
	walMagicHighMin, walMagicHighMax = 0xD0, 0xD1
)

// isWALSegment reports whether b starts like a WAL segment: the long page header of a
// PostgreSQL version, with a segment size a power of two from 1 MiB to 1 GiB and a block size
// a power of two from 1 KiB to 32 KiB.
func isWALSegment(b []byte) bool {
	if len(b) < walLongHeaderSize {
		return false
	}
	magic := binary.LittleEndian.Uint16(b[0:2])
	info := binary.LittleEndian.Uint16(b[2:4])
	segSize := binary.LittleEndian.Uint32(b[32:36])
	blockSize := binary.LittleEndian.Uint32(b[36:40])
	hi := magic >> 8
	return hi >= walMagicHighMin && hi <= walMagicHighMax && info&xlpLongHeader != 0 &&
		powerOfTwo(segSize, 1<<20, 1<<30) && powerOfTwo(blockSize, 1<<10, 32<<10)
}

func powerOfTwo(n, lo, hi uint32) bool { return n >= lo && n <= hi && n&(n-1) == 0 }

// walDir reports whether dir holds WAL files only (segments, history files; an archive_status
// directory is allowed, as in pg_wal), at least one segment among them, each segment checked
// by its content.
func walDir(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("postgres: read backup directory %s: %w", dir, err)
	}
	segments := 0
	for _, ent := range entries {
		name := ent.Name()
		if name == "archive_status" && ent.IsDir() {
			continue
		}
		if !walFileRE.MatchString(name) {
			return false, nil
		}
		if len(name) == 24 {
			head, err := engine.Sniff(filepath.Join(dir, name), walLongHeaderSize)
			if err != nil {
				return false, err
			}
			if !isWALSegment(head) {
				return false, fmt.Errorf("%w: %s is named like a WAL segment but is not one (no WAL page header)", engine.ErrFormat, filepath.Join(dir, name))
			}
			segments++
		}
	}
	return segments > 0, nil
}

// segmentName is the name of the WAL segment of timeline tli that holds lsn, for segments of
// segSize bytes (XLogFileName).
func segmentName(tli uint32, lsn uint64, segSize uint64) string {
	perID := uint64(0x100000000) / segSize
	seg := lsn / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, seg/perID, seg%perID)
}

// nextSegment returns the name of the segment after the one called name, for segments of
// segSize bytes, or "" when name is not a segment's.
func nextSegment(name string, segSize uint64) string {
	if len(name) != 24 || !walFileRE.MatchString(name) || segSize == 0 {
		return ""
	}
	tli, err1 := strconv.ParseUint(name[:8], 16, 32)
	hi, err2 := strconv.ParseUint(name[8:16], 16, 32)
	lo, err3 := strconv.ParseUint(name[16:], 16, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return ""
	}
	perID := uint64(0x100000000) / segSize
	seg := hi*perID + lo + 1
	return segmentName(uint32(tli), seg*segSize, segSize)
}

// parseLSN parses an LSN as PostgreSQL prints it, "0/3000060".
func parseLSN(s string) (uint64, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	return uint64(hi)<<32 | uint64(lo), nil
}
