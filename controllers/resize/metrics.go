package resize

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// metricVolumeExpansions counts what this process handed to the nodes; it is served by the
// manager's metrics endpoint (controller-runtime's registry). Its name is the one the DataImage
// controller's binary has always served.
var metricVolumeExpansions = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "dataimage_controller_volume_expansions_total",
	Help: "Expansions of csi.dataimage.io claims handed to the node (NodeResizePending).",
})

func init() {
	metrics.Registry.MustRegister(metricVolumeExpansions)
}
