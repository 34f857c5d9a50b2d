package exportset

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Digest names content: "sha256:" and the 64 lowercase hex digits of the SHA-256 of the bytes.
// An image's digest is its manifest's (as stored); an object's is that of its uncompressed
// payload.
type Digest string

const digestPrefix = "sha256:"

// DigestOf returns the digest of b.
func DigestOf(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest(digestPrefix + hex.EncodeToString(sum[:]))
}

// ParseDigest checks that s is a digest.
func ParseDigest(s string) (Digest, error) {
	d := Digest(s)
	if !d.Valid() {
		return "", invalid("digest %.80q: want sha256: and 64 lowercase hex digits", s)
	}
	return d, nil
}

// IsDigest reports whether s looks like a digest rather than a name (names cannot hold ':').
func IsDigest(s string) bool { return strings.HasPrefix(s, digestPrefix) }

// Valid reports whether d is well formed.
func (d Digest) Valid() bool {
	h, ok := strings.CutPrefix(string(d), digestPrefix)
	if !ok || len(h) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Hex returns the hex digits of a valid digest.
func (d Digest) Hex() string { return strings.TrimPrefix(string(d), digestPrefix) }

// Short returns the first 12 hex digits, for people.
func (d Digest) Short() string {
	h := d.Hex()
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

func (d Digest) String() string { return string(d) }
