package resize

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/dataimage/dataimage/driver/wellknown"
)

// resizer is the controller part of the expansion of csi.dataimage.io volumes
// (docs/kubernetes.md, "Volume expansion"). The external-resizer talks to one CSI endpoint and
// every node here has its own, so expansion is node-only: the resizer does the bookkeeping the
// external-resizer does for a driver without controller expansion, and the kubelet then calls
// NodeExpandVolume on the volume's node.
//
// For a bound claim whose request exceeds status.capacity:
//  1. claim status: allocatedResources.storage = the request, allocatedResourceStatuses.storage
//     = ControllerResizeInProgress (condition Resizing);
//  2. the PV's spec.capacity.storage = the request (never lowered);
//  3. claim status: allocatedResourceStatuses.storage = NodeResizePending (condition
//     FileSystemResizePending), with an Event.
//
// Each step is skipped when already done, so a restart between two steps resumes. A claim the
// node is expanding (NodeResizePending, NodeResizeInProgress) to at least its request, or that
// the node found infeasible at its current request, is left alone: the kubelet owns it.
type resizer struct {
	client client.Client
	events recorder.EventRecorder
	// reporter names the process in the Events' notes (Options.Reporter).
	reporter string
}

// Event reasons of the resizer, as the external-resizer names them.
const (
	reasonResizing                 = "Resizing"
	reasonFileSystemResizeRequired = "FileSystemResizeRequired"
)

func (r *resizer) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := r.client.Get(ctx, req.NamespacedName, pvc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if pvc.Spec.VolumeName == "" || pvc.Status.Phase != corev1.ClaimBound || !pvc.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	requested, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	capacity := pvc.Status.Capacity[corev1.ResourceStorage]
	if !ok || requested.Cmp(capacity) <= 0 {
		return ctrl.Result{}, nil
	}
	pv := &corev1.PersistentVolume{}
	if err := r.client.Get(ctx, types.NamespacedName{Name: pvc.Spec.VolumeName}, pv); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("resize: get PersistentVolume %s of claim %s: %w", pvc.Spec.VolumeName, req.NamespacedName, err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != wellknown.DriverName {
		return ctrl.Result{}, nil
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.UID != pvc.UID || ref.Namespace != pvc.Namespace || ref.Name != pvc.Name {
		return ctrl.Result{}, nil // not (yet) bound both ways
	}

	status := pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage]
	allocated, hasAllocated := pvc.Status.AllocatedResources[corev1.ResourceStorage]
	switch status {
	case corev1.PersistentVolumeClaimNodeResizePending, corev1.PersistentVolumeClaimNodeResizeInProgress:
		if hasAllocated && allocated.Cmp(requested) >= 0 {
			return ctrl.Result{}, nil
		}
	case corev1.PersistentVolumeClaimNodeResizeInfeasible:
		if hasAllocated && allocated.Cmp(requested) == 0 {
			return ctrl.Result{}, nil
		}
	}
	lg := log.FromContext(ctx).WithValues("volume", pv.Name, "size", requested.String())

	// 1. The claim says what is being allocated.
	if status != corev1.PersistentVolumeClaimControllerResizeInProgress || !hasAllocated || allocated.Cmp(requested) != 0 {
		base := pvc.DeepCopy()
		setAllocated(pvc, requested, corev1.PersistentVolumeClaimControllerResizeInProgress)
		setClaimCondition(pvc, corev1.PersistentVolumeClaimResizing, "")
		if err := r.client.Status().Patch(ctx, pvc, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
			return r.conflict(ctx, fmt.Errorf("resize: mark claim %s resizing: %w", req.NamespacedName, err))
		}
		r.events.Eventf(pvc, pv, corev1.EventTypeNormal, reasonResizing, "Resize",
			"resizing volume %s to %s (node-only expansion by %s)", pv.Name, requested.String(), r.reporter)
	}

	// 2. The volume's size.
	if have := pv.Spec.Capacity[corev1.ResourceStorage]; have.Cmp(requested) < 0 {
		base := pv.DeepCopy()
		if pv.Spec.Capacity == nil {
			pv.Spec.Capacity = corev1.ResourceList{}
		}
		pv.Spec.Capacity[corev1.ResourceStorage] = requested
		if err := r.client.Patch(ctx, pv, client.MergeFrom(base)); err != nil {
			return r.conflict(ctx, fmt.Errorf("resize: set capacity of PersistentVolume %s: %w", pv.Name, err))
		}
	}

	// 3. The node's turn.
	base := pvc.DeepCopy()
	setAllocated(pvc, requested, corev1.PersistentVolumeClaimNodeResizePending)
	setClaimCondition(pvc, corev1.PersistentVolumeClaimFileSystemResizePending,
		"Waiting for the node to expand the volume (at once when it is mounted, else when a pod mounts it).")
	if err := r.client.Status().Patch(ctx, pvc, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return r.conflict(ctx, fmt.Errorf("resize: mark claim %s for node expansion: %w", req.NamespacedName, err))
	}
	metricVolumeExpansions.Inc()
	r.events.Eventf(pvc, pv, corev1.EventTypeNormal, reasonFileSystemResizeRequired, "Resize",
		"volume %s is %s in the API; the node expands the volume and its file system", pv.Name, requested.String())
	lg.Info("volume expansion handed to the node")
	return ctrl.Result{}, nil
}

// conflict turns a conflict (a stale read) into a quiet retry.
func (r *resizer) conflict(ctx context.Context, err error) (ctrl.Result, error) {
	if apierrors.IsConflict(err) {
		log.FromContext(ctx).V(1).Info("conflict, will retry", "error", err.Error())
		return ctrl.Result{RequeueAfter: 500 * time.Millisecond}, nil
	}
	return ctrl.Result{}, err
}

// setAllocated sets the storage entries of allocatedResources and allocatedResourceStatuses.
func setAllocated(pvc *corev1.PersistentVolumeClaim, size resource.Quantity, status corev1.ClaimResourceStatus) {
	if pvc.Status.AllocatedResources == nil {
		pvc.Status.AllocatedResources = corev1.ResourceList{}
	}
	pvc.Status.AllocatedResources[corev1.ResourceStorage] = size
	if pvc.Status.AllocatedResourceStatuses == nil {
		pvc.Status.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{}
	}
	pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage] = status
}

// setClaimCondition makes typ the claim's only resize condition (Resizing or
// FileSystemResizePending), true, keeping its transition time when it is already there.
func setClaimCondition(pvc *corev1.PersistentVolumeClaim, typ corev1.PersistentVolumeClaimConditionType, message string) {
	var out []corev1.PersistentVolumeClaimCondition
	var had *corev1.PersistentVolumeClaimCondition
	for i, c := range pvc.Status.Conditions {
		switch c.Type {
		case typ:
			had = &pvc.Status.Conditions[i]
		case corev1.PersistentVolumeClaimResizing, corev1.PersistentVolumeClaimFileSystemResizePending:
		default:
			out = append(out, c)
		}
	}
	c := corev1.PersistentVolumeClaimCondition{Type: typ, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(), Message: message}
	if had != nil && had.Status == corev1.ConditionTrue {
		c.LastTransitionTime = had.LastTransitionTime
	}
	pvc.Status.Conditions = append(out, c)
}

// volumeToClaim maps a csi.dataimage.io PV to the claim bound to it.
func volumeToClaim(_ context.Context, obj client.Object) []reconcile.Request {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != wellknown.DriverName || pv.Spec.ClaimRef == nil {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: pv.Spec.ClaimRef.Namespace, Name: pv.Spec.ClaimRef.Name}}}
}
