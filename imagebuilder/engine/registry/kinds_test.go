package registry_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
)

// formatList is the file of the definition format that lists the engine kinds a definition may
// name: the one place outside imagebuilder/engine/... that names a kind.
const formatList = "imagebuilder/engines.go"

// adapters is the tree of the engine adapters and their registry, which may name kinds.
const adapters = "imagebuilder/engine/"

// No Go file of the module outside the engine adapters and the definition format's list of
// engines names an engine kind: adding an engine is writing an adapter, listing it in the
// registry and its kind in the definition format, nothing else. Test files may name kinds (in
// their tables).
func TestNoEngineKindOutsideAdapters(t *testing.T) {
	root := moduleRoot(t)
	consts, err := kindConstants(root)
	require.NoError(t, err)
	require.NotEmpty(t, consts, "package imagebuilder declares no constant of type Engine")
	var found []string
	for name, file := range consts {
		if file != formatList {
			found = append(found, fmt.Sprintf("%s: kind constant %s is declared outside %s", file, name, formatList))
		}
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			if rel+"/" == adapters {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") || rel == formatList {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		ms, err := kindMentions(rel, src, consts)
		if err != nil {
			return err
		}
		found = append(found, ms...)
		return nil
	})
	require.NoError(t, err)
	slices.Sort(found)
	if len(found) > 0 {
		t.Errorf("engine kinds named outside %s and %s (move what depends on the kind into the adapter: engine.Engine, engine.Instance, engine.Adapter):\n%s",
			adapters, formatList, strings.Join(found, "\n"))
	}
}

// The check finds each way of naming a kind, and only those.
func TestKindMentions(t *testing.T) {
	consts := map[string]string{"EnginePostgres": formatList, "EngineMariaDB": formatList}
	for _, tc := range []struct {
		name string
		src  string
		want int // mentions found
	}{
		{"constant", `x := imagebuilder.EnginePostgres`, 1},
		{"constant in a map key", `m := map[imagebuilder.Engine]int{imagebuilder.EngineMariaDB: 1}`, 1},
		{"comparison", `if kind == "postgres" {}`, 1},
		{"comparison, alias in another case", `if "PostgreSQL" != string(kind) {}`, 1},
		{"switch case", `switch kind { case "mariadb": }`, 1},
		{"conversion", `k := imagebuilder.Engine("mysql")`, 1},
		{"parse", `k, _ := imagebuilder.ParseEngine("mariadb")`, 1},
		{"field", `r := Record{Engine: "postgres"}`, 1},
		{"assignment", `r.Engine = "mysql"`, 1},
		{"map key", `m := map[string]string{"postgres": "docker.io/library/postgres"}`, 1},
		{"definition text", "def := `name: x\nengine: postgres\nversion: \"15\"`", 1},
		{"definition JSON", `def := "{\"engine\": \"mariadb\"}"`, 1},
		// Not kinds: an OS user, a database, a program, a kind from a variable.
		{"user", `u, _ := engine.ResolveUser("", "postgres")`, 0},
		{"database", `db := "postgres"`, 0},
		{"program", `cmd := exec.Command("mysql", "-e", q)`, 0},
		{"variable", `if kind == want {}`, 0},
		{"other constant", `x := imagebuilder.FormatSQL`, 0},
		{"help text", "c := cobra.Command{Long: `engine: postgres`, Example: `engine: mysql`}", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "package p\n\nfunc f() {\n" + tc.src + "\n}\n"
			got, err := kindMentions("p/p.go", []byte(src), consts)
			require.NoError(t, err)
			require.Len(t, got, tc.want, "%q: %v", tc.src, got)
			for _, m := range got {
				require.Regexp(t, `^p/p\.go:4: `, m)
			}
		})
	}
}

// moduleRoot is the directory of the module's go.mod.
func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, dir, parent, "no go.mod above the test's directory")
		dir = parent
	}
}

// kindConstants returns the constants of type Engine that package imagebuilder declares, with
// the file (relative to root) that declares each.
func kindConstants(root string) (map[string]string, error) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, "imagebuilder", "*.go"))
	if err != nil {
		return nil, err
	}
	consts := map[string]string{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "Engine" {
					for _, n := range vs.Names {
						consts[n.Name] = filepath.ToSlash(rel)
					}
				}
			}
		}
	}
	return consts, nil
}

// definitionEngine finds "engine: <kind>" (YAML) or "engine": "<kind>" (JSON) in a string.
var definitionEngine = regexp.MustCompile(`(?i)\bengine"?\s*:\s*"?([a-z]+)`)

// docFields are the fields whose strings are text for people (command help), not code.
var docFields = map[string]bool{"Short": true, "Long": true, "Example": true}

// kindMentions returns "file:line: what" for each place the Go source src names an engine kind:
// a kind constant (consts), or a string literal that imagebuilder.ParseEngine accepts where it
// is used as a kind (compared, a switch case, converted to or parsed as an Engine, an Engine
// field's value, a map key) or an image definition's engine in a string (engine: postgres).
func kindMentions(file string, src []byte, consts map[string]string) ([]string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var out []string
	report := func(n ast.Node, format string, args ...any) {
		out = append(out, fmt.Sprintf("%s:%d: %s", file, fset.Position(n.Pos()).Line, fmt.Sprintf(format, args...)))
	}
	// kindLit reports e when it is a string literal naming a kind.
	kindLit := func(e ast.Expr, how string) {
		lit, ok := ast.Unparen(e).(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return
		}
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			return
		}
		if k, ok := imagebuilder.ParseEngine(s); ok {
			report(lit, "%s %q (engine kind %s)", how, s, k)
		}
	}
	skip := map[ast.Node]bool{} // string literals that are text for people
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.Ident:
			if _, ok := consts[n.Name]; ok && !isDecl(f, n) {
				report(n, "kind constant %s", n.Name)
			}
		case *ast.BinaryExpr:
			if n.Op == token.EQL || n.Op == token.NEQ {
				kindLit(n.X, "compared with")
				kindLit(n.Y, "compared with")
			}
		case *ast.CaseClause:
			for _, e := range n.List {
				kindLit(e, "switch case")
			}
		case *ast.CallExpr:
			if name := funcName(n.Fun); name == "Engine" || name == "ParseEngine" {
				for _, a := range n.Args {
					kindLit(a, name+" of")
				}
			}
		case *ast.KeyValueExpr:
			if id, ok := n.Key.(*ast.Ident); ok {
				if id.Name == "Engine" {
					kindLit(n.Value, "field Engine set to")
				}
				if docFields[id.Name] {
					skip[n.Value] = true
				}
			}
			kindLit(n.Key, "map key")
		case *ast.AssignStmt:
			for i, l := range n.Lhs {
				if sel, ok := l.(*ast.SelectorExpr); ok && sel.Sel.Name == "Engine" && i < len(n.Rhs) {
					kindLit(n.Rhs[i], "field Engine set to")
				}
			}
		case *ast.BasicLit:
			if n.Kind != token.STRING || skip[n] {
				return true
			}
			s, err := strconv.Unquote(n.Value)
			if err != nil {
				return true
			}
			for _, m := range definitionEngine.FindAllStringSubmatch(s, -1) {
				if k, ok := imagebuilder.ParseEngine(m[1]); ok {
					report(n, "definition text names engine %s", k)
				}
			}
		}
		return true
	})
	return out, nil
}

// isDecl reports whether id is the name of a declaration (not a use).
func isDecl(f *ast.File, id *ast.Ident) bool {
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, s := range gd.Specs {
			if vs, ok := s.(*ast.ValueSpec); ok && slices.Contains(vs.Names, id) {
				return true
			}
		}
	}
	return false
}

// funcName is the name a call's function is written with: f, pkg.F, x.M.
func funcName(fun ast.Expr) string {
	switch fun := ast.Unparen(fun).(type) {
	case *ast.Ident:
		return fun.Name
	case *ast.SelectorExpr:
		return fun.Sel.Name
	}
	return ""
}
