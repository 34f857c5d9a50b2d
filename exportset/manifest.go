package exportset

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/bits"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// FormatVersion is the manifest format this package writes, and the only one it reads.
const FormatVersion = 1

// Limits of the format (docs/export-sets.md). A manifest outside them is malformed.
const (
	// DefaultChunkSize is the chunk size of a push that does not choose one.
	DefaultChunkSize = 4 << 20
	MinChunkSize     = 64 << 10
	MaxChunkSize     = 64 << 20
	MinBlockSize     = 512
	MaxBlockSize     = 1 << 20
	// MaxImageSize bounds an image's size (1 PiB).
	MaxImageSize = 1 << 50
	// MaxChain bounds the objects of one chunk: a full object or a patch on zeros, then
	// patches.
	MaxChain = 8
	// MaxManifestSize bounds a manifest's bytes (a 1 TiB image of whole 4 MiB chunks needs
	// about 30 MiB).
	MaxManifestSize = 512 << 20
	maxNameLen      = 253
	maxTags         = 64
	maxDefinition   = 1 << 20
	maxMetaString   = 1024
)

// Manifest describes an image in a registry: its metadata, its geometry, its lineage and its
// chunks. Its JSON form, as stored, is what the image's digest is taken of.
type Manifest struct {
	// FormatVersion is always FormatVersion (first in the JSON form).
	FormatVersion int `json:"formatVersion"`
	// Image is what the image is: name, engine, definition, ...
	Image Image `json:"image"`
	// BlockSize is the block size of the store the image was pushed from: patches change whole
	// blocks.
	BlockSize int `json:"blockSize"`
	// Size is the image's size in bytes, a multiple of BlockSize.
	Size int64 `json:"size"`
	// ChunkSize is the logical range each chunk covers, a multiple of BlockSize; the last
	// chunk may be shorter (ChunkLen).
	ChunkSize int64 `json:"chunkSize"`
	// Parent is the digest of the image this one was derived from (lineage), or empty. Pulls
	// look for it (or an earlier ancestor) on the node to start from.
	Parent Digest `json:"parent,omitempty"`
	// Chunks are the chunks that hold data, by index (ascending). A chunk that is absent reads
	// as zeros.
	Chunks []Chunk `json:"chunks"`
}

// Image is the image's metadata: what it is, not where it is.
type Image struct {
	Name       string   `json:"name"`
	Engine     string   `json:"engine,omitempty"`
	Version    string   `json:"version,omitempty"` // the engine's version
	SourceType string   `json:"sourceType,omitempty"`
	Database   string   `json:"database,omitempty"` // the database clones connect to
	Tags       []string `json:"tags,omitempty"`
	// Definition is the image definition's text (YAML), when it was built from one.
	Definition string `json:"definition,omitempty"`
	// DataState is the point in time the data holds; LogPosition the engine's log position
	// there (e.g. a PostgreSQL LSN), when known.
	DataState   time.Time `json:"dataState,omitzero"`
	LogPosition string    `json:"logPosition,omitempty"`
	// Created is when the image was made (not when it was pushed): pushing the same image
	// again gives the same manifest.
	Created time.Time `json:"created"`
}

// Chunk is one chunk of an image: the objects whose payloads, applied in order to zeros, give
// its bytes. The first is a full object (the chunk's bytes) or a patch; the others are
// patches. A chunk that an image shares with its parent has the parent's objects; one that
// changed a little has the parent's objects and one more patch.
type Chunk struct {
	Index   int64    `json:"index"`
	Objects []Object `json:"objects"`
}

// Object is a stored, compressed, content-addressed object: chunks/sha256/<hex> in the
// registry.
type Object struct {
	// Digest is that of the uncompressed payload, verified on every read.
	Digest Digest `json:"digest"`
	// Size is the stored (compressed) size in bytes when it was pushed, for accounting: an
	// object's payload, not its compression, is what is verified.
	Size int64 `json:"size"`
	// Length is the payload's size in bytes: at most the chunk's length for a full object
	// (what follows reads as zeros), and a patch's encoded size for a patch.
	Length int64 `json:"length"`
	// Patch is set when the payload is a patch (changed blocks) rather than the chunk's bytes.
	Patch bool `json:"patch,omitempty"`
}

// NumChunks returns how many chunks the image's size spans.
func (m *Manifest) NumChunks() int64 { return (m.Size + m.ChunkSize - 1) / m.ChunkSize }

// ChunkLen returns the length of chunk i (the last one may be shorter).
func (m *Manifest) ChunkLen(i int64) int64 { return min(m.ChunkSize, m.Size-i*m.ChunkSize) }

// StoredBytes is the sum of the stored sizes of the objects the manifest names (an object
// named twice counts twice).
func (m *Manifest) StoredBytes() int64 {
	var n int64
	for _, c := range m.Chunks {
		for _, o := range c.Objects {
			n += o.Size
		}
	}
	return n
}

// chunk returns the chunk of index i, or nil.
func (m *Manifest) chunk(i int64) *Chunk {
	lo, hi := 0, len(m.Chunks)
	for lo < hi {
		mid := (lo + hi) / 2
		switch c := &m.Chunks[mid]; {
		case c.Index == i:
			return c
		case c.Index < i:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return nil
}

// Encode checks m and returns its JSON form (times in UTC, so that the same image always
// encodes to the same bytes).
func (m *Manifest) Encode() ([]byte, error) {
	c := *m
	c.FormatVersion = FormatVersion
	c.Image.Created = c.Image.Created.UTC()
	if !c.Image.DataState.IsZero() {
		c.Image.DataState = c.Image.DataState.UTC()
	}
	if c.Chunks == nil {
		c.Chunks = []Chunk{}
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("exportset: encode manifest: %w", err)
	}
	if len(b) > MaxManifestSize {
		return nil, invalid("manifest of %d bytes: at most %d (use a larger chunk size)", len(b), MaxManifestSize)
	}
	return b, nil
}

// DecodeManifest decodes a manifest strictly: its version first (ErrUnsupportedVersion for
// another), then every field, refusing unknown fields, trailing data and every broken rule
// with ErrMalformed naming the field.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, malformed("manifest of %d bytes: at most %d", len(b), MaxManifestSize)
	}
	var head struct {
		FormatVersion *json.RawMessage `json:"formatVersion"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, malformed("manifest: not a JSON object: %v", err)
	}
	if head.FormatVersion == nil {
		return nil, malformed("manifest: formatVersion is missing")
	}
	var v int
	if err := json.Unmarshal(*head.FormatVersion, &v); err != nil {
		return nil, malformed("manifest: formatVersion %.20s: want an integer", *head.FormatVersion)
	}
	if v != FormatVersion {
		return nil, fmt.Errorf("%w: manifest format %d, this version reads %d", ErrUnsupportedVersion, v, FormatVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	m := &Manifest{}
	if err := dec.Decode(m); err != nil {
		return nil, malformed("manifest: %v", err)
	}
	if dec.More() {
		return nil, malformed("manifest: data after the JSON object")
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

// check verifies every rule of the format.
func (m *Manifest) check() error {
	if err := m.Image.check(); err != nil {
		return err
	}
	switch {
	case m.BlockSize < MinBlockSize || m.BlockSize > MaxBlockSize || bits.OnesCount(uint(m.BlockSize)) != 1:
		return malformed("blockSize %d: want a power of two from %d to %d", m.BlockSize, MinBlockSize, MaxBlockSize)
	case m.Size <= 0 || m.Size > MaxImageSize || m.Size%int64(m.BlockSize) != 0:
		return malformed("size %d: want a positive multiple of blockSize (%d), at most %d", m.Size, m.BlockSize, int64(MaxImageSize))
	case m.ChunkSize < MinChunkSize || m.ChunkSize > MaxChunkSize || m.ChunkSize%int64(m.BlockSize) != 0:
		return malformed("chunkSize %d: want a multiple of blockSize (%d) from %d to %d", m.ChunkSize, m.BlockSize, MinChunkSize, MaxChunkSize)
	case m.Parent != "" && !m.Parent.Valid():
		return malformed("parent %.80q: want a digest (sha256: and 64 lowercase hex digits)", m.Parent)
	}
	n := m.NumChunks()
	maxStored := maxStoredSize(m.ChunkSize, m.BlockSize)
	maxPatch := maxPatchSize(m.ChunkSize, m.BlockSize)
	for i, c := range m.Chunks {
		switch {
		case c.Index < 0 || c.Index >= n:
			return malformed("chunks[%d].index %d: want 0 to %d (size %d / chunkSize %d)", i, c.Index, n-1, m.Size, m.ChunkSize)
		case i > 0 && c.Index <= m.Chunks[i-1].Index:
			return malformed("chunks[%d].index %d: chunks must be in ascending order of index, without repeats", i, c.Index)
		case len(c.Objects) == 0 || len(c.Objects) > MaxChain:
			return malformed("chunks[%d] (index %d): %d objects: want 1 to %d", i, c.Index, len(c.Objects), MaxChain)
		}
		for j, o := range c.Objects {
			switch {
			case !o.Digest.Valid():
				return malformed("chunks[%d].objects[%d].digest %.80q: want sha256: and 64 lowercase hex digits", i, j, o.Digest)
			case o.Size <= 0 || o.Size > maxStored:
				return malformed("chunks[%d].objects[%d].size %d: want 1 to %d", i, j, o.Size, maxStored)
			case j > 0 && !o.Patch:
				return malformed("chunks[%d].objects[%d]: only the first object of a chunk may be a full one", i, j)
			case o.Patch && (o.Length < minPatchSize || o.Length > maxPatch):
				return malformed("chunks[%d].objects[%d].length %d: a patch has %d to %d bytes", i, j, o.Length, minPatchSize, maxPatch)
			case !o.Patch && (o.Length <= 0 || o.Length > m.ChunkLen(c.Index) || o.Length%int64(m.BlockSize) != 0):
				return malformed("chunks[%d].objects[%d].length %d: a full object has whole blocks of %d bytes, at most the chunk's %d bytes", i, j, o.Length, m.BlockSize, m.ChunkLen(c.Index))
			}
		}
	}
	return nil
}

func (im *Image) check() error {
	if err := checkText("image.name", im.Name, maxNameLen); err != nil {
		return err
	}
	if im.Name == "" {
		return malformed("image.name: required")
	}
	for _, f := range []struct{ field, v string }{
		{"image.engine", im.Engine}, {"image.version", im.Version}, {"image.sourceType", im.SourceType},
		{"image.database", im.Database}, {"image.logPosition", im.LogPosition},
	} {
		if err := checkText(f.field, f.v, maxMetaString); err != nil {
			return err
		}
	}
	if len(im.Tags) > maxTags {
		return malformed("image.tags: %d tags, at most %d", len(im.Tags), maxTags)
	}
	for i, t := range im.Tags {
		if err := checkText(fmt.Sprintf("image.tags[%d]", i), t, maxNameLen); err != nil {
			return err
		}
	}
	if len(im.Definition) > maxDefinition || !utf8.ValidString(im.Definition) {
		return malformed("image.definition: want valid UTF-8 of at most %d bytes", maxDefinition)
	}
	if im.Created.IsZero() {
		return malformed("image.created: required")
	}
	return nil
}

// checkText checks a one-line metadata string: valid UTF-8, no control characters, at most max
// bytes.
func checkText(field, s string, max int) error {
	if len(s) > max || !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return malformed("%s %.40q: want valid UTF-8 without control characters, at most %d bytes", field, s, max)
	}
	return nil
}

// maxStoredSize bounds an object's stored size: a patch of every block of a chunk (its
// headers included) that did not compress, with zstd's worst-case overhead.
func maxStoredSize(chunkSize int64, blockSize int) int64 {
	payload := maxPatchSize(chunkSize, blockSize)
	return payload + payload/128 + 64<<10
}
