package dataimage

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
)

// The controller's metrics, served by the manager's metrics endpoint (controller-runtime's
// registry) next to controller-runtime's own. Counters count what this process did; the image
// gauges are read from the DataImages at each scrape.
var (
	metricBuildsStarted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dataimage_controller_builds_started_total",
		Help: "Build Jobs created, by engine.",
	}, []string{"engine"})
	metricBuildsSucceeded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dataimage_controller_builds_succeeded_total",
		Help: "Builds that ended with a result, by engine.",
	}, []string{"engine"})
	metricBuildsFailed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dataimage_controller_builds_failed_total",
		Help: "Builds that failed, by engine.",
	}, []string{"engine"})
	metricBuildDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "dataimage_controller_build_duration_seconds",
		Help: "Time from the build Job's creation to the end of its build container, by engine and result (succeeded, failed).",
		// 5 s to about 11 h.
		Buckets: prometheus.ExponentialBuckets(5, 2, 14),
	}, []string{"engine", "result"})
	metricImagesExpired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dataimage_controller_images_expired_total",
		Help: "Images whose VolumeSnapshot was deleted at the end of their lifetime.",
	})
)

// imageStats is the collector of the image gauges.
var imageStats = &imageCollector{
	phase: prometheus.NewDesc("dataimage_controller_images", "DataImages, by phase.", []string{"phase"}, nil),
	kept: prometheus.NewDesc("dataimage_controller_images_expired_kept",
		"Expired DataImages whose VolumeSnapshot is kept because PVCs clone it.", nil, nil),
	clones: prometheus.NewDesc("dataimage_controller_image_clones", "PVCs cloned from DataImages' VolumeSnapshots.", nil, nil),
}

func init() {
	metrics.Registry.MustRegister(metricBuildsStarted, metricBuildsSucceeded, metricBuildsFailed,
		metricBuildDuration, metricImagesExpired, imageStats)
}

// imageCollector counts DataImages by phase from the manager's cache at each scrape.
type imageCollector struct {
	phase, kept, clones *prometheus.Desc

	mu struct {
		sync.Mutex
		// reader lists DataImages: the last manager set up in this process.
		reader client.Reader
	}
}

// use makes the collector read DataImages through reader.
func (c *imageCollector) use(reader client.Reader) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.reader = reader
}

func (c *imageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.phase
	ch <- c.kept
	ch <- c.clones
}

func (c *imageCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	reader := c.mu.reader
	c.mu.Unlock()
	if reader == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list v1alpha1.DataImageList
	if err := reader.List(ctx, &list); err != nil {
		// Not an invalid metric: that would fail the whole scrape (controller-runtime's handler
		// answers 500 on any error), and the cache not started yet is no reason for that.
		return
	}
	byPhase := map[v1alpha1.DataImagePhase]int{}
	for _, p := range []v1alpha1.DataImagePhase{v1alpha1.PhasePending, v1alpha1.PhaseBuilding, v1alpha1.PhaseReady,
		v1alpha1.PhaseFailed, v1alpha1.PhaseExpired} {
		byPhase[p] = 0
	}
	kept, clones := 0, 0
	for i := range list.Items {
		s := &list.Items[i].Status
		p := s.Phase
		if p == "" {
			p = v1alpha1.PhasePending
		}
		byPhase[p]++
		if p == v1alpha1.PhaseExpired && conditionReason(s, v1alpha1.ConditionExpired) == v1alpha1.ReasonClonesExist {
			kept++
		}
		clones += int(s.Clones)
	}
	for p, n := range byPhase {
		ch <- prometheus.MustNewConstMetric(c.phase, prometheus.GaugeValue, float64(n), string(p))
	}
	ch <- prometheus.MustNewConstMetric(c.kept, prometheus.GaugeValue, float64(kept))
	ch <- prometheus.MustNewConstMetric(c.clones, prometheus.GaugeValue, float64(clones))
}
