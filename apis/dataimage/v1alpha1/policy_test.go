package v1alpha1

import (
	"errors"
	"strings"
	"testing"
)

// policyConfig is goodConfig with host path prefixes and image patterns.
const policyConfig = goodConfig + `allowedHostPaths: [/srv/backups, /mnt/nightly/db]
allowedImages:
  - registry.example/team/*
  - quay.example/tools/builder:*
  - docker.io/mirror/pg:15.7
  - localhost/*
`

func policy(t *testing.T, data string) *ControllerConfig {
	t.Helper()
	c, err := ParseControllerConfig([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hostPathSpec(p string) *DataImageSpec {
	return &DataImageSpec{BackupSource: &BackupSource{HostPath: &HostPathBackupSource{Path: p, NodeName: "n"}}}
}

func TestAdmitHostPath(t *testing.T) {
	c := policy(t, policyConfig)
	for _, tc := range []struct {
		path string
		why  string // "" when allowed
	}{
		{"/srv/backups", ""},
		{"/srv/backups/sales", ""},
		{"/srv/backups/sales/2024/", ""},
		{"/mnt/nightly/db/x", ""},
		{"/srv/backups/...", ""}, // a name, not a parent
		{"/srv/backups2", "not under an allowed prefix (/srv/backups, /mnt/nightly/db)"},
		{"/srv/backupsx/sales", "not under an allowed prefix"},
		{"/srv", "not under an allowed prefix"},
		{"/mnt/nightly", "not under an allowed prefix"},
		{"/mnt/nightly/dbx", "not under an allowed prefix"},
		{"/etc", "not under an allowed prefix"},
		{"/", "not under an allowed prefix"},
		{"/srv/backups/../../etc", `it has a ".." component`},
		{"/srv/backups/..", `it has a ".." component`},
		{"/srv/backups/sales/../../backups2", `it has a ".." component`},
		{"srv/backups", "not an absolute path"},
		{"", "not an absolute path"},
	} {
		errs := c.Admit(hostPathSpec(tc.path))
		if tc.why == "" {
			if len(errs) != 0 {
				t.Errorf("%q refused: %v", tc.path, errs[0])
			}
			continue
		}
		if len(errs) != 1 {
			t.Errorf("%q: %d refusals, want 1", tc.path, len(errs))
			continue
		}
		e := errs[0]
		if e.Field != "backupSource.hostPath.path" || e.Value != tc.path || e.Rule != RuleAllowedHostPaths ||
			e.Reason != ReasonHostPathNotAllowed || !strings.Contains(e.Why, tc.why) {
			t.Errorf("%q: %+v, want why %q", tc.path, e, tc.why)
		}
		if !errors.Is(e, ErrNotAllowed) || !strings.Contains(e.Error(), `"`+tc.path+`"`) || !strings.Contains(e.Error(), "allowedHostPaths") {
			t.Errorf("%q: error %q", tc.path, e)
		}
	}

	// The default: no prefix, every host path refused; other sources need nothing.
	d := policy(t, goodConfig)
	if errs := d.Admit(hostPathSpec("/srv/backups")); len(errs) != 1 || !strings.Contains(errs[0].Why, "allowedHostPaths is empty") {
		t.Errorf("default configuration, a host path: %v", errs)
	}
	for _, s := range []*DataImageSpec{
		{BackupSource: &BackupSource{PersistentVolumeClaim: &PVCBackupSource{ClaimName: "b"}}},
		{BackupSource: &BackupSource{NFS: &NFSBackupSource{Server: "nfs", Path: "/etc"}}},
		{},
	} {
		if errs := d.Admit(s); len(errs) != 0 {
			t.Errorf("default configuration, %+v: %v", s, errs)
		}
	}
}

func TestAdmitImages(t *testing.T) {
	c := policy(t, policyConfig)
	for _, tc := range []struct {
		image string
		why   string // "" when allowed
	}{
		// The controller's own images, however they are written.
		{"docker.io/dataimage/dataimage-builder:0.1.0", ""},
		{"dataimage/dataimage-builder:0.1.0", ""},
		{"docker.io/library/postgres:16", ""},
		{"postgres:15", ""},
		{"library/postgres:16", ""},
		{"postgres:17", "docker.io/library/postgres:17 is not one of the controller's own images"},
		{"postgres", "docker.io/library/postgres:latest is not one of"},
		{"docker.io/dataimage/dataimage-builder:0.1.1", "matches no entry of allowedImages"},
		// REGISTRY/PATH/*: any repository under the path, by whole components.
		{"registry.example/team/pg:16", ""},
		{"registry.example/team/sub/pg@sha256:" + strings.Repeat("a", 64), ""},
		{"registry.example/team-evil/pg:16", "matches no entry"},
		{"registry.example/teampg:16", "matches no entry"},
		{"registry.example/pg:16", "matches no entry"},
		{"localhost/x:1", ""},
		{"localhost:5000/x:1", "matches no entry"},
		// NAME:*: any tag or digest of one repository.
		{"quay.example/tools/builder:2", ""},
		{"quay.example/tools/builder", ""},
		{"quay.example/tools/builder@sha256:" + strings.Repeat("b", 64), ""},
		{"quay.example/tools/builder-x:2", "matches no entry"},
		{"quay.example/tools/builder/x:2", "matches no entry"},
		// An exact entry: that tag only; with a digest too, the digest is what is pulled.
		{"mirror/pg:15.7", ""},
		{"docker.io/mirror/pg:15.8", "matches no entry"},
		{"docker.io/mirror/pg:15.7@sha256:" + strings.Repeat("c", 64), "matches no entry"},
		// Not references at all.
		{"Registry.example/team/PG:16", "not a valid image reference"},
		{"registry.example/team/pg:16 ; rm", "not a valid image reference"},
	} {
		for _, field := range []string{"builder.image", "builder.engineImage"} {
			s := &DataImageSpec{Builder: &BuilderSpec{}}
			if field == "builder.image" {
				s.Builder.Image = tc.image
			} else {
				s.Builder.EngineImage = tc.image
			}
			errs := c.Admit(s)
			if tc.why == "" {
				if len(errs) != 0 {
					t.Errorf("%s %q refused: %v", field, tc.image, errs[0])
				}
				continue
			}
			if len(errs) != 1 {
				t.Errorf("%s %q: %d refusals, want 1", field, tc.image, len(errs))
				continue
			}
			e := errs[0]
			if e.Field != field || e.Value != tc.image || e.Rule != RuleAllowedImages || e.Reason != ReasonImageNotAllowed ||
				!strings.Contains(e.Why, tc.why) || !errors.Is(e, ErrNotAllowed) {
				t.Errorf("%s %q: %+v, want why %q", field, tc.image, e, tc.why)
			}
		}
	}

	// The default: only the controller's own images; both fields refused at once, in order.
	d := policy(t, goodConfig)
	errs := d.Admit(&DataImageSpec{Builder: &BuilderSpec{Image: "evil.example/b:1", EngineImage: "evil.example/pg:16"},
		BackupSource: &BackupSource{HostPath: &HostPathBackupSource{Path: "/etc"}}})
	if len(errs) != 3 || errs[0].Rule != RuleAllowedHostPaths || errs[1].Field != "builder.image" || errs[2].Field != "builder.engineImage" ||
		!strings.Contains(errs[1].Why, "allowedImages is empty") {
		t.Errorf("default configuration: %v", errs)
	}
}

// TestConfigImageReferences: the controller's own images must be references it can compare.
func TestConfigImageReferences(t *testing.T) {
	data := strings.NewReplacer("docker.io/dataimage/dataimage-builder:0.1.0", "Bad/Builder:1",
		"docker.io/library/postgres:{version}", "docker.io/library/postgres:{version}@x").Replace(goodConfig)
	_, err := ParseControllerConfig([]byte(data))
	for _, want := range []string{`engines.postgres.image: with version "15", "docker.io/library/postgres:15@x" is not a valid image reference`,
		`builder.image: "Bad/Builder:1" is not a valid image reference`} {
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}
