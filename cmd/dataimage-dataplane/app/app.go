// Package app is the dataimage-dataplane command: flags into a dataplane.Config, then
// dataplane.Run.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/internal/cli"
	"github.com/dataimage/dataimage/internal/units"
)

// Version is the data plane's version (set at link time with -X).
var Version = "dev"

// Config is what the flags say.
type Config struct {
	// DataPlane is the data plane's configuration (its Version and Logger are Run's).
	DataPlane dataplane.Config
	Verbosity int
	LogFormat string
	// IOFlusher makes the process an I/O flusher before it serves (dataplane.BecomeIOFlusher).
	IOFlusher bool
}

// parse reads the flags into a Config.
func parse(args []string, out io.Writer) (Config, error) {
	var c Config
	d := &c.DataPlane
	fs := flag.NewFlagSet("dataimage-dataplane", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: dataimage-dataplane --pool PATH [flags]\n\n"+
			"The Dataimage data plane: owns this node's block store pool and serves its volumes' I/O to the\n"+
			"kernel (the exports: FUSE file + loop device). The CSI plugin (dataimage-csi --dataplane-socket)\n"+
			"and the local daemon reach it over the unix socket --socket; their restarts, crashes and upgrades\n"+
			"never touch the volumes' I/O.\n\n"+
			"With --holder (a dataimage-fuse-holder running apart from it), the exports' FUSE connections\n"+
			"outlive this process: killed, their I/O waits in the kernel, and the next data plane serves it\n"+
			"again; on SIGTERM or SIGINT it hands them over (reads no new request, answers and flushes what it\n"+
			"read), checkpoints and closes the pool. Without one it drains the exports' I/O (what was\n"+
			"submitted completes and is flushed) instead, and their I/O fails once it has exited. It\n"+
			"unexports nothing: the volumes stay staged (docs/driver.md).\n"+
			"Only one data plane runs per socket (the lock file <socket>.lock); a second one waits for it.\n\n"+
			"Flags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&d.Socket, "socket", dataplane.DefaultSocket, "the API's unix socket (absolute path; mode 0600, root only)")
	fs.StringVar(&d.Pool, "pool", "", "the pool: a file (created with --pool-size if absent) or a block device (made a pool with --pool-size only if blank) (required)")
	size := fs.String("pool-size", "", "size of a pool file to create when --pool does not exist, e.g. 100Gi, 1.5Ti, 500G; for a device, the confirmation that it may be made a pool if it is blank")
	fs.BoolVar(&d.PoolFormatNonBlank, "pool-format-nonblank", false, "with --pool-size: make a pool on a device that is not blank, destroying what it holds (file systems, partition tables, RAID/LVM metadata, a damaged pool); never on a device in use or one that fails reads")
	fs.BoolVar(&d.Preallocate, "preallocate", false, "create the pool file thick (fallocated, freed blocks keep their space): faster first writes")
	fs.Float64Var(&d.OverProvisionRatio, "overprovision-ratio", 0, "bound on the sum of volume sizes as a multiple of the pool's capacity (0 keeps the pool's, 10 for a new pool)")
	fs.StringVar(&d.Export, "export", "", "how volumes reach the kernel: fuse-loop; empty picks the best this node has")
	fs.StringVar(&d.ExportStateDir, "export-state-dir", export.DefaultStateDir, "directory for export state (FUSE mounts); should be on tmpfs")
	fs.StringVar(&d.Holder, "holder", "", "the FUSE holder's unix socket (dataimage-fuse-holder --socket): with it the exports survive this process's death and are handed over on SIGTERM; empty: none, an export's I/O fails once this process is gone")
	fs.IntVar(&c.Verbosity, "v", 0, "log verbosity: 0 info, 1 and more debug")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&c.IOFlusher, "io-flusher", true, "make the process an I/O flusher (PR_SET_IO_FLUSHER: its allocations never wait for the writeback it serves; needs CAP_SYS_RESOURCE, Linux 5.6); it executes itself again with the flag set")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *size != "" {
		n, err := units.ParseSize(*size)
		if err != nil {
			return c, fmt.Errorf("--pool-size: %w", err)
		}
		d.PoolSize = n
	}
	switch {
	case d.Pool == "":
		return c, errors.New("--pool is required")
	case d.PoolFormatNonBlank && d.PoolSize == 0:
		return c, errors.New("--pool-format-nonblank needs --pool-size (it applies only when a pool is made)")
	case d.OverProvisionRatio < 0:
		return c, fmt.Errorf("--overprovision-ratio %v: must not be negative", d.OverProvisionRatio)
	case !strings.HasPrefix(d.Socket, "/"):
		return c, fmt.Errorf("--socket %q: want an absolute path", d.Socket)
	}
	return c, cli.CheckFormat(c.LogFormat)
}

// Main runs the command and returns its exit code. Before it serves, it makes the process an
// I/O flusher unless --io-flusher=false (dataplane.BecomeIOFlusher: the program executes itself
// again with the flag set); without CAP_SYS_RESOURCE it warns and goes on.
func Main(args []string, stderr io.Writer) int {
	c, err := parse(args, stderr)
	return cli.Main("dataimage-dataplane", stderr, err, func(ctx context.Context) error {
		log := cli.NewLogger(stderr, c.LogFormat, c.Verbosity)
		if c.IOFlusher {
			if err := dataplane.BecomeIOFlusher(); err != nil {
				log.Warn("cannot make the data plane an I/O flusher", "err", err)
			}
		}
		return Run(ctx, c, log)
	})
}

// Run runs the data plane until ctx ends (dataplane.Run).
func Run(ctx context.Context, c Config, log *slog.Logger) error {
	d := c.DataPlane
	d.Version, d.Logger = Version, log
	return dataplane.Run(ctx, d)
}
