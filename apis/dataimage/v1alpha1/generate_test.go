package v1alpha1

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// moduleRoot is the directory of go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// tool finds a tool hack/install-k8s-tools.sh installs (PATH, GOBIN, GOPATH/bin), or skips
// the test without it, except in CI (CI=true), where a missing tool is a broken install.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		for _, d := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			for _, dir := range []string{d, filepath.Join(d, "bin")} {
				if p := filepath.Join(dir, name); d != "" && isExec(p) {
					return p
				}
			}
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed (hack/install-k8s-tools.sh); CI must have it", name)
	}
	t.Skipf("%s is not installed: run hack/install-k8s-tools.sh", name)
	return ""
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// TestGeneratedFilesCurrent: zz_generated.deepcopy.go and both copies of the CRD are what
// controller-gen makes of the types now (run `make manifests` after changing them).
func TestGeneratedFilesCurrent(t *testing.T) {
	cg := tool(t, "controller-gen")
	root := moduleRoot(t)
	out := t.TempDir()
	cmd := exec.Command(cg, "object", "paths=./apis/...", "crd:crdVersions=v1",
		"output:object:dir="+filepath.Join(out, "object"), "output:crd:dir="+filepath.Join(out, "crd"))
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, b)
	}
	for _, c := range []struct{ generated, committed string }{
		{"object/zz_generated.deepcopy.go", "apis/dataimage/v1alpha1/zz_generated.deepcopy.go"},
		{"crd/dataimage.io_dataimages.yaml", "deploy/crd/dataimage.io_dataimages.yaml"},
		{"crd/dataimage.io_dataimages.yaml", "charts/dataimage/files/crds/dataimage.io_dataimages.yaml"},
	} {
		want, err := os.ReadFile(filepath.Join(out, c.generated))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, c.committed))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what %s generates from the types now: run make manifests", c.committed, cg)
		}
	}
	entries, err := os.ReadDir(filepath.Join(out, "crd"))
	if err != nil || len(entries) != 1 {
		t.Errorf("controller-gen made %d CRDs, want 1 (dataimages): %v", len(entries), err)
	}
}
