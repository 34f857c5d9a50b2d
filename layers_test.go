// Package dataimage_test holds the rules about the whole tree: which layer may import which
// (docs/architecture.md and ../shared/DESIGN.md: data flows down, nothing points up).
package dataimage_test

import (
	"bufio"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// layerRules are the import rules of the tree. A pattern is a directory of the module ("driver":
// that package alone) or a subtree ("blockstore/...": the directory and everything below it;
// "...": every package). A rule holds for every package its pkgs pattern matches, and counts
// every package of this module that package reaches: what its files import (its tests' too),
// and what those import in turn (without their tests). Files of every build tag are read.
var layerRules = []struct {
	pkgs   string
	except []string // packages of pkgs the rule skips
	only   []string // the only module packages the packages may reach (when set)
	not    []string // module packages they must not reach
	// testHelpers are packages made for tests that the packages' tests may import although
	// they sit above them (a helper that makes a pool imports blockstore); what a helper
	// reaches is checked by the helper's own rule, not counted here.
	testHelpers []string
	why         string
}{
	{
		pkgs: "blockstore/...", only: []string{"blockstore/..."}, testHelpers: []string{"internal/nodetest"},
		why: "the block store is the bottom layer: it knows nothing of CSI, images or the products above it",
	},
	{
		pkgs: "dataplane/...", not: []string{"driver/...", "local/...", "nodevolume/...", "imagebuilder/...", "controllers/...", "apis/...", "cmd/...", "bench/...", "e2e/...", "sanity/..."},
		why: "the data plane serves the pool and the exports to the control planes (the CSI plugin, the local daemon), which reach it over its socket: it knows none of them, nor their mounts",
	},
	{
		pkgs: "nodevolume/...", not: []string{"driver/...", "local/...", "imagebuilder/...", "controllers/...", "apis/...", "cmd/...", "bench/...", "e2e/...", "sanity/..."},
		why: "a volume attached on this node as a file system or block device: the CSI node service and the local daemon both use it, and it knows neither",
	},
	{
		pkgs: "exportset/...", except: []string{"exportset/poolvol", "exportset/internal/exporttest"}, only: []string{"exportset", "exportset/remote", "internal/..."},
		// The tests of push, pull and collection run them on real pools.
		testHelpers: []string{"internal/s3test", "exportset/internal/exporttest"},
		why:         "export sets (format, push, pull, GC, targets) are read by those who hold no pool (the DataImage controller lists, deletes and collects): they know no store, only the Source and Sink they are given",
	},
	{
		pkgs: "exportset/poolvol", only: []string{"exportset", "exportset/remote", "blockstore/...", "internal/..."},
		testHelpers: []string{"internal/nodetest", "internal/s3test", "exportset/internal/exporttest"},
		why:         "the pool's side of export sets sits just above the store; the CSI node, the data plane and the local daemon call it, it knows none of them",
	},
	{
		pkgs: "exportset/internal/exporttest", only: []string{"exportset/...", "blockstore/...", "internal/...", "dataplane", "dataplane/dataplanetest"},
		why: "what the tests of export sets share: pools (also served by a data plane, as a node's are, for pushes and pulls over its API), targets, the S3 server; nothing of the control planes",
	},
	{
		pkgs: "internal/...", except: []string{"internal/nodetest", "internal/kubetest"}, only: []string{"internal/..."},
		why: "the shared utilities (sizes, atomic files, per-key locks, ...) are leaves: everything may use them, so they use nothing above them",
	},
	{
		pkgs: "internal/nodetest", only: []string{"blockstore/...", "internal/..."},
		why: "the tests of the node's data path share it, blockstore/export's among them: it stands just above the store",
	},
	{
		pkgs: "driver/...", not: []string{"imagebuilder/...", "local/...", "controllers/...", "apis/...", "cmd/...", "bench/...", "e2e/...", "sanity/...", "hack/..."},
		why: "the CSI driver serves the store's volumes; image building and the single-machine product sit beside it, never below",
	},
	{
		pkgs: "imagebuilder/...", not: []string{"driver/...", "local/...", "controllers/...", "apis/...", "cmd/...", "bench/...", "e2e/...", "sanity/..."},
		why: "image building is driven by the products (the local daemon, the DataImage controller, the builder Job); it does not know them",
	},
	{
		pkgs: "local/...", not: []string{"driver", "controllers/...", "cmd/...", "bench/...", "e2e/...", "sanity/..."},
		// TestPrepareSameVerdicts runs one definition through the daemon and through the
		// builder Job's entry point, to show that the two paths agree word for word.
		testHelpers: []string{"cmd/dataimage-builder/app"},
		why:         "the single-machine product and the CSI plugin are peers: what both need lives in a package both import",
	},
	{
		pkgs: "apis/...", not: []string{"blockstore/...", "driver/...", "local/...", "controllers/...", "cmd/...", "bench/..."},
		why: "the API types are data: every controller and client imports them, so they import nothing that runs",
	},
	{
		pkgs: "controllers/...", not: []string{"cmd/...", "bench/...", "e2e/...", "sanity/..."},
		why: "controllers are libraries that cmd/ wires up",
	},
	{
		pkgs: "...", except: []string{"cmd/...", "local"}, not: []string{"cmd/..."},
		why: "cmd/ holds thin mains; nothing imports them (local's rule says it for local, whose tests may run the builder Job's entry point)",
	},
	{
		pkgs: "...", except: []string{"bench/..."}, not: []string{"bench/..."},
		why: "benchmark programs measure the tree from above; nothing imports them",
	},
}

// TestLayers checks layerRules and names the import chain of every violation.
func TestLayers(t *testing.T) {
	mod := readModule(t)
	pkgs := readImports(t, mod)
	if len(pkgs) < 20 {
		t.Fatalf("found %d packages of %s: the walk of the tree is broken", len(pkgs), mod)
	}
	for _, r := range layerRules {
		n := 0
		for _, p := range sortedKeys(pkgs) {
			if !match(r.pkgs, p) || slices.ContainsFunc(r.except, func(e string) bool { return match(e, p) }) {
				continue
			}
			n++
			for _, chain := range reach(pkgs, p) {
				if viaTestHelper(pkgs, chain, r.testHelpers) {
					continue
				}
				dep := chain[len(chain)-1]
				bad := slices.ContainsFunc(r.not, func(x string) bool { return match(x, dep) })
				if len(r.only) > 0 && !slices.ContainsFunc(r.only, func(x string) bool { return match(x, dep) }) {
					bad = true
				}
				if bad {
					t.Errorf("%s imports %s (%s): rule %q: %s", p, dep, strings.Join(chain, " → "), r.pkgs, r.why)
				}
			}
		}
		if n == 0 && r.pkgs != "..." {
			t.Errorf("rule %q matches no package: the tree moved; update layerRules", r.pkgs)
		}
	}
}

// TestLayersSeeBackEdge makes sure the check can fail: a package that imports upward is found,
// with its chain.
func TestLayersSeeBackEdge(t *testing.T) {
	pkgs := map[string]*pkgImports{
		"blockstore":            {imports: []string{"blockstore/internal/x"}},
		"blockstore/internal/x": {imports: []string{"driver"}},
		"driver":                {imports: []string{"blockstore"}},
	}
	var got []string
	for _, chain := range reach(pkgs, "blockstore") {
		if !match("blockstore/...", chain[len(chain)-1]) {
			got = append(got, strings.Join(chain, " → "))
		}
	}
	if want := []string{"blockstore → blockstore/internal/x → driver"}; !slices.Equal(got, want) {
		t.Fatalf("chains out of blockstore: %q, want %q", got, want)
	}

	// A test helper above the package is skipped only where the package's tests import it.
	pkgs = map[string]*pkgImports{
		"blockstore/a": {testImports: []string{"helper"}},
		"blockstore/b": {imports: []string{"helper"}},
		"helper":       {imports: []string{"blockstore"}},
	}
	for p, want := range map[string]bool{"blockstore/a": true, "blockstore/b": false} {
		chain := reach(pkgs, p)[0]
		if got := viaTestHelper(pkgs, chain, []string{"helper"}); got != want {
			t.Errorf("%s: viaTestHelper(%q) = %v, want %v", p, chain, got, want)
		}
	}
}

// viaTestHelper reports whether chain starts with a test import of one of helpers (and
// nothing else of the package imports it).
func viaTestHelper(pkgs map[string]*pkgImports, chain, helpers []string) bool {
	if len(chain) < 2 || !slices.Contains(helpers, chain[1]) {
		return false
	}
	q := pkgs[chain[0]]
	return q != nil && slices.Contains(q.testImports, chain[1]) && !slices.Contains(q.imports, chain[1])
}

// pkgImports is what the files of one directory import from this module, as module-relative
// directories.
type pkgImports struct {
	imports     []string // non-test files
	testImports []string // _test.go files
}

// readModule returns the module path from go.mod.
func readModule(t *testing.T) string {
	t.Helper()
	f, err := os.Open("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if m, ok := strings.CutPrefix(s.Text(), "module "); ok {
			return strings.TrimSpace(m)
		}
	}
	t.Fatal("go.mod has no module line")
	return ""
}

// readImports reads the imports of every Go file of the module (every build tag), by directory.
func readImports(t *testing.T, mod string) map[string]*pkgImports {
	t.Helper()
	pkgs := map[string]*pkgImports{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != "." && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			if path != "." {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(filepath.Dir(path))
		p := pkgs[dir]
		if p == nil {
			p = &pkgImports{}
			pkgs[dir] = p
		}
		for _, spec := range f.Imports {
			ip, err := strconv.Unquote(spec.Path.Value)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			rel, ok := strings.CutPrefix(ip, mod+"/")
			if !ok {
				continue
			}
			if strings.HasSuffix(path, "_test.go") {
				p.testImports = append(p.testImports, rel)
			} else {
				p.imports = append(p.imports, rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

// reach returns, for every module package that p reaches, the shortest import chain from p to
// it. p's tests count; the tests of what p imports do not.
func reach(pkgs map[string]*pkgImports, p string) [][]string {
	prev := map[string]string{p: ""}
	queue := []string{p}
	var out [][]string
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		var next []string
		if q := pkgs[cur]; q != nil {
			next = q.imports
			if cur == p {
				next = append(slices.Clone(q.imports), q.testImports...)
			}
		}
		for _, n := range next {
			if _, seen := prev[n]; seen {
				continue
			}
			prev[n] = cur
			queue = append(queue, n)
			chain := []string{n}
			for c := cur; c != ""; c = prev[c] {
				chain = append(chain, c)
			}
			slices.Reverse(chain)
			out = append(out, chain)
		}
	}
	return out
}

// match reports whether package dir p matches pattern ("x", "x/..." or "...").
func match(pattern, p string) bool {
	if pattern == "..." {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == base || strings.HasPrefix(p, base+"/")
	}
	return p == pattern
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
