package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestPluginToolsMatchContainerfile: the plugin image `make images` builds (the Makefile's
// PLUGIN_HOST_FILES) and the one cmd/dataimage-csi/Containerfile builds hold the same tools:
// every host file comes from a Debian package the Containerfile installs, and every package it
// installs provides one of them.
func TestPluginToolsMatchContainerfile(t *testing.T) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		t.Skip("no dpkg-query: not a Debian machine")
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PLUGIN_HOST_FILES := ((?:.*\\\n)*.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("the Makefile has no PLUGIN_HOST_FILES")
	}
	files := strings.Fields(strings.ReplaceAll(string(m[1]), "\\", " "))
	cf, err := os.ReadFile("../../cmd/dataimage-csi/Containerfile")
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
			t.Errorf("the Containerfile installs %s, which provides none of PLUGIN_HOST_FILES", p)
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
