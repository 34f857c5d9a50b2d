package driver

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/dataimage/dataimage/dataplane"
)

// The plugin's Prometheus metrics, in a registry of its own (Server.MetricsHandler):
//
//	dataimage_csi_info{driver,version,node}                  1
//	dataimage_csi_operations_total{method,code}              CSI calls by full gRPC method and code
//	dataimage_csi_operation_duration_seconds{method}         their latency (histogram)
//	dataimage_pool_{capacity,used,free,provisioned,provision_limit,metadata}_bytes
//	dataimage_pool_volumes, dataimage_pool_snapshots         objects in the pool
//	dataimage_pool_healthy                                   1, or 0 once the pool failed or closed
//	dataimage_pool_check_problems                            problems the last periodic pool check found
//	dataimage_pool_check_timestamp_seconds                   when it ran (both absent before the first)
//	dataimage_export_volumes                                 volumes exported as block devices
//	dataimage_export_io_bytes_total{op}                      bytes read and written through exports
//	dataimage_export_io_operations_total{op}                 read, write, flush, discard, write_zeroes
//	dataimage_export_io_errors_total{op}                     of those, the ones that failed
//
// plus the Go runtime's and the process's collectors. The pool's figures and the export
// counters are read from the data plane at scrape time (Stats and IOStats: one short lock, no
// I/O there); the export counters are atomics the data plane bumps at every I/O of the kernel's
// block devices, where the export calls the volume. A scrape while the data plane does not
// answer reports the pool unhealthy and leaves the other figures out.
// Images are not counted apart from snapshots: the pool does not know which snapshots are
// images (in Kubernetes an image is a VolumeSnapshot like any other).
type metrics struct {
	reg      *prometheus.Registry
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// callBuckets cover CSI calls from a capability query (well under a millisecond) to the
// staging of a large volume (mkfs, fsck: minutes).
var callBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

func newMetrics(cfg *Config, store dataplane.Store, chk *poolChecker) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dataimage_csi_operations_total",
			Help: "CSI calls served, by full gRPC method and gRPC status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dataimage_csi_operation_duration_seconds",
			Help:    "Time taken to serve CSI calls, by full gRPC method.",
			Buckets: callBuckets,
		}, []string{"method"}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "dataimage_csi_info",
		Help:        "The plugin: driver name, version and node ID (always 1).",
		ConstLabels: prometheus.Labels{"driver": cfg.DriverName, "version": cfg.Version, "node": cfg.NodeID},
	})
	info.Set(1)
	m.reg.MustRegister(m.calls, m.duration, info, poolCollector{store: store, checker: chk, log: cfg.Logger},
		exportCollector{store: store, log: cfg.Logger},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// handler serves the registry in the Prometheus exposition formats.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// MetricsHandler returns the HTTP handler that serves the plugin's Prometheus metrics (mount it
// at /metrics). The metrics are recorded whether or not it is served.
func (s *Server) MetricsHandler() http.Handler { return s.metrics.handler() }

// observeCalls returns a unary interceptor that counts every call by method and code and
// records its latency.
func (m *metrics) observeCalls() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.duration.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
		m.calls.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
		return resp, err
	}
}

// scrapeTimeout bounds the data plane calls of a scrape.
const scrapeTimeout = 5 * time.Second

// poolCollector reads the pool's space and objects at each scrape.
type poolCollector struct {
	store   dataplane.Volumes
	checker *poolChecker // nil: no periodic check
	log     *slog.Logger
}

var (
	poolCapacityDesc = poolDesc("capacity_bytes", "Bytes of the pool's data region: what volumes and metadata can use.")
	poolUsedDesc     = poolDesc("used_bytes", "Bytes of the pool held by data, tree nodes and the catalog.")
	poolFreeDesc     = poolDesc("free_bytes", "Bytes of the pool free for new writes.")
	poolProvDesc     = poolDesc("provisioned_bytes", "Sum of the sizes of the pool's volumes (thin: not all written).")
	poolLimitDesc    = poolDesc("provision_limit_bytes", "Bound on provisioned_bytes: capacity times the over-provisioning ratio.")
	poolMetaDesc     = poolDesc("metadata_bytes", "Bytes of metadata: tree nodes, catalog, refcount pages, journal, superblocks.")
	poolVolumesDesc  = poolDesc("volumes", "Volumes in the pool (clones included).")
	poolSnapsDesc    = poolDesc("snapshots", "Snapshots in the pool (images included).")
	poolHealthyDesc  = poolDesc("healthy", "1 while the pool serves writes; 0 once it failed (until the data plane restarts), closed, or while the data plane does not answer.")
	poolCheckDesc    = poolDesc("check_problems", "Problems (corrupt metadata, refcount errors, leaked blocks) the last periodic read-only check of the pool found.")
	poolCheckAtDesc  = poolDesc("check_timestamp_seconds", "When the last periodic read-only check of the pool started (Unix time).")
)

func poolDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc("dataimage_pool_"+name, help, nil, nil)
}

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolCapacityDesc, poolUsedDesc, poolFreeDesc, poolProvDesc,
		poolLimitDesc, poolMetaDesc, poolVolumesDesc, poolSnapsDesc, poolHealthyDesc, poolCheckDesc, poolCheckAtDesc} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	healthy := 0.0
	if c.store.Health(ctx) == nil {
		healthy = 1
	}
	st, err := c.store.Stats(ctx)
	if err != nil {
		c.log.Warn("metrics: the pool's figures", "err", err)
		ch <- prometheus.MustNewConstMetric(poolHealthyDesc, prometheus.GaugeValue, healthy)
		return
	}
	for _, v := range []struct {
		desc *prometheus.Desc
		val  float64
	}{
		{poolCapacityDesc, float64(st.PhysicalBytes)},
		{poolUsedDesc, float64(st.UsedBytes)},
		{poolFreeDesc, float64(st.FreeBytes)},
		{poolProvDesc, float64(st.ProvisionedBytes)},
		{poolLimitDesc, float64(st.ProvisionLimit)},
		{poolMetaDesc, float64(st.MetadataBytes)},
		{poolVolumesDesc, float64(st.Volumes)},
		{poolSnapsDesc, float64(st.Snapshots)},
		{poolHealthyDesc, healthy},
	} {
		ch <- prometheus.MustNewConstMetric(v.desc, prometheus.GaugeValue, v.val)
	}
	if c.checker != nil {
		if o := c.checker.last.Load(); o != nil {
			ch <- prometheus.MustNewConstMetric(poolCheckDesc, prometheus.GaugeValue, float64(o.problems))
			ch <- prometheus.MustNewConstMetric(poolCheckAtDesc, prometheus.GaugeValue, float64(o.at.UnixNano())/1e9)
		}
	}
}

// exportCollector reads the data plane's export counters at each scrape (IOStats).
type exportCollector struct {
	store dataplane.Exports
	log   *slog.Logger
}

var (
	ioBytesDesc = prometheus.NewDesc("dataimage_export_io_bytes_total",
		"Bytes read and written by the kernel through the exported volumes' block devices.", []string{"op"}, nil)
	ioOpsDesc = prometheus.NewDesc("dataimage_export_io_operations_total",
		"I/O operations on exported volumes: read, write, flush, discard, write_zeroes.", []string{"op"}, nil)
	ioErrsDesc = prometheus.NewDesc("dataimage_export_io_errors_total",
		"I/O operations on exported volumes that failed (the kernel got an I/O error).", []string{"op"}, nil)
	exportedDesc = prometheus.NewDesc("dataimage_export_volumes",
		"Volumes exported as kernel block devices (staged) by the node's data plane.", nil, nil)
)

func (c exportCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ioBytesDesc
	ch <- ioOpsDesc
	ch <- ioErrsDesc
	ch <- exportedDesc
}

func (c exportCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	st, err := c.store.IOStats(ctx)
	if err != nil {
		c.log.Warn("metrics: the data plane's export counters", "err", err)
		return
	}
	for op, name := range dataplane.IOOpNames {
		ch <- prometheus.MustNewConstMetric(ioOpsDesc, prometheus.CounterValue, float64(st.Ops[op]), name)
		ch <- prometheus.MustNewConstMetric(ioErrsDesc, prometheus.CounterValue, float64(st.Errors[op]), name)
		if op == dataplane.IORead || op == dataplane.IOWrite {
			ch <- prometheus.MustNewConstMetric(ioBytesDesc, prometheus.CounterValue, float64(st.Bytes[op]), name)
		}
	}
	ch <- prometheus.MustNewConstMetric(exportedDesc, prometheus.GaugeValue, float64(st.Exported))
}
