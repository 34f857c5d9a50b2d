// Command rootfsimage wraps tar archives of root file systems (the e2e harness's debootstrap
// trees) as the layers of an OCI image, written as an OCI image layout in a tar archive that
// `ctr -n k8s.io images import` reads (its index names the image in io.containerd.image.name).
// hack/ociimage builds images from single files of this machine; this one takes whole trees.
//
//	go run ./hack/e2e/rootfsimage -o postgres.tar -name localhost/dataimage-e2e/postgres:15 \
//	    -layer rootfs.tar -env PATH=/usr/lib/postgresql/15/bin:/usr/bin:/bin -cmd /bin/bash
package main

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "rootfsimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var out, ref, user, workdir string
	var layers, entrypoint, cmd, env list
	fs := flag.NewFlagSet("rootfsimage", flag.ContinueOnError)
	fs.StringVar(&out, "o", "", "the archive to write (required)")
	fs.StringVar(&ref, "name", "", "the image's full reference with a tag (required)")
	fs.Var(&layers, "layer", "an uncompressed tar archive of a file tree, one layer, bottom first (repeatable, required)")
	fs.Var(&entrypoint, "entrypoint", "one element of the entrypoint (repeatable, in order)")
	fs.Var(&cmd, "cmd", "one element of the default arguments (repeatable, in order)")
	fs.Var(&env, "env", "KEY=VALUE in the environment (repeatable)")
	fs.StringVar(&user, "user", "", "the user the image runs as")
	fs.StringVar(&workdir, "workdir", "", "the working directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case out == "" || ref == "":
		return errors.New("-o and -name are required")
	case len(layers) == 0:
		return errors.New("at least one -layer is required")
	}
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image name %q: want a full reference with a tag: %w", ref, err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	created := time.Unix(0, 0).UTC()
	for _, path := range layers {
		l, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer),
			tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			return fmt.Errorf("layer %s: %w", path, err)
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{
			Created: v1.Time{Time: created}, CreatedBy: "hack/e2e/rootfsimage", Comment: filepath.Base(path),
		}}); err != nil {
			return fmt.Errorf("layer %s: %w", path, err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Created = v1.Time{Time: created}
	cfg.Config.Entrypoint, cfg.Config.Cmd, cfg.Config.Env = entrypoint, cmd, env
	cfg.Config.User, cfg.Config.WorkingDir = user, workdir
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	return writeArchive(out, img, ref, tag)
}

// writeArchive writes img as an OCI image layout in a tar archive at path, replaced atomically.
func writeArchive(path string, img v1.Image, ref string, tag name.Tag) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".rootfsimage-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": tag.TagStr(),
	})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	tmp := filepath.Join(dir, "archive.tar")
	if err := tarDir(filepath.Join(dir, "layout"), tmp); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// tarDir writes the regular files and directories under root as a tar archive at out.
func tarDir(root, out string) (err error) {
	var paths []string
	if err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root {
			paths = append(paths, p)
		}
		return err
	}); err != nil {
		return err
	}
	slices.Sort(paths)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	tw := tar.NewWriter(f)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: time.Unix(0, 0), Format: tar.FormatPAX, Mode: 0o644, Typeflag: tar.TypeReg}
		if fi.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			continue
		}
		h.Size = fi.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, src)
		src.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return tw.Close()
}
