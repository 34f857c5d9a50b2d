package v1alpha1

import (
	"errors"
	"strings"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder"
)

const goodConfig = `
apiVersion: dataimage.io/v1alpha1
kind: ControllerConfig
engines:
  postgres:
    image: docker.io/library/postgres:{version}
    versions: ["15", "16"]
builder:
  image: docker.io/dataimage/dataimage-builder:0.1.0
  pullPolicy: IfNotPresent
storageClassName: dataimage
volumeSnapshotClassName: dataimage
defaultVolumeSize: 10Gi
defaultLifetime: 72h
buildNodeSelector:
  dataimage.io/cloning-node: "true"
`

func TestParseControllerConfig(t *testing.T) {
	c, err := ParseControllerConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	img, ok := c.EngineImage(imagebuilder.EnginePostgres, "16")
	if !ok || img != "docker.io/library/postgres:16" {
		t.Errorf("EngineImage = %q, %v", img, ok)
	}
	if _, ok := c.EngineImage(imagebuilder.EngineMySQL, "8.0"); ok {
		t.Error("EngineImage found mysql, which the config does not have")
	}
	env, err := c.ValidationEnv()
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := env.Versions.Match(imagebuilder.EnginePostgres, "16"); !ok || v != "16" {
		t.Errorf("versions: %v", env.Versions)
	}
	if env.DefaultLifetime.Duration.Hours() != 72 {
		t.Errorf("default lifetime %v", env.DefaultLifetime)
	}
	s := validSpec()
	if err := s.Validate(env); err != nil {
		t.Errorf("a valid spec against the config: %v", err)
	}
}

func TestParseControllerConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, edit, want string }{
		{"unknown field", "storageClassNme: x\n", `unknown field "storageClassNme"`},
		{"wrong case", "StorageClassName: x\n", `unknown field "StorageClassName"`},
		{"duplicate field", "storageClassName: y\n", `key "storageClassName" already set in map`},
		{"every rule", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := goodConfig + tc.edit
			want := tc.want
			if tc.name == "every rule" {
				data = "apiVersion: v1\nkind: Config\nengines:\n  Postgres:\n    image: postgres\nbuilder:\n  pullPolicy: Sometimes\n" +
					"defaultVolumeSize: \"0\"\ndefaultLifetime: 3d\nbuildActiveDeadlineSeconds: -1\n"
				want = `apiVersion: must be dataimage.io/v1alpha1, got "v1"; kind: must be ControllerConfig, got "Config"; ` +
					`engines.Postgres: must be one of postgres, mysql, mariadb; engines.Postgres.image: must contain {version}, got "postgres"; ` +
					`engines.Postgres.versions: at least one version is required; builder.image: required; ` +
					`builder.pullPolicy: must be Always, IfNotPresent or Never, got "Sometimes"; storageClassName: required; ` +
					`volumeSnapshotClassName: required; defaultVolumeSize: must be positive, got 0; ` +
					`defaultLifetime: must be 0 or <n>s, <n>m, <n>h, got "3d"; buildActiveDeadlineSeconds: must not be negative, got -1`
			}
			_, err := ParseControllerConfig([]byte(data))
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not match ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error:\n got %v\nwant it to contain %s", err, want)
			}
		})
	}
}
