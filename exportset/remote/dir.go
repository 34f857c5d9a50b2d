package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/internal/atomicfile"
)

// Dir is a registry's target in a directory (file:///dir): the same layout as in a bucket,
// one file per object. Every object is written to a temporary file beside it, synced and
// renamed over it (internal/atomicfile), so readers, crashes and power losses find whole
// objects. A directory on NFS serves several machines when its server keeps close-to-open
// consistency; Modified is then the server's clock.
type Dir struct {
	root string
}

// NewDir returns the target in directory root (an absolute path). The directory is made on
// the first write.
func NewDir(root string) (*Dir, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("%w: directory %q: want an absolute path", exportset.ErrInvalid, root)
	}
	return &Dir{root: filepath.Clean(root)}, nil
}

func (d *Dir) String() string { return "file://" + d.root }

// path returns the file of key, refusing keys that would leave the root.
func (d *Dir) path(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "//") || strings.ContainsRune(key, 0) {
		return "", fmt.Errorf("%w: object key %q", exportset.ErrInvalid, key)
	}
	for _, part := range strings.Split(key, "/") {
		if part == "." || part == ".." || strings.HasPrefix(part, ".") {
			return "", fmt.Errorf("%w: object key %q", exportset.ErrInvalid, key)
		}
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

func (d *Dir) Get(_ context.Context, key string, limit int64) ([]byte, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p) // O_CLOEXEC, as every file Go opens
	if err != nil {
		return nil, fileError(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("remote: read %s: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s has more than %d bytes", exportset.ErrCorrupt, p, limit)
	}
	return b, nil
}

func (d *Dir) Put(_ context.Context, key string, data []byte) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("remote: %w", err)
	}
	if err := atomicfile.WriteFile(p, data, 0o644); err != nil {
		return fmt.Errorf("remote: %w", err)
	}
	return nil
}

func (d *Dir) Stat(_ context.Context, key string) (exportset.ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return exportset.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return exportset.ObjectInfo{}, fileError(err)
	}
	return exportset.ObjectInfo{Key: key, Size: fi.Size(), Modified: fi.ModTime()}, nil
}

// List walks the directory of prefix. Temporary files (names starting with '.') are skipped.
func (d *Dir) List(ctx context.Context, prefix string, fn func(exportset.ObjectInfo) error) error {
	dir := d.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		p, err := d.path(prefix[:i])
		if err != nil {
			return err
		}
		dir = p
	}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // nothing there (yet), or removed meanwhile
			}
			return err
		}
		if strings.HasPrefix(e.Name(), ".") && p != dir {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if e.IsDir() {
			return ctx.Err()
		}
		rel, err := filepath.Rel(d.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		return fn(exportset.ObjectInfo{Key: key, Size: fi.Size(), Modified: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("remote: list %s under %s: %w", prefix, d.root, err)
	}
	return nil
}

func (d *Dir) Delete(_ context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remote: %w", err)
	}
	return nil
}

func fileError(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", exportset.ErrNotFound, err)
	}
	return fmt.Errorf("remote: %w", err)
}
