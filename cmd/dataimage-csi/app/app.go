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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/driver"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/internal/cli"
)

// Version is the plugin's version (set at link time with -X).
var Version = "dev"

// Config is what the flags say.
type Config struct {
	Endpoint string
	NodeID   string
	// DataPlaneSocket is the data plane's socket (dataimage-dataplane --socket): the plugin
	// holds no pool and no export of its own.
	DataPlaneSocket string
	DefaultFSType   string
	MaxVolumes      int
	Verbosity       int
	LogFormat       string
	// PluginRegistrationPath is the kubelet's plugin registration directory as mounted in the
	// plugin's container; empty: no registration (the kubelet is not told of the plugin).
	PluginRegistrationPath string
	// KubeletRegistrationPath is the CSI socket's path as the kubelet sees it on the host.
	KubeletRegistrationPath string
	// MetricsAddress is the TCP address of the Prometheus endpoint (/metrics); empty: none.
	MetricsAddress string
	// PoolCheckInterval is how often the pool is verified with a read-only Check; 0: never.
	PoolCheckInterval time.Duration
	// Registry is the cluster's image registry (none when its URL is empty); RegistrySync how
	// often the plugin reads its placements and writes its report.
	Registry     remote.Flags
	RegistrySync time.Duration
}

// movedFlags are the flags of the plugin's pool and exports, which moved to the data plane
// (dataimage-dataplane) when it became a process of its own. The plugin refuses them, naming
// the new place, rather than ignoring them: a command line that still gives them expects this
// process to own the pool, and it does not.
var movedFlags = []struct {
	name string
	bool bool // takes no value
}{
	{"pool", false}, {"pool-size", false}, {"pool-format-nonblank", true}, {"preallocate", true},
	{"overprovision-ratio", false}, {"export", false}, {"export-state-dir", false},
}

const movedUsage = "moved to dataimage-dataplane (refused here)"

// parse reads the flags into a Config.
func parse(args []string, out io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("dataimage-csi", flag.ContinueOnError)
	fs.SetOutput(out)
	var moved []string
	for _, m := range movedFlags {
		set := func(string) error { moved = append(moved, "--"+m.name); return nil }
		if m.bool {
			fs.BoolFunc(m.name, movedUsage, set)
		} else {
			fs.Func(m.name, movedUsage, set)
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: dataimage-csi --node-id NAME [--dataplane-socket PATH] [flags]\n\n"+
			"The Dataimage CSI plugin: volumes, snapshots and O(1) clones of this node's block store pool,\n"+
			"exported to the kernel as block devices. Serves CSI Identity, Controller and Node on --endpoint.\n\n"+
			"The pool and the exports belong to the node's data plane (dataimage-dataplane), which the plugin\n"+
			"reaches over --dataplane-socket: the plugin waits for it at start, and its own restarts, crashes\n"+
			"and upgrades never touch the volumes' I/O. The pool's flags (--pool, --pool-size, --preallocate,\n"+
			"--pool-format-nonblank, --overprovision-ratio, --export, --export-state-dir) are the data plane's.\n\n"+
			"With --plugin-registration-path it registers itself with the kubelet (no node-driver-registrar),\n"+
			"serving the kubelet's plugin registration API on <path>/csi.dataimage.io-reg.sock; it exits with\n"+
			"code 1 if the kubelet refuses the registration. With --metrics-address it serves Prometheus\n"+
			"metrics at /metrics.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path/to/socket or a path")
	fs.StringVar(&c.NodeID, "node-id", "", "this node's name (required): the CSI node ID and topology value")
	fs.StringVar(&c.DataPlaneSocket, "dataplane-socket", dataplane.DefaultSocket, "the data plane's unix socket (dataimage-dataplane --socket), which serves the pool and the exports")
	fs.StringVar(&c.DefaultFSType, "default-fstype", "ext4", "file system made on a blank volume whose capability names none: ext4 or xfs")
	fs.IntVar(&c.MaxVolumes, "max-volumes", 0, "volumes that can be published on this node at once (0: no limit)")
	fs.DurationVar(&c.PoolCheckInterval, "pool-check-interval", 12*time.Hour, "how often to verify the pool with a read-only check (no I/O stops; volume health and metrics report problems); 0: never")
	c.Registry.Register(fs)
	fs.DurationVar(&c.RegistrySync, "registry-sync", driver.DefaultRegistrySync, "how often to read the registry's placements (push, pre-pull) and write this node's report")
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
	switch {
	case len(moved) > 0:
		return c, fmt.Errorf("%s: moved to dataimage-dataplane, the data plane process that owns the pool and serves the volumes' I/O; "+
			"give them to it, and this plugin --dataplane-socket (its --socket, default %s)", strings.Join(slices.Compact(moved), ", "), dataplane.DefaultSocket)
	case c.NodeID == "":
		return c, errors.New("--node-id is required")
	case c.DataPlaneSocket == "" || !filepath.IsAbs(c.DataPlaneSocket):
		return c, fmt.Errorf("--dataplane-socket %q: want an absolute path", c.DataPlaneSocket)
	case cli.CheckFormat(c.LogFormat) != nil:
		return c, cli.CheckFormat(c.LogFormat)
	case c.PoolCheckInterval < 0:
		return c, fmt.Errorf("--pool-check-interval %s: must not be negative", c.PoolCheckInterval)
	case c.RegistrySync <= 0:
		return c, fmt.Errorf("--registry-sync %s: must be positive", c.RegistrySync)
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
	return cli.Main("dataimage-csi", stderr, err, func(ctx context.Context) error {
		return Run(ctx, c, cli.NewLogger(stderr, c.LogFormat, c.Verbosity))
	})
}

// Run waits until the data plane answers on its socket, serves the plugin until ctx ends,
// then stops: CSI calls in flight finish (driver.Server.ServeListener). The plugin owns no
// pool and no export: the volumes it staged stay staged and their I/O goes on, served by the
// data plane, while it is stopped; the next run adopts them (driver.Server.RegisterNode).
func Run(ctx context.Context, c Config, log *slog.Logger) error {
	store := dataplane.NewClient(c.DataPlaneSocket)
	defer store.Close()
	if err := store.WaitReady(ctx, log); err != nil {
		return err
	}
	target, err := c.Registry.Open(os.Getenv)
	if err != nil {
		return err
	}
	dcfg := driver.Config{NodeID: c.NodeID, Version: Version, MaxVolumes: c.MaxVolumes, PoolCheckInterval: c.PoolCheckInterval,
		RegistrySync: c.RegistrySync, Logger: log}
	if target != nil {
		dcfg.Registry = exportset.New(target, exportset.Options{Logger: log})
		log.Info("image registry", "registry", target.String(), "sync", c.RegistrySync)
	}
	srv, err := driver.NewServer(ctx, dcfg, store)
	if err == nil {
		err = srv.RegisterNode(ctx, driver.NodeConfig{DefaultFSType: c.DefaultFSType})
	}
	if err != nil {
		return err
	}
	log.Info("serving", "endpoint", c.Endpoint, "nodeID", c.NodeID, "dataPlane", c.DataPlaneSocket, "version", Version)
	err = serve(ctx, c, srv, log)
	log.Info("stopped")
	return err
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
