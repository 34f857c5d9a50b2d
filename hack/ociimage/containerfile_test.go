package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestPluginToolsMatchContainerfile: the plugin's and the data plane's images `make images`
// builds (the Makefile's PLUGIN_HOST_FILES, DATAPLANE_HOST_FILES) and the ones their
// Containerfiles build hold the same tools: every host file comes from a Debian package the
// Containerfile installs, and every package it installs provides one of them.
func TestPluginToolsMatchContainerfile(t *testing.T) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		t.Skip("no dpkg-query: not a Debian machine")
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []struct{ variable, containerfile string }{
		{"PLUGIN_HOST_FILES", "../../cmd/dataimage-csi/Containerfile"},
		{"DATAPLANE_HOST_FILES", "../../cmd/dataimage-dataplane/Containerfile"},
	} {
		t.Run(img.variable, func(t *testing.T) { checkImageTools(t, mk, img.variable, img.containerfile) })
	}
}

// checkImageTools checks the host files of the Makefile's variable against the packages the
// Containerfile installs.
func checkImageTools(t *testing.T, mk []byte, variable, containerfile string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + variable + ` := ((?:.*\\\n)*.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatalf("the Makefile has no %s", variable)
	}
	files := strings.Fields(strings.ReplaceAll(string(m[1]), "\\", " "))
	cf, err := os.ReadFile(containerfile)
	if err != nil {
		t.Fatal(err)
	}
	pm := regexp.MustCompile(`apt-get install -y --no-install-recommends ([a-z0-9 .+-]+)`).FindSubmatch(cf)
	if pm == nil {
		t.Fatal("the Containerfile installs no packages")
	}
	installed := map[string]bool{}
	for _, p := range strings.Fields(string(pm[1])) {
		installed[p] = false
	}
	for _, f := range files {
		pkg := owner(t, f)
		if pkg == "" {
			t.Errorf("no Debian package has %s", f)
			continue
		}
		if _, ok := installed[pkg]; !ok {
			t.Errorf("%s comes from %s, which the Containerfile does not install", f, pkg)
		}
		installed[pkg] = true
	}
	for p, used := range installed {
		if !used {
			t.Errorf("the Containerfile installs %s, which provides none of %s", p, variable)
		}
	}
}

// owner returns the package that has path, also under its pre-merged-/usr name.
func owner(t *testing.T, path string) string {
	t.Helper()
	for _, p := range []string{path, strings.TrimPrefix(path, "/usr")} {
		out, err := exec.Command("dpkg-query", "-S", p).Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if pkgs, file, ok := strings.Cut(line, ": "); ok && file == p {
				pkg, _, _ := strings.Cut(strings.Split(pkgs, ", ")[0], ":")
				return pkg
			}
		}
	}
	return ""
}
