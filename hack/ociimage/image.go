package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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

// Annotations of the image's entry in index.json: containerd's import names the image after
// the first, other tools (podman, skopeo) after the second, the tag.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// Spec is an image to build.
type Spec struct {
	// Name is the image's full reference with a tag, e.g. docker.io/dataimage/dataimage-csi:0.1.0.
	Name string
	// Layers, bottom first; empty layers are left out.
	Layers []*layer
	// Entrypoint, Cmd, Env, WorkingDir, User and Labels are the image's run configuration.
	Entrypoint, Cmd, Env []string
	WorkingDir, User     string
	Labels               map[string]string
	// OS and Architecture are the platform, e.g. linux and amd64.
	OS, Architecture string
	// Created is the image's creation time, and the modification time of every layer entry.
	Created time.Time
}

// Build builds the image.
func Build(s Spec) (v1.Image, error) {
	img := empty.Image
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i, l := range s.Layers {
		if len(l.entries) == 0 {
			continue
		}
		var buf bytes.Buffer
		if err := l.write(&buf, s.Created); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		data := buf.Bytes()
		tl, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: tl, History: v1.History{
			Created: v1.Time{Time: s.Created}, CreatedBy: "hack/ociimage", Comment: fmt.Sprintf("layer %d", i),
		}}); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = s.OS, s.Architecture
	cfg.Created = v1.Time{Time: s.Created}
	cfg.Config.Entrypoint = s.Entrypoint
	cfg.Config.Cmd = s.Cmd
	cfg.Config.Env = s.Env
	cfg.Config.WorkingDir = s.WorkingDir
	cfg.Config.User = s.User
	cfg.Config.Labels = s.Labels
	return mutate.ConfigFile(img, cfg)
}

// WriteArchive writes img as an OCI image layout in a tar archive at path (replacing it
// atomically), its index naming it ref.
func WriteArchive(path string, img v1.Image, ref string) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image name %q: want a full reference with a tag: %w", ref, err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".ociimage-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		annotationContainerdName: ref,
		annotationRefName:        tag.TagStr(),
	})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	tmp := filepath.Join(dir, "archive.tar")
	if err := tarDir(filepath.Join(dir, "layout"), tmp); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// tarDir writes the tree under root as a tar archive at out, sorted, owned by root.
func tarDir(root, out string) error {
	var paths []string
	if err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	}); err != nil {
		return err
	}
	slices.Sort(paths)
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	werr := func() error {
		for _, p := range paths {
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
			if fi.IsDir() {
				h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
				if err := tw.WriteHeader(h); err != nil {
					return err
				}
				continue
			}
			h.Typeflag, h.Mode = tar.TypeReg, 0o644
			if err := writeFile(tw, h, p); err != nil {
				return err
			}
		}
		return tw.Close()
	}()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	return werr
}

// splitKV splits "k=v" pairs into a map, for labels.
func splitKV(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want KEY=VALUE", kv)
		}
		m[k] = v
	}
	return m, nil
}
