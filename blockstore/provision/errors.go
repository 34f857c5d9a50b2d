package provision

import (
	"errors"
	"strings"
)

// Sentinel errors. Errors returned by this package wrap one of these, or an error of package
// blockstore (test with errors.Is).
var (
	// ErrNotBlank: the device holds something (a file system, a partition table, RAID, LVM or
	// crypto metadata, a Dataimage pool) or is in use. See NotBlankError.
	ErrNotBlank = errors.New("provision: not blank")
	// ErrInUse: the device is in use (mounted, held by device-mapper or md, claimed, open in
	// another process, backing a loop device, swap). Wrapped by a NotBlankError that lists it.
	ErrInUse = errors.New("provision: in use")
	// ErrProbe: the device could not be probed (a read failed, blkid failed or is missing), so
	// nothing can be said of what it holds, and no pool is made on it.
	ErrProbe = errors.New("provision: cannot probe")
	// ErrNoPool: there is no pool at the path and Options.Create is not set.
	ErrNoPool = errors.New("provision: no pool")
)

// NotBlankError says why a device is not blank: what it holds and who uses it.
type NotBlankError struct {
	Path string
	// Found lists what the device holds, e.g. "an ext4 file system (UUID=...)", "a dos
	// partition table", "a damaged Dataimage pool superblock at byte 0 (...)".
	Found []string
	// InUse lists who uses the device, e.g. "mounted at /mnt", "open in process 42 (qemu)".
	InUse []string
}

func (e *NotBlankError) Error() string {
	var parts []string
	if len(e.Found) > 0 {
		parts = append(parts, "it holds "+strings.Join(e.Found, ", "))
	}
	if len(e.InUse) > 0 {
		parts = append(parts, "it is in use: "+strings.Join(e.InUse, ", "))
	}
	return "provision: " + e.Path + " is not blank: " + strings.Join(parts, "; ")
}

// Unwrap returns ErrNotBlank, and ErrInUse when the device is in use.
func (e *NotBlankError) Unwrap() []error {
	if len(e.InUse) > 0 {
		return []error{ErrNotBlank, ErrInUse}
	}
	return []error{ErrNotBlank}
}
