package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// staticBinary builds a tiny static Go program that prints its name, as the images' binaries
// are built (CGO_ENABLED=0).
func staticBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "hello.go")
	if err := os.WriteFile(src, []byte("package main\n\nimport \"os\"\n\nfunc main() { os.Stdout.WriteString(\"hello from \" + os.Args[0] + \"\\n\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// untar extracts a tar archive into dir and adds its headers to headers (when not nil), by
// path.
func untar(t *testing.T, r io.Reader, dir string, headers map[string]*tar.Header) {
	t.Helper()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if headers != nil {
			headers[strings.TrimSuffix(h.Name, "/")] = h
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, os.FileMode(h.Mode)&os.ModePerm); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&os.ModePerm)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		default:
			t.Fatalf("%s: unexpected tar type %c", h.Name, h.Typeflag)
		}
	}
}

func build(t *testing.T, args ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.tar")
	c, err := parse(append([]string{"-o", out}, args...), io.Discard)
	if err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	if err := run(c); err != nil {
		t.Fatalf("run: %v", err)
	}
	return out
}

// readImage extracts the archive, reads it back with go-containerregistry's layout package and
// returns the root file system its layers make (extracted in order) and the layout's directory.
func readImage(t *testing.T, archive, wantName, wantTag string) (rootfs string, entrypoint []string, headers map[string]*tar.Header) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	untar(t, f, dir, nil)
	f.Close()
	if b, err := os.ReadFile(filepath.Join(dir, "oci-layout")); err != nil || !strings.Contains(string(b), `"imageLayoutVersion"`) {
		t.Fatalf("oci-layout: %q, %v", b, err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index holds %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if got := desc.Annotations[annotationContainerdName]; got != wantName {
		t.Errorf("%s = %q, want %q", annotationContainerdName, got, wantName)
	}
	if got := desc.Annotations[annotationRefName]; got != wantTag {
		t.Errorf("%s = %q, want %q", annotationRefName, got, wantTag)
	}
	if desc.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest media type %q", desc.MediaType)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS == "" || cfg.Architecture == "" {
		t.Errorf("config platform %q/%q", cfg.OS, cfg.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rootfs = t.TempDir()
	headers = map[string]*tar.Header{}
	for _, l := range layers {
		mt, err := l.MediaType()
		if err != nil || mt != "application/vnd.oci.image.layer.v1.tar+gzip" {
			t.Errorf("layer media type %q, %v", mt, err)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		untar(t, rc, rootfs, headers)
		rc.Close()
	}
	return rootfs, cfg.Config.Entrypoint, headers
}

// TestArchive: the archive is an OCI image layout that go-containerregistry reads back, named
// for containerd, holding the static binary byte for byte, which runs.
func TestArchive(t *testing.T) {
	bin := staticBinary(t)
	archive := build(t, "-name", "docker.io/dataimage/hello:1.2.3", "-file", bin+"=/usr/local/bin/hello",
		"-dir", "/tmp:1777", "-symlink", "/etc/mtab=../proc/self/mounts", "-entrypoint", "/usr/local/bin/hello", "-env", "PATH=/usr/local/bin", "-user", "65532:65532")
	rootfs, entrypoint, headers := readImage(t, archive, "docker.io/dataimage/hello:1.2.3", "1.2.3")
	if strings.Join(entrypoint, " ") != "/usr/local/bin/hello" {
		t.Errorf("entrypoint %q", entrypoint)
	}
	want, _ := os.ReadFile(bin)
	got, err := os.ReadFile(filepath.Join(rootfs, "usr/local/bin/hello"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the binary in the image differs from the one built (%d vs %d bytes), %v", len(got), len(want), err)
	}
	out, err := exec.Command(filepath.Join(rootfs, "usr/local/bin/hello")).Output()
	if err != nil || !strings.HasPrefix(string(out), "hello from ") {
		t.Fatalf("the binary from the image: %q, %v", out, err)
	}
	if h := headers["tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o1777 {
		t.Fatalf("/tmp: %+v, want a directory with mode 1777", h)
	}
	for name, h := range headers {
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: owner %d:%d, time %v; want root and the epoch", name, h.Uid, h.Gid, h.ModTime)
		}
	}
	if target, err := os.Readlink(filepath.Join(rootfs, "etc/mtab")); err != nil || target != "../proc/self/mounts" {
		t.Fatalf("/etc/mtab: %q, %v", target, err)
	}
}

// TestReproducible: the same inputs give the same archive, byte for byte.
func TestReproducible(t *testing.T) {
	bin := staticBinary(t)
	sum := func() [32]byte {
		b, err := os.ReadFile(build(t, "-name", "docker.io/x/y:1", "-file", bin+"=/bin/y", "-entrypoint", "/bin/y"))
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	if a, b := sum(), sum(); a != b {
		t.Fatal("two builds of the same image differ")
	}
}

// TestHostFilesRun: a dynamic executable of this machine, copied with -host, runs in a chroot
// of the image's root file system: its libraries, its loader and the links on the way (merged
// /usr) came along. A script brings its interpreter.
func TestHostFilesRun(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chroot needs root")
	}
	cp, err := exec.LookPath("cp")
	if err != nil {
		t.Skip("no cp on this machine")
	}
	cp, _ = filepath.Abs(cp)
	script := filepath.Join(t.TempDir(), "greet")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho greetings\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A script at a temporary path is in the image at that path.
	archive := build(t, "-name", "docker.io/x/host:1", "-host", cp, "-host", script, "-entrypoint", cp)
	rootfs, _, _ := readImage(t, archive, "docker.io/x/host:1", "1")
	// The temporary directories on the way are 0700; chroot runs as root, which needs no x bit.
	out, err := exec.Command("chroot", rootfs, cp, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "cp") {
		t.Fatalf("chroot %s cp --version: %v\n%s", rootfs, err, out)
	}
	out, err = exec.Command("chroot", rootfs, script).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "greetings" {
		t.Fatalf("chroot %s %s: %v\n%s", rootfs, script, err, out)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-name", "docker.io/x/y:1", "-entrypoint", "/y"}, "-o is required"},
		{[]string{"-o", "x.tar", "-entrypoint", "/y"}, "-name is required"},
		{[]string{"-o", "x.tar", "-name", "docker.io/x/y:1"}, "-entrypoint or -cmd is required"},
		{[]string{"-o", "x.tar", "-name", "docker.io/x/y:1", "-entrypoint", "/y", "extra"}, "unexpected arguments: extra"},
	} {
		_, err := parse(tc.args, io.Discard)
		if err == nil || err.Error() != tc.want {
			t.Errorf("parse %q: %v, want %q", tc.args, err, tc.want)
		}
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := parse([]string{"-o", "x", "-name", "n", "-cmd", "c"}, io.Discard); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("a bad SOURCE_DATE_EPOCH: %v", err)
	}
}

func TestRunErrors(t *testing.T) {
	bin := staticBinary(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-name", "dataimage-csi", "-file", bin + "=/y", "-entrypoint", "/y"}, "want a full reference with a tag"},
		{[]string{"-name", "docker.io/x/y:1", "-file", bin + "=y", "-entrypoint", "/y"}, "want an absolute path in the image"},
		{[]string{"-name", "docker.io/x/y:1", "-file", bin + "=/y:999", "-entrypoint", "/y"}, "want octal"},
		{[]string{"-name", "docker.io/x/y:1", "-file", "/nonexistent=/y", "-entrypoint", "/y"}, "/nonexistent"},
		{[]string{"-name", "docker.io/x/y:1", "-host", "/nonexistent/tool", "-entrypoint", "/y"}, "host file /nonexistent/tool"},
		{[]string{"-name", "docker.io/x/y:1", "-host", "/etc", "-entrypoint", "/y"}, "is a directory"},
		{[]string{"-name", "docker.io/x/y:1", "-file", bin + "=/y", "-file", bin + "=/y/z", "-entrypoint", "/y"}, "/y is not a directory"},
		{[]string{"-name", "docker.io/x/y:1", "-symlink", "etc/mtab", "-entrypoint", "/y"}, "want DST=TARGET"},
	} {
		out := filepath.Join(t.TempDir(), "image.tar")
		c, err := parse(append([]string{"-o", out}, tc.args...), io.Discard)
		if err == nil {
			err = run(c)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.args, err, tc.want)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("%q: the archive was written despite the error", tc.args)
		}
	}
}

func TestSourceDateEpoch(t *testing.T) {
	got, err := sourceDateEpoch("1700000000")
	if err != nil || !got.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("sourceDateEpoch: %v, %v", got, err)
	}
}
