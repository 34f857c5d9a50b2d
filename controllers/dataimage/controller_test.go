package dataimage

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

func condition(di *v1alpha1.DataImage, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(di.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func TestBuildSucceeds(t *testing.T) {
	h := newHarness(t)
	started := testutil.ToFloat64(metricBuildsStarted.WithLabelValues("postgres"))
	succeeded := testutil.ToFloat64(metricBuildsSucceeded.WithLabelValues("postgres"))
	di := h.image("sales")
	h.create(di)

	// The build PVC and Job, as docs/kubernetes.md describes them.
	job := h.job("sales")
	pvc := &corev1.PersistentVolumeClaim{}
	if err := h.admin.Get(h.ctx, h.key("sales-build"), pvc); err != nil {
		t.Fatal(err)
	}
	if got := *pvc.Spec.StorageClassName; got != "dataimage" {
		t.Errorf("build PVC class %q, want dataimage", got)
	}
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("2Gi")) != 0 {
		t.Errorf("build PVC size %s, want 2Gi", got.String())
	}
	if !reflect.DeepEqual(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) || pvc.Labels[v1alpha1.LabelImage] != "sales" {
		t.Errorf("build PVC access modes %v labels %v", pvc.Spec.AccessModes, pvc.Labels)
	}
	checkJob(t, h, job)

	got := h.waitImage("sales", "Building", phaseIs(v1alpha1.PhaseBuilding))
	if !strings.Contains(strings.Join(got.Finalizers, ","), v1alpha1.Finalizer) {
		t.Errorf("finalizers %v, want %s", got.Finalizers, v1alpha1.Finalizer)
	}
	if c := condition(got, v1alpha1.ConditionValid); c.Status != metav1.ConditionTrue {
		t.Errorf("Valid condition %+v", c)
	}
	if c := condition(got, v1alpha1.ConditionBuilt); c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonBuilding {
		t.Errorf("Built condition %+v", c)
	}
	if got.Status.BuildJobName != "sales-build" || got.Status.ObservedGeneration != got.Generation {
		t.Errorf("buildJobName %q observedGeneration %d (generation %d)", got.Status.BuildJobName, got.Status.ObservedGeneration, got.Generation)
	}
	if d := testutil.ToFloat64(metricBuildsStarted.WithLabelValues("postgres")) - started; d != 1 {
		t.Errorf("builds started grew by %v, want 1", d)
	}

	// Progress: the last build event of the pod's log, behind an engine log line and a line
	// of the builder's own log.
	pod := h.runPod(job, "node-a")
	h.logs.set(h.ns, pod.Name,
		`{"step":"init","message":"initdb"}`,
		`{"step":"restore","message":"restoring sales/base.tar","done":1048576,"total":4194304}`,
		`time=2024-05-06T07:08:09Z level=INFO msg="restore running"`,
		`{"step":"restore","log":"LOG:  redo starts at 0/2000028","done":1048576,"total":4194304}`)
	got = h.waitImage("sales", "progress", func(di *v1alpha1.DataImage) bool { return di.Status.Step == "restore" })
	if got.Status.BytesDone != 1048576 || got.Status.BytesTotal != 4194304 || got.Status.NodeName != "node-a" {
		t.Errorf("progress: done %d total %d node %q", got.Status.BytesDone, got.Status.BytesTotal, got.Status.NodeName)
	}
	if note := h.hasEvent("sales", reasonBuildStep); !strings.Contains(note, "step restore") {
		t.Errorf("BuildStep event %q", note)
	}

	// The result: the VolumeSnapshot is created, and the Job stays until it is ready.
	h.endPod(pod, 0, outcomeOK(t))
	vs := h.snapshot("sales")
	checkSnapshot(t, vs)
	got = h.waitImage("sales", "built", func(di *v1alpha1.DataImage) bool {
		return condition(di, v1alpha1.ConditionReady).Reason == v1alpha1.ReasonSnapshotPending
	})
	if got.Status.Phase != v1alpha1.PhaseBuilding || condition(got, v1alpha1.ConditionBuilt).Status != metav1.ConditionTrue {
		t.Errorf("after the build: phase %s, Built %+v", got.Status.Phase, condition(got, v1alpha1.ConditionBuilt))
	}
	if got.Status.EngineVersion != "16.4" || got.Status.DataStateTime == nil || !got.Status.DataStateTime.Equal(&metav1.Time{Time: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)}) || got.Status.BuiltAt == nil {
		t.Errorf("result in status: engineVersion %q dataStateTime %v builtAt %v", got.Status.EngineVersion, got.Status.DataStateTime, got.Status.BuiltAt)
	}
	if got.Status.LogPosition != "LSN 0/3000060" {
		t.Errorf("result in status: logPosition %q", got.Status.LogPosition)
	}
	if ok, msg := h.deleted(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "sales-build", Namespace: h.ns}}); ok {
		t.Errorf("the Job is deleted before the snapshot is ready: %s", msg)
	}

	// Ready with the snapshot's size; the Job and the build PVC are deleted.
	h.readySnapshot("sales", "2Gi")
	got = h.waitImage("sales", "Ready", phaseIs(v1alpha1.PhaseReady))
	if got.Status.Size == nil || got.Status.Size.Cmp(resource.MustParse("2Gi")) != 0 || got.Status.VolumeSnapshotName != "sales" {
		t.Errorf("Ready: size %v snapshot %q", got.Status.Size, got.Status.VolumeSnapshotName)
	}
	if c := condition(got, v1alpha1.ConditionReady); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonSnapshotReady {
		t.Errorf("Ready condition %+v", c)
	}
	if got.Status.ExpiresAt != nil || got.Status.BuildJobName != "" {
		t.Errorf("Ready: expiresAt %v (lifetime 0), buildJobName %q", got.Status.ExpiresAt, got.Status.BuildJobName)
	}
	h.eventually("build Job and PVC deleted", waitFor, func() (bool, string) {
		if ok, msg := h.deleted(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "sales-build", Namespace: h.ns}}); !ok {
			return false, msg
		}
		return h.deleted(&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "sales-build", Namespace: h.ns}})
	})
	h.hasEvent("sales", v1alpha1.ReasonSnapshotReady)
	if d := testutil.ToFloat64(metricBuildsSucceeded.WithLabelValues("postgres")) - succeeded; d != 1 {
		t.Errorf("builds succeeded grew by %v, want 1", d)
	}
	if n := gauge(t, "dataimage_controller_images", "phase", "Ready"); n != 1 {
		t.Errorf("dataimage_controller_images{phase=Ready} = %v, want 1", n)
	}
}

// checkJob checks the build Job of the "sales" image of TestBuildSucceeds.
func checkJob(t *testing.T, h *harness, job *batchv1.Job) {
	t.Helper()
	if job.Spec.BackoffLimit == nil || *job.Spec.BackoffLimit != 0 || job.Spec.ActiveDeadlineSeconds == nil || *job.Spec.ActiveDeadlineSeconds != 3600 {
		t.Errorf("Job backoffLimit %v activeDeadlineSeconds %v", job.Spec.BackoffLimit, job.Spec.ActiveDeadlineSeconds)
	}
	if !metav1.IsControlledBy(job, &v1alpha1.DataImage{ObjectMeta: metav1.ObjectMeta{UID: job.OwnerReferences[0].UID}}) || job.OwnerReferences[0].Name != "sales" {
		t.Errorf("Job owners %+v", job.OwnerReferences)
	}
	ps := job.Spec.Template.Spec
	if ps.RestartPolicy != corev1.RestartPolicyNever || len(ps.InitContainers) != 1 || len(ps.Containers) != 1 {
		t.Fatalf("pod spec: restart %s, %d init containers, %d containers", ps.RestartPolicy, len(ps.InitContainers), len(ps.Containers))
	}
	if want := map[string]string{"dataimage.io/cloning-node": "true"}; !reflect.DeepEqual(ps.NodeSelector, want) {
		t.Errorf("nodeSelector %v, want %v (the node is the scheduler's choice)", ps.NodeSelector, want)
	}
	if len(ps.Tolerations) != 1 || ps.Tolerations[0].Key != "dataimage.io/cloning" {
		t.Errorf("tolerations %+v", ps.Tolerations)
	}
	ic := ps.InitContainers[0]
	if ic.Name != "install-builder" || ic.Image != "registry.example/dataimage-builder:test" || ic.ImagePullPolicy != corev1.PullIfNotPresent ||
		len(ic.Command) != 0 || len(ic.Args) != 0 || len(ic.VolumeMounts) != 1 || ic.VolumeMounts[0].MountPath != "/dataimage/bin" {
		t.Errorf("init container %+v", ic)
	}
	c := ps.Containers[0]
	if c.Name != "build" || c.Image != "registry.example/postgres:16" || !reflect.DeepEqual(c.Command, []string{"/dataimage/bin/dataimage-builder"}) {
		t.Errorf("build container name %q image %q command %v", c.Name, c.Image, c.Command)
	}
	if len(c.Args) != 10 {
		t.Fatalf("build args %q", c.Args)
	}
	wantArgs := []string{"--definition-json", c.Args[1], "--root", "/data", "--backup-root", "/backups",
		"--runtime-dir", "/run/dataimage/build", "--output", "json"}
	if !reflect.DeepEqual(c.Args, wantArgs) {
		t.Errorf("build args %q, want %q", c.Args, wantArgs)
	}
	var def imagebuilder.Definition
	if err := json.Unmarshal([]byte(c.Args[1]), &def); err != nil {
		t.Errorf("--definition-json: %v", err)
	}
	if want := h.image("sales").Spec.Definition; !reflect.DeepEqual(def, want) {
		t.Errorf("--definition-json is %+v, want %+v", def, want)
	}
	checkSecurity(t, ps, 999, 998)
	if got := c.Resources.Requests[corev1.ResourceMemory]; got.Cmp(resource.MustParse("256Mi")) != 0 {
		t.Errorf("build resources %+v", c.Resources)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	if m := mounts["data"]; m.MountPath != "/data" || m.ReadOnly {
		t.Errorf("data mount %+v", m)
	}
	if m := mounts["backups"]; m.MountPath != "/backups" || !m.ReadOnly {
		t.Errorf("backups mount %+v", m)
	}
	if m := mounts["builder-bin"]; m.MountPath != "/dataimage/bin" {
		t.Errorf("builder-bin mount %+v", m)
	}
	if m := mounts["tmp"]; m.MountPath != "/tmp" || m.ReadOnly {
		t.Errorf("tmp mount %+v", m)
	}
	if m := mounts["run"]; m.MountPath != "/run/dataimage" || m.ReadOnly {
		t.Errorf("run mount %+v", m)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	for _, name := range []string{"builder-bin", "tmp", "run"} {
		if v := vols[name]; v.EmptyDir == nil {
			t.Errorf("%s volume %+v, want an empty directory", name, v)
		}
	}
	if v := vols["data"]; v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "sales-build" {
		t.Errorf("data volume %+v", v)
	}
	if v := vols["backups"]; v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "backups" || !v.PersistentVolumeClaim.ReadOnly {
		t.Errorf("backups volume %+v", v)
	}
}

// checkSnapshot checks the VolumeSnapshot of the "sales" image of TestBuildSucceeds.
func checkSnapshot(t *testing.T, vs *snapshotv1.VolumeSnapshot) {
	t.Helper()
	if src := vs.Spec.Source.PersistentVolumeClaimName; src == nil || *src != "sales-build" {
		t.Errorf("snapshot source %v", src)
	}
	if c := vs.Spec.VolumeSnapshotClassName; c == nil || *c != "dataimage-snapshots" {
		t.Errorf("snapshot class %v", c)
	}
	// "nightly build" is no valid label name: it is only in the tags annotation.
	wantLabels := map[string]string{v1alpha1.LabelImage: "sales", v1alpha1.LabelTagPrefix + "sales": ""}
	if !reflect.DeepEqual(vs.Labels, wantLabels) {
		t.Errorf("snapshot labels %v, want %v", vs.Labels, wantLabels)
	}
	wantAnn := map[string]string{
		v1alpha1.AnnotationEngine:        "postgres",
		v1alpha1.AnnotationEngineVersion: "16.4",
		v1alpha1.AnnotationDataStateTime: "2024-05-06T07:08:09Z",
		v1alpha1.AnnotationLogPosition:   "LSN 0/3000060",
		v1alpha1.AnnotationTags:          `["sales","nightly build"]`,
	}
	if !reflect.DeepEqual(vs.Annotations, wantAnn) {
		t.Errorf("snapshot annotations %v, want %v", vs.Annotations, wantAnn)
	}
	if !reflect.DeepEqual(vs.Finalizers, []string{v1alpha1.Finalizer}) {
		t.Errorf("snapshot finalizers %v", vs.Finalizers)
	}
	if len(vs.OwnerReferences) != 1 || vs.OwnerReferences[0].Name != "sales" || vs.OwnerReferences[0].Kind != "DataImage" {
		t.Errorf("snapshot owners %+v", vs.OwnerReferences)
	}
}

// gauge returns the value of a gauge of the controller-runtime registry with label=value.
func gauge(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetGauge().GetValue()
				}
			}
			if label == "" {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s=%q}", name, label, value)
	return 0
}

func TestBuildFails(t *testing.T) {
	h := newHarness(t)
	failed := testutil.ToFloat64(metricBuildsFailed.WithLabelValues("mariadb"))
	di := h.image("broken")
	di.Spec.Definition = imagebuilder.Definition{Name: "empty", Engine: "mariadb", Version: "10.11", SourceType: "empty"}
	di.Spec.BackupSource = nil
	h.create(di)
	job := h.job("broken")
	var backups *corev1.Volume
	for i, v := range job.Spec.Template.Spec.Volumes {
		if v.Name == "backups" {
			backups = &job.Spec.Template.Spec.Volumes[i]
		}
	}
	if backups == nil || backups.EmptyDir == nil {
		t.Errorf("backups volume of an empty image %+v, want an empty directory", backups)
	}
	if img := job.Spec.Template.Spec.Containers[0].Image; img != "registry.example/mariadb:10.11" {
		t.Errorf("engine image %q", img)
	}

	pod := h.runPod(job, "node-b")
	h.logs.set(h.ns, pod.Name, `{"step":"init"}`, `{"step":"start","message":"starting mariadbd"}`,
		`{"step":"start","log":"[ERROR] InnoDB: cannot allocate memory"}`)
	h.waitImage("broken", "step start", func(di *v1alpha1.DataImage) bool { return di.Status.Step == "start" })
	out := wire.Outcome{Step: "start", Message: "mariadbd exited with status 1",
		LogTail: "[Note] starting\n[ERROR] InnoDB: cannot allocate memory\n[ERROR] Aborting"}
	h.endPod(pod, 1, string(out.Encode()))

	got := h.waitImage("broken", "Failed", phaseIs(v1alpha1.PhaseFailed))
	c := condition(got, v1alpha1.ConditionBuilt)
	if c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonBuildFailed {
		t.Errorf("Built condition %+v", c)
	}
	for _, want := range []string{"step start", "mariadbd exited with status 1", "[ERROR] Aborting"} {
		if !strings.Contains(c.Message, want) {
			t.Errorf("Built message %q lacks %q", c.Message, want)
		}
	}
	if got.Status.Step != "start" || got.Status.BuildJobName != "" {
		t.Errorf("step %q buildJobName %q", got.Status.Step, got.Status.BuildJobName)
	}
	h.eventually("nothing left", waitFor, func() (bool, string) {
		if ok, msg := h.gone(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "broken-build", Namespace: h.ns}}); !ok {
			return false, msg
		}
		return h.deleted(&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "broken-build", Namespace: h.ns}})
	})
	if ok, _ := h.gone(&snapshotv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "broken", Namespace: h.ns}}); !ok {
		t.Error("a failed build made a VolumeSnapshot")
	}
	if note := h.hasEvent("broken", v1alpha1.ReasonBuildFailed); !strings.Contains(note, "step start") {
		t.Errorf("BuildFailed event %q", note)
	}
	if d := testutil.ToFloat64(metricBuildsFailed.WithLabelValues("mariadb")) - failed; d != 1 {
		t.Errorf("builds failed grew by %v, want 1", d)
	}

	// A new generation of the spec is built again, with a new Job.
	if err := h.admin.Get(h.ctx, h.key("broken"), got); err != nil {
		t.Fatal(err)
	}
	got.Spec.Tags = []string{"retry"}
	if err := h.admin.Update(h.ctx, got); err != nil {
		t.Fatal(err)
	}
	// It waits for the previous build PVC to go (kube-controller-manager's pvc-protection
	// controller, played here, lets it go once no pod uses it).
	h.waitImage("broken", "waiting for the old build PVC", func(di *v1alpha1.DataImage) bool {
		return di.Status.Phase == v1alpha1.PhasePending && strings.Contains(di.Status.Message, "previous build")
	})
	h.deleteClaim(&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "broken-build", Namespace: h.ns}})
	h.eventually("a new build Job", waitFor, func() (bool, string) {
		j := &batchv1.Job{}
		if err := h.admin.Get(h.ctx, h.key("broken-build"), j); err != nil {
			return false, err.Error()
		}
		return j.UID != job.UID, "the old Job"
	})
	h.waitImage("broken", "Building again", phaseIs(v1alpha1.PhaseBuilding))
}

func TestBuildCrashes(t *testing.T) {
	// The build container dies without a result (killed, out of memory): the failure names the
	// last step seen and carries the log tail read from the pod.
	h := newHarness(t)
	h.create(h.image("oom"))
	pod := h.runPod(h.job("oom"), "node-a")
	h.logs.set(h.ns, pod.Name, `{"step":"restore","message":"restoring","done":10,"total":100}`,
		`{"step":"restore","log":"LOG:  restored log file 000000010000000000000003"}`)
	h.waitImage("oom", "step restore", func(di *v1alpha1.DataImage) bool { return di.Status.Step == "restore" })
	h.endPod(pod, 137, "")
	got := h.waitImage("oom", "Failed", phaseIs(v1alpha1.PhaseFailed))
	msg := condition(got, v1alpha1.ConditionBuilt).Message
	for _, want := range []string{"step restore", "code 137", "without a result", "restored log file 000000010000000000000003"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Built message %q lacks %q", msg, want)
		}
	}
}

func TestInvalidSpec(t *testing.T) {
	h := newHarness(t)
	di := h.image("invalid")
	di.Spec.Version = "9"
	di.Spec.BackupSource = nil
	h.create(di)
	got := h.waitImage("invalid", "Failed", phaseIs(v1alpha1.PhaseFailed))
	c := condition(got, v1alpha1.ConditionValid)
	if c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonInvalidSpec {
		t.Errorf("Valid condition %+v", c)
	}
	for _, want := range []string{`version: postgres "9" is not available; available: 15, 16`, "backupSource: required when sourceType is backup"} {
		if !strings.Contains(c.Message, want) {
			t.Errorf("Valid message %q lacks %q", c.Message, want)
		}
	}
	h.hasEvent("invalid", v1alpha1.ReasonInvalidSpec)
	for _, list := range []client.ObjectList{&batchv1.JobList{}, &corev1.PersistentVolumeClaimList{}, &snapshotv1.VolumeSnapshotList{}} {
		if err := h.admin.List(h.ctx, list, client.InNamespace(h.ns)); err != nil {
			t.Fatal(err)
		}
		if n := meta.LenList(list); n != 0 {
			t.Errorf("an invalid spec made %d %T", n, list)
		}
	}

	// Fixed, it is built.
	got.Spec.Version = "15"
	got.Spec.BackupSource = h.image("x").Spec.BackupSource
	if err := h.admin.Update(h.ctx, got); err != nil {
		t.Fatal(err)
	}
	h.job("invalid")
	got = h.waitImage("invalid", "Building", phaseIs(v1alpha1.PhaseBuilding))
	if c := condition(got, v1alpha1.ConditionValid); c.Status != metav1.ConditionTrue {
		t.Errorf("Valid condition after the fix %+v", c)
	}
}

func TestExpiryWithoutClones(t *testing.T) {
	h := newHarness(t)
	expired := testutil.ToFloat64(metricImagesExpired)
	di := h.image("short")
	di.Spec.Lifetime = "3s"
	h.create(di)
	h.built("short", nil)
	got := h.waitImage("short", "Ready", phaseIs(v1alpha1.PhaseReady))
	if got.Status.ExpiresAt == nil || !got.Status.ExpiresAt.Equal(&metav1.Time{Time: got.Status.BuiltAt.Add(3 * time.Second)}) {
		t.Fatalf("expiresAt %v, want builtAt %v + 3s", got.Status.ExpiresAt, got.Status.BuiltAt)
	}
	got = h.waitImage("short", "Expired", phaseIs(v1alpha1.PhaseExpired))
	if c := condition(got, v1alpha1.ConditionExpired); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonSnapshotDeleted {
		t.Errorf("Expired condition %+v", c)
	}
	if got.Status.VolumeSnapshotName != "" || got.Status.Clones != 0 {
		t.Errorf("after expiry: snapshot %q clones %d", got.Status.VolumeSnapshotName, got.Status.Clones)
	}
	h.eventually("snapshot gone", waitFor, func() (bool, string) {
		return h.gone(&snapshotv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "short", Namespace: h.ns}})
	})
	if d := testutil.ToFloat64(metricImagesExpired) - expired; d != 1 {
		t.Errorf("images expired grew by %v, want 1", d)
	}
	// The DataImage itself goes at once.
	if err := h.admin.Delete(h.ctx, got); err != nil {
		t.Fatal(err)
	}
	h.eventually("DataImage gone", waitFor, func() (bool, string) { return h.gone(got) })
}

func TestExpiryWithClones(t *testing.T) {
	h := newHarness(t)
	di := h.image("kept")
	di.Spec.Lifetime = "1s"
	h.create(di)
	var clone *corev1.PersistentVolumeClaim
	h.built("kept", func() { clone = h.clone("kept-dev", "kept") })
	got := h.waitImage("kept", "Expired, kept", func(di *v1alpha1.DataImage) bool {
		return condition(di, v1alpha1.ConditionExpired).Reason == v1alpha1.ReasonClonesExist
	})
	if got.Status.Phase != v1alpha1.PhaseExpired || got.Status.Clones != 1 || !strings.Contains(got.Status.Message, "kept-dev") {
		t.Errorf("kept: phase %s clones %d message %q", got.Status.Phase, got.Status.Clones, got.Status.Message)
	}
	if n := gauge(t, "dataimage_controller_images_expired_kept", "", ""); n != 1 {
		t.Errorf("dataimage_controller_images_expired_kept = %v, want 1", n)
	}
	vs := &snapshotv1.VolumeSnapshot{}
	if err := h.admin.Get(h.ctx, h.key("kept"), vs); err != nil || !vs.DeletionTimestamp.IsZero() {
		t.Fatalf("the snapshot of an image with clones: %v, deletion %v", err, vs.DeletionTimestamp)
	}

	// The last clone goes: the snapshot goes.
	h.deleteClaim(clone)
	got = h.waitImage("kept", "snapshot deleted", func(di *v1alpha1.DataImage) bool {
		return condition(di, v1alpha1.ConditionExpired).Reason == v1alpha1.ReasonSnapshotDeleted
	})
	if got.Status.Clones != 0 {
		t.Errorf("clones %d", got.Status.Clones)
	}
	h.eventually("snapshot gone", waitFor, func() (bool, string) { return h.gone(vs) })
}

func TestDeleteWithoutClones(t *testing.T) {
	h := newHarness(t)
	h.create(h.image("plain"))
	h.built("plain", nil)
	got := h.waitImage("plain", "Ready", phaseIs(v1alpha1.PhaseReady))
	if err := h.admin.Delete(h.ctx, got); err != nil {
		t.Fatal(err)
	}
	h.eventually("DataImage and snapshot gone", waitFor, func() (bool, string) {
		if ok, msg := h.gone(&v1alpha1.DataImage{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: h.ns}}); !ok {
			return false, msg
		}
		return h.gone(&snapshotv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: h.ns}})
	})
}

func TestDeleteWithClones(t *testing.T) {
	h := newHarness(t)
	h.create(h.image("shared"))
	h.built("shared", nil)
	h.waitImage("shared", "Ready", phaseIs(v1alpha1.PhaseReady))
	clones := []*corev1.PersistentVolumeClaim{h.clone("shared-0", "shared"), h.clone("shared-1", "shared")}
	got := h.waitImage("shared", "2 clones", func(di *v1alpha1.DataImage) bool { return di.Status.Clones == 2 })
	if err := h.admin.Delete(h.ctx, got); err != nil {
		t.Fatal(err)
	}
	got = h.waitImage("shared", "deletion waits", func(di *v1alpha1.DataImage) bool {
		return !di.DeletionTimestamp.IsZero() && strings.HasPrefix(di.Status.Message, "deletion waits")
	})
	if !strings.Contains(got.Status.Message, "2 PVC(s) clone it: shared-0, shared-1") {
		t.Errorf("message %q", got.Status.Message)
	}
	h.hasEvent("shared", reasonDeletionWaits)
	h.deleteClaim(clones[0])
	h.waitImage("shared", "1 clone", func(di *v1alpha1.DataImage) bool { return di.Status.Clones == 1 })
	vs := &snapshotv1.VolumeSnapshot{}
	if err := h.admin.Get(h.ctx, h.key("shared"), vs); err != nil || !vs.DeletionTimestamp.IsZero() {
		t.Fatalf("the snapshot while a clone is left: %v, deletion %v", err, vs.DeletionTimestamp)
	}
	h.deleteClaim(clones[1])
	h.eventually("DataImage and snapshot gone", waitFor, func() (bool, string) {
		if ok, msg := h.gone(got); !ok {
			return false, msg
		}
		return h.gone(vs)
	})
}

func TestDeleteDuringBuild(t *testing.T) {
	h := newHarness(t)
	h.create(h.image("abandoned"))
	job := h.job("abandoned")
	h.runPod(job, "node-a")
	di := h.waitImage("abandoned", "Building", phaseIs(v1alpha1.PhaseBuilding))
	if err := h.admin.Delete(h.ctx, di); err != nil {
		t.Fatal(err)
	}
	h.eventually("DataImage, Job and PVC gone", waitFor, func() (bool, string) {
		if ok, msg := h.gone(di); !ok {
			return false, msg
		}
		if ok, msg := h.gone(job); !ok {
			return false, msg
		}
		return h.deleted(&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "abandoned-build", Namespace: h.ns}})
	})
}

// TestBuilderOfAnotherFormat: a builder image newer than the controller. Events of a newer
// minor format show their progress (fields and event kinds the controller does not know are
// ignored), and so does its outcome; events of another major format are not guessed at, and
// the status says why progress is not shown.
func TestBuilderOfAnotherFormat(t *testing.T) {
	h := newHarness(t)
	h.create(h.image("newer"))
	job := h.job("newer")
	pod := h.runPod(job, "node-a")
	h.logs.set(h.ns, pod.Name, `{"buildEvent":"2.0","step":{"name":"restore"},"progress":0.5}`)
	got := h.waitImage("newer", "progress not shown", func(di *v1alpha1.DataImage) bool {
		return strings.Contains(di.Status.Message, "its progress is not shown")
	})
	if want := "the build event is in format 2.0; this version of Dataimage reads 1.x"; !strings.Contains(got.Status.Message, want) {
		t.Errorf("message %q lacks %q", got.Status.Message, want)
	}

	h.logs.set(h.ns, pod.Name,
		`{"buildEvent":"1.9","step":"restore","message":"restoring","done":5,"total":10,"rate":3}`,
		`{"buildEvent":"1.9","kind":"warning","step":"vacuum","message":"slow disk"}`)
	got = h.waitImage("newer", "progress", func(di *v1alpha1.DataImage) bool { return di.Status.BytesDone == 5 })
	if got.Status.Step != "restore" || got.Status.BytesTotal != 10 || !strings.Contains(got.Status.Message, "step restore: restoring") {
		t.Errorf("progress of a newer minor format: step %q total %d message %q", got.Status.Step, got.Status.BytesTotal, got.Status.Message)
	}

	h.endPod(pod, 0, `{"buildOutcome":"1.3","ok":true,"engine":"postgres","engineVersion":"16.4","dataBytes":1024,"buildSeconds":12.5}`)
	got = h.waitImage("newer", "built", func(di *v1alpha1.DataImage) bool {
		return condition(di, v1alpha1.ConditionBuilt).Status == metav1.ConditionTrue
	})
	if got.Status.EngineVersion != "16.4" {
		t.Errorf("engineVersion %q from a newer outcome", got.Status.EngineVersion)
	}
}

func TestRestartMidBuild(t *testing.T) {
	h := newHarness(t)
	started := testutil.ToFloat64(metricBuildsStarted.WithLabelValues("postgres"))
	h.create(h.image("resumed"))
	job := h.job("resumed")
	pod := h.runPod(job, "node-c")
	h.logs.set(h.ns, pod.Name, `{"step":"restore","done":5,"total":10}`)
	h.waitImage("resumed", "progress", func(di *v1alpha1.DataImage) bool { return di.Status.BytesDone == 5 })

	// The controller stops; the build goes on and ends while none runs.
	h.stop()
	h.logs.set(h.ns, pod.Name, `{"step":"restore","done":5,"total":10}`, `{"step":"freeze"}`)
	h.endPod(pod, 0, outcomeOK(t))

	// A new controller finds the ended build and publishes the image.
	h.startManager()
	h.snapshot("resumed")
	h.readySnapshot("resumed", "2Gi")
	got := h.waitImage("resumed", "Ready", phaseIs(v1alpha1.PhaseReady))
	if got.Status.EngineVersion != "16.4" || got.Status.NodeName != "node-c" {
		t.Errorf("after the restart: engineVersion %q node %q", got.Status.EngineVersion, got.Status.NodeName)
	}
	if d := testutil.ToFloat64(metricBuildsStarted.WithLabelValues("postgres")) - started; d != 1 {
		t.Errorf("builds started grew by %v, want 1 (the Job is not made again)", d)
	}

	// Restarted again while Ready, nothing changes.
	h.stop()
	h.startManager()
	rv := got.ResourceVersion
	time.Sleep(time.Second)
	if err := h.admin.Get(h.ctx, h.key("resumed"), got); err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != rv {
		t.Errorf("a restart changed a Ready DataImage: %+v", got.Status)
	}
}

func TestSnapshotDeletedOutside(t *testing.T) {
	// Someone deletes the image's VolumeSnapshot while clones exist: the finalizer keeps it
	// until they are gone, then the image is Failed (its snapshot lost).
	h := newHarness(t)
	h.create(h.image("lost"))
	h.built("lost", nil)
	h.waitImage("lost", "Ready", phaseIs(v1alpha1.PhaseReady))
	clone := h.clone("lost-dev", "lost")
	vs := &snapshotv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "lost", Namespace: h.ns}}
	if err := h.admin.Delete(h.ctx, vs); err != nil {
		t.Fatal(err)
	}
	got := h.waitImage("lost", "kept for a clone", func(di *v1alpha1.DataImage) bool {
		return strings.Contains(di.Status.Message, "is being deleted")
	})
	if got.Status.Phase != v1alpha1.PhaseReady {
		t.Errorf("phase %s", got.Status.Phase)
	}
	h.deleteClaim(clone)
	got = h.waitImage("lost", "Failed", phaseIs(v1alpha1.PhaseFailed))
	if c := condition(got, v1alpha1.ConditionReady); c.Reason != v1alpha1.ReasonSnapshotDeleted {
		t.Errorf("Ready condition %+v", c)
	}
	h.eventually("snapshot gone", waitFor, func() (bool, string) { return h.gone(vs) })
}

func TestForeignBuildClaim(t *testing.T) {
	// A PVC named like the build PVC that is not the DataImage's: the build fails, and the PVC
	// is left alone.
	h := newHarness(t)
	foreign := h.clone("taken-build", "elsewhere")
	h.create(h.image("taken"))
	got := h.waitImage("taken", "Failed", phaseIs(v1alpha1.PhaseFailed))
	if msg := condition(got, v1alpha1.ConditionBuilt).Message; !strings.Contains(msg, "is not DataImage taken's") {
		t.Errorf("Built message %q", msg)
	}
	if ok, _ := h.deleted(foreign); ok {
		t.Error("the controller deleted a PVC that is not its own")
	}
	if ok, _ := h.gone(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "taken-build", Namespace: h.ns}}); !ok {
		t.Error("a Job was created")
	}
}

func TestPodLogReaderError(t *testing.T) {
	// The real LogReader against the API server: without a kubelet it cannot read a log, and
	// says which pod and container.
	env.Need(t)
	r, err := NewPodLogReader(env.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.TailLog(t.Context(), "default", "no-such-pod", "build", 10)
	if err == nil || !strings.Contains(err.Error(), "default/no-such-pod container build") {
		t.Fatalf("TailLog of a missing pod: %v", err)
	}
	if !errors.Is(err, ErrPodLog) {
		t.Errorf("%v does not match ErrPodLog", err)
	}
}
