package exportset

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Objects are stored as one zstd frame of their payload (docs/export-sets.md).

var (
	encoder = mustEncoder()
	decoder = mustDecoder()
)

func mustEncoder() *zstd.Encoder {
	// EncodeAll is safe for concurrent use; each call runs on its caller's goroutine. The
	// fastest level: pushes are bound by the network and the disk, not by the ratio.
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // only for invalid options
	}
	return e
}

func mustDecoder() *zstd.Decoder {
	// DecodeAll with a capacity limit: a frame that decompresses past what its object may hold
	// is an error, not an allocation.
	d, err := zstd.NewReader(nil, zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunkSize*2))
	if err != nil {
		panic(err)
	}
	return d
}

// compress returns payload as a stored object.
func compress(payload []byte) []byte {
	return encoder.EncodeAll(payload, make([]byte, 0, len(payload)/2+128))
}

// openObject decompresses a stored object of at most max payload bytes and checks its digest.
func openObject(stored []byte, want Digest, max int64) ([]byte, error) {
	payload, err := decoder.DecodeAll(stored, make([]byte, 0, max))
	if err != nil {
		return nil, fmt.Errorf("%w: decompress %d bytes: %v", ErrCorrupt, len(stored), err)
	}
	if got := DigestOf(payload); got != want {
		return nil, fmt.Errorf("%w: the payload's digest is %s", ErrCorrupt, got)
	}
	return payload, nil
}
