package blockstore

import (
	"errors"
	"fmt"
	"io"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// Traces lists what r holds of a Dataimage pool where a pool keeps its superblocks (slot A at
// byte 0, slot B at the start of block 1 for every block size) and its journal's first block
// (block 2), whether it verifies or not: a pool whose superblocks are both damaged still leaves
// their magic numbers, or its journal's records. An empty list means nothing there says that r
// ever held a pool. A read error is returned as an error, never taken for "no traces"; reading
// past the end of r is not an error (there is nothing there).
func Traces(r io.ReaderAt) ([]string, error) {
	offs := []int64{0}
	for bs := int64(format.MinBlockSize); bs <= 2*format.MaxBlockSize; bs *= 2 {
		offs = append(offs, bs)
	}
	buf := make([]byte, format.MinBlockSize)
	var out []string
	for _, off := range offs {
		n, err := r.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return out, fmt.Errorf("blockstore: read at byte %d: %w", off, err)
		}
		if n < len(buf) {
			break // the end of r
		}
		switch sb, err := format.DecodeSuperblock(buf); {
		case err == nil:
			out = append(out, fmt.Sprintf("a Dataimage pool superblock at byte %d (block size %d, generation %d)", off, sb.BlockSize, sb.Generation))
		case !errors.Is(err, format.ErrMagic):
			out = append(out, fmt.Sprintf("a damaged Dataimage pool superblock at byte %d (%v)", off, err))
		}
		if off == 0 {
			continue // block 0 is the superblock slot A at every block size
		}
		switch _, _, end, err := format.DecodeRecord(buf); {
		case err == nil && !end:
			out = append(out, fmt.Sprintf("a Dataimage pool journal record at byte %d", off))
		case err != nil && !errors.Is(err, format.ErrMagic):
			out = append(out, fmt.Sprintf("a damaged Dataimage pool journal record at byte %d (%v)", off, err))
		}
	}
	return out, nil
}
