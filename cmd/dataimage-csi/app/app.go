// Package app is the dataimage-csi command: flags into a Config, then Run.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/blockstore/provision"
	"github.com/dataimage/dataimage/driver"
	"github.com/dataimage/dataimage/internal/cli"
	"github.com/dataimage/dataimage/internal/units"
)

// Version is the plugin's version (set at link time with -X).
var Version = "dev"

// Config is what the flags say.
type Config struct {
	Endpoint    string
	NodeID      string
	Pool        string
	PoolSize    int64
	Preallocate bool
	// PoolFormatNonBlank makes a new pool on a device that is not blank (what it holds is lost);
	// never on a device in use or one that fails reads.
	PoolFormatNonBlank bool
	Export             string
	ExportStateDir     string
	DefaultFSType      string
	OverProvisionRatio float64
	MaxVolumes         int
	Verbosity          int
	LogFormat          string
	// PluginRegistrationPath is the kubelet's plugin registration directory as mounted in the
	// plugin's container; empty: no registration (the kubelet is not told of the plugin).
	PluginRegistrationPath string
	// KubeletRegistrationPath is the CSI socket's path as the kubelet sees it on the host.
	KubeletRegistrationPath string
	// MetricsAddress is the TCP address of the Prometheus endpoint (/metrics); empty: none.
	MetricsAddress string
	// PoolCheckInterval is how often the pool is verified with a read-only Check; 0: never.
	PoolCheckInterval time.Duration
}

// parse reads the flags into a Config.
func parse(args []string, out io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("dataimage-csi", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: dataimage-csi --node-id NAME --pool PATH [flags]\n\n"+
			"The Dataimage CSI plugin: volumes, snapshots and O(1) clones of this node's block store pool,\n"+
			"exported to the kernel as block devices. Serves CSI Identity, Controller and Node on --endpoint.\n\n"+
			"With --plugin-registration-path it registers itself with the kubelet (no node-driver-registrar),\n"+
			"serving the kubelet's plugin registration API on <path>/csi.dataimage.io-reg.sock; it exits with\n"+
			"code 1 if the kubelet refuses the registration. With --metrics-address it serves Prometheus\n"+
			"metrics at /metrics.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path/to/socket or a path")
	fs.StringVar(&c.NodeID, "node-id", "", "this node's name (required): the CSI node ID and topology value")
	fs.StringVar(&c.Pool, "pool", "", "the pool: a file (created with --pool-size if absent) or a block device (made a pool with --pool-size only if blank) (required)")
	size := fs.String("pool-size", "", "size of a pool file to create when --pool does not exist, e.g. 100Gi, 1.5Ti, 500G; for a device, the confirmation that it may be made a pool if it is blank")
	fs.BoolVar(&c.PoolFormatNonBlank, "pool-format-nonblank", false, "with --pool-size: make a pool on a device that is not blank, destroying what it holds (file systems, partition tables, RAID/LVM metadata, a damaged pool); never on a device in use or one that fails reads")
	fs.BoolVar(&c.Preallocate, "preallocate", false, "create the pool file thick (fallocated, freed blocks keep their space): faster first writes")
	fs.StringVar(&c.Export, "export", "", "how volumes reach the kernel: fuse-loop; empty picks the best this node has")
	fs.StringVar(&c.ExportStateDir, "export-state-dir", export.DefaultStateDir, "directory for export state (FUSE mounts); should be on tmpfs")
	fs.StringVar(&c.DefaultFSType, "default-fstype", "ext4", "file system made on a blank volume whose capability names none: ext4 or xfs")
	fs.Float64Var(&c.OverProvisionRatio, "overprovision-ratio", 0, "bound on the sum of volume sizes as a multiple of the pool's capacity (0 keeps the pool's, 10 for a new pool)")
	fs.IntVar(&c.MaxVolumes, "max-volumes", 0, "volumes that can be published on this node at once (0: no limit)")
	fs.DurationVar(&c.PoolCheckInterval, "pool-check-interval", 12*time.Hour, "how often to verify the pool with a read-only check (no I/O stops; volume health and metrics report problems); 0: never")
	fs.IntVar(&c.Verbosity, "v", 0, "log verbosity: 0 info, 1 and more debug")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.PluginRegistrationPath, "plugin-registration-path", "", "the kubelet's plugin registration directory (<kubelet dir>/plugins_registry) as mounted here; empty: do not register with the kubelet")
	fs.StringVar(&c.KubeletRegistrationPath, "kubelet-registration-path", "", "the CSI socket's path as the kubelet sees it on the host, e.g. /var/lib/kubelet/plugins/csi.dataimage.io/csi.sock (with --plugin-registration-path)")
	fs.StringVar(&c.MetricsAddress, "metrics-address", "", "TCP address to serve Prometheus metrics on at /metrics, e.g. :9090; empty: no metrics endpoint")
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
		c.PoolSize = n
	}
	switch {
	case c.NodeID == "":
		return c, errors.New("--node-id is required")
	case c.Pool == "":
		return c, errors.New("--pool is required")
	case c.PoolFormatNonBlank && c.PoolSize == 0:
		return c, errors.New("--pool-format-nonblank needs --pool-size (it applies only when a pool is made)")
	case c.LogFormat != "text" && c.LogFormat != "json":
		return c, fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
	case c.PoolCheckInterval < 0:
		return c, fmt.Errorf("--pool-check-interval %s: must not be negative", c.PoolCheckInterval)
	case c.DefaultFSType != "ext4" && c.DefaultFSType != "xfs":
		return c, fmt.Errorf("--default-fstype %q: want ext4 or xfs", c.DefaultFSType)
	case c.PluginRegistrationPath != "" && c.KubeletRegistrationPath == "":
		return c, errors.New("--plugin-registration-path needs --kubelet-registration-path (the CSI socket as the kubelet sees it)")
	case c.KubeletRegistrationPath != "" && c.PluginRegistrationPath == "":
		return c, errors.New("--kubelet-registration-path is only used with --plugin-registration-path")
	case c.KubeletRegistrationPath != "" && !filepath.IsAbs(c.KubeletRegistrationPath):
		return c, fmt.Errorf("--kubelet-registration-path %q: want an absolute path", c.KubeletRegistrationPath)
	}
	return c, nil
}

// Main runs the command and returns its exit code.
func Main(args []string, stderr io.Writer) int {
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "dataimage-csi: %v (see --help)\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, c, logger(c, stderr)); err != nil {
		fmt.Fprintf(stderr, "dataimage-csi: %v\n", err)
		return 1
	}
	return 0
}

func logger(c Config, w io.Writer) *slog.Logger {
	return cli.LogFlags{Verbosity: c.Verbosity, Format: c.LogFormat}.Logger(w)
}

// drainTimeout bounds how long the drain at the end waits for the exports' I/O in flight
// (Server.DrainIO). With the CSI calls' grace period (30 s) and the checkpoint it fits the
// chart's terminationGracePeriodSeconds (60).
const drainTimeout = 20 * time.Second

// Run opens (or creates) the pool, serves the plugin until ctx ends, then stops: CSI calls in
// flight finish (driver.Server.ServeListener), the exports' I/O drains (new I/O waits, the I/O
// in flight completes and the pool is flushed: Server.DrainIO), and the pool is closed (a
// checkpoint). Nothing is unmounted or detached: the exports' kernel state outlives the
// process, and their I/O fails once it has exited (docs/driver.md, "Stopping").
func Run(ctx context.Context, c Config, log *slog.Logger) error {
	pool, err := openPool(c, log)
	if err != nil {
		return err
	}
	rec := pool.Recovery()
	log.Info("pool open", "pool", c.Pool, "recoveredRecords", rec.Records, "checkpointLSN", rec.CheckpointLSN, "lastLSN", rec.LastLSN)
	exp, err := export.Detect(export.Options{StateDir: c.ExportStateDir, Method: c.Export, Logger: log})
	if err != nil {
		pool.Close()
		return err
	}
	srv, err := driver.NewServer(driver.Config{NodeID: c.NodeID, Version: Version, MaxVolumes: c.MaxVolumes, PoolCheckInterval: c.PoolCheckInterval, Logger: log}, pool)
	if err == nil {
		err = srv.RegisterNode(pool, driver.NodeConfig{Exporter: exp, DefaultFSType: c.DefaultFSType})
	}
	if err != nil {
		pool.Close()
		return err
	}
	log.Info("serving", "endpoint", c.Endpoint, "nodeID", c.NodeID, "export", exp.Name(), "version", Version)
	serr := serve(ctx, c, srv, log)
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	if derr := srv.DrainIO(dctx); derr != nil {
		log.Error("drain", "err", derr)
		if serr == nil {
			serr = derr
		}
	}
	cancel()
	if cerr := pool.Close(); serr == nil && cerr != nil {
		serr = fmt.Errorf("close pool: %w", cerr)
	}
	log.Info("stopped")
	return serr
}

// serve runs the CSI server, and the metrics endpoint and the kubelet registration when
// configured, until ctx ends or one of them fails (a refused registration included); then it
// stops them all and returns the first error. The registration starts once the CSI socket
// listens: the kubelet calls NodeGetInfo on it as soon as it sees the registration socket.
func serve(ctx context.Context, c Config, srv *driver.Server, log *slog.Logger) error {
	lis, err := srv.Listen(c.Endpoint)
	if err != nil {
		return err
	}
	var metrics *http.Server
	var metricsLis net.Listener
	if c.MetricsAddress != "" {
		if metricsLis, err = net.Listen("tcp", c.MetricsAddress); err != nil {
			lis.Close()
			return fmt.Errorf("metrics endpoint: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", srv.MetricsHandler())
		metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	run := func(what string, fn func() error) {
		wg.Go(func() {
			if err := fn(); err != nil {
				errs <- fmt.Errorf("%s: %w", what, err)
				cancel()
			}
		})
	}
	run("CSI server", func() error { return srv.ServeListener(ctx, lis) })
	if metrics != nil {
		log.Info("serving metrics", "address", metricsLis.Addr().String(), "path", "/metrics")
		run("metrics endpoint", func() error {
			if err := metrics.Serve(metricsLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		wg.Go(func() {
			<-ctx.Done()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			_ = metrics.Shutdown(sctx)
		})
	}
	if c.PluginRegistrationPath != "" {
		run("kubelet registration", func() error {
			return srv.ServeRegistration(ctx, c.PluginRegistrationPath, c.KubeletRegistrationPath)
		})
	}
	wg.Wait()
	close(errs)
	return <-errs // the first error, or nil
}

// openPool opens the pool, making it only where that destroys nothing (package provision): a
// file that does not exist, or a blank device, and only with --pool-size.
func openPool(c Config, log *slog.Logger) (*blockstore.Pool, error) {
	opts := blockstore.Options{OverProvisionRatio: c.OverProvisionRatio, DirectIO: true, Logger: log,
		Size: c.PoolSize, Preallocate: c.Preallocate}
	p, _, err := provision.Open(c.Pool, provision.Options{Pool: opts, Create: c.PoolSize > 0, FormatNonBlank: c.PoolFormatNonBlank})
	switch {
	case errors.Is(err, provision.ErrNoPool):
		return nil, fmt.Errorf("%w (a pool is made only with --pool-size: a new file of that size, or the whole blank device)", err)
	case errors.Is(err, provision.ErrNotBlank) && !errors.Is(err, provision.ErrInUse) && !c.PoolFormatNonBlank:
		return nil, fmt.Errorf("%w (erase it first, e.g. wipefs --all %s for the signatures blkid knows, or give --pool-format-nonblank to make it a pool anyway)", err, c.Pool)
	}
	return p, err
}
