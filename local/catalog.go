package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/internal/atomicfile"
)

// catalog is the daemon's durable state besides the pool: the images, the clones and their
// revisions, in catalog.json in the home. It is replaced atomically on every change (writeCatalog).
//
// Order of side effects (what makes a crash at any point recoverable):
//   - create: the pool object first (snapshot image/<name>, volume clone/<name>, snapshot
//     rev/<clone>/<rev>), then its record here;
//   - delete: the record is marked deleting here, then the pool object is deleted, then the record
//     is removed.
//
// At start, pool objects no record accounts for are deleted (an interrupted build or create),
// records marked deleting are deleted, and records whose pool object is gone are dropped.
type catalog struct {
	// Version is the catalog format's version (catalogVersion).
	Version int                     `json:"version"`
	Images  map[string]*imageRecord `json:"images"`
	Clones  map[string]*cloneRecord `json:"clones"`
}

const catalogVersion = 1

// imageRecord is an image as the catalog keeps it. Image.Clones and Image.Status are computed
// when the image is read, not kept.
type imageRecord struct {
	Image
	// ParentCreated is the creation time of the image Parent names, which tells it from a later
	// image of the same name.
	ParentCreated time.Time `json:"parentCreated,omitzero"`
	// Deleting is set while the image's snapshot is being deleted.
	Deleting bool `json:"deleting,omitempty"`
}

// cloneRecord is a clone as the catalog keeps it. Its state, the server's process and the
// volume's export are the daemon's run-time state (cloneRuntime).
type cloneRecord struct {
	Name    string              `json:"name"`
	Image   string              `json:"image"`
	Engine  imagebuilder.Engine `json:"engine"`
	Version string              `json:"version"` // the engine version, the image's
	// Running is the state the clone should be in: true after create and start (also when the
	// server failed), false after stop. A restarted daemon starts the clones that should run.
	Running  bool   `json:"running"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	Password string `json:"password"`
	Database string `json:"database,omitempty"`
	// PID is the server's process ID while it runs, so that a daemon that restarts after a
	// crash can stop a server the previous one left (after checking it is that server).
	PID           int        `json:"pid,omitempty"`
	Size          int64      `json:"size"`
	Created       time.Time  `json:"created"`
	Lifetime      string     `json:"lifetime"`
	Expires       time.Time  `json:"expires,omitzero"`
	CreateSeconds float64    `json:"createSeconds,omitempty"`
	Revisions     []Revision `json:"revisions,omitempty"`
	// Deleting is set while the clone's volume and revisions are being deleted.
	Deleting bool `json:"deleting,omitempty"`
}

func (r *cloneRecord) revision(name string) (Revision, bool) {
	i := slices.IndexFunc(r.Revisions, func(rv Revision) bool { return rv.Name == name })
	if i < 0 {
		return Revision{}, false
	}
	return r.Revisions[i], true
}

func newCatalog() *catalog {
	return &catalog{Version: catalogVersion, Images: map[string]*imageRecord{}, Clones: map[string]*cloneRecord{}}
}

// clone returns a deep copy, for writing outside the lock.
func (c *catalog) clone() *catalog {
	out := newCatalog()
	for k, v := range c.Images {
		r := *v
		r.Tags = slices.Clone(v.Tags)
		out.Images[k] = &r
	}
	for k, v := range c.Clones {
		r := *v
		r.Revisions = slices.Clone(v.Revisions)
		out.Clones[k] = &r
	}
	return out
}

// clonesOf returns the names of the clones of image, sorted.
func (c *catalog) clonesOf(image string) []string {
	var names []string
	for _, r := range c.Clones {
		if r.Image == image {
			names = append(names, r.Name)
		}
	}
	slices.Sort(names)
	return names
}

// loadCatalog reads the catalog at path; a missing file is an empty catalog.
func loadCatalog(path string) (*catalog, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return newCatalog(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("local: read catalog: %w", err)
	}
	c := newCatalog()
	if err := json.Unmarshal(data, c); err != nil {
		return nil, fmt.Errorf("local: catalog %s: %w", path, err)
	}
	if c.Version != catalogVersion {
		return nil, fmt.Errorf("local: catalog %s: format version %d, this daemon reads %d", path, c.Version, catalogVersion)
	}
	if c.Images == nil {
		c.Images = map[string]*imageRecord{}
	}
	if c.Clones == nil {
		c.Clones = map[string]*cloneRecord{}
	}
	for name, r := range c.Images {
		if r == nil || r.Name != name {
			return nil, fmt.Errorf("local: catalog %s: image entry %q does not hold image %q", path, name, name)
		}
	}
	for name, r := range c.Clones {
		if r == nil || r.Name != name {
			return nil, fmt.Errorf("local: catalog %s: clone entry %q does not hold clone %q", path, name, name)
		}
	}
	return c, nil
}

// writeCatalog replaces the catalog file at path with data (internal/atomicfile: a crash leaves
// the old catalog or the new one, never a mix), readable by the daemon's user only: it holds the
// clones' passwords.
func writeCatalog(path string, data []byte) error {
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("local: catalog: %w", err)
	}
	return nil
}
