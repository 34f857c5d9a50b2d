package dataimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/internal/units"
)

// build runs the build part of the life: validate and start, follow the Job, record the result,
// then publish the image.
func (r *reconciler) build(ctx context.Context, st *state) (ctrl.Result, error) {
	di := st.di
	if meta.IsStatusConditionTrue(di.Status.Conditions, v1alpha1.ConditionBuilt) {
		// The result is recorded: the Job may be gone, the snapshot is what is left to do.
		return r.publish(ctx, st)
	}
	job := &batchv1.Job{}
	how := cached
	if di.Status.BuildJobName == "" {
		// No Job recorded: one in the cache may be a previous build's, already deleted.
		how = direct
	}
	found, err := r.getOwned(ctx, di, buildName(di), job, how)
	switch {
	case errNotOwned(err):
		return r.fail(ctx, st, &result{step: "prepare", message: err.Error()}, nil)
	case err != nil:
		return ctrl.Result{}, err
	case found:
		return r.follow(ctx, st, job)
	case di.Status.BuildJobName != "":
		return r.fail(ctx, st, &result{step: stepOr(di.Status.Step, "build"),
			message: fmt.Sprintf("the build Job %s was deleted before it finished", di.Status.BuildJobName)}, nil)
	}
	return r.start(ctx, st)
}

// start validates the spec and creates the build PVC and Job.
func (r *reconciler) start(ctx context.Context, st *state) (ctrl.Result, error) {
	di := st.di
	if di.Status.Phase == "" {
		di.Status.Phase = v1alpha1.PhasePending
	}
	p, err := r.makePlan(di)
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		r.invalid(st, refused.notAllowed[0].Reason, err.Error(), refused.notes())
		return ctrl.Result{}, nil
	case errors.Is(err, imagebuilder.ErrInvalidDefinition):
		r.invalid(st, v1alpha1.ReasonInvalidSpec, err.Error(), []note{{reason: v1alpha1.ReasonInvalidSpec, text: err.Error()}})
		return ctrl.Result{}, nil
	case err != nil:
		return ctrl.Result{}, err
	}
	di.Status.ObservedGeneration = di.Generation
	setCondition(di, v1alpha1.ConditionValid, metav1.ConditionTrue, reasonSpecValid, "the spec is valid")

	pvc := buildClaim(di, p)
	if _, err := r.createOwned(ctx, di, pvc); err != nil {
		if errNotOwned(err) {
			return r.fail(ctx, st, &result{step: "prepare", message: err.Error()}, nil)
		}
		return ctrl.Result{}, err
	}
	if !pvc.DeletionTimestamp.IsZero() {
		// A previous build's volume, on its way out (a build again after a failure): the new
		// one is made once it is gone.
		setMessage(di, "waiting for the build PVC %s of a previous build to be deleted", pvc.Name)
		return r.requeue(), nil
	}
	job := r.buildJob(di, p)
	created, err := r.createOwned(ctx, di, job)
	if err != nil {
		if errNotOwned(err) {
			return r.fail(ctx, st, &result{step: "prepare", message: err.Error()}, nil)
		}
		return ctrl.Result{}, err
	}
	if !job.DeletionTimestamp.IsZero() {
		setMessage(di, "waiting for the build Job %s of a previous build to be deleted", job.Name)
		return r.requeue(), nil
	}
	msg := fmt.Sprintf("build Job %s created (%s %s in %s); waiting for its pod", job.Name, p.engine, p.version, p.engineImage)
	if created {
		metricBuildsStarted.WithLabelValues(string(p.engine)).Inc()
		r.event(di, false, reasonBuildStarted, "Build", msg)
		st.log.Info("build started", "job", job.Name, "engine", p.engine, "version", p.version, "image", p.engineImage, "node", p.node)
	}
	di.Status.Phase = v1alpha1.PhaseBuilding
	di.Status.BuildJobName = job.Name
	di.Status.NodeName = p.node
	di.Status.Step, di.Status.BytesDone, di.Status.BytesTotal = "", 0, 0
	setCondition(di, v1alpha1.ConditionBuilt, metav1.ConditionFalse, v1alpha1.ReasonBuilding, msg)
	setCondition(di, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonBuilding, "the image is being built")
	setMessage(di, "%s", msg)
	return r.requeue(), nil
}

// note is the reason and text of an Event.
type note struct{ reason, text string }

// invalid records a spec that is not built: phase Failed, Valid=False with reason and every
// problem in msg, and (once, when the condition changes) a Warning Event for each of notes:
// InvalidSpec, or one per rule of the configuration that refuses values (HostPathNotAllowed,
// ImageNotAllowed), naming the rule and the values. Nothing is created; a new generation of the
// spec is checked again.
func (r *reconciler) invalid(st *state, reason, msg string, notes []note) {
	di := st.di
	if c := meta.FindStatusCondition(di.Status.Conditions, v1alpha1.ConditionValid); c == nil || c.Status != metav1.ConditionFalse ||
		c.Reason != reason || c.Message != truncate(msg) {
		st.afterSave(func() {
			for _, n := range notes {
				r.event(di, true, n.reason, "Validate", n.text)
			}
			st.log.Info("spec refused", "reason", reason, "problems", msg)
		})
	}
	di.Status.Phase = v1alpha1.PhaseFailed
	di.Status.ObservedGeneration = di.Generation
	setCondition(di, v1alpha1.ConditionValid, metav1.ConditionFalse, reason, msg)
	ready := "the spec is invalid: nothing is built"
	if reason != v1alpha1.ReasonInvalidSpec {
		ready = "the spec names what the cluster's configuration does not allow: nothing is built"
	}
	setCondition(di, v1alpha1.ConditionReady, metav1.ConditionFalse, reason, ready)
	meta.RemoveStatusCondition(&di.Status.Conditions, v1alpha1.ConditionBuilt)
	setMessage(di, "%s", msg)
}

// follow looks at a running build: its pod, its progress (the log's last build event) and,
// once it has ended, its result.
func (r *reconciler) follow(ctx context.Context, st *state, job *batchv1.Job) (ctrl.Result, error) {
	di := st.di
	di.Status.Phase = v1alpha1.PhaseBuilding
	di.Status.BuildJobName = job.Name
	var pods corev1.PodList
	if job.Spec.Selector != nil {
		sel, err := metav1.LabelSelectorAsSelector(job.Spec.Selector)
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("controller: selector of Job %s/%s: %w", job.Namespace, job.Name, err)
		}
		if err := r.client.List(ctx, &pods, client.InNamespace(job.Namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return ctrl.Result{}, fmt.Errorf("controller: list pods of Job %s/%s: %w", job.Namespace, job.Name, err)
		}
	}
	pod := buildPod(pods.Items)
	var blog buildLog
	if pod != nil {
		if pod.Spec.NodeName != "" {
			di.Status.NodeName = pod.Spec.NodeName
		}
		if containerStarted(pod, buildContainerName) {
			b, err := r.logs.TailLog(ctx, pod.Namespace, pod.Name, buildContainerName, tailLines)
			if err != nil {
				// Progress is for people; the result comes from the pod's status.
				st.log.V(1).Info("no build progress", "pod", pod.Name, "error", err.Error())
			} else {
				blog = parseBuildLog(b)
				r.progress(st, blog.last)
			}
		}
	}
	res := buildResult(job, pod, di.Status.Step, blog.engine)
	if res == nil {
		switch {
		case pod == nil:
			setMessage(di, "build Job %s: waiting for its pod", job.Name)
		case waitingMessage(pod) != "":
			setMessage(di, "%s", waitingMessage(pod))
		case blog.last == nil && blog.unreadable != nil:
			setMessage(di, "build pod %s: %s; its progress is not shown: %v", pod.Name, strings.ToLower(string(pod.Status.Phase)), blog.unreadable)
		case blog.last == nil:
			setMessage(di, "build pod %s: %s", pod.Name, strings.ToLower(string(pod.Status.Phase)))
		}
		return r.requeue(), nil
	}
	if !res.ok {
		return r.fail(ctx, st, res, job)
	}
	return r.built(ctx, st, res, job)
}

// progress records the last build event in status, with an Event when the step changes.
func (r *reconciler) progress(st *state, ev *wire.Event) {
	if ev == nil {
		return
	}
	di := st.di
	msg := "step " + ev.Step
	if ev.Message != "" {
		msg += ": " + ev.Message
	}
	if ev.Total > 0 {
		msg += fmt.Sprintf(" (%s of %s)", units.FormatBytes(ev.Done), units.FormatBytes(ev.Total))
	}
	if ev.Step != di.Status.Step {
		st.afterSave(func() {
			r.event(di, false, reasonBuildStep, "Build", msg)
			st.log.V(1).Info("build step", "step", ev.Step, "message", ev.Message)
		})
	}
	di.Status.Step, di.Status.BytesDone, di.Status.BytesTotal = ev.Step, ev.Done, ev.Total
	setCondition(di, v1alpha1.ConditionBuilt, metav1.ConditionFalse, v1alpha1.ReasonBuilding, msg)
	setMessage(di, "building: %s", msg)
}

func stepOr(step, otherwise string) string {
	if step != "" {
		return step
	}
	return otherwise
}

// fail records a failed build (phase Failed, Built=False reason BuildFailed with the step and
// the engine's log tail), writes it, and only then deletes the build's Job and PVC: the
// failure is never lost with the Job. job is nil when no Job exists.
func (r *reconciler) fail(ctx context.Context, st *state, res *result, job *batchv1.Job) (ctrl.Result, error) {
	di := st.di
	msg := fmt.Sprintf("build failed at step %s: %s", res.step, res.message)
	if tail := strings.TrimSpace(res.logTail); tail != "" {
		msg += "\nlog tail:\n" + tail
	}
	di.Status.Phase = v1alpha1.PhaseFailed
	di.Status.Step = res.step
	di.Status.BuildJobName = ""
	setCondition(di, v1alpha1.ConditionBuilt, metav1.ConditionFalse, v1alpha1.ReasonBuildFailed, msg)
	setCondition(di, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonBuildFailed, "the build failed")
	setMessage(di, "%s", msg)
	if err := r.save(ctx, st); err != nil {
		return ctrl.Result{}, err
	}
	engine := string(di.Spec.NormalizedEngine())
	metricBuildsFailed.WithLabelValues(engine).Inc()
	if job != nil && !res.finished.IsZero() {
		metricBuildDuration.WithLabelValues(engine, "failed").Observe(res.finished.Sub(job.CreationTimestamp.Time).Seconds())
	}
	r.event(di, true, v1alpha1.ReasonBuildFailed, "Build", msg)
	st.log.Info("build failed", "step", res.step, "message", res.message)
	return ctrl.Result{}, r.deleteBuild(ctx, st, cached)
}

// built records a successful build's result in status and writes it before anything else: from
// then on the Job is no longer needed.
func (r *reconciler) built(ctx context.Context, st *state, res *result, job *batchv1.Job) (ctrl.Result, error) {
	di := st.di
	out := res.outcome
	finished := res.finished
	if finished.IsZero() {
		finished = r.now()
	}
	di.Status.BuiltAt = &metav1.Time{Time: finished}
	di.Status.EngineVersion = out.EngineVersion
	di.Status.DataStateTime = nil
	if !out.DataStateTime.IsZero() {
		di.Status.DataStateTime = &metav1.Time{Time: out.DataStateTime}
	}
	di.Status.LogPosition = out.LogPosition
	took := finished.Sub(job.CreationTimestamp.Time)
	msg := fmt.Sprintf("built with %s %s in %s", di.Spec.NormalizedEngine(), out.EngineVersion, took.Round(1e9))
	setCondition(di, v1alpha1.ConditionBuilt, metav1.ConditionTrue, reasonBuildSucceeded, msg)
	setMessage(di, "%s; creating the VolumeSnapshot", msg)
	if err := r.save(ctx, st); err != nil {
		return ctrl.Result{}, err
	}
	engine := string(di.Spec.NormalizedEngine())
	metricBuildsSucceeded.WithLabelValues(engine).Inc()
	metricBuildDuration.WithLabelValues(engine, "succeeded").Observe(took.Seconds())
	r.event(di, false, reasonBuildSucceeded, "Build", msg)
	st.log.Info("build succeeded", "engineVersion", out.EngineVersion, "seconds", took.Seconds())
	return r.publish(ctx, st)
}

// publish creates the VolumeSnapshot that is the image and, once it is ready to use, deletes
// the build's Job and PVC and makes the image Ready.
func (r *reconciler) publish(ctx context.Context, st *state) (ctrl.Result, error) {
	di := st.di
	di.Status.Phase = v1alpha1.PhaseBuilding
	snap := &snapshotv1.VolumeSnapshot{}
	found, err := r.getOwned(ctx, di, di.Name, snap, cached)
	switch {
	case errNotOwned(err):
		return r.fail(ctx, st, &result{step: "snapshot", message: err.Error()}, nil)
	case err != nil:
		return ctrl.Result{}, err
	case !found:
		snap, err = r.snapshot(di)
		if err != nil {
			return ctrl.Result{}, err
		}
		if _, err := r.createOwned(ctx, di, snap); err != nil {
			if errNotOwned(err) {
				return r.fail(ctx, st, &result{step: "snapshot", message: err.Error()}, nil)
			}
			return ctrl.Result{}, err
		}
		r.event(di, false, v1alpha1.ReasonSnapshotPending, "Publish", "VolumeSnapshot "+snap.Name+" created")
	case !snap.DeletionTimestamp.IsZero():
		if err := r.release(ctx, snap); err != nil {
			return ctrl.Result{}, err
		}
		return r.fail(ctx, st, &result{step: "snapshot", message: fmt.Sprintf("VolumeSnapshot %s was deleted before it was ready", snap.Name)}, nil)
	}
	di.Status.VolumeSnapshotName = snap.Name
	if snap.Status == nil || snap.Status.ReadyToUse == nil || !*snap.Status.ReadyToUse {
		msg := fmt.Sprintf("waiting for VolumeSnapshot %s to be ready to use", snap.Name)
		if snap.Status != nil && snap.Status.Error != nil && snap.Status.Error.Message != nil {
			msg += ": " + *snap.Status.Error.Message
		}
		setCondition(di, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSnapshotPending, msg)
		setMessage(di, "%s", msg)
		return r.requeue(), nil
	}
	if err := r.deleteBuild(ctx, st, cached); err != nil {
		return ctrl.Result{}, err
	}
	size := snap.Status.RestoreSize
	if size == nil || size.IsZero() {
		q := r.volumeSize(di)
		size = &q
	}
	di.Status.Phase = v1alpha1.PhaseReady
	di.Status.BuildJobName = ""
	di.Status.Size = ptrQuantity(*size)
	msg := fmt.Sprintf("VolumeSnapshot %s is ready to use", snap.Name)
	setCondition(di, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonSnapshotReady, msg)
	st.afterSave(func() {
		r.event(di, false, v1alpha1.ReasonSnapshotReady, "Publish", msg)
		st.log.Info("image ready", "volumeSnapshot", snap.Name, "size", size.String())
	})
	return r.live(ctx, st)
}

func ptrQuantity(q resource.Quantity) *resource.Quantity { return &q }

// volumeSize is the image's volume size: the spec's or the configuration's default.
func (r *reconciler) volumeSize(di *v1alpha1.DataImage) resource.Quantity {
	if di.Spec.VolumeSize != nil {
		return di.Spec.VolumeSize.DeepCopy()
	}
	return r.cfg.DefaultVolumeSize.DeepCopy()
}

// snapshot is the VolumeSnapshot that is the image: of the build PVC, with the image's tags as
// labels and its engine, version and data-state time as annotations, and the clones finalizer.
func (r *reconciler) snapshot(di *v1alpha1.DataImage) (*snapshotv1.VolumeSnapshot, error) {
	labels := map[string]string{v1alpha1.LabelImage: di.Name}
	for _, tag := range di.Spec.Tags {
		if k := v1alpha1.LabelTagPrefix + tag; len(validation.IsQualifiedName(k)) == 0 {
			labels[k] = ""
		}
	}
	tags, err := json.Marshal(append([]string{}, di.Spec.Tags...))
	if err != nil {
		return nil, fmt.Errorf("controller: encode tags of DataImage %s/%s: %w", di.Namespace, di.Name, err)
	}
	ann := map[string]string{
		v1alpha1.AnnotationEngine:        string(di.Spec.NormalizedEngine()),
		v1alpha1.AnnotationEngineVersion: di.Status.EngineVersion,
		v1alpha1.AnnotationTags:          string(tags),
	}
	if t := di.Status.DataStateTime; t != nil {
		ann[v1alpha1.AnnotationDataStateTime] = t.UTC().Format(time.RFC3339)
	}
	if p := di.Status.LogPosition; p != "" {
		ann[v1alpha1.AnnotationLogPosition] = p
	}
	source := buildName(di)
	class := r.cfg.VolumeSnapshotClassName
	return &snapshotv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{
			Name:            di.Name,
			Namespace:       di.Namespace,
			Labels:          labels,
			Annotations:     ann,
			Finalizers:      []string{v1alpha1.Finalizer},
			OwnerReferences: []metav1.OwnerReference{ownerRef(di)},
		},
		Spec: snapshotv1.VolumeSnapshotSpec{
			Source:                  snapshotv1.VolumeSnapshotSource{PersistentVolumeClaimName: &source},
			VolumeSnapshotClassName: &class,
		},
	}, nil
}
