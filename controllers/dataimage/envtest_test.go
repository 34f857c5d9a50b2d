package dataimage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/internal/kubetest"
)

// The controller's tests run it against a real API server (internal/kubetest: envtest with the
// project's CRDs, the controller impersonating the chart's ServiceAccount). There is no
// kube-controller-manager, kubelet, scheduler or snapshot-controller: the tests play their parts
// on the objects (a Job's pod and its status, a VolumeSnapshot's readiness, a claim's binding,
// the removal of the pvc-protection finalizer), as the admin.

// env is the test binary's API server.
var env kubetest.Env

func TestMain(m *testing.M) {
	scheme, err := NewScheme()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(kubetest.Main(m, "../..", scheme, &env))
}

// cannedLogs is the LogReader of the tests: envtest has no kubelet, so pods/log cannot answer;
// the tests set each build pod's log lines here.
type cannedLogs struct {
	mu   sync.Mutex
	logs map[string][]string // by namespace/pod
}

func (c *cannedLogs) set(namespace, pod string, lines ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.logs == nil {
		c.logs = map[string][]string{}
	}
	c.logs[namespace+"/"+pod] = lines
}

func (c *cannedLogs) TailLog(_ context.Context, namespace, pod, container string, lines int64) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.logs[namespace+"/"+pod]
	if !ok || container != buildContainerName {
		return nil, fmt.Errorf("%w %s/%s container %s: no log", ErrPodLog, namespace, pod, container)
	}
	l = l[max(0, len(l)-int(lines)):]
	return []byte(strings.Join(l, "\n") + "\n"), nil
}

// harness is one test's namespace and controller.
type harness struct {
	t      *testing.T
	ctx    context.Context
	ns     string
	admin  client.Client
	logs   *cannedLogs
	config *v1alpha1.ControllerConfig
	stop   func()
}

const testConfigYAML = `apiVersion: dataimage.io/v1alpha1
kind: ControllerConfig
engines:
  postgres:
    image: registry.example/postgres:{version}
    versions: ["15", "16"]
    runAsUser: 999
    runAsGroup: 998
  mariadb:
    image: registry.example/mariadb:{version}
    versions: ["10.11"]
    runAsUser: 1001
    runAsGroup: 1002
builder:
  image: registry.example/dataimage-builder:test
  pullPolicy: IfNotPresent
storageClassName: dataimage
volumeSnapshotClassName: dataimage-snapshots
defaultVolumeSize: 1Gi
defaultLifetime: "0"
buildNodeSelector:
  dataimage.io/cloning-node: "true"
buildTolerations:
  - key: dataimage.io/cloning
    operator: Exists
    effect: NoSchedule
buildResources:
  requests:
    memory: 256Mi
buildActiveDeadlineSeconds: 3600
allowedHostPaths: [/srv/backups, /mnt/nightly]
allowedImages:
  - registry.example/team/*
  - docker.io/mirror/*
  - quay.example/tools/builder:*
`

func testConfig(t *testing.T) *v1alpha1.ControllerConfig {
	t.Helper()
	cfg, err := v1alpha1.ParseControllerConfig([]byte(testConfigYAML))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// harnessOption changes a harness's configuration or namespace before they are used.
type harnessOption func(h *harness, ns *corev1.Namespace)

// withConfig runs the controller with cfg instead of testConfigYAML's.
func withConfig(cfg *v1alpha1.ControllerConfig) harnessOption {
	return func(h *harness, _ *corev1.Namespace) { h.config = cfg }
}

// withNamespaceLabels labels the test's namespace (e.g. a Pod Security Standard to enforce).
func withNamespaceLabels(l map[string]string) harnessOption {
	return func(_ *harness, ns *corev1.Namespace) { ns.Labels = l }
}

// newHarness makes a namespace and starts a controller that watches it.
func newHarness(t *testing.T, opts ...harnessOption) *harness {
	t.Helper()
	env.Need(t)
	h := &harness{t: t, ctx: t.Context(), admin: env.Admin, logs: &cannedLogs{}, config: testConfig(t)}
	ns := &corev1.Namespace{}
	for _, o := range opts {
		o(h, ns)
	}
	h.ns = env.Namespace(t, ns.Labels)
	h.startManager()
	return h
}

// startManager starts a controller (a new manager, as after a restart) for the namespace.
func (h *harness) startManager() {
	h.t.Helper()
	scheme, err := NewScheme()
	if err != nil {
		h.t.Fatal(err)
	}
	co := CacheOptions()
	co.DefaultNamespaces = map[string]cache.Config{h.ns: {}}
	mgr, err := ctrl.NewManager(env.ControllerConfig, ctrl.Options{
		Scheme:     scheme,
		Logger:     testr.NewWithOptions(h.t, testr.Options{Verbosity: 1}),
		Cache:      co,
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := Setup(mgr, Options{Config: h.config, Logs: h.logs, ProgressInterval: 100 * time.Millisecond}); err != nil {
		h.t.Fatal(err)
	}
	h.stop = kubetest.Start(h.t, mgr)
}

// eventually polls cond until it holds, or fails the test after timeout with what cond last
// said.
func (h *harness) eventually(what string, timeout time.Duration, cond func() (bool, string)) {
	h.t.Helper()
	kubetest.Eventually(h.t, what, timeout, cond)
}

const waitFor = 20 * time.Second

func (h *harness) key(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: h.ns, Name: name}
}

// image returns a DataImage with a valid spec for the test configuration: postgres 16 from a
// backup PVC.
func (h *harness) image(name string) *v1alpha1.DataImage {
	size := resource.MustParse("2Gi")
	return &v1alpha1.DataImage{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns},
		Spec: v1alpha1.DataImageSpec{
			Definition: imagebuilder.Definition{
				Name: "sales-2024", Engine: "postgres", Version: "16", SourceType: "backup",
				Backups: []imagebuilder.Backup{{Path: "sales/base.tar", Format: "basebackup-tar"}},
				Tags:    []string{"sales", "nightly build"},
			},
			BackupSource: &v1alpha1.BackupSource{PersistentVolumeClaim: &v1alpha1.PVCBackupSource{ClaimName: "backups"}},
			VolumeSize:   &size,
		},
	}
}

func (h *harness) create(obj client.Object) {
	h.t.Helper()
	if err := h.admin.Create(h.ctx, obj); err != nil {
		h.t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// waitImage waits until the DataImage satisfies cond and returns it.
func (h *harness) waitImage(name, what string, cond func(*v1alpha1.DataImage) bool) *v1alpha1.DataImage {
	h.t.Helper()
	di := &v1alpha1.DataImage{}
	h.eventually(fmt.Sprintf("DataImage %s: %s", name, what), waitFor, func() (bool, string) {
		if err := h.admin.Get(h.ctx, h.key(name), di); err != nil {
			return false, err.Error()
		}
		return cond(di), fmt.Sprintf("phase %q, conditions %v, message %q", di.Status.Phase, di.Status.Conditions, di.Status.Message)
	})
	return di
}

func phaseIs(p v1alpha1.DataImagePhase) func(*v1alpha1.DataImage) bool {
	return func(di *v1alpha1.DataImage) bool { return di.Status.Phase == p }
}

// job waits for the DataImage's build Job and returns it.
func (h *harness) job(name string) *batchv1.Job {
	h.t.Helper()
	job := &batchv1.Job{}
	h.eventually("build Job of "+name, waitFor, func() (bool, string) {
		err := h.admin.Get(h.ctx, h.key(name+"-build"), job)
		return err == nil, fmt.Sprint(err)
	})
	return job
}

// runPod plays the Job controller, the scheduler and the kubelet: it creates the Job's pod on
// node, with the build container running.
func (h *harness) runPod(job *batchv1.Job, node string) *corev1.Pod {
	h.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            job.Name + "-x7k2p",
			Namespace:       job.Namespace,
			Labels:          job.Spec.Template.Labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(job, batchv1.SchemeGroupVersion.WithKind("Job"))},
		},
		Spec: *job.Spec.Template.Spec.DeepCopy(),
	}
	pod.Spec.NodeName = node
	h.create(pod)
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning,
		InitContainerStatuses: []corev1.ContainerStatus{{
			Name: initContainerName, Image: pod.Spec.InitContainers[0].Image,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}},
		}},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: buildContainerName, Image: pod.Spec.Containers[0].Image, Ready: true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	if err := h.admin.Status().Update(h.ctx, pod); err != nil {
		h.t.Fatalf("pod status: %v", err)
	}
	return pod
}

// endPod plays the kubelet: the build container ends with code and termination message msg.
func (h *harness) endPod(pod *corev1.Pod, code int32, msg string) {
	h.t.Helper()
	if err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
		h.t.Fatal(err)
	}
	st := &pod.Status.ContainerStatuses[0]
	started := st.State.Running.StartedAt
	reason, phase := "Completed", corev1.PodSucceeded
	if code != 0 {
		reason, phase = "Error", corev1.PodFailed
	}
	st.Ready, st.Started = false, ptr.To(false)
	st.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, Message: msg, StartedAt: started, FinishedAt: metav1.Now()}}
	pod.Status.Phase = phase
	if err := h.admin.Status().Update(h.ctx, pod); err != nil {
		h.t.Fatalf("pod status: %v", err)
	}
}

// outcomeOK is a successful build's termination message.
func outcomeOK(t *testing.T) string {
	t.Helper()
	o := wire.Outcome{OK: true, Engine: imagebuilder.EnginePostgres, EngineVersion: "16.4",
		DataStateTime: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC), DataStateSource: "backup_label", LogPosition: "LSN 0/3000060", DataBytes: 123 << 20}
	return string(o.Encode())
}

// snapshot waits for the image's VolumeSnapshot and returns it.
func (h *harness) snapshot(name string) *snapshotv1.VolumeSnapshot {
	h.t.Helper()
	vs := &snapshotv1.VolumeSnapshot{}
	h.eventually("VolumeSnapshot "+name, waitFor, func() (bool, string) {
		err := h.admin.Get(h.ctx, h.key(name), vs)
		return err == nil, fmt.Sprint(err)
	})
	return vs
}

// readySnapshot plays the snapshot-controller: the snapshot is ready to use.
func (h *harness) readySnapshot(name, size string) {
	h.t.Helper()
	vs := h.snapshot(name)
	q := resource.MustParse(size)
	vs.Status = &snapshotv1.VolumeSnapshotStatus{
		BoundVolumeSnapshotContentName: ptr.To("snapcontent-" + string(vs.UID)),
		CreationTime:                   ptr.To(metav1.Now()),
		ReadyToUse:                     ptr.To(true),
		RestoreSize:                    &q,
	}
	if err := h.admin.Status().Update(h.ctx, vs); err != nil {
		h.t.Fatalf("snapshot status: %v", err)
	}
}

// built drives a DataImage through a successful build up to its ready snapshot: it waits for
// the Job, runs its pod on node-a and ends it with a good result. before runs before the pod
// ends.
func (h *harness) built(name string, before func()) {
	h.t.Helper()
	pod := h.runPod(h.job(name), "node-a")
	h.logs.set(h.ns, pod.Name, `{"step":"freeze","message":"frozen"}`)
	if before != nil {
		before()
	}
	h.endPod(pod, 0, outcomeOK(h.t))
	h.readySnapshot(name, "2Gi")
}

// deleted says whether obj is gone or being deleted (the finalizers left are those of the
// cluster's own controllers, which envtest does not run).
func (h *harness) deleted(obj client.Object) (bool, string) {
	err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(obj), obj)
	switch {
	case apierrors.IsNotFound(err):
		return true, ""
	case err != nil:
		return false, err.Error()
	}
	return !obj.GetDeletionTimestamp().IsZero(), fmt.Sprintf("%T %s exists (finalizers %v)", obj, obj.GetName(), obj.GetFinalizers())
}

// gone says whether obj no longer exists.
func (h *harness) gone(obj client.Object) (bool, string) {
	err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(obj), obj)
	if apierrors.IsNotFound(err) {
		return true, ""
	}
	return false, fmt.Sprintf("%T %s: %v (deletion %v, finalizers %v)", obj, obj.GetName(), err, obj.GetDeletionTimestamp(), obj.GetFinalizers())
}

// clone creates a PVC cloned from the image's VolumeSnapshot.
func (h *harness) clone(name, image string) *corev1.PersistentVolumeClaim {
	h.t.Helper()
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To("dataimage"),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			DataSource:       &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapshotv1.GroupName), Kind: "VolumeSnapshot", Name: image},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")}},
		},
	}
	h.create(pvc)
	return pvc
}

// deleteClaim deletes a PVC and, playing kube-controller-manager's pvc-protection controller,
// removes its finalizer.
func (h *harness) deleteClaim(pvc *corev1.PersistentVolumeClaim) {
	h.t.Helper()
	if err := h.admin.Delete(h.ctx, pvc); client.IgnoreNotFound(err) != nil {
		h.t.Fatal(err)
	}
	uid := pvc.UID
	h.eventually("claim "+pvc.Name+" gone", waitFor, func() (bool, string) {
		err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(pvc), pvc)
		if apierrors.IsNotFound(err) || err == nil && uid != "" && pvc.UID != uid {
			return true, "" // gone, or gone and made again
		}
		if uid == "" {
			uid = pvc.UID
		}
		if len(pvc.Finalizers) > 0 {
			pvc.Finalizers = nil
			if err := h.admin.Update(h.ctx, pvc); err != nil {
				return false, err.Error()
			}
		}
		return false, "claim still there"
	})
}

// hasEvent waits for an Event with reason about the named object, and returns its note.
func (h *harness) hasEvent(name, reason string) string {
	h.t.Helper()
	return env.HasEvent(h.t, h.ns, name, reason, waitFor)
}

// logLines joins log lines as the kubelet serves them.
func logLines(lines ...string) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}
