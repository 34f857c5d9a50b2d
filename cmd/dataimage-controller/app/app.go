// Package app is the dataimage-controller command: flags into a Config, then Run.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/controllers/dataimage"
	"github.com/dataimage/dataimage/controllers/resize"
	"github.com/dataimage/dataimage/exportset/remote"
)

// Version is the controller's version (set at link time with -X).
var Version = "dev"

// LeaderElectionID is the Lease the controller's replicas compete for.
const LeaderElectionID = "dataimage-controller.dataimage.io"

// Config is what the flags say.
type Config struct {
	// ConfigFile is the ControllerConfig file (--config).
	ConfigFile string
	// Kubeconfig is a kubeconfig file; empty means $KUBECONFIG, in-cluster, or ~/.kube/config.
	Kubeconfig string
	// LeaderElect makes the replicas elect one that works; LeaderElectionNamespace is the
	// Lease's namespace (empty: the pod's own, in a cluster).
	LeaderElect             bool
	LeaderElectionNamespace string
	// MetricsAddr and ProbeAddr are the listen addresses of /metrics and of /healthz and
	// /readyz ("0" turns either off).
	MetricsAddr string
	ProbeAddr   string
	// ProgressInterval is how often a running build's progress is read.
	ProgressInterval time.Duration
	// Verbosity (0 info, 1 and more debug) and LogFormat (text or json) of the logs on stderr.
	Verbosity int
	LogFormat string
	// Registry is the cluster's image registry (none when its URL is empty).
	Registry remote.Flags
	// RegistryGCInterval is how often the registry's garbage is collected (0: never).
	RegistryGCInterval time.Duration
}

// parse reads the flags into a Config.
func parse(args []string, out io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("dataimage-controller", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: dataimage-controller --config FILE [flags]\n\n"+
			"The DataImage controller (version %s): builds the images that DataImage resources declare with a\n"+
			"Job on a cloning node, publishes each as a VolumeSnapshot that PVCs clone, deletes it when its\n"+
			"lifetime ends and no clone is left, and expands csi.dataimage.io volumes (node-only expansion).\n"+
			"See docs/kubernetes.md.\n\nFlags:\n", Version)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.ConfigFile, "config", "", "the controller's configuration file, a dataimage.io/v1alpha1 ControllerConfig (required)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, in-cluster, or ~/.kube/config)")
	fs.BoolVar(&c.LeaderElect, "leader-elect", false, "elect one working replica among several (a Lease named "+LeaderElectionID+")")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader election Lease (default: the pod's own)")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", ":8080", "listen address of the Prometheus /metrics endpoint (\"0\" turns it off)")
	fs.StringVar(&c.ProbeAddr, "health-probe-bind-address", ":8081", "listen address of /healthz and /readyz (\"0\" turns them off)")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", dataimage.DefaultProgressInterval, "how often a running build's progress is read from its pod's log")
	c.Registry.Register(fs)
	fs.DurationVar(&c.RegistryGCInterval, "registry-gc-interval", dataimage.DefaultRegistryGCInterval,
		"how often the elected controller deletes the registry's objects that no image names any more (0: never)")
	fs.IntVar(&c.Verbosity, "v", 0, "log verbosity: 0 info, 1 and more debug")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	case c.ConfigFile == "":
		return c, errors.New("--config is required")
	case c.LogFormat != "text" && c.LogFormat != "json":
		return c, fmt.Errorf("--log-format must be text or json, got %q", c.LogFormat)
	case c.Verbosity < 0:
		return c, fmt.Errorf("--v must not be negative, got %d", c.Verbosity)
	case c.ProgressInterval <= 0:
		return c, fmt.Errorf("--progress-interval must be positive, got %s", c.ProgressInterval)
	case c.RegistryGCInterval < 0:
		return c, fmt.Errorf("--registry-gc-interval must not be negative (0: never), got %s", c.RegistryGCInterval)
	}
	return c, nil
}

// Main runs the command with args (without the program name) and returns its exit code.
func Main(args []string, stderr io.Writer) int {
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "dataimage-controller: %v\n", err)
		return 2
	}
	logger := NewLogger(c, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, c, logger); err != nil {
		logger.Error("dataimage-controller stopped", "error", err.Error())
		return 1
	}
	return 0
}

// NewLogger returns the logger the flags ask for, on w: JSON or text, at level -Verbosity (a
// logr V(n) message is logged at slog level -n).
func NewLogger(c Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.Level(-c.Verbosity)}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Run runs the controller until ctx ends: reads the configuration, connects to the API server
// and starts the manager (leader election, metrics, probes) with both reconcilers: DataImages
// (controllers/dataimage) and the expansion of csi.dataimage.io volumes (controllers/resize).
func Run(ctx context.Context, c Config, logger *slog.Logger) error {
	lr := logr.FromSlogHandler(logger.Handler())
	ctrl.SetLogger(lr)
	klog.SetLogger(lr) // client-go: leader election, reflectors

	data, err := os.ReadFile(c.ConfigFile)
	if err != nil {
		return fmt.Errorf("read configuration: %w", err)
	}
	cfg, err := v1alpha1.ParseControllerConfig(data)
	if err != nil {
		return fmt.Errorf("configuration %s: %w", c.ConfigFile, err)
	}
	restCfg, err := restConfig(c.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "dataimage-controller/" + Version

	scheme, err := dataimage.NewScheme()
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Logger:                        lr,
		Cache:                         dataimage.CacheOptions(),
		Metrics:                       metricsserver.Options{BindAddress: c.MetricsAddr},
		HealthProbeBindAddress:        c.ProbeAddr,
		LeaderElection:                c.LeaderElect,
		LeaderElectionID:              LeaderElectionID,
		LeaderElectionNamespace:       c.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	logs, err := dataimage.NewPodLogReader(restCfg)
	if err != nil {
		return err
	}
	registry, err := c.Registry.Open(os.Getenv)
	if err != nil {
		return err
	}
	if registry != nil {
		logger.Info("image registry", "registry", registry.String())
	}
	if err := dataimage.Setup(mgr, dataimage.Options{Config: cfg, Logs: logs, ProgressInterval: c.ProgressInterval, Registry: registry,
		RegistryGCInterval: c.RegistryGCInterval}); err != nil {
		return err
	}
	if err := resize.Setup(mgr, resize.Options{Reporter: dataimage.Name}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	// Ready once the caches have synced: before that the controller knows nothing.
	err = mgr.AddReadyzCheck("caches", func(req *http.Request) error {
		wait, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(wait) {
			return errors.New("caches not synced")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("readiness check: %w", err)
	}
	engines := make([]string, 0, len(cfg.Engines))
	for name := range cfg.Engines {
		engines = append(engines, name)
	}
	logger.Info("dataimage-controller starting", "version", Version, "config", c.ConfigFile, "engines", engines,
		"leaderElection", c.LeaderElect, "metrics", c.MetricsAddr, "probes", c.ProbeAddr)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	return nil
}

// restConfig loads the API server's address and credentials.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := config.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("find the API server (in-cluster, $KUBECONFIG or ~/.kube/config): %w", err)
	}
	return cfg, nil
}
