// Package deploy_test checks deploy/, the kustomize base: every object decodes strictly into
// its Go type, the kustomization lists every file, and the files are what the chart renders
// (deploy/ is generated from charts/dataimage by `make manifests`).
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/deploy/manifest"
)

// tool finds a tool of hack/install-k8s-tools.sh, or skips without it except in CI.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p := manifest.FindTool(name); p != "" {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed (hack/install-k8s-tools.sh); CI must have it", name)
	}
	t.Skipf("%s is not installed: run hack/install-k8s-tools.sh", name)
	return ""
}

// listed returns the kustomization's resources.
func listed(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml is %s %s", k.APIVersion, k.Kind)
	}
	return k.Resources
}

// files returns the YAML files of deploy/ but kustomization.yaml, relative to deploy/.
func files(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, pattern := range []string{"*.yaml", "crd/*.yaml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	out = slices.DeleteFunc(out, func(p string) bool { return p == "kustomization.yaml" })
	slices.Sort(out)
	return out
}

// TestKustomizationListsEveryFile: the base is exactly the files of deploy/.
func TestKustomizationListsEveryFile(t *testing.T) {
	res := slices.Sorted(slices.Values(listed(t)))
	if got := files(t); !slices.Equal(res, got) {
		t.Fatalf("kustomization.yaml lists %q, deploy/ has %q", res, got)
	}
}

// TestStrictDecode: every object of every file decodes strictly into its Go type.
func TestStrictDecode(t *testing.T) {
	scheme := manifest.Scheme()
	kinds := map[string]int{}
	for _, f := range files(t) {
		docs, err := manifest.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(docs) == 0 {
			t.Errorf("%s holds no object", f)
		}
		objs, err := manifest.DecodeAll(scheme, docs)
		if err != nil {
			t.Error(err)
		}
		for _, o := range objs {
			kinds[o.GVK.Kind]++
		}
	}
	for _, k := range []string{"Namespace", "CustomResourceDefinition", "CSIDriver", "DaemonSet", "Deployment",
		"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "StorageClass",
		"VolumeSnapshotClass", "ConfigMap"} {
		if kinds[k] == 0 {
			t.Errorf("deploy/ has no %s", k)
		}
	}
}

// TestStrictDecodeRejectsMistakes: the decoding the tests rely on fails on a misspelled field,
// a field in the wrong case, a field at the wrong level, a duplicate key and an unknown kind.
func TestStrictDecodeRejectsMistakes(t *testing.T) {
	orig, err := os.ReadFile("node-daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	scheme := manifest.Scheme()
	decode := func(data []byte) error {
		docs, err := manifest.Split("node-daemonset.yaml", data)
		if err != nil {
			return err
		}
		_, err = manifest.DecodeAll(scheme, docs)
		return err
	}
	if err := decode(orig); err != nil {
		t.Fatalf("the file itself: %v", err)
	}
	for _, tc := range []struct{ name, old, new, want string }{
		{"misspelled", "mountPropagation: Bidirectional", "mountPropogation: Bidirectional", `unknown field "spec.template.spec.containers[0].volumeMounts[2].mountPropogation"`},
		{"wrong case", "        - name: plugin\n", "        - Name: plugin\n", `unknown field "spec.template.spec.containers[0].Name"`},
		{"wrong level", "      serviceAccountName:", "      serviceAccount: x\n      serviceAccountNames:", `unknown field "spec.template.spec.serviceAccountNames"`},
		{"duplicate", "  updateStrategy:\n", "  minReadySeconds: 1\n  minReadySeconds: 2\n  updateStrategy:\n", `"minReadySeconds" already set`},
		{"unknown kind", "kind: DaemonSet", "kind: DaemonSett", `no kind "DaemonSett" is registered`},
		{"wrong type", "maxUnavailable: 1", "maxUnavailable: [1]", "maxUnavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Contains(orig, []byte(tc.old)) {
				t.Fatalf("node-daemonset.yaml has no %q", tc.old)
			}
			err := decode(bytes.Replace(orig, []byte(tc.old), []byte(tc.new), 1))
			if !errors.Is(err, manifest.ErrDecode) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decode: %v, want an ErrDecode with %q", err, tc.want)
			}
		})
	}
}

// TestGeneratedFromChart: deploy/ is the chart rendered with its default values (make
// manifests), file by file, and deploy/crd/ is the CRD the chart installs.
func TestGeneratedFromChart(t *testing.T) {
	helm := tool(t, "helm")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := manifest.Render{Helm: helm, Chart: "../charts/dataimage", Release: manifest.DefaultRelease,
		Namespace: manifest.DefaultNamespace, KubeVersion: manifest.DefaultKubeVersion}
	want, err := manifest.GenerateDeploy(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		got, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%s: %v (run make manifests)", name, err)
			continue
		}
		if !bytes.Equal(got, w) {
			t.Errorf("deploy/%s differs from the chart's rendering: run make manifests", name)
		}
	}
	for _, f := range files(t) {
		if _, ok := want[f]; !ok && f != manifest.CRDFile {
			t.Errorf("deploy/%s is not generated from the chart: remove it or add it to the chart", f)
		}
	}

	// The CRD: the chart renders its copy with the keep policy; otherwise the same object.
	docs, err := r.Template(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rendered []manifest.Doc
	for _, d := range docs {
		if d.Source == "dataimage/templates/crds.yaml" {
			rendered = append(rendered, d)
		}
	}
	if len(rendered) != 1 {
		t.Fatalf("the chart renders %d documents from crds.yaml, want 1", len(rendered))
	}
	committed, err := manifest.ReadFile(manifest.CRDFile)
	if err != nil || len(committed) != 1 {
		t.Fatalf("%s: %d documents, %v", manifest.CRDFile, len(committed), err)
	}
	scheme := manifest.Scheme()
	a, err := manifest.Decode(scheme, rendered[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := manifest.Decode(scheme, committed[0])
	if err != nil {
		t.Fatal(err)
	}
	ca, cb := a.Value.(*apiextensionsv1.CustomResourceDefinition), b.Value.(*apiextensionsv1.CustomResourceDefinition)
	if ca.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Errorf("the chart's CRD lacks helm.sh/resource-policy: keep")
	}
	delete(ca.Annotations, "helm.sh/resource-policy")
	ja, _ := json.Marshal(ca)
	jb, _ := json.Marshal(cb)
	if !bytes.Equal(ja, jb) {
		t.Errorf("the chart's CRD differs from %s", manifest.CRDFile)
	}
}

// TestKustomizeBuild: kustomize builds the base, and the build holds every object of the
// files, each decoding strictly.
func TestKustomizeBuild(t *testing.T) {
	kustomize := tool(t, "kustomize")
	out, err := exec.Command(kustomize, "build", ".").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kustomize build: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	docs, err := manifest.Split("kustomize build", out)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifest.DecodeAll(manifest.Scheme(), docs)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files(t) {
		d, err := manifest.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		n += len(d)
	}
	if len(objs) != n {
		t.Errorf("kustomize build made %d objects, the files hold %d", len(objs), n)
	}
}

// TestExamples: every object of examples/ (when it exists) decodes strictly, and every
// DataImage there is valid against the controller configuration deploy/ installs.
func TestExamples(t *testing.T) {
	var paths []string
	if err := filepath.WalkDir("../examples", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			paths = append(paths, p)
		}
		return nil
	}); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Skip("examples/ holds no manifests yet")
	}
	scheme := manifest.Scheme()
	cfgDocs, err := manifest.ReadFile("controller-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cm, err := manifest.Decode(scheme, cfgDocs[0])
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := v1alpha1.ParseControllerConfig([]byte(cm.Value.(*corev1.ConfigMap).Data["config.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	env, err := cfg.ValidationEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		docs, err := manifest.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := manifest.DecodeAll(scheme, docs)
		if err != nil {
			t.Error(err)
		}
		for _, o := range objs {
			if di, ok := o.Value.(*v1alpha1.DataImage); ok {
				if err := di.Spec.Validate(env); err != nil {
					t.Errorf("%s: %v", o, err)
				}
			}
		}
	}
}
