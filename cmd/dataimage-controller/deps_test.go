package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/dataimage/dataimage"

// forbidden are the packages the controller binary must not link, with the reason: path and
// every package below it, or only the packages below it. The controller watches builds from
// the API server: it reads the builder's wire format (imagebuilder/builder/wire) and the image
// definition's types, and nothing that a build, a node or the single-machine product runs with.
var forbidden = []struct {
	path      string
	belowOnly bool
	why       string
}{
	{module + "/blockstore", false, "the block store runs on the nodes, in the CSI plugin"},
	{"github.com/hanwen/go-fuse", false, "FUSE exports run on the nodes"},
	{module + "/imagebuilder/engine", true, "engine adapters run in the builder, not in the controller"},
	{module + "/local", false, "the single-machine product is not the controller's"},
}

// rule returns the index of the forbidden entry pkg falls under, or -1.
func rule(pkg string) int {
	for i, f := range forbidden {
		if pkg == f.path && !f.belowOnly || strings.HasPrefix(pkg, f.path+"/") {
			return i
		}
	}
	return -1
}

// TestDependencies: `go list -deps` of the controller binary holds no forbidden package. A
// failure names, for each rule broken, the packages linked and the shortest chain of imports
// from the binary to the nearest of them.
func TestDependencies(t *testing.T) {
	root := module + "/cmd/dataimage-controller"
	imports := goListDeps(t, root)
	if _, ok := imports[root]; !ok {
		t.Fatalf("go list -deps %s does not list the package itself", root)
	}
	// Breadth first from the binary: each package is reached first by a shortest chain.
	parent := map[string]string{root: ""}
	order := []string{root}
	for i := 0; i < len(order); i++ {
		for _, imp := range imports[order[i]] {
			if _, seen := parent[imp]; !seen {
				parent[imp] = order[i]
				order = append(order, imp)
			}
		}
	}
	broken := make([][]string, len(forbidden)) // by rule, nearest first
	for _, pkg := range order {
		if r := rule(pkg); r >= 0 {
			broken[r] = append(broken[r], pkg)
		}
	}
	for r, pkgs := range broken {
		if len(pkgs) == 0 {
			continue
		}
		var chain []string
		for p := pkgs[0]; p != ""; p = parent[p] {
			chain = append(chain, p)
		}
		slices.Reverse(chain)
		t.Errorf("the controller links %s (%s): %s; the chain to %s:\n\t%s",
			forbidden[r].path, forbidden[r].why, strings.Join(pkgs, ", "), pkgs[0], strings.Join(chain, "\n\t-> "))
	}
}

// TestForbiddenRules: the rules catch what they name and nothing next to it.
func TestForbiddenRules(t *testing.T) {
	for pkg, bad := range map[string]bool{
		module + "/blockstore":                           true,
		module + "/blockstore/export":                    true,
		module + "/blockstorex":                          false,
		"github.com/hanwen/go-fuse/v2/fuse":              true,
		module + "/imagebuilder/engine/postgres":         true,
		module + "/imagebuilder/engine/mariadb/internal": true,
		module + "/imagebuilder/engine":                  false,
		module + "/imagebuilder/builder/wire":            false,
		module + "/imagebuilder":                         false,
		module + "/local":                                true,
		module + "/localx":                               false,
		module + "/controllers/dataimage":                false,
	} {
		if got := rule(pkg) >= 0; got != bad {
			t.Errorf("%s: forbidden %v, want %v", pkg, got, bad)
		}
	}
}

// goListDeps returns the imports of every package that root depends on (root included), as
// `go list -deps` reports them (standard library included, tests excluded).
func goListDeps(t *testing.T, root string) map[string][]string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the dependencies: %v", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(goCmd, "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, root)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", root, err, &stderr)
	}
	imports := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 {
			imports[fields[0]] = fields[1:]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return imports
}
