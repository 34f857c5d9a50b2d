package exportset

import (
	"strings"
)

// The object layout under a target's root (docs/export-sets.md):
//
//	manifests/sha256/<hex>   a manifest, named by its digest
//	chunks/sha256/<hex>      an object (a chunk's bytes or a patch), named by its payload's digest, zstd-compressed
//	refs/<name>              a name: the digest of the manifest it points at, and a newline
//	leases/<id>              a push in progress (gc.go)
//	gc/<id>                  a garbage collection in progress (gc.go)
const (
	manifestsDir = "manifests/sha256/"
	chunksDir    = "chunks/sha256/"
	refsDir      = "refs/"
	leasesDir    = "leases/"
	gcDir        = "gc/"
)

func manifestKey(d Digest) string { return manifestsDir + d.Hex() }
func objectKey(d Digest) string   { return chunksDir + d.Hex() }
func refKey(name string) string   { return refsDir + name }

// digestOfKey returns the digest a manifest or object key names, or false.
func digestOfKey(dir, key string) (Digest, bool) {
	h, ok := strings.CutPrefix(key, dir)
	d := Digest(digestPrefix + h)
	return d, ok && d.Valid()
}

// CheckName checks an image name as a registry's names (refs) must be: 1 to 253 of ASCII
// letters, digits, '-', '_' and '.', starting with a letter or a digit. They are object keys
// and file names; they cannot be mistaken for a digest.
func CheckName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return invalid("name %.80q: want 1 to %d characters", name, maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return invalid("name %.80q: must start with an ASCII letter or a digit", name)
		}
		if !alnum && c != '-' && c != '_' && c != '.' {
			return invalid("name %.80q: may contain only ASCII letters, digits, '-', '_' and '.'", name)
		}
	}
	return nil
}
