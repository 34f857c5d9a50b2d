package local

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/dataimage/dataimage/exportset"
)

// Names of images, clones and revisions follow the image definition's rule for names: ASCII
// letters, digits, '-', '_' and '.'; starting with a letter or a digit; not only digits; at most
// 63 characters. They become file names (mount points, runtime directories), export ids and
// parts of pool object names, which this rule keeps safe.
const maxNameLen = 63

// checkName returns an ErrInvalid error when name breaks the rule; what names the field.
func checkName(what, name string) error {
	bad := func(rule string) error { return errorf(ErrInvalid, "%s %q: %s", what, name, rule) }
	switch {
	case name == "":
		return errorf(ErrInvalid, "%s: a name is required", what)
	case len(name) > maxNameLen:
		return bad(fmt.Sprintf("at most %d characters", maxNameLen))
	case !isAlnum(name[0]):
		return bad("must start with an ASCII letter or a digit")
	}
	digits := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return bad("may contain only ASCII letters, digits, '-', '_' and '.'")
		}
		digits = digits && c >= '0' && c <= '9'
	}
	if digits {
		return bad("must not be purely numeric")
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Pool object names. The catalog and the pool reconcile by them at start: an object whose name
// the catalog does not account for is left over from an interrupted operation and deleted.
const (
	imagePrefix = "image/" // an image: a snapshot
	clonePrefix = "clone/" // a clone: a volume cloned from an image's snapshot
	revPrefix   = "rev/"   // a clone's revision: rev/<clone>/<revision>, a snapshot of the clone
	buildPrefix = "build/" // the volume an image is being built in
	tmpPrefix   = "tmp/"   // a volume that carries a revision to a new image's snapshot
	pullPrefix  = "pull/"  // the volume an image is pulled into: pull/<name>@<digest hex> (remote.go)
	pushPrefix  = "push/"  // the clone of an image's snapshot a push reads (remote.go)
)

func imageObject(name string) string                    { return imagePrefix + name }
func pullVolume(name string, d exportset.Digest) string { return pullPrefix + name + "@" + d.Hex() }
func cloneObject(name string) string                    { return clonePrefix + name }
func revObject(clone, revision string) string           { return revPrefix + clone + "/" + revision }

// Export ids (one per exported volume, valid file names).
func cloneExportID(name string) string { return "clone-" + name }
func buildExportID(name string) string { return "build-" + name }
func pushExportID(name string) string  { return "push-" + name }
func pullExportID(name string) string  { return "pull-" + name }

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// generatedCloneName names a clone of image: the image's name and a random suffix.
func generatedCloneName(image string) string {
	suffix := "-" + randomHex(3)
	if len(image)+len(suffix) > maxNameLen {
		image = strings.TrimRight(image[:maxNameLen-len(suffix)], "-_.")
	}
	return image + suffix
}
