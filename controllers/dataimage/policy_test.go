package dataimage

import (
	"slices"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/deploy/manifest"
)

// What a cluster's admin allows DataImages (v1alpha1.ControllerConfig.Admit) and the least
// privilege of the build pod, against a real API server.

// checkSecurity checks that a build pod runs as uid:gid and never as root, with no capability,
// no privilege escalation, a read-only root file system and the runtime's seccomp profile.
func checkSecurity(t *testing.T, ps corev1.PodSpec, uid, gid int64) {
	t.Helper()
	sc := ps.SecurityContext
	if sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || ptr.Deref(sc.RunAsUser, 0) != uid || ptr.Deref(sc.RunAsGroup, 0) != gid ||
		ptr.Deref(sc.FSGroup, 0) != gid || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v, want non-root %d:%d, fsGroup %d, seccomp RuntimeDefault", sc, uid, gid, gid)
	}
	if ps.HostNetwork || ps.HostPID || ps.HostIPC || ptr.Deref(ps.AutomountServiceAccountToken, true) {
		t.Errorf("pod: hostNetwork %v hostPID %v hostIPC %v automountServiceAccountToken %v", ps.HostNetwork, ps.HostPID, ps.HostIPC, ps.AutomountServiceAccountToken)
	}
	for _, c := range slices.Concat(ps.InitContainers, ps.Containers) {
		cs := c.SecurityContext
		if cs == nil || !ptr.Deref(cs.RunAsNonRoot, false) || ptr.Deref(cs.AllowPrivilegeEscalation, true) || !ptr.Deref(cs.ReadOnlyRootFilesystem, false) ||
			ptr.Deref(cs.Privileged, false) || cs.RunAsUser != nil && *cs.RunAsUser != uid ||
			cs.Capabilities == nil || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(cs.Capabilities.Add) != 0 {
			t.Errorf("container %s security context %s, want non-root, no privilege escalation, read-only root, all capabilities dropped",
				c.Name, cs.String())
		}
	}
}

// refused waits until the DataImage is refused with reason, checks that the condition's message
// has each of want, that an Event with that reason names each of events, and that nothing was
// created.
func (h *harness) refused(name, reason string, want, events []string) *v1alpha1.DataImage {
	h.t.Helper()
	di := h.waitImage(name, "refused ("+reason+")", func(di *v1alpha1.DataImage) bool {
		return condition(di, v1alpha1.ConditionValid).Reason == reason
	})
	c := condition(di, v1alpha1.ConditionValid)
	if di.Status.Phase != v1alpha1.PhaseFailed || c.Status != metav1.ConditionFalse || condition(di, v1alpha1.ConditionReady).Reason != reason {
		h.t.Errorf("%s: phase %s, Valid %+v, Ready %+v", name, di.Status.Phase, c, condition(di, v1alpha1.ConditionReady))
	}
	for _, w := range want {
		if !strings.Contains(c.Message, w) {
			h.t.Errorf("%s: Valid message %q lacks %q", name, c.Message, w)
		}
	}
	note := h.hasEvent(name, reason)
	for _, w := range events {
		if !strings.Contains(note, w) {
			h.t.Errorf("%s: %s Event %q lacks %q", name, reason, note, w)
		}
	}
	for _, obj := range []client.Object{&batchv1.Job{}, &corev1.PersistentVolumeClaim{}} {
		if err := h.admin.Get(h.ctx, h.key(name+"-build"), obj); !apierrors.IsNotFound(err) {
			h.t.Errorf("%s: a refused DataImage made a %T (%v)", name, obj, err)
		}
	}
	return di
}

// hostPathImage is h.image with a host path backup source on node-a.
func (h *harness) hostPathImage(name, path string) *v1alpha1.DataImage {
	di := h.image(name)
	di.Spec.BackupSource = &v1alpha1.BackupSource{HostPath: &v1alpha1.HostPathBackupSource{Path: path, NodeName: "node-a"}}
	return di
}

func TestHostPathNotAllowed(t *testing.T) {
	// testConfigYAML allows /srv/backups and /mnt/nightly.
	h := newHarness(t)
	for _, tc := range []struct{ name, path, why string }{
		{"outside", "/etc", "it is not under an allowed prefix (/srv/backups, /mnt/nightly)"},
		{"dotdot", "/srv/backups/../../etc", `it has a ".." component`},
		{"boundary", "/srv/backups2/sales", "it is not under an allowed prefix"},
		{"parent", "/srv", "it is not under an allowed prefix"},
	} {
		h.create(h.hostPathImage(tc.name, tc.path))
		refusal := `backupSource.hostPath.path "` + tc.path + `" is not allowed (controller configuration, allowedHostPaths): ` + tc.why
		h.refused(tc.name, v1alpha1.ReasonHostPathNotAllowed, []string{refusal}, []string{refusal})
	}

	// Under a prefix, by whole components: built, with the host directory as the backups.
	h.create(h.hostPathImage("inside", "/srv/backups/sales"))
	job := h.job("inside")
	var backups *corev1.Volume
	for i, v := range job.Spec.Template.Spec.Volumes {
		if v.Name == backupsVolume {
			backups = &job.Spec.Template.Spec.Volumes[i]
		}
	}
	if backups == nil || backups.HostPath == nil || backups.HostPath.Path != "/srv/backups/sales" {
		t.Errorf("backups volume %+v", backups)
	}
	got := h.waitImage("inside", "Building", phaseIs(v1alpha1.PhaseBuilding))
	if c := condition(got, v1alpha1.ConditionValid); c.Status != metav1.ConditionTrue {
		t.Errorf("Valid %+v", c)
	}

	// A refused DataImage whose path is fixed is built.
	di := &v1alpha1.DataImage{}
	if err := h.admin.Get(h.ctx, h.key("outside"), di); err != nil {
		t.Fatal(err)
	}
	di.Spec.BackupSource.HostPath.Path = "/mnt/nightly/sales"
	if err := h.admin.Update(h.ctx, di); err != nil {
		t.Fatal(err)
	}
	h.job("outside")
}

func TestImageNotAllowed(t *testing.T) {
	// testConfigYAML allows registry.example/team/*, docker.io/mirror/*,
	// quay.example/tools/builder:* besides its own images.
	h := newHarness(t)
	di := h.image("foreign")
	di.Spec.Builder = &v1alpha1.BuilderSpec{Image: "evil.example/root/builder:1", EngineImage: "registry.example/team-evil/pg:16"}
	h.create(di)
	refusals := []string{
		`builder.image "evil.example/root/builder:1" is not allowed (controller configuration, allowedImages)`,
		`builder.engineImage "registry.example/team-evil/pg:16" is not allowed (controller configuration, allowedImages): ` +
			`registry.example/team-evil/pg:16 is not one of the controller's own images, and it matches no entry of allowedImages ` +
			`(registry.example/team/*, docker.io/mirror/*, quay.example/tools/builder:*)`,
	}
	// One Event for the rule, naming both values.
	h.refused("foreign", v1alpha1.ReasonImageNotAllowed, refusals, refusals)

	// Host path and image both refused: the first rule is the reason, both have their Event.
	di = h.hostPathImage("both", "/var/lib/kubelet")
	di.Spec.Builder = &v1alpha1.BuilderSpec{EngineImage: "docker.io/library/postgres:16"}
	h.create(di)
	h.refused("both", v1alpha1.ReasonHostPathNotAllowed, []string{`"/var/lib/kubelet"`, `"docker.io/library/postgres:16"`}, []string{`"/var/lib/kubelet"`})
	if note := h.hasEvent("both", v1alpha1.ReasonImageNotAllowed); !strings.Contains(note, `builder.engineImage "docker.io/library/postgres:16"`) {
		t.Errorf("ImageNotAllowed Event %q", note)
	}

	// Allowed: by a pattern, by a repository, the controller's own image at another version.
	for name, b := range map[string]*v1alpha1.BuilderSpec{
		"patterns": {Image: "quay.example/tools/builder:2", EngineImage: "registry.example/team/pg:16"},
		"own":      {Image: "registry.example/dataimage-builder:test", EngineImage: "registry.example/postgres:15"},
	} {
		di := h.image(name)
		di.Spec.Builder = b
		h.create(di)
		ps := h.job(name).Spec.Template.Spec
		if ps.InitContainers[0].Image != b.Image || ps.Containers[0].Image != b.EngineImage {
			t.Errorf("%s: images %s, %s", name, ps.InitContainers[0].Image, ps.Containers[0].Image)
		}
	}
}

// chartConfig is the controller's configuration of deploy/: the chart's defaults.
func chartConfig(t *testing.T) *v1alpha1.ControllerConfig {
	t.Helper()
	docs, err := manifest.ReadFile("../../deploy/controller-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifest.DecodeAll(manifest.Scheme(), docs)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if cm, ok := o.Value.(*corev1.ConfigMap); ok && cm.Data["config.yaml"] != "" {
			cfg, err := v1alpha1.ParseControllerConfig([]byte(cm.Data["config.yaml"]))
			if err != nil {
				t.Fatal(err)
			}
			return cfg
		}
	}
	t.Fatal("no config.yaml in deploy/controller-config.yaml")
	return nil
}

func TestChartDefaultPolicy(t *testing.T) {
	// The chart's defaults: no host path, and only the chart's own images.
	cfg := chartConfig(t)
	if len(cfg.AllowedHostPaths) != 0 || len(cfg.AllowedImages) != 0 {
		t.Fatalf("the chart allows host paths %v and images %v by default", cfg.AllowedHostPaths, cfg.AllowedImages)
	}
	h := newHarness(t, withConfig(cfg))
	h.create(h.hostPathImage("hostpath", "/var/backups"))
	h.refused("hostpath", v1alpha1.ReasonHostPathNotAllowed,
		[]string{`backupSource.hostPath.path "/var/backups" is not allowed (controller configuration, allowedHostPaths): no host path is allowed`}, []string{`"/var/backups"`})

	di := h.image("builder")
	di.Spec.Builder = &v1alpha1.BuilderSpec{Image: "docker.io/library/busybox:1.36"}
	h.create(di)
	h.refused("builder", v1alpha1.ReasonImageNotAllowed, []string{"allowedImages is empty"}, []string{`builder.image "docker.io/library/busybox:1.36"`})

	// The chart's own images, named by the spec (short or long), are allowed; the build runs
	// as the official image's postgres user.
	di = h.image("own")
	di.Spec.Builder = &v1alpha1.BuilderSpec{EngineImage: "postgres:16", Image: cfg.Builder.Image}
	h.create(di)
	ps := h.job("own").Spec.Template.Spec
	if ps.Containers[0].Image != "postgres:16" {
		t.Errorf("engine image %s", ps.Containers[0].Image)
	}
	checkSecurity(t, ps, 999, 999)
}

func TestBuildPodRestricted(t *testing.T) {
	// The build pod passes the API server's own check of the "restricted" Pod Security
	// Standard (PodSecurity admission): a namespace that enforces it admits the pod. A pod
	// that runs as root is refused there, which shows the check is on.
	h := newHarness(t, withNamespaceLabels(map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	}))
	root := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "root", Namespace: h.ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/postgres:16",
			SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](0)}}}},
	}
	if err := h.admin.Create(h.ctx, root); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "restricted") {
		t.Fatalf("a root pod in a restricted namespace: %v, want Forbidden by PodSecurity", err)
	}

	h.create(h.image("sales"))
	job := h.job("sales")
	checkSecurity(t, job.Spec.Template.Spec, 999, 998)
	pod := h.runPod(job, "node-a") // fails the test if PodSecurity refuses it
	h.logs.set(h.ns, pod.Name, `{"step":"freeze","message":"frozen"}`)
	h.endPod(pod, 0, outcomeOK(t))
	h.readySnapshot("sales", "2Gi")
	h.waitImage("sales", "Ready", phaseIs(v1alpha1.PhaseReady))
}
