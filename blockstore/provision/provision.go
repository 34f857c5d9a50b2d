// Package provision opens a node's pool, and creates it only where that destroys nothing.
//
// The CSI plugin (a pool file or a dedicated device) and the local daemon (the pool file in its
// home) both open their pool through Open, so one rule decides when a pool is made:
//
//   - a file is made a pool only when it does not exist (blockstore.Create makes it atomically);
//     an existing file that is not a pool is never overwritten, whatever it holds;
//   - a device is made a pool only when Check finds it blank: readable, no signature blkid
//     knows, nothing of a Dataimage pool (even damaged), not in use. Options.FormatNonBlank
//     overrides what it holds, never a use or a read error.
//
// A read error, damaged superblocks, or a device in use are errors, never "not a pool".
//
// Check runs blkid (util-linux), which is why it lives here and not in package blockstore: the
// store does all its I/O through a File and runs no programs, so that its tests can crash and
// fail that I/O; this package is the one place that looks at a whole node's devices.
package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
)

// Options configure Open.
type Options struct {
	// Pool configures the pool; Size and Preallocate apply to a pool file Open creates.
	Pool blockstore.Options
	// Create allows a new pool: a file that does not exist (of Pool.Size bytes), or a block
	// device that Check finds blank.
	Create bool
	// FormatNonBlank (with Create) makes a pool on a device that holds signatures: file systems,
	// partition tables, RAID or LVM metadata, a Dataimage pool that fails to open as corrupt.
	// Never on a device in use, one that fails reads, a pool that opens, or an existing file.
	FormatNonBlank bool
}

// Open opens the pool at path, a regular file or a block device, and reports whether it created
// it. See the package documentation for when it creates one.
func Open(path string, opts Options) (*blockstore.Pool, bool, error) {
	log := opts.Pool.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !opts.Create {
			return nil, false, fmt.Errorf("%w at %s: it does not exist", ErrNoPool, path)
		}
		if opts.Pool.Size <= 0 {
			return nil, false, fmt.Errorf("provision: create pool %s: %w: a size is needed", path, blockstore.ErrInvalidArgument)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, false, fmt.Errorf("provision: create pool %s: %w", path, err)
		}
		log.Info("creating pool", "pool", path, "size", opts.Pool.Size, "preallocate", opts.Pool.Preallocate)
		p, err := blockstore.Create(path, opts.Pool)
		return p, err == nil, err
	case err != nil:
		return nil, false, fmt.Errorf("provision: pool %s: %w", path, err)
	case fi.Mode().IsRegular():
		p, err := blockstore.Open(path, opts.Pool)
		if errors.Is(err, blockstore.ErrNotPool) {
			return nil, false, fmt.Errorf("provision: %s exists and is not a pool (%s); an existing file is never made one: %w", path, describeFile(path, fi), err)
		}
		if err != nil {
			return nil, false, fmt.Errorf("provision: pool %s: %w", path, err)
		}
		return p, false, nil
	case fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0:
		return nil, false, fmt.Errorf("provision: pool %s: %w: neither a regular file nor a block device", path, blockstore.ErrInvalidArgument)
	}

	p, err := blockstore.Open(path, opts.Pool)
	if err == nil {
		return p, false, nil
	}
	var nb *NotBlankError
	if errors.Is(err, unix.EBUSY) {
		// In use: say by whom and what it holds, if the probe can.
		if cerr := Check(path); errors.As(cerr, &nb) {
			return nil, false, cerr
		}
	}
	forcible := errors.Is(err, blockstore.ErrCorrupt) && opts.Create && opts.FormatNonBlank
	if !errors.Is(err, blockstore.ErrNotPool) && !forcible {
		return nil, false, fmt.Errorf("provision: pool %s: %w", path, err)
	}
	openErr := err
	err = Check(path)
	switch {
	case err == nil && !opts.Create:
		return nil, false, fmt.Errorf("%w at %s: the device is blank, and can be made one", ErrNoPool, path)
	case err == nil:
		log.Info("creating pool on a blank device", "pool", path)
	case errors.As(err, &nb) && len(nb.InUse) == 0 && opts.Create && opts.FormatNonBlank:
		log.Warn("creating pool on a device that is not blank, as told", "pool", path, "found", nb.Found, "open", openErr)
	default:
		return nil, false, err
	}
	p, err = blockstore.Create(path, opts.Pool)
	return p, err == nil, err
}

// describeFile says what an existing file that is not a pool holds, for an error message.
func describeFile(path string, fi fs.FileInfo) string {
	if fi.Size() == 0 {
		return "it is empty"
	}
	err := Check(path)
	var nb *NotBlankError
	switch {
	case err == nil:
		return fmt.Sprintf("%d bytes, no signature blkid or Dataimage knows", fi.Size())
	case errors.As(err, &nb):
		return fmt.Sprintf("%d bytes; it holds %s", fi.Size(), strings.Join(nb.Found, ", "))
	default:
		return fmt.Sprintf("%d bytes; %v", fi.Size(), err)
	}
}
