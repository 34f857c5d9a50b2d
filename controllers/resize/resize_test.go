package resize

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/dataimage/dataimage/driver/wellknown"
	"github.com/dataimage/dataimage/internal/kubetest"
)

// The resizer's tests run it against a real API server (internal/kubetest), as the chart's
// ServiceAccount of the controller. There is no kube-controller-manager or kubelet: the tests
// play the provisioner, the binder and the node's expansion on the objects, as the admin.

// env is the test binary's API server.
var env kubetest.Env

func TestMain(m *testing.M) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(kubetest.Main(m, "../..", scheme, &env))
}

// waitFor is how long a test waits for the resizer.
const waitFor = 20 * time.Second

// harness is one test's namespace and resizer.
type harness struct {
	t     *testing.T
	ctx   context.Context
	ns    string
	admin client.Client
	stop  func()
}

// newHarness makes a namespace and starts a resizer (as dataimage-controller runs it).
func newHarness(t *testing.T) *harness {
	t.Helper()
	env.Need(t)
	h := &harness{t: t, ctx: t.Context(), admin: env.Admin}
	h.ns = env.Namespace(t, nil)
	h.startManager()
	return h
}

// startManager starts a resizer (a new manager, as after a restart) as the chart's
// ServiceAccount of the controller.
func (h *harness) startManager() {
	h.t.Helper()
	mgr, err := ctrl.NewManager(env.ControllerConfig, ctrl.Options{
		Scheme:     env.Admin.Scheme(),
		Logger:     testr.NewWithOptions(h.t, testr.Options{Verbosity: 1}),
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := Setup(mgr, Options{Reporter: "dataimage-controller"}); err != nil {
		h.t.Fatal(err)
	}
	h.stop = kubetest.Start(h.t, mgr)
}

func (h *harness) create(obj client.Object) {
	h.t.Helper()
	if err := h.admin.Create(h.ctx, obj); err != nil {
		h.t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// boundClaim plays the provisioner and kube-controller-manager's binder: a PV of driver with
// size, and a claim bound to it, in class.
func (h *harness) boundClaim(name, class, driver, size string) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	h.t.Helper()
	q := resource.MustParse(size)
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(class),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: q}},
			VolumeName:       "pv-" + h.ns + "-" + name,
		},
	}
	h.create(pvc)
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvc.Spec.VolumeName},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: q},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              class,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: h.ns, Name: name, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: driver, VolumeHandle: "vol-" + name, FSType: "ext4"}},
		},
	}
	h.create(pv)
	h.t.Cleanup(func() { _ = h.admin.Delete(h.ctx, pv) })
	pvc.Status = corev1.PersistentVolumeClaimStatus{
		Phase:       corev1.ClaimBound,
		AccessModes: pvc.Spec.AccessModes,
		Capacity:    corev1.ResourceList{corev1.ResourceStorage: q},
	}
	if err := h.admin.Status().Update(h.ctx, pvc); err != nil {
		h.t.Fatalf("bind claim %s: %v", name, err)
	}
	return pvc, pv
}

// request raises a claim's storage request, as a user does.
func (h *harness) request(pvc *corev1.PersistentVolumeClaim, size string) {
	h.t.Helper()
	if err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(pvc), pvc); err != nil {
		h.t.Fatal(err)
	}
	pvc.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse(size)
	if err := h.admin.Update(h.ctx, pvc); err != nil {
		h.t.Fatalf("request %s for %s: %v", size, pvc.Name, err)
	}
}

// resizeState is what the resizer writes: the claim's allocation and resize status, its resize
// conditions, and the PV's capacity.
func (h *harness) resizeState(pvc *corev1.PersistentVolumeClaim) string {
	c := &corev1.PersistentVolumeClaim{}
	if err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(pvc), c); err != nil {
		return err.Error()
	}
	pv := &corev1.PersistentVolume{}
	if err := h.admin.Get(h.ctx, types.NamespacedName{Name: c.Spec.VolumeName}, pv); err != nil {
		return err.Error()
	}
	var conds []string
	for _, cond := range c.Status.Conditions {
		conds = append(conds, string(cond.Type))
	}
	alloc := "-"
	if q, ok := c.Status.AllocatedResources[corev1.ResourceStorage]; ok {
		alloc = q.String()
	}
	pvCap := pv.Spec.Capacity[corev1.ResourceStorage]
	return fmt.Sprintf("allocated=%s status=%s conditions=%v pv=%s", alloc,
		c.Status.AllocatedResourceStatuses[corev1.ResourceStorage], conds, pvCap.String())
}

func (h *harness) waitResize(pvc *corev1.PersistentVolumeClaim, want string) {
	h.t.Helper()
	kubetest.Eventually(h.t, "resize of "+pvc.Name+": "+want, waitFor, func() (bool, string) {
		got := h.resizeState(pvc)
		return got == want, got
	})
}

func TestResizer(t *testing.T) {
	h := newHarness(t)
	class := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: "expandable-" + h.ns},
		Provisioner:          wellknown.DriverName,
		AllowVolumeExpansion: ptr.To(true),
		VolumeBindingMode:    ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
	}
	h.create(class)
	t.Cleanup(func() { _ = h.admin.Delete(h.ctx, class) })
	expansions := testutil.ToFloat64(metricVolumeExpansions)

	// A volume of another driver is not this resizer's.
	otherPVC, _ := h.boundClaim("other", class.Name, "other.csi.example", "1Gi")
	h.request(otherPVC, "2Gi")
	ours, _ := h.boundClaim("data", class.Name, wellknown.DriverName, "1Gi")
	w, err := client.NewWithWatch(env.AdminConfig, client.Options{Scheme: h.admin.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	watch, err := w.Watch(h.ctx, &corev1.PersistentVolumeClaimList{}, client.InNamespace(h.ns),
		client.MatchingFields{"metadata.name": "data"}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: ours.ResourceVersion}})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Stop()
	h.request(ours, "3Gi")

	// ControllerResizeInProgress, the PV's capacity, then NodeResizePending with an Event.
	h.waitResize(ours, "allocated=3Gi status=NodeResizePending conditions=[FileSystemResizePending] pv=3Gi")
	var seen []corev1.ClaimResourceStatus
	for len(seen) == 0 || seen[len(seen)-1] != corev1.PersistentVolumeClaimNodeResizePending {
		ev := <-watch.ResultChan()
		c, ok := ev.Object.(*corev1.PersistentVolumeClaim)
		if !ok {
			t.Fatalf("watch: %+v", ev)
		}
		if s := c.Status.AllocatedResourceStatuses[corev1.ResourceStorage]; s != "" && (len(seen) == 0 || seen[len(seen)-1] != s) {
			seen = append(seen, s)
		}
	}
	if want := []corev1.ClaimResourceStatus{corev1.PersistentVolumeClaimControllerResizeInProgress, corev1.PersistentVolumeClaimNodeResizePending}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("resize statuses %v, want %v", seen, want)
	}
	if note := env.HasEvent(t, h.ns, "data", reasonResizing, waitFor); !strings.Contains(note, "node-only expansion by dataimage-controller") {
		t.Errorf("Resizing event %q does not name the controller", note)
	}
	env.HasEvent(t, h.ns, "data", reasonFileSystemResizeRequired, waitFor)
	if d := testutil.ToFloat64(metricVolumeExpansions) - expansions; d != 1 {
		t.Errorf("expansions grew by %v, want 1", d)
	}
	if got, want := h.resizeState(otherPVC), "allocated=- status= conditions=[] pv=1Gi"; got != want {
		t.Errorf("a claim of another driver: %s, want %s", got, want)
	}

	// The kubelet expands on the node and finishes: the resizer leaves the claim alone.
	if err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(ours), ours); err != nil {
		t.Fatal(err)
	}
	ours.Status.Capacity[corev1.ResourceStorage] = resource.MustParse("3Gi")
	ours.Status.AllocatedResourceStatuses = nil
	ours.Status.Conditions = nil
	if err := h.admin.Status().Update(h.ctx, ours); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got, want := h.resizeState(ours), "allocated=3Gi status= conditions=[] pv=3Gi"; got != want {
		t.Errorf("after the node's expansion: %s, want %s", got, want)
	}

	// A resize interrupted after its first step (a restart) is finished.
	h.request(ours, "5Gi")
	h.waitResize(ours, "allocated=5Gi status=NodeResizePending conditions=[FileSystemResizePending] pv=5Gi")
	if err := h.admin.Get(h.ctx, client.ObjectKeyFromObject(ours), ours); err != nil {
		t.Fatal(err)
	}
	h.stop()
	ours.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("8Gi")
	if err := h.admin.Update(h.ctx, ours); err != nil {
		t.Fatal(err)
	}
	ours.Status.AllocatedResources[corev1.ResourceStorage] = resource.MustParse("8Gi")
	ours.Status.AllocatedResourceStatuses[corev1.ResourceStorage] = corev1.PersistentVolumeClaimControllerResizeInProgress
	ours.Status.Conditions = []corev1.PersistentVolumeClaimCondition{{Type: corev1.PersistentVolumeClaimResizing, Status: corev1.ConditionTrue}}
	if err := h.admin.Status().Update(h.ctx, ours); err != nil {
		t.Fatal(err)
	}
	h.startManager()
	h.waitResize(ours, "allocated=8Gi status=NodeResizePending conditions=[FileSystemResizePending] pv=8Gi")
}
