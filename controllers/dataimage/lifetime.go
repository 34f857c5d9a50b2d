package dataimage

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
)

// live follows a built image (phase Ready or Expired): its lifetime, its clones, its snapshot.
//
// The expiry is builtAt + the spec's lifetime, computed again at each reconcile, so that a
// lifetime changed in the spec takes effect (even after expiry, while clones keep the snapshot).
// At expiry the VolumeSnapshot is deleted unless PVCs clone it; then the image stays Expired
// with reason ClonesExist, and the PVC watch brings it back here when clones go.
func (r *reconciler) live(ctx context.Context, st *state) (ctrl.Result, error) {
	di := st.di
	if err := r.deleteBuild(ctx, st, cached); err != nil {
		return ctrl.Result{}, err
	}
	di.Status.ObservedGeneration = di.Generation
	lifetime, err := di.Spec.ResolveLifetime(r.env)
	if err != nil {
		setCondition(di, v1alpha1.ConditionValid, metav1.ConditionFalse, v1alpha1.ReasonInvalidSpec,
			fmt.Sprintf("%v (the expiry stays as it was)", err))
	} else {
		setCondition(di, v1alpha1.ConditionValid, metav1.ConditionTrue, reasonSpecValid, "the spec is valid")
		di.Status.ExpiresAt = nil
		if lifetime.Expires() && di.Status.BuiltAt != nil {
			di.Status.ExpiresAt = &metav1.Time{Time: di.Status.BuiltAt.Add(lifetime.Duration)}
		}
	}
	now := r.now()
	expired := di.Status.ExpiresAt != nil && !now.Before(di.Status.ExpiresAt.Time)

	snap := &snapshotv1.VolumeSnapshot{}
	found, err := r.getOwned(ctx, di, di.Name, snap, cached)
	if err != nil && !errNotOwned(err) {
		return ctrl.Result{}, err
	}
	if !found || errNotOwned(err) {
		di.Status.Clones = 0
		if expired {
			r.expired(st, "")
		} else {
			r.lost(st, fmt.Sprintf("VolumeSnapshot %s/%s no longer exists: it was deleted outside the controller", di.Namespace, di.Name))
		}
		return ctrl.Result{}, nil
	}
	clones, err := r.clones(ctx, snap, expired || !snap.DeletionTimestamp.IsZero())
	if err != nil {
		return ctrl.Result{}, err
	}
	di.Status.Clones = int32(len(clones))

	switch {
	case expired && len(clones) > 0:
		msg := fmt.Sprintf("lifetime ended at %s; VolumeSnapshot %s is kept while %s", di.Status.ExpiresAt.UTC().Format(time.RFC3339), snap.Name, clonesPhrase(clones))
		if conditionReason(&st.saved, v1alpha1.ConditionExpired) != v1alpha1.ReasonClonesExist {
			st.afterSave(func() {
				r.event(di, false, reasonExpiredKept, "Expire", msg)
				st.log.Info("expired, kept by clones", "clones", len(clones))
			})
		}
		di.Status.Phase = v1alpha1.PhaseExpired
		setCondition(di, v1alpha1.ConditionExpired, metav1.ConditionTrue, v1alpha1.ReasonClonesExist, msg)
		setCondition(di, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonClonesExist, "the image has expired; its VolumeSnapshot is kept for its clones")
		setMessage(di, "%s", msg)
		return ctrl.Result{}, nil
	case expired:
		if err := r.release(ctx, snap); err != nil {
			return ctrl.Result{}, err
		}
		r.withdraw(ctx, st)
		r.expired(st, snap.Name)
		return ctrl.Result{}, nil
	case !snap.DeletionTimestamp.IsZero() && len(clones) > 0:
		setMessage(di, "VolumeSnapshot %s is being deleted; it is kept while %s", snap.Name, clonesPhrase(clones))
		return ctrl.Result{}, nil
	case !snap.DeletionTimestamp.IsZero():
		if err := r.release(ctx, snap); err != nil {
			return ctrl.Result{}, err
		}
		r.withdraw(ctx, st)
		r.lost(st, fmt.Sprintf("VolumeSnapshot %s was deleted outside the controller", snap.Name))
		return ctrl.Result{}, nil
	}

	if di.Status.Phase == v1alpha1.PhaseExpired {
		st.log.Info("lifetime extended, the image is ready again")
	}
	di.Status.Phase = v1alpha1.PhaseReady
	meta.RemoveStatusCondition(&di.Status.Conditions, v1alpha1.ConditionExpired)
	setCondition(di, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonSnapshotReady,
		fmt.Sprintf("VolumeSnapshot %s is ready to use", snap.Name))
	msg := fmt.Sprintf("ready: PVCs clone it with dataSource VolumeSnapshot %s", snap.Name)
	if len(clones) > 0 {
		msg += fmt.Sprintf(" (%s)", clonesPhrase(clones))
	}
	if di.Status.ExpiresAt != nil {
		msg += "; expires at " + di.Status.ExpiresAt.UTC().Format(time.RFC3339)
	}
	again, where, err := r.distribute(ctx, st, snap)
	if where != "" {
		msg += "; " + where
	}
	setMessage(di, "%s", msg)
	if err != nil {
		return ctrl.Result{}, err
	}
	if di.Status.ExpiresAt != nil {
		// Wake up at the expiry; a little late rather than early.
		if untilExpiry := di.Status.ExpiresAt.Sub(now) + 100*time.Millisecond; again == 0 || untilExpiry < again {
			again = untilExpiry
		}
	}
	return ctrl.Result{RequeueAfter: again}, nil
}

// expired records an image whose lifetime ended and whose snapshot is gone (or going).
func (r *reconciler) expired(st *state, snapName string) {
	di := st.di
	msg := "lifetime ended"
	if di.Status.ExpiresAt != nil {
		msg += " at " + di.Status.ExpiresAt.UTC().Format(time.RFC3339)
	}
	if snapName != "" {
		msg += "; VolumeSnapshot " + snapName + " deleted"
	}
	if conditionReason(&st.saved, v1alpha1.ConditionExpired) != v1alpha1.ReasonSnapshotDeleted {
		st.afterSave(func() {
			metricImagesExpired.Inc()
			r.event(di, false, reasonExpired, "Expire", msg)
			st.log.Info("expired, snapshot deleted", "volumeSnapshot", snapName)
		})
	}
	if c := meta.FindStatusCondition(di.Status.Conditions, v1alpha1.ConditionExpired); c != nil && c.Reason == v1alpha1.ReasonSnapshotDeleted {
		msg = c.Message // keep the first account
	}
	di.Status.Phase = v1alpha1.PhaseExpired
	di.Status.Clones = 0
	di.Status.VolumeSnapshotName = ""
	di.Status.Nodes = nil
	setCondition(di, v1alpha1.ConditionExpired, metav1.ConditionTrue, v1alpha1.ReasonSnapshotDeleted, msg)
	setCondition(di, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSnapshotDeleted, msg)
	setMessage(di, "%s", msg)
}

// lost records a built image whose snapshot was deleted by someone else before its expiry.
func (r *reconciler) lost(st *state, msg string) {
	di := st.di
	if di.Status.Phase != v1alpha1.PhaseFailed {
		st.afterSave(func() {
			r.event(di, true, reasonSnapshotLost, "Publish", msg)
			st.log.Info("snapshot lost", "message", msg)
		})
	}
	di.Status.Phase = v1alpha1.PhaseFailed
	di.Status.VolumeSnapshotName = ""
	di.Status.Nodes = nil
	setCondition(di, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSnapshotDeleted, msg)
	setMessage(di, "%s", msg)
}

// finalize lets a deleted DataImage go once no PVC clones its snapshot: it deletes the build's
// objects and the snapshot, then removes the finalizer.
func (r *reconciler) finalize(ctx context.Context, st *state) (ctrl.Result, error) {
	di := st.di
	if !slices.Contains(di.Finalizers, v1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	snap := &snapshotv1.VolumeSnapshot{}
	found, err := r.getOwned(ctx, di, di.Name, snap, cached)
	if err != nil && !errNotOwned(err) {
		return ctrl.Result{}, err
	}
	if errNotOwned(err) {
		found = false // not the image's: not ours to delete
	}
	if found {
		clones, err := r.clones(ctx, snap, true)
		if err != nil {
			return ctrl.Result{}, err
		}
		if len(clones) > 0 {
			msg := fmt.Sprintf("deletion waits: VolumeSnapshot %s is kept while %s", snap.Name, clonesPhrase(clones))
			if int(st.saved.Clones) != len(clones) || !strings.HasPrefix(st.saved.Message, "deletion waits") {
				st.afterSave(func() {
					r.event(di, false, reasonDeletionWaits, "Delete", msg)
					st.log.Info("deletion waits for clones", "clones", len(clones))
				})
			}
			di.Status.Clones = int32(len(clones))
			setMessage(di, "%s", msg)
			return ctrl.Result{}, nil
		}
	}
	if err := r.deleteBuild(ctx, st, direct); err != nil {
		return ctrl.Result{}, err
	}
	if found {
		if err := r.release(ctx, snap); err != nil {
			return ctrl.Result{}, err
		}
	}
	r.withdraw(ctx, st)
	if err := r.removeFinalizer(ctx, di, v1alpha1.Finalizer); err != nil {
		return ctrl.Result{}, err
	}
	st.gone = true
	st.log.Info("deleted", "volumeSnapshot", found)
	return ctrl.Result{}, nil
}

// clones returns the PVCs (namespace/name) made from snap, whatever their state: a PVC being
// deleted still counts until it is gone. It reads the cache (an index of the claims by
// source); with confirmNone, when the cache finds none, the claims of snap's namespace are
// listed from the API server before the answer is trusted: "none" lets the snapshot be deleted,
// and the cache may not have seen a clone just made.
func (r *reconciler) clones(ctx context.Context, snap *snapshotv1.VolumeSnapshot, confirmNone bool) ([]string, error) {
	var list corev1.PersistentVolumeClaimList
	key := snap.Namespace + "/" + snap.Name
	if err := r.client.List(ctx, &list, client.MatchingFields{cloneIndex: key}); err != nil {
		return nil, fmt.Errorf("controller: list clones of VolumeSnapshot %s: %w", key, err)
	}
	if len(list.Items) == 0 && confirmNone {
		var all corev1.PersistentVolumeClaimList
		if err := r.api.List(ctx, &all, client.InNamespace(snap.Namespace)); err != nil {
			return nil, fmt.Errorf("controller: list clones of VolumeSnapshot %s: %w", key, err)
		}
		for _, pvc := range all.Items {
			if slices.Contains(cloneIndexValues(&pvc), key) {
				list.Items = append(list.Items, pvc)
			}
		}
	}
	names := make([]string, 0, len(list.Items))
	for _, pvc := range list.Items {
		name := pvc.Name
		if pvc.Namespace != snap.Namespace {
			name = pvc.Namespace + "/" + pvc.Name
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names, nil
}

// clonesPhrase says how many PVCs clone an image, naming the first few.
func clonesPhrase(names []string) string {
	const shown = 5
	s := fmt.Sprintf("%d PVC(s) clone it: %s", len(names), strings.Join(names[:min(len(names), shown)], ", "))
	if len(names) > shown {
		s += fmt.Sprintf(" and %d more", len(names)-shown)
	}
	return s
}

// release deletes the image's snapshot and removes the clones finalizer from it, in that order
// (so that it is never left unprotected and alive). Both steps are idempotent.
func (r *reconciler) release(ctx context.Context, snap *snapshotv1.VolumeSnapshot) error {
	if snap.DeletionTimestamp.IsZero() {
		err := r.client.Delete(ctx, snap, client.Preconditions{UID: ptrUID(snap.UID)})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("controller: delete VolumeSnapshot %s/%s: %w", snap.Namespace, snap.Name, err)
		}
	}
	return r.removeFinalizer(ctx, snap, v1alpha1.Finalizer)
}
