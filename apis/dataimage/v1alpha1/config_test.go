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
    runAsUser: 999
    runAsGroup: 999
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
		{"policy", "allowedHostPaths: [srv, /srv/../etc, /, /srv/]\nallowedImages: [\"*\", \"library/*\", \"docker.io/*\", \"Registry.example/x:1\", \"reg.example/a*\", \"reg.example/a:1:*\"]\n",
			`allowedHostPaths[0]: must be an absolute, clean path, got "srv"; allowedHostPaths[1]: must be an absolute, clean path, got "/srv/../etc"; ` +
				`allowedHostPaths[2]: must not be "/": that would allow every directory of the node; allowedHostPaths[3]: must be an absolute, clean path, got "/srv/"; ` +
				`allowedImages[0]: "*": * may only end an entry, as NAME:* or REGISTRY/PATH/*; ` +
				`allowedImages[1]: "library/*": REGISTRY/PATH/* must start with a registry host and name a repository path as written (e.g. registry.example/team/* or docker.io/library/*); ` +
				`allowedImages[2]: "docker.io/*": REGISTRY/PATH/* must start with a registry host`},
		{"bad image pattern", "allowedImages: [\"Registry.example/X:1\"]\n", `allowedImages[0]: "Registry.example/X:1": invalid reference format: repository name (X) must be lowercase`},
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
					`engines.Postgres.versions: at least one version is required; ` +
					`engines.Postgres.runAsUser: must be the uid of the engine's server user in its image (999 in the official images), not root, got 0; ` +
					`engines.Postgres.runAsGroup: must be the gid of the engine's server user in its image (999 in the official images), not root, got 0; ` +
					`builder.image: required; ` +
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
