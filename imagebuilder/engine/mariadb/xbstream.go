package mariadb

// This file reads the xbstream (mbstream) format that mariabackup --backup --stream=xbstream
// writes, chunk by chunk, to check a stream before mbstream -x extracts it: every path stays
// inside the target directory, the restore's limits hold (engine.RestoreOptions), each payload
// matches its checksum, and the stream is not cut short. A chunk, in little-endian order:
//
//	magic "XBSTCK01" | flags u8 | type u8 | path length u32 | path
//	type 'P' (payload): payload length u64 | payload offset u64 | CRC-32 (IEEE) of the payload u32 | payload
//	type 'E' (end of file): nothing more
//
// A file is one or more payload chunks, then an end-of-file chunk.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// xbMagic starts every chunk of an xbstream.
const xbMagic = "XBSTCK01"

// Chunk types.
const (
	xbPayload = 'P'
	xbEOF     = 'E'
)

// maxXBPath bounds a chunk's path (PATH_MAX).
const maxXBPath = 4096

// errTruncated says that a stream or a file ends before its end.
var errTruncated = errors.New("truncated")

// restoreLimits are the limits of a physical restore (engine.RestoreOptions) and what has
// been counted against them, across the files of one restore.
type restoreLimits struct {
	maxBytes, maxMembers int64 // <= 0: no limit
	bytes, members       int64
}

// addMember counts one file or directory named name (for messages), failing with
// engine.ErrRestoreLimit past maxMembers.
func (l *restoreLimits) addMember(backup, name string) error {
	l.members++
	if l.maxMembers > 0 && l.members > l.maxMembers {
		return fmt.Errorf("%w: %s: %s is past the limit of %d files and directories", engine.ErrRestoreLimit, backup, name, l.maxMembers)
	}
	return nil
}

// addBytes counts n more bytes of file name, failing with engine.ErrRestoreLimit past
// maxBytes.
func (l *restoreLimits) addBytes(backup, name string, n int64) error {
	l.bytes += n
	if l.maxBytes > 0 && l.bytes > l.maxBytes {
		return fmt.Errorf("%w: %s: %s takes the restore past the limit of %d bytes", engine.ErrRestoreLimit, backup, name, l.maxBytes)
	}
	return nil
}

// xbFile is what a stream has said of one file so far.
type xbFile struct {
	size   int64 // the end of its furthest payload
	closed bool  // its end-of-file chunk came
}

// forwardXBStream copies the xbstream read from r to w, chunk by chunk, checking each before
// it is written (see the file's comment) and counting its files, directories and bytes
// against lim. name names the backup in errors. Paths ending in .qp (mariabackup --compress)
// and .xbcrypt (encryption) are refused.
func forwardXBStream(r io.Reader, w io.Writer, name string, lim *restoreLimits) error {
	br := bufio.NewReaderSize(r, 1<<20)
	files := map[string]*xbFile{}
	dirs := map[string]bool{}
	var at int64 // offset of the chunk in the (decompressed) stream
	var head [14]byte
	var payloadHead [20]byte
	crc := crc32.NewIEEE()
	for chunks := 0; ; chunks++ {
		n, err := io.ReadFull(br, head[:])
		if err == io.EOF {
			if chunks == 0 {
				return fmt.Errorf("%w: %s: an empty stream", engine.ErrFormat, name)
			}
			break
		}
		if err != nil {
			return xbReadError(name, at, "a chunk header", n, err)
		}
		if string(head[:8]) != xbMagic {
			return fmt.Errorf("%w: %s: not an xbstream chunk at offset %d (starts % x, want %q)", engine.ErrFormat, name, at, head[:8], xbMagic)
		}
		typ := head[9]
		plen := binary.LittleEndian.Uint32(head[10:14])
		if plen == 0 || plen > maxXBPath {
			return fmt.Errorf("%w: %s: chunk at offset %d: path length %d", engine.ErrFormat, name, at, plen)
		}
		p := make([]byte, plen)
		if n, err := io.ReadFull(br, p); err != nil {
			return xbReadError(name, at, "a chunk's path", n, err)
		}
		file := string(p)
		if err := checkXBPath(file); err != nil {
			return fmt.Errorf("%w: %s: chunk at offset %d: path %q %v", engine.ErrFormat, name, at, file, err)
		}
		f := files[file]
		if f == nil {
			switch {
			case strings.HasSuffix(file, ".qp"):
				return fmt.Errorf("%w: %s: %s is compressed by mariabackup --compress (QuickLZ), which the image builder does not restore (mariabackup --decompress needs qpress, which Debian does not ship): take the backup without --compress, and compress the stream instead (| gzip or | zstd)", engine.ErrFormat, name, file)
			case strings.HasSuffix(file, ".xbcrypt"):
				return fmt.Errorf("%w: %s: %s is encrypted (.xbcrypt): the image builder restores unencrypted backups only", engine.ErrFormat, name, file)
			}
			for d := path.Dir(file); d != "." && !dirs[d]; d = path.Dir(d) {
				dirs[d] = true
				if err := lim.addMember(name, d+"/"); err != nil {
					return err
				}
			}
			if err := lim.addMember(name, file); err != nil {
				return err
			}
			f = &xbFile{}
			files[file] = f
		}
		if f.closed {
			return fmt.Errorf("%w: %s: chunk at offset %d: %s continues after its end-of-file chunk", engine.ErrFormat, name, at, file)
		}
		switch typ {
		case xbEOF:
			f.closed = true
			if _, err := w.Write(head[:]); err != nil {
				return err
			}
			if _, err := w.Write(p); err != nil {
				return err
			}
			at += int64(len(head)) + int64(plen)
			continue
		case xbPayload:
		default:
			return fmt.Errorf("%w: %s: chunk at offset %d (%s): unknown chunk type %q", engine.ErrFormat, name, at, file, typ)
		}
		if n, err := io.ReadFull(br, payloadHead[:]); err != nil {
			return xbReadError(name, at, "the payload header of "+file, n, err)
		}
		length := binary.LittleEndian.Uint64(payloadHead[0:8])
		offset := binary.LittleEndian.Uint64(payloadHead[8:16])
		sum := binary.LittleEndian.Uint32(payloadHead[16:20])
		const maxOff = 1 << 62
		if length > maxOff || offset > maxOff {
			return fmt.Errorf("%w: %s: chunk at offset %d (%s): payload of %d bytes at %d", engine.ErrFormat, name, at, file, length, offset)
		}
		if end := int64(offset + length); end > f.size {
			if err := lim.addBytes(name, file, end-f.size); err != nil {
				return err
			}
			f.size = end
		}
		for _, b := range [][]byte{head[:], p, payloadHead[:]} {
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		crc.Reset()
		copied, err := io.CopyN(io.MultiWriter(w, crc), br, int64(length))
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: %s: %w: the stream ends in the middle of %s (%d of the %d bytes of the chunk at offset %d)", engine.ErrFormat, name, errTruncated, file, copied, length, at)
			}
			return err
		}
		if got := crc.Sum32(); got != sum {
			return fmt.Errorf("%w: %s: chunk at offset %d (%s, bytes %d to %d): checksum %08x, the chunk says %08x: the stream is corrupt", engine.ErrFormat, name, at, file, offset, offset+length, got, sum)
		}
		at += int64(len(head)) + int64(plen) + int64(len(payloadHead)) + int64(length)
	}
	for file, f := range files {
		if !f.closed {
			return fmt.Errorf("%w: %s: %w: the stream ends before the end of %s (no end-of-file chunk)", engine.ErrFormat, name, errTruncated, file)
		}
	}
	return nil
}

// xbReadError is the error of a read of what (n bytes of it read) at chunk offset at.
func xbReadError(name string, at int64, what string, n int, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: %w: the stream ends in %s at offset %d (%d bytes of it)", engine.ErrFormat, name, errTruncated, what, at, n)
	}
	return fmt.Errorf("%s: read %s at offset %d: %w", name, what, at, err)
}

// checkXBPath checks a path of a stream: relative, clean, inside the target directory.
func checkXBPath(p string) error {
	switch {
	case strings.ContainsRune(p, 0):
		return errors.New("has a NUL byte")
	case path.IsAbs(p):
		return errors.New("is absolute")
	case path.Clean(p) != p:
		return errors.New("is not clean")
	case p == ".." || strings.HasPrefix(p, "../"):
		return errors.New("leaves the target directory")
	}
	return nil
}
