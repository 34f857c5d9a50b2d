// Package atomicfile replaces files atomically, the project's rule for every state file
// (catalogs, generated manifests, reports, a server's configuration): a reader, a crash or a
// power loss finds the old content or the new one, never a mix, a truncated file or no file.
// It owns the steps and their order; it knows nothing of what the files hold.
//
// Commit order (File.Commit; each step waits for the one before):
//
//  1. Create makes a temporary file beside the target, ".<name>.tmp-<random>", with
//     O_CREAT|O_EXCL|O_CLOEXEC (no other process inherits it, no two writers share it); the
//     data is written to it;
//  2. its mode is set to perm with fchmod (exactly perm: the umask does not apply), and its
//     owner with fchown when asked;
//  3. fsync of the temporary file: its data and inode are on disk;
//  4. rename over the target: atomic on a POSIX file system;
//  5. fsync of the directory: the rename is on disk.
//
// When a step before 4 fails, the target is untouched and the temporary file removed. When 5
// fails, the new content is in place but may not survive a power loss, and Commit says so. A
// process killed before step 4 leaves its temporary file behind (never a changed target).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// File is a replacement of a file being written. It is not safe for concurrent use.
type File struct {
	path string      // the target
	tmp  string      // the temporary file
	perm fs.FileMode // the mode the target gets
	f    *os.File    // the temporary file, open for writing; nil once closed
	err  error       // the first failure of Write or Chown: Commit reports it
	done bool        // Commit or Abort has run
}

// WriteFile replaces the file at path with data, mode perm (exactly). See the package comment
// for what is guaranteed.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Commit()
}

// Create starts replacing the file at path: it makes the temporary file that Write fills and
// Commit renames over path, with mode perm. The caller must call Commit or Abort (deferring
// Abort is safe: it does nothing after Commit).
func Create(path string, perm fs.FileMode) (*File, error) {
	dir, name := filepath.Split(path)
	if name == "" {
		return nil, fmt.Errorf("replace %s: not a file name", path)
	}
	for tries := 0; ; tries++ {
		tmp := filepath.Join(dir, "."+name+".tmp-"+strconv.FormatUint(rand.Uint64(), 36))
		if err := failpoint(stepCreate); err != nil {
			return nil, fmt.Errorf("replace %s: create a temporary file: %w", path, err)
		}
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, fs.ErrExist) && tries < 100 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("replace %s: create a temporary file: %w", path, err)
		}
		return &File{path: path, tmp: tmp, perm: perm, f: f}, nil
	}
}

// Name returns the path of the file being replaced.
func (f *File) Name() string { return f.path }

// Write writes p to the temporary file. After an error, Commit fails with it.
func (f *File) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.done {
		return 0, fmt.Errorf("replace %s: %w", f.path, os.ErrClosed)
	}
	err := failpoint(stepWrite)
	n := 0
	if err == nil {
		n, err = f.f.Write(p)
	}
	if err != nil {
		f.err = fmt.Errorf("replace %s: write %s: %w", f.path, f.tmp, err)
		return n, f.err
	}
	return n, nil
}

// Chown gives the new file to uid and gid (root only, as fchown(2)). After an error, Commit
// fails with it.
func (f *File) Chown(uid, gid int) error {
	if f.err != nil {
		return f.err
	}
	if f.done {
		return fmt.Errorf("replace %s: %w", f.path, os.ErrClosed)
	}
	err := failpoint(stepChown)
	if err == nil {
		err = f.f.Chown(uid, gid)
	}
	if err != nil {
		f.err = fmt.Errorf("replace %s: chown %s: %w", f.path, f.tmp, err)
	}
	return f.err
}

// Commit puts the written data in place of the target, in the package's commit order, and
// reports the first failure.
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("replace %s: %w", f.path, os.ErrClosed)
	}
	defer f.Abort()
	if f.err != nil {
		return f.err
	}
	fail := func(what string, err error) error {
		return fmt.Errorf("replace %s: %s %s: %w", f.path, what, f.tmp, err)
	}
	if err := step(stepChmod, func() error { return f.f.Chmod(f.perm) }); err != nil {
		return fail("chmod", err)
	}
	if err := step(stepSync, f.f.Sync); err != nil {
		return fail("fsync", err)
	}
	err := step(stepClose, f.f.Close)
	f.f = nil
	if err != nil {
		return fail("close", err)
	}
	if err := step(stepRename, func() error { return os.Rename(f.tmp, f.path) }); err != nil {
		return fail("rename", err)
	}
	f.tmp = "" // nothing left to remove
	dir := filepath.Dir(f.path)
	if err := step(stepSyncDir, func() error { return syncDir(dir) }); err != nil {
		return fmt.Errorf("replace %s: fsync the directory %s (the new file is in place, but may not survive a power loss): %w", f.path, dir, err)
	}
	return nil
}

// Abort gives up the replacement: the temporary file is closed and removed, the target left as
// it was. It does nothing after Commit or Abort.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	if f.f != nil {
		f.f.Close()
		f.f = nil
	}
	if f.tmp != "" {
		os.Remove(f.tmp)
		f.tmp = ""
	}
}

func syncDir(dir string) error {
	d, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// The steps, in commit order, for failpoints.
const (
	stepCreate  = "create"
	stepWrite   = "write"
	stepChown   = "chown"
	stepChmod   = "chmod"
	stepSync    = "fsync"
	stepClose   = "close"
	stepRename  = "rename"
	stepSyncDir = "fsync-dir"
)

// failpoint is called before each step; a test sets it to record the order of the steps and to
// fail each in turn. Nil outside tests.
var failpointHook func(step string) error

func failpoint(name string) error {
	if failpointHook == nil {
		return nil
	}
	return failpointHook(name)
}

// step runs do after the failpoint of name.
func step(name string, do func() error) error {
	if err := failpoint(name); err != nil {
		return err
	}
	return do()
}
