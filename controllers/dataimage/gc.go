package dataimage

import (
	"context"
	"errors"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/dataimage/dataimage/exportset"
)

// DefaultRegistryGCInterval is Options.RegistryGCInterval's default in the command.
const DefaultRegistryGCInterval = time.Hour

// The registry's garbage collection: a withdrawn image (its DataImage's snapshot deleted,
// withdraw in registry.go) loses its manifest and its name at once, but its chunks stay until
// a collection deletes the objects that no manifest names (exportset.Registry.GC, which
// excludes concurrent pushes through leases in the registry: a push that runs makes the
// collection give up, ErrBusy, and the next one tries again). The elected controller runs one
// every interval.
var (
	metricRegistryGC = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dataimage_controller_registry_gc_total",
		Help: "Garbage collections of the image registry, by result (done, busy: a push ran, failed).",
	}, []string{"result"})
	metricRegistryGCDeletedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dataimage_controller_registry_gc_deleted_bytes_total",
		Help: "Stored bytes of the registry's objects that garbage collections deleted (no manifest named them).",
	})
)

func init() {
	metrics.Registry.MustRegister(metricRegistryGC, metricRegistryGCDeletedBytes)
	for _, r := range []string{"done", "busy", "failed"} {
		metricRegistryGC.WithLabelValues(r)
	}
}

// registryGC collects the registry every interval, from one interval after its start (a
// controller that restarts often does not collect each time), while it is elected.
type registryGC struct {
	reg      *exportset.Registry
	interval time.Duration
	log      logr.Logger
}

// Start runs collections until ctx ends (manager.Runnable; it needs leader election, the
// default for a runnable).
func (g *registryGC) Start(ctx context.Context) error {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_ = g.collect(ctx)
		}
	}
}

// collect runs one collection and logs and counts its result.
func (g *registryGC) collect(ctx context.Context) error {
	start := time.Now()
	res, err := g.reg.GC(ctx)
	switch {
	case errors.Is(err, exportset.ErrBusy):
		metricRegistryGC.WithLabelValues("busy").Inc()
		g.log.Info("registry garbage collection skipped: a push runs; the next one tries again", "registry", g.reg.String())
		return err
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		metricRegistryGC.WithLabelValues("failed").Inc()
		g.log.Error(err, "registry garbage collection failed", "registry", g.reg.String())
		return err
	}
	metricRegistryGC.WithLabelValues("done").Inc()
	metricRegistryGCDeletedBytes.Add(float64(res.DeletedBytes))
	g.log.Info("registry garbage collection done", "registry", g.reg.String(), "manifests", res.Manifests,
		"objects", res.Objects, "deleted", res.Deleted, "deletedBytes", res.DeletedBytes,
		"staleLeases", res.StaleLeases, "seconds", time.Since(start).Seconds())
	return nil
}
