package v1alpha1

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/randfill"
	"sigs.k8s.io/yaml"

	"github.com/dataimage/dataimage/imagebuilder"
)

func TestScheme(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for kind, want := range map[string]runtime.Object{"DataImage": &DataImage{}, "DataImageList": &DataImageList{}} {
		got, err := s.New(SchemeGroupVersion.WithKind(kind))
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if reflect.TypeOf(got) != reflect.TypeOf(want) {
			t.Errorf("%s is %T, want %T", kind, got, want)
		}
	}
	if got := Resource("dataimages").String(); got != "dataimages.dataimage.io" {
		t.Errorf("Resource = %q", got)
	}
}

// TestDefinitionInline: the definition's fields are spec's own in JSON, as in a definition
// file, and the definition file's example decodes into a spec.
func TestDefinitionInline(t *testing.T) {
	const manifest = `
apiVersion: dataimage.io/v1alpha1
kind: DataImage
metadata:
  name: sales
  namespace: team-a
spec:
  name: sales-2024
  engine: postgres
  version: "16"
  sourceType: backup
  backups:
    - path: sales/base.tar
      format: basebackup-tar
  tags: [sales, nightly]
  lifetime: 72h
  backupSource:
    persistentVolumeClaim:
      claimName: backups
  nodeName: node-1
  volumeSize: 20Gi
`
	var di DataImage
	if err := yaml.UnmarshalStrict([]byte(manifest), &di); err != nil {
		t.Fatal(err)
	}
	d := di.Spec.Definition
	if d.Name != "sales-2024" || d.Engine != "postgres" || d.Version != "16" || len(d.Backups) != 1 || d.Backups[0].Format != "basebackup-tar" || d.Lifetime != "72h" {
		t.Fatalf("definition = %+v", d)
	}
	if di.Spec.BackupSource.PersistentVolumeClaim.ClaimName != "backups" || di.Spec.VolumeSize.String() != "20Gi" {
		t.Fatalf("spec = %+v", di.Spec)
	}
	j, err := json.Marshal(di.Spec)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(j, &top); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "engine", "version", "sourceType", "backups", "tags", "lifetime", "backupSource", "nodeName"} {
		if _, ok := top[k]; !ok {
			t.Errorf("spec JSON lacks %q at the top: %s", k, j)
		}
	}
	if _, ok := top["Definition"]; ok {
		t.Errorf("the definition is nested, not inline: %s", j)
	}
}

// TestDeepCopySpec: DataImageSpec's hand-written DeepCopyInto copies every field of a spec
// filled at random, shares no memory with it, and knows every field: a field added to
// DataImageSpec or a reference field added to imagebuilder.Definition fails here until
// deepcopy.go copies it.
func TestDeepCopySpec(t *testing.T) {
	known := map[string]bool{"Definition": true, "BackupSource": true, "NodeName": true, "StorageClassName": true, "VolumeSize": true, "Builder": true}
	st := reflect.TypeFor[DataImageSpec]()
	for i := range st.NumField() {
		if f := st.Field(i); !known[f.Name] {
			t.Errorf("DataImageSpec.%s is new: copy it in DeepCopyInto (deepcopy.go) and add it here", f.Name)
		}
	}
	dt := reflect.TypeFor[imagebuilder.Definition]()
	for i := range dt.NumField() {
		f := dt.Field(i)
		switch {
		case f.Name == "Backups" && f.Type == reflect.TypeFor[[]imagebuilder.Backup]():
		case f.Name == "Tags" && f.Type == reflect.TypeFor[[]string]():
		case f.Name == "RecoveryTarget" && f.Type == reflect.TypeFor[*imagebuilder.RecoveryTarget]():
			rt := reflect.TypeFor[imagebuilder.RecoveryTarget]()
			for j := range rt.NumField() {
				if g := rt.Field(j); g.Type.Kind() != reflect.String && g.Type != reflect.TypeFor[*bool]() {
					t.Errorf("imagebuilder.RecoveryTarget.%s (%s): copyDefinition copies strings and *bool only", g.Name, g.Type)
				}
			}
		case f.Type.Kind() == reflect.String || f.Type.Kind() == reflect.Bool || f.Type.Kind() <= reflect.Float64 && f.Type.Kind() >= reflect.Int:
		default:
			t.Errorf("imagebuilder.Definition.%s (%s) is a reference type copyDefinition does not copy", f.Name, f.Type)
		}
	}
	bt := reflect.TypeFor[imagebuilder.Backup]()
	for i := range bt.NumField() {
		if k := bt.Field(i).Type.Kind(); k != reflect.String {
			t.Errorf("imagebuilder.Backup.%s is a %s: copyDefinition copies Backups shallowly", bt.Field(i).Name, k)
		}
	}

	f := randfill.NewWithSeed(1).NilChance(0).NumElements(1, 3).Funcs(
		func(q *resource.Quantity, c randfill.Continue) {
			*q = *resource.NewQuantity(c.Int63n(1<<40)+1, resource.BinarySI)
		},
	)
	for i := range 50 {
		var in DataImageSpec
		f.Fill(&in)
		out := in.DeepCopy()
		if !equality.Semantic.DeepEqual(&in, out) {
			t.Fatalf("round %d: the copy differs:\n%+v\n%+v", i, in, *out)
		}
		// Change everything reachable in the copy; the original must not change.
		before := in.DeepCopy()
		f.Fill(out)
		out.Backups[0].Path += "x"
		out.Tags[0] += "x"
		*out.StorageClassName += "x"
		out.BackupSource.HostPath.Path += "x"
		out.Builder.Resources.Limits[corev1.ResourceCPU] = resource.MustParse("3")
		if !equality.Semantic.DeepEqual(&in, before) {
			t.Fatalf("round %d: changing the copy changed the original", i)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func validSpec() DataImageSpec {
	return DataImageSpec{
		Definition: imagebuilder.Definition{
			Name: "sales", Engine: "postgres", Version: "16", SourceType: "backup",
			Backups: []imagebuilder.Backup{{Path: "sales/base.tar", Format: "basebackup-tar"}},
		},
		BackupSource: &BackupSource{PersistentVolumeClaim: &PVCBackupSource{ClaimName: "backups"}},
	}
}

var env = imagebuilder.ValidationEnv{Versions: imagebuilder.Versions{imagebuilder.EnginePostgres: {"15", "16"}}}

// TestValidate: every rule, with the exact message; the definition's own problems come first,
// from the definition's own code.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*DataImageSpec)
		want string // "" for valid
	}{
		{"valid pvc", func(*DataImageSpec) {}, ""},
		{"valid nfs", func(s *DataImageSpec) {
			s.BackupSource = &BackupSource{NFS: &NFSBackupSource{Server: "nfs.example", Path: "/exports/backups"}}
		}, ""},
		{"valid host path on spec.nodeName", func(s *DataImageSpec) {
			s.NodeName = "node-1"
			s.BackupSource = &BackupSource{HostPath: &HostPathBackupSource{Path: "/srv/backups"}}
		}, ""},
		{"valid host path with its node", func(s *DataImageSpec) {
			s.BackupSource = &BackupSource{HostPath: &HostPathBackupSource{Path: "/srv/backups", NodeName: "node-1"}}
		}, ""},
		{"valid empty image", func(s *DataImageSpec) {
			s.SourceType, s.Backups, s.BackupSource = "Empty", nil, nil
			s.VolumeSize, s.StorageClassName = ptr(resource.MustParse("1Gi")), ptr("fast")
		}, ""},
		{"definition problems first", func(s *DataImageSpec) {
			s.Name, s.Version = "", "9"
			s.BackupSource = nil
		}, `name: required; version: postgres "9" is not available; available: 15, 16; backupSource: required when sourceType is backup`},
		{"backup source with an empty image", func(s *DataImageSpec) {
			s.SourceType, s.Backups = "empty", nil
		}, "backupSource: not allowed when sourceType is empty"},
		{"no source", func(s *DataImageSpec) {
			s.BackupSource = &BackupSource{}
		}, "backupSource: exactly one of persistentVolumeClaim, nfs and hostPath must be set, got 0"},
		{"two sources", func(s *DataImageSpec) {
			s.BackupSource.NFS = &NFSBackupSource{Server: "nfs", Path: "/b"}
		}, "backupSource: exactly one of persistentVolumeClaim, nfs and hostPath must be set, got 2 (persistentVolumeClaim, nfs)"},
		{"bad claim name", func(s *DataImageSpec) {
			s.BackupSource.PersistentVolumeClaim.ClaimName = "Backups"
		}, `backupSource.persistentVolumeClaim.claimName: must be a valid Kubernetes name, got "Backups": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		{"empty claim name", func(s *DataImageSpec) {
			s.BackupSource.PersistentVolumeClaim.ClaimName = ""
		}, "backupSource.persistentVolumeClaim.claimName: required"},
		{"nfs without server, relative path", func(s *DataImageSpec) {
			s.BackupSource = &BackupSource{NFS: &NFSBackupSource{Path: "backups"}}
		}, `backupSource.nfs.server: required; backupSource.nfs.path: must be an absolute path, got "backups"`},
		{"host path without a node", func(s *DataImageSpec) {
			s.BackupSource = &BackupSource{HostPath: &HostPathBackupSource{Path: "/srv/backups/"}}
		}, `backupSource.hostPath.path: must be an absolute, clean path, got "/srv/backups/"; backupSource.hostPath.nodeName: required when nodeName is empty: a host path is on one node`},
		{"host path on another node", func(s *DataImageSpec) {
			s.NodeName = "node-1"
			s.BackupSource = &BackupSource{HostPath: &HostPathBackupSource{Path: "/srv", NodeName: "node-2"}}
		}, `backupSource.hostPath.nodeName: must be nodeName ("node-1") when both are set, got "node-2"`},
		{"bad node, class, size, deadline", func(s *DataImageSpec) {
			s.NodeName, s.StorageClassName = "Node_1", ptr("")
			s.VolumeSize = ptr(resource.MustParse("0"))
			s.Builder = &BuilderSpec{ActiveDeadlineSeconds: ptr(int64(0))}
		}, `nodeName: must be a valid Kubernetes name, got "Node_1": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'); storageClassName: required; volumeSize: must be positive, got 0; builder.activeDeadlineSeconds: must be positive, got 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.edit(&s)
			err := s.Validate(env)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want %q", tc.want)
			}
			if !errors.Is(err, imagebuilder.ErrInvalidDefinition) {
				t.Errorf("%v does not match imagebuilder.ErrInvalidDefinition", err)
			}
			want := imagebuilder.ErrInvalidDefinition.Error() + ": " + tc.want
			if err.Error() != want {
				t.Errorf("Validate:\n got %s\nwant %s", err, want)
			}
		})
	}
}

// TestValidateIgnoresCheckPaths: the controller cannot see the backups; paths are checked for
// their form only, whatever env says.
func TestValidateIgnoresCheckPaths(t *testing.T) {
	s := validSpec()
	e := env
	e.CheckPaths, e.BackupRoot = true, "/nonexistent/backups"
	if err := s.Validate(e); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}
