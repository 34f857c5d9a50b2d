//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Names of what the chart installs (charts/dataimage/values.yaml defaults).
const (
	driverName          = "csi.dataimage.io"
	storageClass        = "dataimage"
	snapshotClass       = "dataimage"
	topologyKey         = "topology.dataimage.io/node"
	namespaceLabel      = "e2e.dataimage.io/test"
	defaultWait         = 3 * time.Minute
	pollInterval        = 500 * time.Millisecond
	snapshotAPIGroup    = "snapshot.storage.k8s.io"
	snapshotKind        = "VolumeSnapshot"
	postgresMount       = "/pgvol"
	postgresSocketDir   = "/tmp"
	postgresContainer   = "postgres"
	busyboxContainer    = "busybox"
	blockDevicePath     = "/dev/e2e-block"
	filesystemMountPath = "/data"
)

// errStop ends a poll at once: the awaited state can no longer come.
type errStop struct{ error }

// ctx is the context of one test: cancelled when the test ends.
func ctx(t *testing.T) context.Context {
	t.Helper()
	return t.Context()
}

// newNamespace creates a namespace for t, deleted (and waited for) when t ends: deleting it
// deletes the test's pods, claims, snapshots and DataImages, and so their volumes in the pool.
// When t failed, the namespace's events and pods are logged first.
func newNamespace(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("e2e-%s-%s", prefix, hex.EncodeToString(b))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{namespaceLabel: prefix}}}
	if err := kube.Create(ctx(t), ns); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), defaultWait)
		defer cancel()
		if t.Failed() {
			dump(t, name)
		}
		if err := kube.Delete(c, ns); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
			return
		}
		err := poll(c, func(c context.Context) (bool, string, error) {
			var got corev1.Namespace
			err := kube.Get(c, client.ObjectKey{Name: name}, &got)
			if apierrors.IsNotFound(err) {
				return true, "", nil
			}
			return false, fmt.Sprintf("phase %s, conditions %v", got.Status.Phase, got.Status.Conditions), err
		})
		if err != nil {
			t.Errorf("namespace %s not deleted: %v", name, err)
			dump(t, name)
		}
	})
	return name
}

// dump logs what a namespace holds, for a failed test.
func dump(t *testing.T, ns string) {
	t.Helper()
	for _, args := range [][]string{
		{"get", "all,pvc,volumesnapshot,dataimage", "-o", "wide"},
		{"get", "events", "--sort-by=.lastTimestamp"},
		{"describe", "pods"},
		{"describe", "pvc"},
	} {
		out, err := kubectl(t, append([]string{"-n", ns}, args...)...)
		t.Logf("kubectl -n %s %s:\n%s%v", ns, strings.Join(args, " "), out, errOrEmpty(err))
	}
	out, _ := kubectl(t, "-n", cfg.namespace, "logs", "-l", "app.kubernetes.io/component=node", "--all-containers", "--tail=40")
	t.Logf("node plugin logs (tail):\n%s", out)
	out, _ = kubectl(t, "-n", cfg.namespace, "logs", "-l", "app.kubernetes.io/component=dataplane", "--tail=40")
	t.Logf("data plane logs (tail):\n%s", out)
	out, _ = kubectl(t, "-n", cfg.namespace, "logs", "-l", "app.kubernetes.io/component=controller", "--tail=40")
	t.Logf("controller logs (tail):\n%s", out)
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return "error: " + err.Error()
}

// poll calls cond every pollInterval until it reports done, returns an errStop, or c ends; the
// error then says what cond last saw. Other errors of cond are retried.
func poll(c context.Context, cond func(context.Context) (done bool, state string, err error)) error {
	var state string
	var lastErr error
	for {
		done, s, err := cond(c)
		if err == nil && done {
			return nil
		}
		var stop errStop
		if errors.As(err, &stop) {
			return stop.error
		}
		if s != "" {
			state = s
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-c.Done():
			msg := fmt.Sprintf("timed out; last state: %s", state)
			if lastErr != nil {
				msg += fmt.Sprintf("; last error: %v", lastErr)
			}
			return errors.New(msg)
		case <-time.After(pollInterval):
		}
	}
}

// waitFor polls cond for up to timeout and fails t, naming what, when it does not come true.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func(context.Context) (bool, string, error)) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx(t), timeout)
	defer cancel()
	start := time.Now()
	if err := poll(c, cond); err != nil {
		t.Fatalf("waiting %s for %s: %v", timeout, what, err)
	}
	t.Logf("%s after %.1f s", what, time.Since(start).Seconds())
}

// kubectl runs the cluster's kubectl with the admin's kubeconfig.
func kubectl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return kubectlStdin(t, nil, args...)
}

func kubectlStdin(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), defaultWait)
	defer cancel()
	cmd := exec.CommandContext(c, cfg.kubectl, append([]string{"--kubeconfig", cfg.kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// execIn runs a command in a pod's container and returns its output, failing t on an error.
func execIn(t *testing.T, ns, pod, container string, command ...string) string {
	t.Helper()
	out, err := kubectl(t, append([]string{"-n", ns, "exec", pod, "-c", container, "--"}, command...)...)
	if err != nil {
		t.Fatalf("exec in %s/%s: %v", ns, pod, err)
	}
	return strings.TrimSpace(out)
}

// psql runs SQL in the PostgreSQL server of a pod (postgresPod), through its socket, and
// returns the unaligned, tuples-only result.
func psql(t *testing.T, ns, pod, sql string) string {
	t.Helper()
	return execIn(t, ns, pod, postgresContainer, "psql", "-h", postgresSocketDir, "-U", "postgres", "-d", "postgres",
		"-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql)
}

// claim is a PVC of the dataimage class: blank, or cloned from a VolumeSnapshot.
func claim(ns, name, size, fromSnapshot string, block bool) *corev1.PersistentVolumeClaim {
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(storageClass),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			},
		},
	}
	if fromSnapshot != "" {
		pvc.Spec.DataSource = &corev1.TypedLocalObjectReference{
			APIGroup: ptr.To(snapshotAPIGroup), Kind: snapshotKind, Name: fromSnapshot,
		}
	}
	if block {
		pvc.Spec.VolumeMode = ptr.To(corev1.PersistentVolumeBlock)
	}
	return pvc
}

// busyboxPod is a pod on the first node (cfg.node) that sleeps with a claim mounted at
// filesystemMountPath, or attached at blockDevicePath when block is set. (On the first node:
// a VolumeSnapshot of a volume, unlike a DataImage, stays on its node, so clones of it must be
// scheduled there.)
func busyboxPod(ns, name, claimName string, block bool) *corev1.Pod {
	c := corev1.Container{
		Name: busyboxContainer, Image: cfg.busyboxImage, ImagePullPolicy: corev1.PullNever,
		Command: []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
	}
	if block {
		c.VolumeDevices = []corev1.VolumeDevice{{Name: "vol", DevicePath: blockDevicePath}}
	} else {
		c.VolumeMounts = []corev1.VolumeMount{{Name: "vol", MountPath: filesystemMountPath}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{topologyKey: cfg.node},
			Containers:                    []corev1.Container{c},
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Volumes: []corev1.Volume{{Name: "vol", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimName},
			}}},
		},
	}
}

// postgresPodSpec runs PostgreSQL on the data directory of a data image's clone mounted at
// postgresMount (the builder's layout: the volume's root holds data/), as the image's postgres
// user, on a socket only; Ready when it answers.
func postgresPodSpec(claimVolume string, node string) corev1.PodSpec {
	return corev1.PodSpec{
		NodeSelector:                  map[string]string{topologyKey: node},
		TerminationGracePeriodSeconds: ptr.To[int64](10),
		Containers: []corev1.Container{{
			Name: postgresContainer, Image: cfg.postgresImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"runuser", "-u", "postgres", "--", "postgres", "-D", postgresMount + "/data",
				"-k", postgresSocketDir, "-c", "listen_addresses=", "-c", "shared_buffers=16MB",
				"-c", "max_connections=20"},
			VolumeMounts: []corev1.VolumeMount{{Name: claimVolume, MountPath: postgresMount}},
			ReadinessProbe: &corev1.Probe{
				ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
					Command: []string{"pg_isready", "-q", "-h", postgresSocketDir, "-U", "postgres"},
				}},
				PeriodSeconds: 1, FailureThreshold: 3,
			},
		}},
	}
}

// postgresStatefulSet is a StatefulSet "pg" of PostgreSQL pods on node, each on its own 1Gi
// clone ("data-pg-N") of the VolumeSnapshot snapshot, all started at once.
func postgresStatefulSet(ns string, replicas int32, node, snapshot string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "pg", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr.To(replicas),
			ServiceName:         "pg",
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: map[string]string{"app": "pg"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "pg"}},
				Spec:       postgresPodSpec("data", node),
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{*claim("", "data", "1Gi", snapshot, false)},
		},
	}
}

// postgresPod is a single pod running PostgreSQL on a claim (a clone of a data image).
func postgresPod(ns, name, claimName, node string) *corev1.Pod {
	spec := postgresPodSpec("data", node)
	spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimName},
	}}}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := kube.Create(ctx(t), obj); err != nil {
		t.Fatalf("create %T %s/%s: %v", obj, obj.GetNamespace(), obj.GetName(), err)
	}
}

// deleteAndWait deletes obj and waits until it is gone.
func deleteAndWait(t *testing.T, obj client.Object) {
	t.Helper()
	if err := kube.Delete(ctx(t), obj); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete %T %s/%s: %v", obj, obj.GetNamespace(), obj.GetName(), err)
	}
	waitGone(t, obj)
}

// waitGone waits until obj no longer exists.
func waitGone(t *testing.T, obj client.Object) {
	t.Helper()
	key := client.ObjectKeyFromObject(obj)
	waitFor(t, defaultWait, fmt.Sprintf("%T %s to be gone", obj, key), func(c context.Context) (bool, string, error) {
		err := kube.Get(c, key, obj.DeepCopyObject().(client.Object))
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		return false, "still there", err
	})
}

// waitPodReady waits until a pod is Ready.
func waitPodReady(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	waitFor(t, defaultWait, fmt.Sprintf("pod %s/%s Ready", ns, name), func(c context.Context) (bool, string, error) {
		if err := kube.Get(c, client.ObjectKey{Namespace: ns, Name: name}, &pod); err != nil {
			return false, "", err
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return true, "", nil
			}
		}
		return false, podState(&pod), nil
	})
	return &pod
}

// podState summarizes why a pod is not ready yet.
func podState(pod *corev1.Pod) string {
	s := string(pod.Status.Phase)
	for _, c := range pod.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			s += fmt.Sprintf("; %s: %s", c.Type, c.Message)
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			s += fmt.Sprintf("; %s waiting: %s %s", cs.Name, w.Reason, w.Message)
		}
		if term := cs.State.Terminated; term != nil {
			s += fmt.Sprintf("; %s terminated: %s (exit %d) %s", cs.Name, term.Reason, term.ExitCode, term.Message)
		}
	}
	return s
}

// snapshotOf creates a VolumeSnapshot of a claim and waits until it is ready to use.
func snapshotOf(t *testing.T, ns, name, claimName string) *snapshotv1.VolumeSnapshot {
	t.Helper()
	vs := &snapshotv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: snapshotv1.VolumeSnapshotSpec{
			VolumeSnapshotClassName: ptr.To(snapshotClass),
			Source:                  snapshotv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(claimName)},
		},
	}
	create(t, vs)
	return waitSnapshotReady(t, ns, name)
}

// waitSnapshotReady waits until a VolumeSnapshot is ready to use.
func waitSnapshotReady(t *testing.T, ns, name string) *snapshotv1.VolumeSnapshot {
	t.Helper()
	var vs snapshotv1.VolumeSnapshot
	waitFor(t, defaultWait, fmt.Sprintf("VolumeSnapshot %s/%s ready to use", ns, name), func(c context.Context) (bool, string, error) {
		if err := kube.Get(c, client.ObjectKey{Namespace: ns, Name: name}, &vs); err != nil {
			return false, "", err
		}
		st := vs.Status
		if st == nil {
			return false, "no status", nil
		}
		if st.Error != nil && st.Error.Message != nil {
			return false, "error: " + *st.Error.Message, nil
		}
		return st.ReadyToUse != nil && *st.ReadyToUse, "not ready", nil
	})
	return &vs
}
