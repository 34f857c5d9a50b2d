// Package export makes a block store volume a kernel block device.
//
// An Exporter turns a Disk (a *blockstore.Volume, or anything that reads and writes like one)
// into a Device: a block device node such as /dev/loop3 that file systems can be made on and
// mounted. Detect picks the exporter this node supports; today that is "fuse-loop": a FUSE file
// system per exported volume, holding one regular file that is the volume, with a loop device in
// direct I/O mode on top. NBD and ublk exporters can implement the same interfaces later.
//
// An export's kernel state (loop device, FUSE mount, state directory) outlives the process that
// created it when that process dies. Exporter.Leftovers lists such state after a restart and
// Exporter.Cleanup tears it down, also when the FUSE server that served it is gone.
//
// With a holder (Options.Holder: a small process of its own, cmd/dataimage-fuse-holder), an
// export also survives the death of the process that serves it: the holder keeps its FUSE
// connection open, I/O on the device waits in the kernel meanwhile, and the next process resumes
// serving it with Exporter.Adopt, the kernel sending again what the dead process had taken and
// not answered (Linux 6.9 or later). Without a holder, or once both the serving process and the
// holder are gone, the connection ends and I/O on the device fails at once (EIO).
//
// It must not know the pool's format, CSI or the mounts above the device: it serves any Disk, and
// the store does not know it.
package export

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
)

// Disk is what an Exporter serves: a fixed-size random-access disk. ReadAt and WriteAt follow
// the io.ReaderAt and io.WriterAt contracts and are called concurrently. Flush makes completed
// writes durable. Discard unmaps a range, which afterwards reads as zeros. Size may grow while
// the disk is exported (call Device.Resize after it did); it never shrinks.
//
// A *blockstore.Volume is a Disk. A Disk that also implements WriteZeroer gets zeroing requests
// through WriteZeroes; otherwise they go to Discard.
type Disk = fusedev.Disk

// WriteZeroer is implemented by a Disk that zeroes ranges other than by discarding them.
type WriteZeroer = fusedev.WriteZeroer

// Exporter makes Disks kernel block devices. Its methods are safe for concurrent use; exports of
// different ids proceed in parallel.
type Exporter interface {
	// Name names the export method ("fuse-loop").
	Name() string
	// Export serves d as a block device. id names the export: it must be a valid file name
	// (see ValidID) and unique among the exports of this node. d.Size() must be a positive
	// multiple of the device's logical block size (Options.BlockSize). An earlier export of
	// id that left state behind fails it with ErrLeftovers (Adopt or Cleanup it first).
	Export(id string, d Disk) (Device, error)
	// Adopt serves d on the export id that an earlier process left, whose kernel side a holder
	// kept alive (Leftover.Held): the block device and everything using it (a mounted file
	// system) stay, and the I/O that waited meanwhile goes on, the requests the dead process
	// had taken and not answered served again. d must be the disk that process served: what
	// it acknowledged must read back (a Disk whose acknowledged writes survive a process's
	// death). The process that served it must be gone (or stopped serving): two processes
	// serving one export would run requests twice. Errors: ErrNotFound (nothing left of id),
	// ErrLeftovers (what is left cannot be served again: no holder kept it, its connection
	// ended; Cleanup it), ErrNoHolder, ErrUnsupported (the kernel cannot resend requests:
	// before Linux 6.9), ErrExists. On failure what was left stays as it was.
	Adopt(id string, d Disk) (Device, error)
	// Leftovers lists the kernel state of exports that this Exporter does not serve: what an
	// earlier process left behind.
	Leftovers() ([]Leftover, error)
	// Cleanup tears down the leftovers of export id (see Leftover), also when the process that
	// served it is gone. It fails with ErrBusy while the block device is in use (mounted), and
	// with ErrExists if this Exporter serves id itself (close its Device instead). Nothing left
	// is not an error.
	Cleanup(id string) error
}

// Device is an exported Disk.
type Device interface {
	// Path is the block device node, e.g. /dev/loop3.
	Path() string
	// Resize makes the device follow the Disk's size after it grew.
	Resize() error
	// Drain returns once every I/O request submitted to the block device before the call has
	// been answered (through the Disk); requests submitted meanwhile wait in the kernel until
	// it returns, then go on. It changes nothing. A clean stop drains before it stops serving,
	// so that nothing submitted earlier is still queued in the kernel.
	Drain() error
	// Handover stops serving the export for the next process (Adopt), leaving it in the
	// holder: no new request is read, those being served are answered, and the Disk is
	// flushed; requests submitted from then on wait in the kernel. Afterwards only Close is
	// useful, and it tears the export down for good. It fails with ErrNoHolder, changing
	// nothing, when the holder does not hold the export's connection now (there is none, or it
	// is not running): then only a drain keeps its I/O from failing.
	Handover() error
	// Close tears the export down: the block device, then what served it. It fails with
	// ErrBusy, changing nothing, while the block device is in use (a file system on it is
	// mounted). Close is idempotent, and may be retried after an error.
	Close() error
}

// Leftover is the kernel state of an export that no Exporter in this process serves.
type Leftover struct {
	// ID is the export's id.
	ID string
	// Devices are the block devices still attached to it (e.g. /dev/loop3).
	Devices []string
	// Mounted reports a mount (e.g. FUSE) at the export's state directory.
	Mounted bool
	// Dir is the export's state directory, if it exists.
	Dir string
	// Held reports that the holder keeps the export's connection: with Mounted, Adopt can
	// serve it again.
	Held bool
}

// Options configure an Exporter. Zero values pick the defaults.
type Options struct {
	// StateDir holds one directory per export (the FUSE mount point for fuse-loop). Default
	// /run/dataimage/export. It should be on a tmpfs so that a reboot empties it.
	StateDir string
	// BlockSize is the logical block size of the devices: 512, 1024, 2048 or 4096. Default 4096,
	// the block store's block size, so that no device I/O covers part of a block.
	BlockSize int
	// Method forces an export method by name ("fuse-loop"); empty picks the best this node has.
	Method string
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
	// Holder is the socket of the holder that keeps the exports' connections across the death
	// of this process (cmd/dataimage-fuse-holder; holder.DefaultSocket). Empty: none, an
	// export ends with the process that serves it. One holder serves any number of processes
	// and state directories.
	Holder string
}

// DefaultStateDir is the default Options.StateDir.
const DefaultStateDir = "/run/dataimage/export"

// MethodFUSELoop names the FUSE file + loop device export.
const MethodFUSELoop = "fuse-loop"

func (o Options) withDefaults() (Options, error) {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(o.StateDir) {
		return o, invalidf("state directory %q is not absolute", o.StateDir)
	}
	o.StateDir = filepath.Clean(o.StateDir)
	if o.Holder != "" && !filepath.IsAbs(o.Holder) {
		return o, invalidf("holder socket %q is not absolute", o.Holder)
	}
	if o.BlockSize == 0 {
		o.BlockSize = 4096
	}
	switch o.BlockSize {
	case 512, 1024, 2048, 4096:
	default:
		return o, invalidf("block size %d: want 512, 1024, 2048 or 4096", o.BlockSize)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Detect returns the best Exporter this node supports (or the one Options.Method names), or an
// error wrapping ErrUnsupported that says what is missing.
func Detect(opts Options) (Exporter, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	switch opts.Method {
	case "", MethodFUSELoop:
	default:
		return nil, invalidf("unknown export method %q (have %q)", opts.Method, MethodFUSELoop)
	}
	var missing []string
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			missing = append(missing, err.Error())
			continue
		}
		f.Close()
	}
	if len(missing) > 0 {
		return nil, &Error{Op: "detect " + MethodFUSELoop, Err: wrapf(ErrUnsupported, "%s", strings.Join(missing, "; "))}
	}
	e, err := newFUSELoop(opts)
	if err != nil {
		return nil, err
	}
	opts.Logger.Info("export method detected", "method", MethodFUSELoop, "stateDir", opts.StateDir, "blockSize", opts.BlockSize, "holder", opts.Holder)
	return e, nil
}

// ValidID reports whether id can name an export: 1 to 200 bytes of ASCII letters, digits, '.',
// '_' and '-', not starting with '.'.
func ValidID(id string) bool {
	if id == "" || len(id) > 200 || id[0] == '.' {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
