package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
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
)

func imageObject(name string) string          { return imagePrefix + name }
func cloneObject(name string) string          { return clonePrefix + name }
func revObject(clone, revision string) string { return revPrefix + clone + "/" + revision }

// Export ids (one per exported volume, valid file names).
func cloneExportID(name string) string { return "clone-" + name }
func buildExportID(name string) string { return "build-" + name }

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

// keyLocks serializes the operations on one image or clone, by name, and lets operations on
// different names run side by side: there is no lock around the service as a whole. A waiter
// gives up when its context ends. Keys: "image/<name>", "clone/<name>" (the pool object names).
type keyLocks struct {
	mu   sync.Mutex          // guards keys
	keys map[string]*keyLock // keys locked or waited for
}

type keyLock struct {
	sem  chan struct{} // holds one token while the key is locked
	refs int           // holders and waiters; REQUIRES keyLocks.mu
}

func newKeyLocks() *keyLocks { return &keyLocks{keys: make(map[string]*keyLock)} }

// lock waits until key is free or ctx ends, and returns the function that unlocks it.
func (l *keyLocks) lock(ctx context.Context, key string) (unlock func(), err error) {
	l.mu.Lock()
	k := l.keys[key]
	if k == nil {
		k = &keyLock{sem: make(chan struct{}, 1)}
		l.keys[key] = k
	}
	k.refs++
	l.mu.Unlock()

	select {
	case k.sem <- struct{}{}:
		return func() {
			<-k.sem
			l.release(key, k)
		}, nil
	case <-ctx.Done():
		l.release(key, k)
		return nil, fmt.Errorf("local: wait for %s: %w", key, ctx.Err())
	}
}

func (l *keyLocks) release(key string, k *keyLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k.refs--
	if k.refs == 0 {
		delete(l.keys, key)
	}
}
