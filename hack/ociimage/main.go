// Command ociimage builds an OCI image archive without a container engine: an OCI image
// layout (oci-layout, index.json, blobs) in a tar file, which `ctr -n k8s.io images import`,
// `podman load` and `skopeo copy oci-archive:...` read.
//
//	go run ./hack/ociimage -o bin/images/dataimage-csi.tar \
//	    -name docker.io/dataimage/dataimage-csi:0.1.0 \
//	    -host /usr/sbin/mkfs.ext4 -host /usr/bin/mount ... \
//	    -file bin/static/dataimage-csi=/usr/local/bin/dataimage-csi \
//	    -entrypoint /usr/local/bin/dataimage-csi
//
// The image has two layers: the files of this machine named by -host (each at its own path,
// with the symbolic links on the way, its shared libraries and loader as ldd resolves them, or
// its script's interpreter), the -dir directories and the -symlink links; then the -file files (static binaries).
// Every entry is owned by root; modification and creation times are SOURCE_DATE_EPOCH (0 when
// unset), so the same inputs give the same image.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

// Config is what the flags say.
type Config struct {
	Output     string
	Spec       Spec
	HostFiles  []string
	Files      []string // SRC=DST[:MODE]
	Dirs       []string // DST[:MODE]
	Symlinks   []string // DST=TARGET
	LabelPairs []string
}

func parse(args []string, stderr io.Writer) (Config, error) {
	var c Config
	var entrypoint, cmd, env, hosts, files, dirs, symlinks, labels list
	fs := flag.NewFlagSet("ociimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Output, "o", "", "the archive to write (required)")
	fs.StringVar(&c.Spec.Name, "name", "", "the image's full reference with a tag, e.g. docker.io/dataimage/dataimage-csi:0.1.0 (required)")
	fs.Var(&hosts, "host", "a file of this machine to copy at its own path, with what it needs to run (repeatable)")
	fs.Var(&files, "file", "SRC=DST[:MODE]: the file SRC at DST in the image, mode 0755 by default (repeatable)")
	fs.Var(&dirs, "dir", "DST[:MODE]: an empty directory, mode 0755 by default, e.g. /tmp:1777 (repeatable)")
	fs.Var(&symlinks, "symlink", "DST=TARGET: a symbolic link, e.g. /etc/mtab=../proc/self/mounts (repeatable)")
	fs.Var(&entrypoint, "entrypoint", "one element of the entrypoint (repeatable, in order)")
	fs.Var(&cmd, "cmd", "one element of the default arguments (repeatable, in order)")
	fs.Var(&env, "env", "KEY=VALUE in the environment (repeatable)")
	fs.Var(&labels, "label", "KEY=VALUE image label (repeatable)")
	fs.StringVar(&c.Spec.WorkingDir, "workdir", "", "the working directory")
	fs.StringVar(&c.Spec.User, "user", "", "the user the image runs as, e.g. 65532:65532")
	fs.StringVar(&c.Spec.OS, "os", runtime.GOOS, "the image's OS")
	fs.StringVar(&c.Spec.Architecture, "arch", runtime.GOARCH, "the image's architecture (the -host files are this machine's)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	switch {
	case c.Output == "":
		return c, errors.New("-o is required")
	case c.Spec.Name == "":
		return c, errors.New("-name is required")
	case len(entrypoint) == 0 && len(cmd) == 0:
		return c, errors.New("-entrypoint or -cmd is required")
	}
	c.Spec.Entrypoint, c.Spec.Cmd, c.Spec.Env = entrypoint, cmd, env
	c.HostFiles, c.Files, c.Dirs, c.Symlinks, c.LabelPairs = hosts, files, dirs, symlinks, labels
	created, err := sourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		return c, err
	}
	c.Spec.Created = created
	return c, nil
}

func sourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// run builds the image c describes and writes its archive.
func run(c Config) error {
	base, app := newLayer(), newLayer()
	for _, h := range c.HostFiles {
		if err := base.addHost(h); err != nil {
			return err
		}
	}
	for _, d := range c.Dirs {
		p, m, err := pathMode(d)
		if err != nil {
			return fmt.Errorf("-dir %s: %w", d, err)
		}
		if err := base.add(p, entry{kind: kindDir, mode: m}); err != nil {
			return fmt.Errorf("-dir %s: %w", d, err)
		}
	}
	for _, l := range c.Symlinks {
		dst, target, ok := strings.Cut(l, "=")
		if !ok || !strings.HasPrefix(dst, "/") || target == "" {
			return fmt.Errorf("-symlink %s: want DST=TARGET with an absolute DST", l)
		}
		if err := base.add(dst, entry{kind: kindSymlink, target: target, mode: 0o777}); err != nil {
			return fmt.Errorf("-symlink %s: %w", l, err)
		}
	}
	for _, f := range c.Files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || src == "" {
			return fmt.Errorf("-file %s: want SRC=DST[:MODE]", f)
		}
		p, m, err := pathMode(dst)
		if err != nil {
			return fmt.Errorf("-file %s: %w", f, err)
		}
		if err := app.addFile(src, p, m); err != nil {
			return fmt.Errorf("-file %s: %w", f, err)
		}
	}
	labels, err := splitKV(c.LabelPairs)
	if err != nil {
		return fmt.Errorf("-label %w", err)
	}
	c.Spec.Labels = labels
	c.Spec.Layers = []*layer{base, app}
	img, err := Build(c.Spec)
	if err != nil {
		return fmt.Errorf("image %s: %w", c.Spec.Name, err)
	}
	return WriteArchive(c.Output, img, c.Spec.Name)
}

// pathMode splits "PATH[:MODE]".
func pathMode(s string) (string, os.FileMode, error) {
	p, ms, hasMode := strings.Cut(s, ":")
	m := os.FileMode(0o755)
	if hasMode {
		var err error
		if m, err = parseMode(ms); err != nil {
			return "", 0, err
		}
	}
	if !strings.HasPrefix(p, "/") {
		return "", 0, fmt.Errorf("%q: want an absolute path in the image", p)
	}
	return p, m, nil
}

func main() {
	c, err := parse(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ociimage: %v\n", err)
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "ociimage: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("ociimage: wrote %s (%s)\n", c.Output, c.Spec.Name)
}
