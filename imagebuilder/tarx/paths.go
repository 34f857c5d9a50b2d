package tarx

import (
	"errors"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// maxLinkHops bounds the symbolic links followed while resolving one link target, like the
// kernel's limit of 40.
const maxLinkHops = 40

// cleanName returns the cleaned, slash-separated, relative form of a member name or hard-link
// target ("." for the destination itself), or the rule it breaks.
func cleanName(name string) (string, string) {
	switch {
	case name == "":
		return "", "empty name"
	case strings.IndexByte(name, 0) >= 0:
		return "", "name contains a NUL byte"
	case strings.HasPrefix(name, "/"):
		return "", "absolute path"
	}
	clean := path.Clean(name)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", "path escapes the destination"
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", `path contains a ".." component`
		}
	}
	return clean, ""
}

// split returns the components of a cleaned relative name; none for ".".
func split(name string) []string {
	if name == "." || name == "" {
		return nil
	}
	return strings.Split(name, "/")
}

// linkRule returns the rule a symbolic link at name (cleaned) with the given target breaks, or
// "" when the target stays inside the destination.
//
// The target is resolved as the kernel would, from the link's directory: "." is skipped, ".."
// goes up (and leaving the destination breaks the rule), a component that is a symbolic link in
// the destination is replaced by its target (an absolute one breaks the rule), and a component
// that does not exist or is not a directory is taken as a plain name. A chain of more than
// maxLinkHops links breaks the rule too. The result only holds for the destination as it is; the
// caller checks every link again once all members are restored.
func (x *extractor) linkRule(name, target string) (string, error) {
	if target == "" {
		return "symbolic link with an empty target", nil
	}
	if strings.IndexByte(target, 0) >= 0 {
		return "symbolic link target contains a NUL byte", nil
	}
	if strings.HasPrefix(target, "/") {
		return "symbolic link target " + strconv.Quote(target) + " is absolute", nil
	}
	// INVARIANT: stack holds no symbolic link (each component was lstat-ed, or does not exist).
	stack := split(path.Dir(name))
	pending := strings.Split(target, "/")
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return "symbolic link target " + strconv.Quote(target) + " leaves the destination", nil
			}
			stack = stack[:len(stack)-1]
			continue
		}
		p := path.Join(append(stack[:len(stack):len(stack)], c)...)
		fi, err := x.root.Lstat(p)
		if err != nil {
			if !isNotFound(err) {
				return "", err
			}
			stack = append(stack, c)
			continue
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			stack = append(stack, c)
			continue
		}
		hops++
		if hops > maxLinkHops {
			return "symbolic link target " + strconv.Quote(target) + " runs through more than 40 links", nil
		}
		next, err := x.root.Readlink(p)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(next, "/") {
			return "symbolic link target " + strconv.Quote(target) + " leads to absolute link " + strconv.Quote(p), nil
		}
		pending = append(strings.Split(next, "/"), pending...)
	}
	return "", nil
}

// isNotFound reports whether err says a path does not exist or runs through a non-directory.
func isNotFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || isNotDir(err)
}
