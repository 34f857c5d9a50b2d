// Package manifest reads the project's Kubernetes manifests: it splits YAML streams into
// documents, renders the Helm chart with the helm binary, and decodes every object strictly
// into its Go type (unknown, misspelled and duplicate fields are errors; field names are
// case-sensitive), so that a manifest that Kubernetes would silently prune fails a test instead.
//
// It serves the tests of deploy/ and charts/dataimage, and the generator of deploy/
// (deploy/gen).
//
// It must not know the product's code: it reads manifests and the chart as files and decodes them
// into the API types.
package manifest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	dataimagev1alpha1 "github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
)

// Errors.
var (
	// ErrDecode: a document is not a well-formed object of a known kind, or has fields its Go
	// type does not know.
	ErrDecode = errors.New("manifest: cannot decode object")
	// ErrHelm: helm failed.
	ErrHelm = errors.New("manifest: helm failed")
)

// Doc is one YAML document of a manifest.
type Doc struct {
	// Source is where the document came from: a file, or a chart template as helm names it
	// ("dataimage/templates/node-daemonset.yaml").
	Source string
	// Index is the document's position in Source, from 0 (documents that hold only comments do
	// not count).
	Index int
	// YAML is the document, comments included.
	YAML []byte
}

// String names the document: "deploy/x.yaml#1".
func (d Doc) String() string { return fmt.Sprintf("%s#%d", d.Source, d.Index) }

// Split splits a YAML stream into its documents, leaving out those that hold only comments
// and blank lines. Helm's "# Source: NAME" comment at the top of a document sets its Source.
func Split(source string, data []byte) ([]Doc, error) {
	r := yamlutil.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs []Doc
	indexes := map[string]int{}
	for {
		b, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("manifest: split %s: %w", source, err)
		}
		if onlyComments(b) {
			continue
		}
		src := source
		if s, ok := helmSource(b); ok {
			src = s
		}
		docs = append(docs, Doc{Source: src, Index: indexes[src], YAML: bytes.TrimLeft(b, "\n")})
		indexes[src]++
	}
}

func onlyComments(b []byte) bool {
	for line := range strings.Lines(string(b)) {
		if t := strings.TrimSpace(line); t != "" && t != "---" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

func helmSource(b []byte) (string, bool) {
	for line := range strings.Lines(string(b)) {
		t := strings.TrimSpace(line)
		if t == "" || t == "---" {
			continue
		}
		return strings.CutPrefix(t, "# Source: ")
	}
	return "", false
}

// ReadFile reads and splits a manifest file.
func ReadFile(path string) ([]Doc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return Split(path, data)
}

// Scheme returns a scheme with every kind the project's manifests hold: the core, apps, batch,
// RBAC and storage APIs, CRDs, the snapshot API, the Prometheus Operator's PodMonitor and
// dataimage.io.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, rbacv1.AddToScheme,
		storagev1.AddToScheme, apiextensionsv1.AddToScheme, snapshotv1.AddToScheme,
		monitoringv1.AddToScheme, dataimagev1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(fmt.Sprintf("manifest: build scheme: %v", err)) // a broken invariant of the packages above
		}
	}
	return s
}

// Object is a decoded document.
type Object struct {
	Doc
	// GVK is the document's apiVersion and kind.
	GVK schema.GroupVersionKind
	// Namespace and Name are the object's metadata.namespace and metadata.name.
	Namespace, Name string
	// Value is a pointer to the Go type of GVK (*appsv1.DaemonSet, ...).
	Value runtime.Object
}

// String names the object: "DaemonSet dataimage-system/dataimage-node (deploy/x.yaml#0)".
func (o Object) String() string {
	name := o.Name
	if o.Namespace != "" {
		name = o.Namespace + "/" + name
	}
	return fmt.Sprintf("%s %s (%s)", o.GVK.Kind, name, o.Doc)
}

// Decode decodes a document strictly into the Go type its apiVersion and kind name in scheme.
// The error names the document and matches ErrDecode.
func Decode(scheme *runtime.Scheme, d Doc) (Object, error) {
	o := Object{Doc: d}
	j, err := yaml.YAMLToJSONStrict(d.YAML)
	if err != nil {
		return o, fmt.Errorf("%w %s: %w", ErrDecode, d, err)
	}
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(j, &meta); err != nil {
		return o, fmt.Errorf("%w %s: %w", ErrDecode, d, err)
	}
	gv, err := schema.ParseGroupVersion(meta.APIVersion)
	if err != nil || meta.APIVersion == "" || meta.Kind == "" {
		return o, fmt.Errorf("%w %s: apiVersion %q and kind %q do not name a kind", ErrDecode, d, meta.APIVersion, meta.Kind)
	}
	o.GVK = gv.WithKind(meta.Kind)
	o.Namespace, o.Name = meta.Metadata.Namespace, meta.Metadata.Name
	v, err := scheme.New(o.GVK)
	if err != nil {
		return o, fmt.Errorf("%w %s: %w", ErrDecode, d, err)
	}
	if err := Strict(j, v); err != nil {
		return o, fmt.Errorf("%w %s (%s): %w", ErrDecode, d, o.GVK.Kind, err)
	}
	o.Value = v
	return o, nil
}

// Strict decodes JSON into v, failing on unknown and duplicate fields and on field names that
// differ in case from the Go type's.
func Strict(j []byte, v any) error {
	strict, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// DecodeAll decodes every document, and reports every failure.
func DecodeAll(scheme *runtime.Scheme, docs []Doc) ([]Object, error) {
	objs := make([]Object, 0, len(docs))
	var errs []error
	for _, d := range docs {
		o, err := Decode(scheme, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		objs = append(objs, o)
	}
	return objs, errors.Join(errs...)
}

// Render is how to render the chart.
type Render struct {
	// Helm is the helm binary.
	Helm string
	// Chart is the chart's directory.
	Chart string
	// Release and Namespace name the release and its namespace.
	Release, Namespace string
	// KubeVersion is the Kubernetes version to render for (helm's --kube-version).
	KubeVersion string
	// Set are --set arguments ("key=value").
	Set []string
}

// Defaults of a Render: what deploy/ is rendered with.
const (
	DefaultRelease     = "dataimage"
	DefaultNamespace   = "dataimage-system"
	DefaultKubeVersion = "v1.36.1"
)

// Template runs helm template and splits its output; each document's Source is the template
// it came from.
func (r Render) Template(ctx context.Context) ([]Doc, error) {
	args := []string{"template", r.Release, r.Chart, "--namespace", r.Namespace, "--kube-version", r.KubeVersion}
	for _, s := range r.Set {
		args = append(args, "--set", s)
	}
	out, err := run(ctx, r.Helm, args...)
	if err != nil {
		return nil, err
	}
	return Split("helm template", out)
}

// Lint runs helm lint --strict (warnings fail) with the Render's values and returns its output.
func (r Render) Lint(ctx context.Context) ([]byte, error) {
	args := []string{"lint", "--strict", r.Chart, "--namespace", r.Namespace, "--kube-version", r.KubeVersion}
	for _, s := range r.Set {
		args = append(args, "--set", s)
	}
	return run(ctx, r.Helm, args...)
}

func run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%w: %s %s: %w: %s%s", ErrHelm, bin, strings.Join(args, " "), err,
			stdout.String(), strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// FindTool finds a tool that hack/install-k8s-tools.sh installs: on PATH, else in GOBIN or
// GOPATH/bin (where `go install` puts it). It returns "" when there is none.
func FindTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	var dirs []string
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) == 2 {
			if lines[0] != "" {
				dirs = append(dirs, lines[0])
			}
			for _, p := range filepath.SplitList(lines[1]) {
				dirs = append(dirs, filepath.Join(p, "bin"))
			}
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}
