package v1alpha1

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

// TestCRDValidationRules runs the CEL rules of the generated CRD (deploy/crd/) the way the
// API server does, on specs that keep and break them.
func TestCRDValidationRules(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(moduleRoot(t), "deploy/crd/dataimage.io_dataimages.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(data, &crd); err != nil {
		t.Fatal(err)
	}
	var internal apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(crd.Spec.Versions[0].Schema.OpenAPIV3Schema, &internal, nil); err != nil {
		t.Fatal(err)
	}
	s, err := schema.NewStructural(&internal)
	if err != nil {
		t.Fatal(err)
	}
	v := cel.NewValidator(s, true, celconfig.PerCallLimit)
	if v == nil {
		t.Fatal("the CRD has no CEL rules")
	}
	for _, tc := range []struct {
		name string
		spec string
		want string // "" when valid
	}{
		{"pvc", "backupSource: {persistentVolumeClaim: {claimName: b}}", ""},
		{"host path with its node", "backupSource: {hostPath: {path: /b, nodeName: n1}}\nnodeName: n1", ""},
		{"host path on spec's node", "backupSource: {hostPath: {path: /b}}\nnodeName: n1", ""},
		{"no source", "backupSource: {}", "exactly one of persistentVolumeClaim, nfs and hostPath must be set"},
		{"two sources", "backupSource: {nfs: {server: s, path: /p}, hostPath: {path: /b}}", "exactly one of persistentVolumeClaim, nfs and hostPath must be set"},
		{"two nodes", "backupSource: {hostPath: {path: /b, nodeName: n2}}\nnodeName: n1", "nodeName and backupSource.hostPath.nodeName must name the same node"},
		{"placement on all nodes", "backupSource: {nfs: {server: s, path: /p}}\nplacement: {allNodes: true}", ""},
		{"placement by labels", "backupSource: {nfs: {server: s, path: /p}}\nplacement: {nodeSelector: {zone: a}}", ""},
		{"placement both", "backupSource: {nfs: {server: s, path: /p}}\nplacement: {allNodes: true, nodeSelector: {zone: a}}", "allNodes and nodeSelector exclude each other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var obj map[string]any
			doc := "apiVersion: dataimage.io/v1alpha1\nkind: DataImage\nmetadata: {name: x}\nspec:\n  name: x\n  engine: postgres\n  version: \"16\"\n  sourceType: backup\n  " +
				strings.ReplaceAll(tc.spec, "\n", "\n  ") + "\n"
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatal(err)
			}
			errs, _ := v.Validate(context.Background(), field.NewPath(""), s, obj, nil, celconfig.RuntimeCELCostBudget)
			switch {
			case tc.want == "" && len(errs) > 0:
				t.Errorf("rejected: %v", errs.ToAggregate())
			case tc.want != "" && (len(errs) == 0 || !strings.Contains(errs.ToAggregate().Error(), tc.want)):
				t.Errorf("errors %v, want %q", errs.ToAggregate(), tc.want)
			}
		})
	}
}
