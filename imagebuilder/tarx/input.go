package tarx

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// defaultProgressEvery is the least time between two Progress calls when Options.ProgressEvery
// is zero.
const defaultProgressEvery = 200 * time.Millisecond

// maxTrailing bounds the zero bytes accepted after the end-of-archive marker (tar pads archives
// to a record size, 10 KiB for GNU tar).
const maxTrailing = 1 << 20

// input counts the bytes read from the caller's reader, checks ctx before every read and calls
// Options.Progress.
type input struct {
	ctx context.Context
	r   io.Reader
	// done is the number of bytes read from r so far. INVARIANT: never decreases.
	done int64
	// total is the input size passed to progress, or -1 when unknown.
	total    int64
	progress func(done, total int64)
	every    time.Duration
	// last is when progress was last called.
	last time.Time
	// err is the first error other than io.EOF that Read returned: ctx's or r's.
	err error
}

func newInput(ctx context.Context, r io.Reader, opts Options) *input {
	in := &input{ctx: ctx, r: r, total: -1, progress: opts.Progress, every: opts.ProgressEvery}
	if in.every <= 0 {
		in.every = defaultProgressEvery
	}
	if opts.InputSize > 0 {
		in.total = opts.InputSize
	} else if f, ok := r.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			if off, err := f.Seek(0, io.SeekCurrent); err == nil && off <= fi.Size() {
				in.total = fi.Size() - off
			}
		}
	}
	return in
}

func (in *input) Read(p []byte) (int, error) {
	if err := in.ctx.Err(); err != nil {
		in.fail(err)
		return 0, err
	}
	n, err := in.r.Read(p)
	in.done += int64(n)
	if err != nil && err != io.EOF {
		in.fail(err)
	}
	if in.progress != nil && n > 0 {
		if now := time.Now(); now.Sub(in.last) >= in.every {
			in.last = now
			in.progress(in.done, in.total)
		}
	}
	return n, err
}

func (in *input) fail(err error) {
	if in.err == nil {
		in.err = err
	}
}

// wrap returns the error to report for err, which came from reading the tar stream (through
// gzip, tar or drain): an error of ctx or of the caller's reader as it is, after "tarx: ", and
// anything else (a broken header, a bad checksum, a truncated stream) as ErrInvalidArchive.
func (in *input) wrap(err error) error {
	switch {
	case in.err != nil && errors.Is(err, in.err) && in.ctx.Err() != nil:
		return fmt.Errorf("tarx: %w", err)
	case in.err != nil && errors.Is(err, in.err):
		return fmt.Errorf("tarx: reading input: %w", err)
	default:
		return fmt.Errorf("%w: %w", ErrInvalidArchive, err)
	}
}

// finish makes the last progress call, once the input has been read to its end.
func (in *input) finish() {
	if in.progress == nil {
		return
	}
	if in.total < 0 {
		in.total = in.done
	}
	in.progress(in.done, in.total)
}

// Magic bytes of the compressed formats Extract recognises.
var (
	magicGzip  = []byte{0x1f, 0x8b}
	magicZstd  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicLZ4   = []byte{0x04, 0x22, 0x4d, 0x18}
	magicXz    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicBzip2 = []byte{'B', 'Z', 'h'}
)

// maxZstdWindow bounds the window a zstd stream may ask for (the memory its decoder takes):
// 256 MiB, above pg_basebackup's largest (--compress=zstd:long uses zstd's default long window,
// 128 MiB).
const maxZstdWindow = 256 << 20

// decompress returns the tar stream in in: in itself (buffered), or in through gzip, zstd or
// lz4 (frame format), told apart by their magic bytes. The returned close releases the
// decoder.
func decompress(in *input) (io.Reader, func(), error) {
	nop := func() {}
	br := bufio.NewReaderSize(in, 64<<10)
	head, err := br.Peek(len(magicXz))
	if len(head) == 0 {
		if err == nil || err == io.EOF {
			return nil, nop, fmt.Errorf("%w: empty input", ErrInvalidArchive)
		}
		return nil, nop, in.wrap(err)
	}
	for _, c := range []struct {
		magic []byte
		name  string
	}{{magicXz, "xz"}, {magicBzip2, "bzip2"}} {
		if bytes.HasPrefix(head, c.magic) {
			return nil, nop, fmt.Errorf("%w: input is %s-compressed; only gzip, zstd, lz4 and plain tar are supported", ErrUnsupported, c.name)
		}
	}
	switch {
	case bytes.HasPrefix(head, magicGzip):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nop, in.wrap(err)
		}
		return zr, nop, nil
	case bytes.HasPrefix(head, magicZstd):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			return nil, nop, in.wrap(err)
		}
		return zr, zr.Close, nil
	case bytes.HasPrefix(head, magicLZ4):
		return lz4.NewReader(br), nop, nil
	}
	return br, nop, nil
}

// drain reads what follows the end-of-archive marker, so that a gzip stream is read to its end
// and its checksum verified, and refuses anything but up to maxTrailing zero bytes: data there
// would be silently lost, e.g. a second archive concatenated to the first.
func drain(in *input, r io.Reader) error {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if m > 0 && (n > maxTrailing || !isZero(buf[:m])) {
			return fmt.Errorf("%w: data after the end-of-archive marker", ErrInvalidArchive)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return in.wrap(err)
		}
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// endMarkerSize is the size of tar's end-of-archive marker: two zero blocks.
const endMarkerSize = 2 * 512

// tarStream sits between the decompressed stream and archive/tar, to tell an archive that ends
// with its end-of-archive marker from one cut short: archive/tar reports both as io.EOF.
type tarStream struct {
	r io.Reader
	// sinceMark counts the bytes read since the last mark.
	sinceMark int64
	// zeroRun counts the zero bytes at the end of what was read so far.
	zeroRun int64
}

func (s *tarStream) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.sinceMark += int64(n)
	for i := n - 1; i >= 0; i-- {
		if p[i] != 0 {
			s.zeroRun = int64(n - 1 - i)
			return n, err
		}
	}
	s.zeroRun += int64(n)
	return n, err
}

// mark starts counting the bytes that the next tar.Reader.Next call reads.
func (s *tarStream) mark() { s.sinceMark = 0 }

// ended reports whether the bytes read since the mark end with an end-of-archive marker. When
// tar.Reader.Next returns io.EOF, what it read since the mark is the padding of the previous
// member and, for a complete archive, the marker.
func (s *tarStream) ended() bool {
	return s.sinceMark >= endMarkerSize && s.zeroRun >= endMarkerSize
}
