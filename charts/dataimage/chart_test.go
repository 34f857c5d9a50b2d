// Package dataimage_test checks the Helm chart: for every value combination it ships, helm lint
// is clean, every rendered object decodes strictly into its Go type, and the objects fit
// together (volumes, ports, RBAC subjects, selectors) with the sidecars' flags checked against
// the sidecars' own sources and the plugin's against the plugin.
package dataimage_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/deploy/manifest"
)

const namespace = "storage"

// combinations are the value combinations the chart ships, each with what must hold of it.
var combinations = []struct {
	name  string
	set   []string
	check func(t *testing.T, r *rendered)
}{
	{"defaults", nil, func(t *testing.T, r *rendered) {
		r.none(t, "PodMonitor")
		r.none(t, "Deployment", "dataimage-snapshot-controller")
		if n := len(r.all("CustomResourceDefinition")); n != 1 {
			t.Errorf("%d CRDs, want the DataImage CRD only", n)
		}
		plugin, dp := r.container(t, "plugin"), r.container(t, "dataplane")
		wantArgs(t, dp, "--pool=/var/lib/dataimage/pool.img", "--pool-size=100Gi", "--preallocate=false", "--socket=/run/dataimage/dataplane/dataplane.sock",
			"--export-state-dir=/run/dataimage/export", "--holder=/run/dataimage/fuse-holder/fuse-holder.sock")
		wantArgs(t, plugin, "--dataplane-socket=/run/dataimage/dataplane/dataplane.sock", "--default-fstype=ext4", "--pool-check-interval=12h")
		for _, c := range []*corev1.Container{plugin, r.container(t, "controller")} {
			for _, a := range c.Args {
				if strings.HasPrefix(a, "--registry") {
					t.Errorf("no registry by default, but container %s has %s", c.Name, a)
				}
			}
		}
		holder := r.container(t, "fuse-holder")
		wantArgs(t, holder, "--socket=/run/dataimage/fuse-holder/fuse-holder.sock")
		r.mount(t, holder, "/run/dataimage/fuse-holder", "")
		if holder.LivenessProbe != nil {
			t.Error("the FUSE holder has a liveness probe: its kill would end the I/O of volumes whose data plane is not running")
		}
		r.mount(t, dp, "/var/lib/dataimage", "")
		r.mount(t, dp, "/dev", "")
		r.mount(t, dp, "/run/dataimage", corev1.MountPropagationBidirectional)
		r.mount(t, plugin, "/var/lib/kubelet", corev1.MountPropagationBidirectional)
		r.mount(t, plugin, "/dev", "")
		r.mount(t, plugin, "/registration", "")
		r.mount(t, plugin, "/run/dataimage/dataplane", "")
		if dp.LivenessProbe != nil {
			t.Error("the data plane has a liveness probe: its kill would end the volumes' I/O")
		}
		if plugin.LivenessProbe == nil || r.container(t, "livenessprobe") == nil {
			t.Error("the plugin has no liveness probe on the livenessprobe sidecar")
		}
		sc := r.get(t, "StorageClass", "dataimage").(*storagev1.StorageClass)
		if sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "" {
			t.Error("the StorageClass is the default class by default")
		}
		// Safe by default: no host path, no image but the chart's own, builds as 999:999.
		cfg := r.controllerConfig(t, "dataimage-controller")
		if len(cfg.AllowedHostPaths) != 0 || len(cfg.AllowedImages) != 0 {
			t.Errorf("the chart allows host paths %v and images %v by default", cfg.AllowedHostPaths, cfg.AllowedImages)
		}
		for name, e := range cfg.Engines {
			if e.RunAsUser != 999 || e.RunAsGroup != 999 {
				t.Errorf("engine %s builds as %d:%d, want the official images' 999:999", name, e.RunAsUser, e.RunAsGroup)
			}
		}
	}},
	{"podMonitor", []string{"metrics.podMonitor.enabled=true", "metrics.podMonitor.labels.release=prom"}, func(t *testing.T, r *rendered) {
		pm := r.get(t, "PodMonitor", "dataimage").(*monitoringv1.PodMonitor)
		if pm.Labels["release"] != "prom" {
			t.Errorf("PodMonitor labels %v", pm.Labels)
		}
		ports := r.podPorts()
		sel, err := metav1LabelSelector(pm)
		if err != nil {
			t.Fatal(err)
		}
		for _, ep := range pm.Spec.PodMetricsEndpoints {
			if ep.Port == nil || !ports[*ep.Port] {
				t.Errorf("PodMonitor scrapes port %v, which no pod declares (%v)", ep.Port, ports)
			}
		}
		for _, name := range []string{"dataimage-node", "dataimage-controller"} {
			if !sel.Matches(labels.Set(r.podTemplate(t, name).Labels)) {
				t.Errorf("the PodMonitor does not select %s's pods", name)
			}
		}
	}},
	{"snapshotController", []string{"snapshotController.install=true"}, func(t *testing.T, r *rendered) {
		crds := r.all("CustomResourceDefinition")
		if len(crds) != 7 {
			t.Errorf("%d CRDs, want DataImage and the 6 snapshot CRDs", len(crds))
		}
		for _, o := range crds {
			if o.Value.(*apiextensionsv1.CustomResourceDefinition).Annotations["helm.sh/resource-policy"] != "keep" {
				t.Errorf("%s is not kept on uninstall", o)
			}
		}
		d := r.get(t, "Deployment", "dataimage-snapshot-controller").(*appsv1.Deployment)
		wantArgs(t, &d.Spec.Template.Spec.Containers[0], "--enable-distributed-snapshotting=true", "--leader-election=true")
	}},
	{"blockDevice", []string{"node.pool.device=/dev/disk/by-id/nvme-pool", "node.pool.formatBlankDevice=true"}, func(t *testing.T, r *rendered) {
		dp := r.container(t, "dataplane")
		wantArgs(t, dp, "--pool=/dev/disk/by-id/nvme-pool", "--pool-size=100Gi")
		for _, a := range dp.Args {
			if strings.HasPrefix(a, "--preallocate") || strings.Contains(a, "pool.img") {
				t.Errorf("a block device pool has %s", a)
			}
			// Formatting over a device that is not blank is an admin's deliberate act, by
			// hand: no value of the chart renders it.
			if strings.HasPrefix(a, "--pool-format-nonblank") {
				t.Errorf("formatBlankDevice renders %s", a)
			}
		}
		for _, c := range []string{"node", "dataplane"} {
			for _, v := range r.daemonSet(t, c).Spec.Template.Spec.Volumes {
				if v.Name == "pool-dir" {
					t.Errorf("%s: a block device pool still mounts the pool file's directory", c)
				}
			}
		}
	}},
	{"registryS3", []string{
		"registry.url=s3://images/prod", "registry.endpoint=https://minio.example:9000", "registry.pathStyle=true",
		"registry.credentialsSecret=s3-keys", "registry.caBundle.configMap=minio-ca", "registry.syncInterval=30s",
		"registry.gcInterval=15m",
	}, func(t *testing.T, r *rendered) {
		plugin, ctl := r.container(t, "plugin"), r.container(t, "controller")
		for _, c := range []*corev1.Container{plugin, ctl} {
			wantArgs(t, c, "--registry=s3://images/prod", "--registry-endpoint=https://minio.example:9000", "--registry-path-style=true",
				"--registry-ca-file=/etc/dataimage/registry-ca/ca.crt")
			r.mount(t, c, "/etc/dataimage/registry-ca", "")
			keys := map[string]string{}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					keys[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
				}
			}
			if keys["AWS_ACCESS_KEY_ID"] != "s3-keys/AWS_ACCESS_KEY_ID" || keys["AWS_SECRET_ACCESS_KEY"] != "s3-keys/AWS_SECRET_ACCESS_KEY" {
				t.Errorf("container %s: credentials from %v, want Secret s3-keys", c.Name, keys)
			}
		}
		wantArgs(t, plugin, "--registry-sync=30s")
		wantArgs(t, ctl, "--registry-gc-interval=15m")
	}},
	{"registryDir", []string{"registry.url=file:///mnt/images", "registry.directory.nfs.server=nfs.example", "registry.directory.nfs.path=/exports/images"}, func(t *testing.T, r *rendered) {
		plugin, ctl := r.container(t, "plugin"), r.container(t, "controller")
		for _, c := range []*corev1.Container{plugin, ctl} {
			wantArgs(t, c, "--registry=file:///mnt/images")
			r.mount(t, c, "/mnt/images", "")
			for _, a := range c.Args {
				if strings.HasPrefix(a, "--registry-ca-file") || strings.HasPrefix(a, "--registry-endpoint") {
					t.Errorf("container %s: %s without the value", c.Name, a)
				}
			}
		}
		found := false
		for _, v := range r.daemonSet(t, "node").Spec.Template.Spec.Volumes {
			if v.Name == "registry-dir" && v.NFS != nil && v.NFS.Server == "nfs.example" && v.NFS.Path == "/exports/images" {
				found = true
			}
		}
		if !found {
			t.Error("the plugin has no NFS volume for the registry's directory")
		}
	}},
	{"blockDeviceNoFormat", []string{"node.pool.device=/dev/sdb"}, func(t *testing.T, r *rendered) {
		dp := r.container(t, "dataplane")
		wantArgs(t, dp, "--pool=/dev/sdb")
		for _, a := range dp.Args {
			if strings.HasPrefix(a, "--pool-size") {
				t.Errorf("a device pool without formatBlankDevice has %s", a)
			}
		}
	}},
	{"custom", []string{
		"fullnameOverride=di", "node.livenessProbe.enabled=false", "node.pool.preallocate=true",
		"node.kubeletDir=/var/lib/k0s/kubelet", "node.fsType=xfs", "storageClass.fsType=xfs",
		"storageClass.name=fast", "storageClass.isDefault=true", "volumeSnapshotClass.name=snap",
		"volumeSnapshotClass.isDefault=true", "crds.install=false", "controller.replicas=2",
		"node.tolerations[0].operator=Exists", "node.pool.overprovisionRatio=4", "node.export=fuse-loop",
		"controller.buildActiveDeadlineSeconds=3600", "controller.buildResources.limits.memory=2Gi",
		"images.plugin.tag=dev", "images.plugin.pullPolicy=Never", "imagePullSecrets[0].name=regcred",
		"controller.allowedHostPaths[0]=/srv/backups", "controller.allowedImages[0]=registry.example/dba/*",
		"controller.engines.postgres.runAsUser=70", "controller.engines.postgres.runAsGroup=70",
		"node.exportStateDir=/run/di/", "node.dataplane.logLevel=2", "images.dataplane.repository=registry.example/dp",
		"images.dataplane.tag=7", "node.dataplane.resources.limits.memory=1Gi",
	}, func(t *testing.T, r *rendered) {
		r.none(t, "CustomResourceDefinition")
		if r.container(t, "livenessprobe") != nil || r.container(t, "plugin").LivenessProbe != nil {
			t.Error("livenessprobe disabled but rendered")
		}
		plugin, dp := r.container(t, "plugin"), r.container(t, "dataplane")
		wantArgs(t, dp, "--preallocate=true", "--overprovision-ratio=4", "--export=fuse-loop", "--socket=/run/di/dataplane/dataplane.sock",
			"--export-state-dir=/run/di/export", "--v=2")
		wantArgs(t, plugin, "--default-fstype=xfs", "--dataplane-socket=/run/di/dataplane/dataplane.sock",
			"--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/csi.dataimage.io/csi.sock")
		r.mount(t, plugin, "/var/lib/k0s/kubelet", corev1.MountPropagationBidirectional)
		r.mount(t, plugin, "/run/di/dataplane", "")
		r.mount(t, dp, "/run/di", corev1.MountPropagationBidirectional)
		if plugin.Image != "docker.io/dataimage/dataimage-csi:dev" || plugin.ImagePullPolicy != corev1.PullNever {
			t.Errorf("plugin image %s %s", plugin.Image, plugin.ImagePullPolicy)
		}
		if dp.Image != "registry.example/dp:7" || dp.Resources.Limits.Memory().String() != "1Gi" {
			t.Errorf("data plane image %s, resources %v", dp.Image, dp.Resources)
		}
		sc := r.get(t, "StorageClass", "fast").(*storagev1.StorageClass)
		if sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" || sc.Parameters["csi.storage.k8s.io/fstype"] != "xfs" {
			t.Errorf("StorageClass %v %v", sc.Annotations, sc.Parameters)
		}
		vsc := r.get(t, "VolumeSnapshotClass", "snap").(*snapshotv1.VolumeSnapshotClass)
		if vsc.Annotations["snapshot.storage.kubernetes.io/is-default-class"] != "true" {
			t.Errorf("VolumeSnapshotClass %v", vsc.Annotations)
		}
		cfg := r.controllerConfig(t, "di-controller")
		if cfg.StorageClassName != "fast" || cfg.VolumeSnapshotClassName != "snap" || cfg.BuildActiveDeadlineSeconds != 3600 ||
			cfg.BuildResources.Limits.Memory().String() != "2Gi" {
			t.Errorf("controller config %+v", cfg)
		}
		if !slices.Equal(cfg.AllowedHostPaths, []string{"/srv/backups"}) || !slices.Equal(cfg.AllowedImages, []string{"registry.example/dba/*"}) ||
			cfg.Engines["postgres"].RunAsUser != 70 || cfg.Engines["postgres"].RunAsGroup != 70 || cfg.Engines["mysql"].RunAsUser != 999 {
			t.Errorf("controller config: allowedHostPaths %v, allowedImages %v, engines %+v", cfg.AllowedHostPaths, cfg.AllowedImages, cfg.Engines)
		}
		r.get(t, "DaemonSet", "di-node")
		r.get(t, "DaemonSet", "di-dataplane")
	}},
	// An upgrade of the plugin (its image, its flags, its sidecars) changes nothing of the
	// data plane's DaemonSet nor the holder's: `helm upgrade` rolls the plugin alone.
	{"pluginUpgrade", []string{"images.plugin.tag=9.9.9", "node.logLevel=4", "node.maxVolumes=9", "node.fsType=xfs",
		"node.livenessProbe.enabled=false", "images.provisioner.tag=v6.3.0", "node.resources.plugin.limits.cpu=2"}, func(t *testing.T, r *rendered) {
		_, before := render(t, nil)
		for _, c := range []string{"dataplane", "fuse-holder"} {
			a, b := r.daemonSet(t, c), before.daemonSet(t, c)
			if !reflect.DeepEqual(a.Spec, b.Spec) {
				t.Errorf("a plugin upgrade changes the %s DaemonSet:\n%+v\n%+v", c, a.Spec, b.Spec)
			}
		}
		if reflect.DeepEqual(r.daemonSet(t, "node").Spec, before.daemonSet(t, "node").Spec) {
			t.Error("the plugin's DaemonSet did not change")
		}
	}},
	{"everything", []string{"metrics.podMonitor.enabled=true", "snapshotController.install=true", "node.pool.device=/dev/sdb"}, nil},
}

func metav1LabelSelector(pm *monitoringv1.PodMonitor) (labels.Selector, error) {
	return labels.ValidatedSelectorFromSet(pm.Spec.Selector.MatchLabels)
}

// rendered is the chart rendered with one combination.
type rendered struct {
	objs []manifest.Object
}

func (r *rendered) all(kind string) []manifest.Object {
	var out []manifest.Object
	for _, o := range r.objs {
		if o.GVK.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func (r *rendered) find(kind, name string) *manifest.Object {
	for i, o := range r.objs {
		if o.GVK.Kind == kind && o.Name == name {
			return &r.objs[i]
		}
	}
	return nil
}

func (r *rendered) get(t *testing.T, kind, name string) any {
	t.Helper()
	o := r.find(kind, name)
	if o == nil {
		t.Fatalf("no %s %s", kind, name)
	}
	return o.Value
}

func (r *rendered) none(t *testing.T, kind string, name ...string) {
	t.Helper()
	for _, o := range r.all(kind) {
		if len(name) == 0 || o.Name == name[0] {
			t.Errorf("%s is rendered", o)
		}
	}
}

// daemonSet returns the DaemonSet of a component: "node" (the plugin) or "dataplane".
func (r *rendered) daemonSet(t *testing.T, component string) *appsv1.DaemonSet {
	t.Helper()
	for _, o := range r.all("DaemonSet") {
		ds := o.Value.(*appsv1.DaemonSet)
		if ds.Spec.Template.Labels["app.kubernetes.io/component"] == component {
			return ds
		}
	}
	t.Fatalf("no DaemonSet of component %s", component)
	return nil
}

// container returns the container of that name of the DaemonSets (the plugin's pod or the data
// plane's) or the Deployments (the controller's), nil when they have none.
func (r *rendered) container(t *testing.T, name string) *corev1.Container {
	t.Helper()
	var specs []*corev1.PodSpec
	for _, o := range r.all("DaemonSet") {
		specs = append(specs, &o.Value.(*appsv1.DaemonSet).Spec.Template.Spec)
	}
	for _, o := range r.all("Deployment") {
		specs = append(specs, &o.Value.(*appsv1.Deployment).Spec.Template.Spec)
	}
	for _, spec := range specs {
		cs := spec.Containers
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	return nil
}

func (r *rendered) mount(t *testing.T, c *corev1.Container, path string, prop corev1.MountPropagationMode) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			if prop != "" && (m.MountPropagation == nil || *m.MountPropagation != prop) {
				t.Errorf("%s: %s is mounted without %s propagation", c.Name, path, prop)
			}
			return
		}
	}
	t.Errorf("%s does not mount %s", c.Name, path)
}

func (r *rendered) podTemplate(t *testing.T, name string) *corev1.PodTemplateSpec {
	t.Helper()
	if o := r.find("DaemonSet", name); o != nil {
		return &o.Value.(*appsv1.DaemonSet).Spec.Template
	}
	if o := r.find("Deployment", name); o != nil {
		return &o.Value.(*appsv1.Deployment).Spec.Template
	}
	t.Fatalf("no DaemonSet or Deployment %s", name)
	return nil
}

// podPorts are the named container ports of every pod template.
func (r *rendered) podPorts() map[string]bool {
	ports := map[string]bool{}
	for _, o := range r.objs {
		var spec *corev1.PodSpec
		switch v := o.Value.(type) {
		case *appsv1.DaemonSet:
			spec = &v.Spec.Template.Spec
		case *appsv1.Deployment:
			spec = &v.Spec.Template.Spec
		default:
			continue
		}
		for _, c := range spec.Containers {
			for _, p := range c.Ports {
				ports[p.Name] = true
			}
		}
	}
	return ports
}

func (r *rendered) controllerConfig(t *testing.T, name string) *v1alpha1.ControllerConfig {
	t.Helper()
	cm := r.get(t, "ConfigMap", name).(*corev1.ConfigMap)
	cfg, err := v1alpha1.ParseControllerConfig([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatalf("ConfigMap %s config.yaml: %v", name, err)
	}
	return cfg
}

func wantArgs(t *testing.T, c *corev1.Container, want ...string) {
	t.Helper()
	if c == nil {
		t.Fatal("no container")
	}
	for _, w := range want {
		if !slices.Contains(c.Args, w) {
			t.Errorf("%s args %q lack %s", c.Name, c.Args, w)
		}
	}
}

func helmBinary(t *testing.T) string {
	t.Helper()
	if p := manifest.FindTool("helm"); p != "" {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("helm is not installed (hack/install-k8s-tools.sh); CI must have it")
	}
	t.Skip("helm is not installed: run hack/install-k8s-tools.sh")
	return ""
}

func render(t *testing.T, set []string) (manifest.Render, *rendered) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := manifest.Render{Helm: helmBinary(t), Chart: ".", Release: "dataimage", Namespace: namespace,
		KubeVersion: manifest.DefaultKubeVersion, Set: set}
	docs, err := r.Template(ctx)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifest.DecodeAll(manifest.Scheme(), docs)
	if err != nil {
		t.Fatal(err)
	}
	return r, &rendered{objs: objs}
}

// TestChart renders every combination: lint is clean, every object decodes strictly and the
// objects fit together.
func TestChart(t *testing.T) {
	for _, c := range combinations {
		t.Run(c.name, func(t *testing.T) {
			r, objs := render(t, c.set)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if out, err := r.Lint(ctx); err != nil {
				t.Errorf("helm lint: %v", err)
			} else if s := string(out); strings.Contains(s, "[WARNING]") || strings.Contains(s, "[ERROR]") {
				t.Errorf("helm lint:\n%s", s)
			}
			checkObjects(t, objs)
			checkFlags(t, objs)
			if c.check != nil {
				c.check(t, objs)
			}
		})
	}
}

// clusterScoped are the kinds without a namespace.
var clusterScoped = map[string]bool{"CSIDriver": true, "ClusterRole": true, "ClusterRoleBinding": true,
	"StorageClass": true, "VolumeSnapshotClass": true, "CustomResourceDefinition": true, "Namespace": true}

// checkObjects checks what holds of every combination.
func checkObjects(t *testing.T, r *rendered) {
	t.Helper()
	seen := map[string]bool{}
	accounts := map[string]bool{}
	roles := map[string]bool{}
	for _, o := range r.objs {
		key := o.GVK.Kind + "/" + o.Namespace + "/" + o.Name
		if seen[key] {
			t.Errorf("%s is rendered twice", o)
		}
		seen[key] = true
		if o.Name == "" {
			t.Errorf("%s has no name", o)
		}
		if clusterScoped[o.GVK.Kind] != (o.Namespace == "") {
			t.Errorf("%s: namespace %q (cluster-scoped: %v); namespaced objects go in %q", o, o.Namespace, clusterScoped[o.GVK.Kind], namespace)
		}
		if o.Namespace != "" && o.Namespace != namespace {
			t.Errorf("%s is in namespace %q, not the release's", o, o.Namespace)
		}
		switch v := o.Value.(type) {
		case *corev1.ServiceAccount:
			accounts[v.Namespace+"/"+v.Name] = true
		case *rbacv1.ClusterRole:
			roles["ClusterRole/"+v.Name] = true
		case *rbacv1.Role:
			roles["Role/"+v.Namespace+"/"+v.Name] = true
		}
	}
	for _, o := range r.objs {
		switch v := o.Value.(type) {
		case *rbacv1.ClusterRoleBinding:
			checkBinding(t, o, v.RoleRef, "", v.Subjects, roles, accounts)
		case *rbacv1.RoleBinding:
			checkBinding(t, o, v.RoleRef, v.Namespace, v.Subjects, roles, accounts)
		case *appsv1.DaemonSet:
			checkPod(t, o, v.Spec.Selector.MatchLabels, &v.Spec.Template, accounts)
		case *appsv1.Deployment:
			checkPod(t, o, v.Spec.Selector.MatchLabels, &v.Spec.Template, accounts)
		case *storagev1.CSIDriver:
			s := v.Spec
			if v.Name != "csi.dataimage.io" || s.AttachRequired == nil || *s.AttachRequired || s.PodInfoOnMount == nil || !*s.PodInfoOnMount ||
				s.StorageCapacity == nil || !*s.StorageCapacity || s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy ||
				!slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
				t.Errorf("%s: %+v", o, s)
			}
		case *storagev1.StorageClass:
			if v.Provisioner != "csi.dataimage.io" || v.VolumeBindingMode == nil || *v.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer ||
				v.AllowVolumeExpansion == nil || !*v.AllowVolumeExpansion || v.Parameters["csi.storage.k8s.io/fstype"] == "" {
				t.Errorf("%s: %+v", o, v)
			}
		case *snapshotv1.VolumeSnapshotClass:
			if v.Driver != "csi.dataimage.io" || v.DeletionPolicy != snapshotv1.VolumeSnapshotContentDelete {
				t.Errorf("%s: %+v", o, v)
			}
		case *corev1.ConfigMap:
			if strings.HasSuffix(v.Name, "-controller") {
				r.controllerConfig(t, v.Name)
			}
		case *apiextensionsv1.CustomResourceDefinition:
			if v.Annotations["helm.sh/resource-policy"] != "keep" {
				t.Errorf("%s is not kept on uninstall", o)
			}
		}
	}
	if len(r.all("DaemonSet")) != 3 || len(r.all("CSIDriver")) != 1 {
		t.Errorf("want three DaemonSets (the plugin's, the data plane's and the FUSE holder's) and one CSIDriver")
	}
	checkNode(t, r)
}

// checkNode: the data plane and the plugin run in DaemonSets of their own on the same nodes;
// the data plane's is updated only by deleting its pods (OnDelete), the plugin's rolls; both
// mount the one host directory of the data plane's socket, where the flags put it.
func checkNode(t *testing.T, r *rendered) {
	t.Helper()
	node, dp := r.daemonSet(t, "node"), r.daemonSet(t, "dataplane")
	if s := dp.Spec.UpdateStrategy.Type; s != appsv1.OnDeleteDaemonSetStrategyType {
		t.Errorf("the data plane's DaemonSet is updated by %s, want OnDelete", s)
	}
	if s := node.Spec.UpdateStrategy.Type; s != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("the plugin's DaemonSet is updated by %s, want RollingUpdate", s)
	}
	ns, ds := node.Spec.Template.Spec, dp.Spec.Template.Spec
	if !reflect.DeepEqual(ns.NodeSelector, ds.NodeSelector) || !reflect.DeepEqual(ns.Tolerations, ds.Tolerations) {
		t.Errorf("the plugin and the data plane run on other nodes: %v %v, %v %v", ns.NodeSelector, ns.Tolerations, ds.NodeSelector, ds.Tolerations)
	}
	plugin, dataplane := r.container(t, "plugin"), r.container(t, "dataplane")
	sock := strings.TrimPrefix(flagValue(plugin, "dataplane-socket"), "")
	if sock == "" || flagValue(dataplane, "socket") != sock {
		t.Fatalf("the plugin calls the data plane at %q, which listens at %q", sock, flagValue(dataplane, "socket"))
	}
	if hostPathOf(t, &ns, plugin, filepath.Dir(sock)) != hostPathOf(t, &ds, dataplane, filepath.Dir(sock)) {
		t.Errorf("the plugin and the data plane see other host directories at %s", filepath.Dir(sock))
	}
	// The FUSE holder: OnDelete, on the same nodes, listening where the data plane calls it,
	// in a host directory both see.
	fh := r.daemonSet(t, "fuse-holder")
	if s := fh.Spec.UpdateStrategy.Type; s != appsv1.OnDeleteDaemonSetStrategyType {
		t.Errorf("the FUSE holder's DaemonSet is updated by %s, want OnDelete", s)
	}
	hs := fh.Spec.Template.Spec
	if !reflect.DeepEqual(hs.NodeSelector, ds.NodeSelector) || !reflect.DeepEqual(hs.Tolerations, ds.Tolerations) {
		t.Errorf("the FUSE holder and the data plane run on other nodes: %v %v, %v %v", hs.NodeSelector, hs.Tolerations, ds.NodeSelector, ds.Tolerations)
	}
	holder := r.container(t, "fuse-holder")
	hsock := flagValue(dataplane, "holder")
	if hsock == "" || flagValue(holder, "socket") != hsock {
		t.Fatalf("the data plane calls the FUSE holder at %q, which listens at %q", hsock, flagValue(holder, "socket"))
	}
	if hostPathOf(t, &hs, holder, filepath.Dir(hsock)) != hostPathOf(t, &ds, dataplane, filepath.Dir(hsock)) {
		t.Errorf("the FUSE holder and the data plane see other host directories at %s", filepath.Dir(hsock))
	}
	for _, a := range plugin.Args {
		for _, moved := range []string{"--pool=", "--pool-size", "--preallocate", "--export=", "--export-state-dir", "--overprovision-ratio"} {
			if strings.HasPrefix(a, moved) {
				t.Errorf("the plugin has %s, a flag of the data plane", a)
			}
		}
	}
}

// flagValue returns the value of --name in c's arguments.
func flagValue(c *corev1.Container, name string) string {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// hostPathOf returns the host directory that container c of pod spec sees at path (through
// the hostPath volume mounted at path or at one of its parents).
func hostPathOf(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, path string) string {
	t.Helper()
	best, bestMount := "", ""
	for _, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") || len(m.MountPath) < len(bestMount) {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				best, bestMount = filepath.Join(v.HostPath.Path, rel), m.MountPath
			}
		}
	}
	if best == "" {
		t.Errorf("container %s sees no host directory at %s", c.Name, path)
	}
	return best
}

func checkBinding(t *testing.T, o manifest.Object, ref rbacv1.RoleRef, ns string, subjects []rbacv1.Subject, roles, accounts map[string]bool) {
	t.Helper()
	key := ref.Kind + "/" + ref.Name
	if ref.Kind == "Role" {
		key = "Role/" + ns + "/" + ref.Name
	}
	if ref.APIGroup != rbacv1.GroupName || !roles[key] {
		t.Errorf("%s binds %s, which the chart does not render", o, key)
	}
	for _, s := range subjects {
		if s.Kind != rbacv1.ServiceAccountKind || !accounts[s.Namespace+"/"+s.Name] {
			t.Errorf("%s binds %s %s/%s, which the chart does not render", o, s.Kind, s.Namespace, s.Name)
		}
	}
}

// checkPod: the selector selects the template; the service account exists; every mount names a
// volume; probes use declared ports; ports are unique in the pod; images are pinned.
func checkPod(t *testing.T, o manifest.Object, sel map[string]string, tpl *corev1.PodTemplateSpec, accounts map[string]bool) {
	t.Helper()
	if len(sel) == 0 || !labels.SelectorFromSet(sel).Matches(labels.Set(tpl.Labels)) {
		t.Errorf("%s: selector %v does not select the template's labels %v", o, sel, tpl.Labels)
	}
	spec := &tpl.Spec
	if !accounts[o.Namespace+"/"+spec.ServiceAccountName] {
		t.Errorf("%s runs as service account %q, which the chart does not render", o, spec.ServiceAccountName)
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if volumes[v.Name] {
			t.Errorf("%s: volume %s twice", o, v.Name)
		}
		volumes[v.Name] = true
	}
	ports := map[string]bool{}
	numbers := map[int32]bool{}
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if ports[p.Name] || numbers[p.ContainerPort] {
				t.Errorf("%s: port %s (%d) twice", o, p.Name, p.ContainerPort)
			}
			ports[p.Name], numbers[p.ContainerPort] = true, true
		}
	}
	for _, c := range spec.Containers {
		if !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":") || strings.HasSuffix(c.Image, ":latest") {
			t.Errorf("%s: container %s image %q has no pinned tag", o, c.Name, c.Image)
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("%s: container %s mounts volume %s, which the pod lacks", o, c.Name, m.Name)
			}
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional &&
				(c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged) {
				t.Errorf("%s: container %s has a Bidirectional mount but is not privileged", o, c.Name)
			}
		}
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
			if p != nil && p.HTTPGet != nil && !ports[p.HTTPGet.Port.String()] {
				t.Errorf("%s: container %s probes port %s, which no container declares", o, c.Name, p.HTTPGet.Port.String())
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				if f := e.ValueFrom.FieldRef.FieldPath; f != "spec.nodeName" && f != "metadata.name" && f != "metadata.namespace" {
					t.Errorf("%s: container %s env %s from %s", o, c.Name, e.Name, f)
				}
			}
		}
	}
}

// checkFlags: every argument of every container is a flag its program defines, and the
// environment the sidecars require is set.
func checkFlags(t *testing.T, r *rendered) {
	t.Helper()
	for _, o := range r.objs {
		var spec *corev1.PodSpec
		switch v := o.Value.(type) {
		case *appsv1.DaemonSet:
			spec = &v.Spec.Template.Spec
		case *appsv1.Deployment:
			spec = &v.Spec.Template.Spec
		default:
			continue
		}
		for _, c := range spec.Containers {
			known, pending := programFlags(t, c.Name, c.Image)
			for _, a := range c.Args {
				name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				if !strings.HasPrefix(a, "-") {
					t.Errorf("%s: container %s argument %q is not a flag", o, c.Name, a)
				} else if !known[name] && !pending[name] {
					t.Errorf("%s: container %s has --%s, which %s does not define", o, c.Name, name, c.Image)
				}
			}
			env := map[string]bool{}
			for _, e := range c.Env {
				env[e.Name] = true
			}
			need := map[string][]string{
				"csi-provisioner": {"NODE_NAME", "NAMESPACE", "POD_NAME"}, // --node-deployment, --enable-capacity
				"csi-snapshotter": {"NODE_NAME"},                          // --node-deployment
				"plugin":          {"NODE_NAME"},                          // --node-id=$(NODE_NAME)
			}
			for _, n := range need[c.Name] {
				if !env[n] {
					t.Errorf("%s: container %s lacks the %s environment variable", o, c.Name, n)
				}
			}
		}
	}
}

// pendingPluginFlags are flags the chart gives the plugin that cmd/dataimage-csi does not
// define yet: kubelet plugin registration served by the plugin itself and its metrics
// endpoint (docs/kubernetes.md). When the plugin defines one, this test fails until it is
// removed from here. Empty now: the plugin defines every flag the chart gives it.
var pendingPluginFlags = []string{}

// controllerFlags are the flags the chart gives the controller (docs/kubernetes.md, the
// controller's contract); checked against cmd/dataimage-controller once it exists.
var controllerFlags = []string{"config", "leader-elect", "metrics-bind-address", "health-probe-bind-address", "v", "log-format"}

// livenessprobeFlags are livenessprobe v2.20.0's (cmd/livenessprobe/main.go and klog's -v):
// its module is not served by the module proxy, so they are written here.
var livenessprobeFlags = []string{"csi-address", "probe-timeout", "health-port", "metrics-address", "http-endpoint", "metrics-path", "v"}

var (
	flagsMu    sync.Mutex
	flagsCache = map[string]map[string]bool{}
)

// programFlags returns the flags the program of a container defines, and the flags it is
// allowed to lack for now.
func programFlags(t *testing.T, container, image string) (known, pending map[string]bool) {
	t.Helper()
	flagsMu.Lock()
	defer flagsMu.Unlock()
	set := func(names ...string) map[string]bool {
		m := map[string]bool{}
		for _, n := range names {
			m[n] = true
		}
		return m
	}
	tag := image[strings.LastIndex(image, ":")+1:]
	key := container + "@" + tag
	if f, ok := flagsCache[key]; ok {
		if container == "plugin" {
			return f, set(pendingPluginFlags...)
		}
		return f, nil
	}
	var f map[string]bool
	switch container {
	case "csi-provisioner":
		f = sourceFlags(t, "github.com/kubernetes-csi/external-provisioner/v6@"+tag, "cmd/csi-provisioner/csi-provisioner.go")
	case "csi-snapshotter":
		f = sourceFlags(t, "github.com/kubernetes-csi/external-snapshotter/v8@"+tag, "cmd/csi-snapshotter/main.go")
	case "snapshot-controller":
		f = sourceFlags(t, "github.com/kubernetes-csi/external-snapshotter/v8@"+tag, "cmd/snapshot-controller/main.go")
	case "livenessprobe":
		if tag != "v2.20.0" {
			t.Fatalf("livenessprobe %s: check its flags and update livenessprobeFlags", tag)
		}
		f = set(livenessprobeFlags...)
	case "dataplane":
		f = helpFlags(t, "dataimage-dataplane")
	case "fuse-holder":
		f = helpFlags(t, "dataimage-fuse-holder")
	case "plugin":
		f = helpFlags(t, "dataimage-csi")
		for _, p := range pendingPluginFlags {
			if f[p] {
				t.Errorf("cmd/dataimage-csi defines --%s now: remove it from pendingPluginFlags", p)
			}
		}
	case "controller":
		if !hasMain("dataimage-controller") {
			f = set(controllerFlags...) // the contract, until the command exists
		} else {
			f = helpFlags(t, "dataimage-controller")
		}
	default:
		t.Fatalf("container %s: no flag list", container)
	}
	flagsCache[key] = f
	if container == "plugin" {
		return f, set(pendingPluginFlags...)
	}
	return f, nil
}

// flagCall matches the name of a flag defined with the flag package (or pflag, or a flag set):
// flag.String("name", ...), fs.BoolVar(&x, "name", ...), flag.Var(value, "name", ...).
var flagCall = regexp.MustCompile(`\b(?:flag|flags|fs|CommandLine)\.[A-Z]\w*\(\s*(?:[^,()"]*(?:\([^()]*\))?\s*,\s*)?"([a-z][a-z0-9-]*)"`)

// sourceFlags returns the flags a sidecar's main file defines, with the common flags of the
// csi-lib-utils version it requires (standardflags) and klog's -v.
func sourceFlags(t *testing.T, module, file string) map[string]bool {
	t.Helper()
	dir := download(t, module)
	flags := map[string]bool{"v": true}
	add := func(path string) {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range flagCall.FindAllStringSubmatch(string(src), -1) {
			flags[m[1]] = true
		}
	}
	add(filepath.Join(dir, file))
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`github.com/kubernetes-csi/csi-lib-utils (v\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatalf("%s requires no csi-lib-utils", module)
	}
	add(filepath.Join(download(t, "github.com/kubernetes-csi/csi-lib-utils@"+string(m[1])), "standardflags", "flags.go"))
	if len(flags) < 5 {
		t.Fatalf("%s %s: found only the flags %v; the pattern no longer matches its source", module, file, flags)
	}
	return flags
}

// download fetches a module through the module proxy (go mod download) and returns its
// directory; without the proxy, the test skips except in CI.
func download(t *testing.T, module string) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", module).Output()
	var info struct{ Dir, Error string }
	if err == nil {
		err = json.Unmarshal(out, &info)
	}
	if err == nil && info.Error != "" {
		err = fmt.Errorf("%s", info.Error)
	}
	if err != nil || info.Dir == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("go mod download %s: %v %s", module, err, out)
		}
		t.Skipf("go mod download %s: %v (no module proxy?)", module, err)
	}
	return info.Dir
}

// hasMain reports whether cmd/<name> is a main package.
func hasMain(name string) bool {
	out, err := exec.Command("go", "list", "-f", "{{.Name}}", "../../cmd/"+name).Output()
	return err == nil && strings.TrimSpace(string(out)) == "main"
}

// helpFlags builds cmd/<name> and returns the flags its --help lists, but those it says it
// refuses (the plugin's flags that moved to the data plane).
func helpFlags(t *testing.T, name string) map[string]bool {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/"+name).CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/%s: %v\n%s", name, err, out)
	}
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+--?([a-z][a-z0-9-]*).*\n(.*)$`).FindAllStringSubmatch(string(out), -1) {
		if !strings.Contains(m[2], "refused here") {
			flags[m[1]] = true
		}
	}
	if len(flags) == 0 {
		t.Fatalf("%s --help lists no flags:\n%s", name, out)
	}
	return flags
}

// TestSnapshotCRDsCurrent: the chart's snapshot CRDs are those of the external-snapshotter
// client module go.mod requires (make manifests copies them).
func TestSnapshotCRDsCurrent(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshotter/client/v8").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		dir = download(t, "github.com/kubernetes-csi/external-snapshotter/client/v8")
	}
	want, err := filepath.Glob(filepath.Join(dir, "config/crd/*.storage.k8s.io_*.yaml"))
	if err != nil || len(want) != 6 {
		t.Fatalf("%s has %d snapshot CRDs, want 6: %v", dir, len(want), err)
	}
	got, _ := filepath.Glob("files/snapshot-crds/*.yaml")
	if len(got) != len(want) {
		t.Errorf("the chart has %d snapshot CRDs, the module %d: run make manifests", len(got), len(want))
	}
	for _, w := range want {
		a, _ := os.ReadFile(w)
		b, err := os.ReadFile(filepath.Join("files/snapshot-crds", filepath.Base(w)))
		if err != nil || string(a) != string(b) {
			t.Errorf("files/snapshot-crds/%s differs from the module's: run make manifests", filepath.Base(w))
		}
	}
}
