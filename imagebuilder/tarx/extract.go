package tarx

import (
	"archive/tar"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
)

// kind is what an archive member became in the destination.
type kind uint8

const (
	kindFile kind = iota + 1 // a regular file, from a file or hard-link member
	kindSymlink
	kindDir
)

// entry records one path restored from the archive; the latest member for a path wins.
type entry struct {
	kind  kind
	index int    // the member's 1-based index
	name  string // the member's name as written in the archive
	// target is a symbolic link's target; empty for other kinds.
	target string
}

// extractor holds the state of one Extract call. It is used by one goroutine.
type extractor struct {
	ctx  context.Context
	opts Options
	in   *input
	root *os.Root
	// asRoot is whether the process runs as root, so that header owners are restored.
	asRoot bool

	// index is the 1-based index of the member being restored; 0 before the first.
	index int
	// hdrName is the name, as written in the archive, of the member being restored.
	hdrName string

	// entries maps the cleaned name of everything restored from the archive to what it is.
	entries map[string]entry
	// dirs holds the cleaned names of paths known to be directories (not symbolic links), made
	// by Extract or found in the destination. INVARIANT: a directory is never replaced, so an
	// entry stays true for the whole extraction.
	dirs map[string]bool
	// pending maps every directory to restore metadata for once all members are restored: the
	// header of its last directory member, or nil for a parent the archive did not list.
	pending map[string]*tar.Header

	// parentName and parent cache the open directory that metadata calls work in; parent is
	// nil when none is open.
	parentName string
	parent     *os.File

	// buf is the copy buffer; its size is a multiple of sparseBlock.
	buf   []byte
	stats Stats
}

// sparseBlock is the granularity at which a sparse member's zero runs become holes.
const sparseBlock = 4096

func newExtractor(ctx context.Context, r io.Reader, dest string, opts Options) (*extractor, error) {
	if o := opts.Owner; o != nil && (o.UID < 0 || o.GID < 0) {
		return nil, fmt.Errorf("tarx: invalid owner %d:%d", o.UID, o.GID)
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return nil, fmt.Errorf("tarx: opening destination: %w", err)
	}
	return &extractor{
		ctx:     ctx,
		opts:    opts,
		in:      newInput(ctx, r, opts),
		root:    root,
		asRoot:  os.Geteuid() == 0,
		entries: make(map[string]entry),
		dirs:    map[string]bool{".": true},
		pending: make(map[string]*tar.Header),
		buf:     make([]byte, 64*sparseBlock),
	}, nil
}

func (x *extractor) close() {
	if x.parent != nil {
		_ = x.parent.Close() // read-only directory handle: nothing to lose
	}
	_ = x.root.Close()
}

// run restores every member, then checks the rest of the input and every symbolic link, then
// restores directory metadata. It stops at the first error.
func (x *extractor) run() error {
	stream, closeStream, err := decompress(x.in)
	if err != nil {
		return err
	}
	defer closeStream()
	ts := &tarStream{r: stream}
	tr := tar.NewReader(ts)
	for {
		if err := x.ctx.Err(); err != nil {
			return fmt.Errorf("tarx: stopped before member %d: %w", x.index+1, err)
		}
		ts.mark()
		hdr, err := tr.Next()
		if err == io.EOF && !ts.ended() {
			return fmt.Errorf("%w: input ends after member %d without the end-of-archive marker (truncated?)",
				ErrInvalidArchive, x.index)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w (reading the header of member %d)", x.in.wrap(err), x.index+1)
		}
		x.index++
		x.hdrName = hdr.Name
		if max := x.opts.MaxMembers; max > 0 && x.opts.Restored.Members+int64(x.index) > max {
			return &MemberError{Index: x.index, Name: hdr.Name, Err: ErrTooManyMembers, Rule: fmt.Sprintf(
				"the archive has more members than the limit of %d (MaxMembers; %d restored before this archive)", max, x.opts.Restored.Members)}
		}
		x.stats.Members = int64(x.index)
		if err := x.member(tr, hdr); err != nil {
			return err
		}
	}
	if err := drain(x.in, ts); err != nil {
		return err
	}
	if err := x.recheckLinks(); err != nil {
		return err
	}
	if err := x.finishDirs(); err != nil {
		return err
	}
	x.in.finish()
	return nil
}

// refuse returns the error refusing the current member.
func (x *extractor) refuse(rule string) error {
	return &MemberError{Index: x.index, Name: x.hdrName, Rule: rule, Err: ErrUnsafeMember}
}

// fail returns the error for a failed operation on the current member.
func (x *extractor) fail(op string, err error) error {
	return &MemberError{Index: x.index, Name: x.hdrName, Rule: op, Err: err}
}

// member restores one member, whose header tr.Next just returned.
func (x *extractor) member(tr *tar.Reader, hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // PAX defaults for the members that follow; archive/tar already applies them
	}
	name, rule := cleanName(hdr.Name)
	if rule != "" {
		return x.refuse(rule)
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont:
		return x.file(tr, hdr, name)
	case tar.TypeDir:
		return x.dir(hdr, name)
	case tar.TypeSymlink:
		return x.symlink(hdr, name)
	case tar.TypeLink:
		return x.hardlink(hdr, name)
	case tar.TypeChar:
		return x.refuse("character device node")
	case tar.TypeBlock:
		return x.refuse("block device node")
	case tar.TypeFifo:
		return x.refuse("FIFO")
	default:
		return x.refuse("unsupported member type " + strconv.QuoteRune(rune(hdr.Typeflag)))
	}
}

// prepare makes the parents of name and clears the way for a member of the given kind: it
// returns whether a directory already exists at name (only possible for a directory member),
// after removing a non-directory that a non-directory member replaces.
func (x *extractor) prepare(name string, isDir bool) (bool, error) {
	if name == "." && !isDir {
		return false, x.refuse("non-directory member names the destination itself")
	}
	if err := x.parents(name); err != nil {
		return false, err
	}
	fi, err := x.root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, x.fail("inspecting the existing path", err)
	case fi.IsDir() && !isDir:
		return false, x.refuse("would replace a directory")
	case fi.IsDir():
		return true, nil
	case isDir:
		return false, x.refuse("would replace a non-directory with a directory")
	}
	if err := x.root.Remove(name); err != nil {
		return false, x.fail("removing the earlier member", err)
	}
	delete(x.entries, name)
	return false, nil
}

// parents makes sure every parent of name is a directory, creating the missing ones, and
// refuses a parent that is a symbolic link or a non-directory.
func (x *extractor) parents(name string) error {
	dir := path.Dir(name)
	if x.dirs[dir] {
		return nil
	}
	p := ""
	for _, c := range split(dir) {
		p = path.Join(p, c)
		if x.dirs[p] {
			continue
		}
		fi, err := x.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := x.root.Mkdir(p, 0o700); err != nil {
				return x.fail("creating parent directory "+strconv.Quote(p), err)
			}
			x.pending[p] = nil
		case err != nil:
			return x.fail("inspecting parent directory "+strconv.Quote(p), err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return x.refuse("path runs through symbolic link " + strconv.Quote(p))
		case !fi.IsDir():
			return x.refuse("path runs through non-directory " + strconv.Quote(p))
		}
		x.dirs[p] = true
	}
	return nil
}

func (x *extractor) dir(hdr *tar.Header, name string) error {
	exists, err := x.prepare(name, true)
	if err != nil {
		return err
	}
	if !exists {
		if err := x.root.Mkdir(name, 0o700); err != nil {
			return x.fail("creating directory", err)
		}
	}
	x.dirs[name] = true
	x.pending[name] = hdr
	x.entries[name] = entry{kind: kindDir, index: x.index, name: hdr.Name}
	x.stats.Dirs++
	return nil
}

func (x *extractor) file(tr *tar.Reader, hdr *tar.Header, name string) error {
	if max := x.opts.MaxBytes; max > 0 && hdr.Size > max-x.opts.Restored.Bytes-x.stats.Bytes {
		return &MemberError{Index: x.index, Name: hdr.Name, Err: ErrTooLarge, Rule: fmt.Sprintf(
			"its %d bytes would take the restored files past the limit of %d bytes (MaxBytes; %d already restored)",
			hdr.Size, max, x.opts.Restored.Bytes+x.stats.Bytes)}
	}
	if _, err := x.prepare(name, false); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return x.fail("creating file", err)
	}
	x.entries[name] = entry{kind: kindFile, index: x.index, name: hdr.Name}
	n, err := x.copy(f, tr, hdr.Size, isSparse(hdr))
	x.stats.Bytes += n
	if cerr := f.Close(); err == nil && cerr != nil {
		err = x.fail("closing file", cerr)
	}
	if err != nil {
		return err
	}
	if err := x.meta(name, hdr, kindFile); err != nil {
		return err
	}
	x.stats.Files++
	return nil
}

// isSparse reports whether hdr is a GNU sparse file (old GNU format, or PAX 0.0, 0.1 or 1.0),
// whose holes Extract keeps as holes.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// copy writes the contents of the current member to f and returns how many bytes of the
// member it wrote (holes included). For a sparse member, runs of zero sparseBlock-aligned blocks
// are skipped and become holes. It checks ctx between chunks: a sparse member's holes are read
// from memory, not from the input.
func (x *extractor) copy(f *os.File, tr *tar.Reader, size int64, sparse bool) (int64, error) {
	var off int64
	for {
		if err := x.ctx.Err(); err != nil {
			return off, x.fail("copying contents", err)
		}
		n, rerr := fill(tr, x.buf)
		if n > 0 {
			if err := writeChunk(f, x.buf[:n], off, sparse); err != nil {
				return off, x.fail("writing contents", err)
			}
			off += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if err := x.ctx.Err(); err != nil {
				return off, x.fail("copying contents", err)
			}
			return off, x.fail("reading contents", x.in.wrap(rerr))
		}
	}
	if sparse && off > 0 {
		// A trailing hole was skipped, not written: set the size.
		if err := f.Truncate(size); err != nil {
			return off, x.fail("writing contents", err)
		}
	}
	return off, nil
}

// fill reads from r until buf is full or r fails; io.EOF only comes with a short buffer.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// writeChunk writes b at off in f; when sparse, it skips the sparseBlock-sized blocks of b
// that are all zero (off and len(b), but for the last chunk, are multiples of sparseBlock).
func writeChunk(f *os.File, b []byte, off int64, sparse bool) error {
	if !sparse {
		_, err := f.WriteAt(b, off)
		return err
	}
	start := -1 // start of the run of non-zero blocks being gathered; -1 when none
	for i := 0; i < len(b); i += sparseBlock {
		blk := b[i:min(i+sparseBlock, len(b))]
		switch zero := isZero(blk); {
		case !zero && start < 0:
			start = i
		case zero && start >= 0:
			if _, err := f.WriteAt(b[start:i], off+int64(start)); err != nil {
				return err
			}
			start = -1
		}
	}
	if start >= 0 {
		_, err := f.WriteAt(b[start:], off+int64(start))
		return err
	}
	return nil
}

func (x *extractor) symlink(hdr *tar.Header, name string) error {
	if _, err := x.prepare(name, false); err != nil {
		return err
	}
	rule, err := x.linkRule(name, hdr.Linkname)
	if err != nil {
		return x.fail("resolving symbolic link target", err)
	}
	if rule != "" {
		return x.refuse(rule)
	}
	if err := x.root.Symlink(hdr.Linkname, name); err != nil {
		return x.fail("creating symbolic link", err)
	}
	x.entries[name] = entry{kind: kindSymlink, index: x.index, name: hdr.Name, target: hdr.Linkname}
	if err := x.meta(name, hdr, kindSymlink); err != nil {
		return err
	}
	x.stats.Links++
	return nil
}

func (x *extractor) hardlink(hdr *tar.Header, name string) error {
	target, rule := cleanName(hdr.Linkname)
	if rule != "" {
		return x.refuse("hard link target " + strconv.Quote(hdr.Linkname) + ": " + rule)
	}
	e, ok := x.entries[target]
	switch {
	case !ok:
		return x.refuse("hard link target " + strconv.Quote(hdr.Linkname) +
			" is not a member restored earlier from this archive")
	case e.kind != kindFile:
		return x.refuse("hard link target " + strconv.Quote(hdr.Linkname) + " is not a regular file")
	case target == name:
		return x.refuse("hard link to itself")
	}
	if _, err := x.prepare(name, false); err != nil {
		return err
	}
	if err := x.root.Link(target, name); err != nil {
		return x.fail("creating hard link", err)
	}
	// The new name shares the target's inode, mode, owner and times.
	x.entries[name] = entry{kind: kindFile, index: x.index, name: hdr.Name}
	x.stats.Links++
	return nil
}

// recheckLinks checks every symbolic link restored from the archive again, in archive order,
// now that all members are restored: a later member may have changed where a link leads (by
// making a link out of a name that an earlier link's target runs through).
func (x *extractor) recheckLinks() error {
	var links []string
	for name, e := range x.entries {
		if e.kind == kindSymlink {
			links = append(links, name)
		}
	}
	slices.SortFunc(links, func(a, b string) int { return cmp.Compare(x.entries[a].index, x.entries[b].index) })
	for _, name := range links {
		e := x.entries[name]
		x.index, x.hdrName = e.index, e.name
		rule, err := x.linkRule(name, e.target)
		if err != nil {
			return x.fail("resolving symbolic link target", err)
		}
		if rule != "" {
			return x.refuse(rule + " once the archive is restored")
		}
	}
	return nil
}

// finishDirs restores the owner, mode and times of every directory, deepest first, so that a
// read-only parent does not stand in the way.
func (x *extractor) finishDirs() error {
	if _, ok := x.pending["."]; !ok {
		x.pending["."] = nil // Options.Owner owns the destination too
	}
	names := make([]string, 0, len(x.pending))
	for name := range x.pending {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(depth(b), depth(a)), strings.Compare(a, b))
	})
	for _, name := range names {
		hdr := x.pending[name]
		if e, ok := x.entries[name]; ok {
			x.index, x.hdrName = e.index, e.name
		} else {
			x.index, x.hdrName = 0, name
		}
		if err := x.meta(name, hdr, kindDir); err != nil {
			return err
		}
	}
	return nil
}

// depth is the number of components of a cleaned name: 0 for ".".
func depth(name string) int { return len(split(name)) }
