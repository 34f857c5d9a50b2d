package exportset

import (
	"context"
	"time"
)

// Target is where a registry keeps its objects: a bucket and prefix of an S3 server, or a
// directory (package remote has both). Keys are slash-separated paths under the target's
// root (layout.go says which). Every method is safe for concurrent use.
//
// The protocols of this package need of a target what the S3 servers it targets give
// (docs/export-sets.md): a Put is atomic (a reader sees the old object, the new one or none,
// never a part) and, once it returned, visible to every Get, Stat and List that starts after
// it; the same for Delete.
type Target interface {
	// Get returns an object's bytes; ErrNotFound when there is none. An object of more than
	// limit bytes is an error (ErrCorrupt): nothing this package reads is that large.
	Get(ctx context.Context, key string, limit int64) ([]byte, error)
	// Put stores data as the object key, replacing what was there.
	Put(ctx context.Context, key string, data []byte) error
	// Stat describes an object; ErrNotFound when there is none.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn, one call at a time, for every object whose key starts with prefix, in no
	// particular order. An error of fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes an object; one that is not there is not an error.
	Delete(ctx context.Context, key string) error
	// String names the target for people (a URL without credentials).
	String() string
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key  string
	Size int64
	// Modified is when the object was last written, by the target's clock (the S3 server's,
	// the file system's): leases compare these with each other, never with a local clock.
	Modified time.Time
}
