// Package resize is the controller side of the expansion of csi.dataimage.io volumes
// (docs/kubernetes.md, "Volume expansion"). Expansion is node-only: every node runs its own CSI
// endpoint, which the external-resizer sidecar (one endpoint per deployment) cannot reach, so
// this reconciler does for bound claims of the driver's volumes the bookkeeping the
// external-resizer does for a driver without controller expansion, and the kubelet then calls
// NodeExpandVolume on the volume's node (see resizer for the steps).
//
// It owns that bookkeeping and its metric; it knows the driver only by name (driver/wellknown)
// and nothing of DataImages, the block store or the node.
package resize

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// ControllerName is the resizer's name in the manager: its logs and controller-runtime's
// metrics (controller="volume-expansion").
const ControllerName = "volume-expansion"

// Options configure the resizer.
type Options struct {
	// Reporter is the reporting controller of the resizer's Events and names it in their notes:
	// the process's name (dataimage-controller). Required.
	Reporter string
}

// Setup adds the resizer to mgr. It watches PersistentVolumeClaims and PersistentVolumes; the
// manager's scheme must hold Kubernetes' core types.
func Setup(mgr manager.Manager, opts Options) error {
	if opts.Reporter == "" {
		return errors.New("resize: options: no reporter")
	}
	r := &resizer{client: mgr.GetClient(), events: mgr.GetEventRecorder(opts.Reporter), reporter: opts.Reporter}
	err := ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		For(&corev1.PersistentVolumeClaim{}).
		Watches(&corev1.PersistentVolume{}, handler.EnqueueRequestsFromMapFunc(volumeToClaim)).
		Complete(r)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	return nil
}
