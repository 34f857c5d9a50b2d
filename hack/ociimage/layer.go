package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// entryKind is what a layer entry is.
type entryKind int

const (
	kindDir entryKind = iota
	kindFile
	kindSymlink
)

// entry is one file, directory or symbolic link of a layer, at an absolute path in the image.
type entry struct {
	kind entryKind
	mode fs.FileMode // permission bits (and setuid, setgid, sticky)
	// src is the file whose content the entry has (kindFile).
	src string
	// target is the link's target as written (kindSymlink).
	target string
}

// layer collects the entries of one layer. Entries are written sorted by path, so a
// directory comes before what it holds and the layer is the same for the same inputs.
type layer struct {
	entries map[string]entry
	// ldd lists an ELF executable's shared libraries and loader.
	ldd func(file string) ([]string, error)
}

func newLayer() *layer { return &layer{entries: map[string]entry{}, ldd: ldd} }

// maxLinks bounds the symbolic links followed while resolving one host path, as the kernel's
// ELOOP does.
const maxLinks = 40

// add puts an entry at p (absolute, clean), with its parent directories. An entry already at p
// must be the same.
func (l *layer) add(p string, e entry) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return fmt.Errorf("layer path %q: want an absolute, clean path below /", p)
	}
	for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
		old, ok := l.entries[dir]
		if ok && old.kind != kindDir {
			return fmt.Errorf("layer path %q: %s is not a directory in the image", p, dir)
		}
		if !ok {
			l.entries[dir] = entry{kind: kindDir, mode: 0o755}
		}
	}
	if old, ok := l.entries[p]; ok {
		if old == e || (old.kind == kindDir && e.kind == kindDir) {
			if e.kind == kindDir {
				l.entries[p] = e
			}
			return nil
		}
		return fmt.Errorf("layer path %q: added twice with different content", p)
	}
	l.entries[p] = e
	return nil
}

// addFile adds the regular file src at dst in the image, with mode.
func (l *layer) addFile(src, dst string, mode fs.FileMode) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("add %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("add %s: not a regular file", src)
	}
	return l.add(dst, entry{kind: kindFile, src: src, mode: mode})
}

// addHost adds a file of this machine at its own path in the image, as the kernel would reach
// it: every symbolic link on the way (a merged /usr's /lib64 -> usr/lib64 included) becomes the
// same link in the image. An executable brings what it needs to run: its shared libraries and
// loader (ldd), or its script's interpreter.
func (l *layer) addHost(p string) error {
	return l.addHostDepth(p, 0, map[string]bool{})
}

func (l *layer) addHostDepth(p string, links int, done map[string]bool) error {
	if !path.IsAbs(p) {
		return fmt.Errorf("host file %q: want an absolute path", p)
	}
	p = path.Clean(p)
	if done[p] {
		return nil
	}
	done[p] = true
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for i, part := range parts {
		next := path.Join(cur, part)
		fi, err := os.Lstat(next)
		if err != nil {
			return fmt.Errorf("host file %s: %w", p, err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if links++; links > maxLinks {
				return fmt.Errorf("host file %s: too many symbolic links", p)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return fmt.Errorf("host file %s: %w", p, err)
			}
			if err := l.add(next, entry{kind: kindSymlink, target: target, mode: 0o777}); err != nil {
				return err
			}
			resolved := target
			if !path.IsAbs(target) {
				resolved = path.Join(cur, target)
			}
			return l.addHostDepth(path.Join(append([]string{resolved}, parts[i+1:]...)...), links, done)
		case i < len(parts)-1:
			if !fi.IsDir() {
				return fmt.Errorf("host file %s: %s is not a directory", p, next)
			}
			if err := l.add(next, entry{kind: kindDir, mode: fi.Mode().Perm()}); err != nil {
				return err
			}
		case fi.IsDir():
			return fmt.Errorf("host file %s: is a directory (name the files it should hold)", p)
		case !fi.Mode().IsRegular():
			return fmt.Errorf("host file %s: not a regular file", p)
		default:
			mode := fi.Mode().Perm() | fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
			if err := l.add(next, entry{kind: kindFile, src: next, mode: mode}); err != nil {
				return err
			}
			if fi.Mode().Perm()&0o111 == 0 {
				return nil
			}
			deps, err := l.needs(next)
			if err != nil {
				return err
			}
			for _, d := range deps {
				if err := l.addHostDepth(d, 0, done); err != nil {
					return fmt.Errorf("%s needs %s: %w", p, d, err)
				}
			}
		}
		cur = next
	}
	return nil
}

// needs returns what the executable file needs to run: its script interpreter, or its shared
// libraries and loader.
func (l *layer) needs(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	head := make([]byte, 256)
	n, err := io.ReadFull(f, head)
	f.Close()
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	head = head[:n]
	if interp, ok := bytes.CutPrefix(head, []byte("#!")); ok {
		line, _, _ := bytes.Cut(interp, []byte("\n"))
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return nil, fmt.Errorf("%s: empty #! line", file)
		}
		return fields[:1], nil
	}
	if !bytes.HasPrefix(head, []byte("\x7fELF")) {
		return nil, nil
	}
	return l.ldd(file)
}

// ldd lists the shared libraries and the loader of an ELF executable, as ldd resolves them on
// this machine; none for a static one.
func ldd(file string) ([]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("ldd", file)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := stdout.String() + stderr.String()
	if strings.Contains(out, "not a dynamic executable") || strings.Contains(out, "statically linked") {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", file, err, strings.TrimSpace(out))
	}
	var libs []string
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, after, ok := strings.Cut(line, "=>"); ok {
			lib := strings.TrimSpace(after)
			if lib == "not found" || strings.HasPrefix(lib, "not found") {
				return nil, fmt.Errorf("ldd %s: %s", file, line)
			}
			if i := strings.Index(lib, " ("); i >= 0 {
				lib = lib[:i]
			}
			if path.IsAbs(lib) {
				libs = append(libs, lib)
			}
			continue
		}
		if f := strings.Fields(line); len(f) > 0 && path.IsAbs(f[0]) {
			libs = append(libs, f[0]) // the loader
		}
	}
	return libs, sc.Err()
}

// write writes the layer as an uncompressed tar, every entry owned by root with modification
// time mtime.
func (l *layer) write(w io.Writer, mtime time.Time) error {
	tw := tar.NewWriter(w)
	paths := make([]string, 0, len(l.entries))
	for p := range l.entries {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		e := l.entries[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: int64(tarMode(e.mode)), ModTime: mtime, Format: tar.FormatPAX}
		switch e.kind {
		case kindDir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		case kindSymlink:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.target
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		case kindFile:
			if err := writeFile(tw, h, e.src); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

func writeFile(tw *tar.Writer, h *tar.Header, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	h.Typeflag, h.Size = tar.TypeReg, fi.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if n, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	} else if n != fi.Size() {
		return fmt.Errorf("copy %s: it changed size while being read", src)
	}
	return nil
}

// tarMode is an fs.FileMode's permission and special bits in tar's (Unix) encoding.
func tarMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// parseMode reads an octal mode such as 1777 or 0755.
func parseMode(s string) (fs.FileMode, error) {
	u, err := strconv.ParseUint(s, 8, 32)
	if err != nil || u > 0o7777 {
		return 0, fmt.Errorf("mode %q: want octal, e.g. 0755 or 1777", s)
	}
	m := fs.FileMode(u & 0o777)
	if u&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if u&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if u&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m, nil
}
