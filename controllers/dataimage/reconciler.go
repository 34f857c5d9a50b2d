package dataimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/imagebuilder"
)

// reconciler drives DataImages: validation, build, publication as a VolumeSnapshot, lifetime
// and deletion. It keeps no state of its own between reconciles: everything is read again from
// the cluster (the DataImage's status included), so that a restarted or newly elected
// controller carries on where the previous one stopped.
type reconciler struct {
	client client.Client
	// api reads around the cache: absence is confirmed there before the controller acts on
	// it (a Job or VolumeSnapshot just created may not be in the cache yet).
	api      client.Reader
	cfg      *v1alpha1.ControllerConfig
	env      imagebuilder.ValidationEnv
	logs     LogReader
	events   recorder.EventRecorder
	interval time.Duration
	now      func() time.Time
	// registry is the cluster's image registry (registry.go); nil: none.
	registry exportset.Target
}

// state is one reconcile of one DataImage.
type state struct {
	di *v1alpha1.DataImage
	// saved is the status as last written (or read): save writes di.Status when it differs.
	saved v1alpha1.DataImageStatus
	// gone is set once the finalizer is removed: the object may no longer exist.
	gone bool
	log  logr.Logger
	// then holds what must happen once, after the status that records a change is written
	// (Events and metrics of a transition): a write that fails (a conflict) drops them, and
	// the next reconcile finds the transition again.
	then []func()
}

// afterSave runs f once the status is written.
func (st *state) afterSave(f func()) { st.then = append(st.then, f) }

// Reasons of conditions and Events that v1alpha1 does not name.
const (
	reasonSpecValid      = "SpecValid"
	reasonBuildSucceeded = "BuildSucceeded"
	reasonBuildStarted   = "BuildStarted"
	reasonBuildStep      = "BuildStep"
	reasonSnapshotLost   = "SnapshotLost"
	reasonDeletionWaits  = "DeletionWaitsForClones"
	reasonExpiredKept    = "ExpiredKeptByClones"
	reasonExpired        = "Expired"
)

// maxMessage bounds condition messages and status.message (metav1.Condition allows 32 KiB).
const maxMessage = 8 << 10

func (r *reconciler) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	// The DataImage is read from the API server, not the cache: its status is the controller's
	// memory, and a stale one (the cache not having seen the last write yet) would repeat or
	// undo a step, e.g. delete the Job of a build just started again.
	di := &v1alpha1.DataImage{}
	if err := r.api.Get(ctx, req.NamespacedName, di); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	st := &state{di: di, saved: *di.Status.DeepCopy(), log: log.FromContext(ctx)}
	var res ctrl.Result
	var err error
	switch {
	case !di.DeletionTimestamp.IsZero():
		res, err = r.finalize(ctx, st)
	case !controllerutil.ContainsFinalizer(di, v1alpha1.Finalizer):
		if err = r.addFinalizer(ctx, di); err == nil {
			res, err = r.dispatch(ctx, st)
		}
	default:
		res, err = r.dispatch(ctx, st)
	}
	if serr := r.save(ctx, st); serr != nil && err == nil {
		err = serr
	}
	if apierrors.IsConflict(err) {
		// A stale read: look again once the cache has caught up.
		st.log.V(1).Info("conflict, will retry", "error", err.Error())
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	return res, err
}

// dispatch runs the part of the life the DataImage is in.
func (r *reconciler) dispatch(ctx context.Context, st *state) (ctrl.Result, error) {
	di := st.di
	switch di.Status.Phase {
	case v1alpha1.PhaseReady, v1alpha1.PhaseExpired:
		return r.live(ctx, st)
	case v1alpha1.PhaseFailed:
		if di.Status.ObservedGeneration == di.Generation {
			// Nothing of a failed build is left behind; this finishes a cleanup that a
			// restart interrupted.
			return ctrl.Result{}, r.deleteBuild(ctx, st, cached)
		}
		// The spec changed since the failure: build again, never in what a previous build left.
		st.log.Info("spec changed after a failure, building again", "generation", di.Generation)
		if err := r.deleteBuild(ctx, st, direct); err != nil {
			return ctrl.Result{}, err
		}
		di.Status = v1alpha1.DataImageStatus{Phase: v1alpha1.PhasePending}
	}
	return r.build(ctx, st)
}

// save writes the status when it changed since it was read or last written, then runs what
// waited for it (afterSave).
func (r *reconciler) save(ctx context.Context, st *state) error {
	if st.gone || equality.Semantic.DeepEqual(st.di.Status, st.saved) {
		return nil
	}
	if err := r.client.Status().Update(ctx, st.di); err != nil {
		return fmt.Errorf("controller: update status of DataImage %s/%s: %w", st.di.Namespace, st.di.Name, err)
	}
	st.saved = *st.di.Status.DeepCopy()
	then := st.then
	st.then = nil
	for _, f := range then {
		f()
	}
	return nil
}

// setCondition sets a condition of di (its transition time changes only with its status).
func setCondition(di *v1alpha1.DataImage, typ string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&di.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: truncate(message), ObservedGeneration: di.Generation,
	})
}

// conditionReason returns the reason of a condition in status, or "".
func conditionReason(s *v1alpha1.DataImageStatus, typ string) string {
	if c := meta.FindStatusCondition(s.Conditions, typ); c != nil {
		return c.Reason
	}
	return ""
}

// setMessage sets status.message.
func setMessage(di *v1alpha1.DataImage, format string, args ...any) {
	di.Status.Message = truncate(fmt.Sprintf(format, args...))
}

// truncate keeps a message within maxMessage bytes, keeping its end (a log tail's newest lines).
func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	cut := len(s) - maxMessage + len("...")
	for cut < len(s) && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut++
	}
	return "..." + s[cut:]
}

// event records an Event about di. note is the human-readable text.
func (r *reconciler) event(di *v1alpha1.DataImage, warning bool, reason, action, note string) {
	typ := corev1.EventTypeNormal
	if warning {
		typ = corev1.EventTypeWarning
	}
	if len(note) > 1000 { // events.k8s.io limit: 1 KiB
		note = note[:997] + "..."
	}
	r.events.Eventf(di, nil, typ, reason, action, "%s", note)
}

// addFinalizer puts the clones finalizer on di before anything is built, so that its deletion
// always passes through finalize.
func (r *reconciler) addFinalizer(ctx context.Context, di *v1alpha1.DataImage) error {
	base := di.DeepCopy()
	controllerutil.AddFinalizer(di, v1alpha1.Finalizer)
	if err := r.client.Patch(ctx, di, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("controller: add finalizer to DataImage %s/%s: %w", di.Namespace, di.Name, err)
	}
	return nil
}

// removeFinalizer removes finalizer from obj with a JSON patch that tests the entry it removes,
// so that it neither needs a fresh resourceVersion nor touches other finalizers.
func (r *reconciler) removeFinalizer(ctx context.Context, obj client.Object, finalizer string) error {
	i := slices.Index(obj.GetFinalizers(), finalizer)
	if i < 0 {
		return nil
	}
	path := fmt.Sprintf("/metadata/finalizers/%d", i)
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": path, "value": finalizer},
		{"op": "remove", "path": path},
	})
	if err != nil {
		return fmt.Errorf("controller: finalizer patch: %w", err)
	}
	err = r.client.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, patch))
	if err != nil && !apierrors.IsNotFound(err) {
		kind := fmt.Sprintf("%T", obj)
		return fmt.Errorf("controller: remove finalizer %s from %s %s/%s: %w", finalizer, kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

// lookup says where getOwned reads.
type lookup int

const (
	// cached reads the cache, and asks the API server before concluding that the object does
	// not exist (the cache may not have seen a recent creation).
	cached lookup = iota
	// direct reads the API server only: the cache may still hold an object that is gone (the
	// Job of a previous build).
	direct
)

// getOwned reads the object named name in di's namespace into obj. It returns false when the
// object does not exist. An object that exists and is not controlled by di is ErrNotOwned.
func (r *reconciler) getOwned(ctx context.Context, di *v1alpha1.DataImage, name string, obj client.Object, how lookup) (bool, error) {
	key := types.NamespacedName{Namespace: di.Namespace, Name: name}
	var err error
	if how == cached {
		err = r.client.Get(ctx, key, obj)
	}
	if how == direct || apierrors.IsNotFound(err) {
		err = r.api.Get(ctx, key, obj)
	}
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("controller: get %s %s/%s: %w", kindOf(obj), di.Namespace, name, err)
	case !metav1.IsControlledBy(obj, di):
		return true, fmt.Errorf("%w: %s %s/%s is not DataImage %s's", ErrNotOwned, kindOf(obj), di.Namespace, name, di.Name)
	}
	return true, nil
}

// createOwned creates obj (controlled by di), or reads the one already there into obj.
// created says whether this call made it.
func (r *reconciler) createOwned(ctx context.Context, di *v1alpha1.DataImage, obj client.Object) (created bool, err error) {
	err = r.client.Create(ctx, obj)
	if err == nil {
		return true, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return false, fmt.Errorf("controller: create %s %s/%s: %w", kindOf(obj), obj.GetNamespace(), obj.GetName(), err)
	}
	found, err := r.getOwned(ctx, di, obj.GetName(), obj, direct)
	if err == nil && !found {
		err = fmt.Errorf("controller: create %s %s/%s: it exists, then it does not: will retry", kindOf(obj), obj.GetNamespace(), obj.GetName())
	}
	return false, err
}

// deleteBuild deletes the build Job (its pod with it) and the build PVC, if they exist and
// belong to di. With cached it reads the cache: an object it has not seen yet is deleted at a
// later reconcile (its creation brings one); direct asks the API server.
func (r *reconciler) deleteBuild(ctx context.Context, st *state, how lookup) error {
	di := st.di
	key := types.NamespacedName{Namespace: di.Namespace, Name: buildName(di)}
	var reader client.Reader = r.client
	if how == direct {
		reader = r.api
	}
	for _, obj := range []client.Object{&batchv1.Job{}, &corev1.PersistentVolumeClaim{}} {
		if err := reader.Get(ctx, key, obj); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("controller: get %s %s: %w", kindOf(obj), key, err)
		}
		if !metav1.IsControlledBy(obj, di) || !obj.GetDeletionTimestamp().IsZero() {
			continue
		}
		// Background propagation: the garbage collector deletes the Job's pods.
		err := r.client.Delete(ctx, obj, client.PropagationPolicy(metav1.DeletePropagationBackground),
			client.Preconditions{UID: ptrUID(obj.GetUID())})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("controller: delete %s %s: %w", kindOf(obj), key, err)
		}
		st.log.V(1).Info("deleted build object", "kind", kindOf(obj), "name", key.Name)
	}
	return nil
}

func ptrUID(u types.UID) *types.UID { return &u }

// kindOf names an object's Go type for messages: Job, PersistentVolumeClaim, VolumeSnapshot.
func kindOf(obj runtime.Object) string {
	switch obj.(type) {
	case *batchv1.Job:
		return "Job"
	case *corev1.PersistentVolumeClaim:
		return "PersistentVolumeClaim"
	case *corev1.PersistentVolume:
		return "PersistentVolume"
	case *snapshotv1.VolumeSnapshot:
		return "VolumeSnapshot"
	case *v1alpha1.DataImage:
		return "DataImage"
	}
	return fmt.Sprintf("%T", obj)
}

// cloneIndex indexes PVCs by the VolumeSnapshots they are made from ("namespace/name"): the
// clones of an image.
const cloneIndex = "dataimage.io/volumesnapshot-source"

// cloneIndexValues returns the VolumeSnapshots a PVC names as its dataSource or dataSourceRef
// (the latter may name another namespace).
func cloneIndexValues(obj client.Object) []string {
	pvc, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok {
		return nil
	}
	var keys []string
	add := func(group *string, kind, name, namespace string) {
		if group == nil || *group != snapshotv1.GroupName || kind != "VolumeSnapshot" || name == "" {
			return
		}
		if k := namespace + "/" + name; !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	if ds := pvc.Spec.DataSource; ds != nil {
		add(ds.APIGroup, ds.Kind, ds.Name, pvc.Namespace)
	}
	if ref := pvc.Spec.DataSourceRef; ref != nil {
		ns := pvc.Namespace
		if ref.Namespace != nil && *ref.Namespace != "" {
			ns = *ref.Namespace
		}
		add(ref.APIGroup, ref.Kind, ref.Name, ns)
	}
	return keys
}

// claimToImages maps a PVC to the DataImages it matters to: the one whose build PVC it is, and
// those whose VolumeSnapshot it clones (an image's snapshot has the image's name).
func claimToImages(_ context.Context, obj client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	if name := obj.GetLabels()[v1alpha1.LabelImage]; name != "" {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: name}})
	}
	for _, k := range cloneIndexValues(obj) {
		ns, name, _ := strings.Cut(k, "/")
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}})
	}
	return reqs
}

// podToImage maps a build pod to its DataImage.
func podToImage(_ context.Context, obj client.Object) []reconcile.Request {
	name := obj.GetLabels()[v1alpha1.LabelImage]
	if name == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: name}}}
}

// requeue is the result that looks at a running build again after the progress interval.
func (r *reconciler) requeue() ctrl.Result { return ctrl.Result{RequeueAfter: r.interval} }

// errNotOwned says whether err is ErrNotOwned.
func errNotOwned(err error) bool { return errors.Is(err, ErrNotOwned) }
