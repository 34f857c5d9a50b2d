// Package bench_test checks the prose of the benchmark programs under bench/ and of the report
// they write (BENCHMARKS.md): prose that names code must name what the compiler keeps, so that it
// cannot rot silently. Code is named by its package directory and file ("blockstore/journal.go")
// or by exported API ("Pool.Flush", "export.Detect"), never by an unexported identifier of
// another package; every file named exists and every exported name resolves.
package bench_test

import (
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
)

// root is the module root, relative to this package's directory.
const root = ".."

// programs are the benchmark programs whose string literals are report prose.
var programs = []string{"bench/storebench", "bench/storebench/checkchild", "bench/imagebench"}

func TestProseNamesCheckedCode(t *testing.T) {
	idx := indexModule(t)
	for _, dir := range programs {
		own := idx.byDir[dir]
		if own == nil {
			t.Fatalf("%s: no Go files (update programs)", dir)
		}
		fset := token.NewFileSet()
		for _, file := range goFiles(t, filepath.Join(root, dir)) {
			f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil || !strings.ContainsAny(s, " \n") {
					return true // not prose: a name, a path, a flag
				}
				for _, p := range idx.problems(s, own) {
					t.Errorf("%s: %s", fset.Position(lit.Pos()), p)
				}
				return true
			})
		}
	}
	report, err := os.ReadFile(filepath.Join(root, "BENCHMARKS.md"))
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(report), "\n") {
		for _, p := range idx.problems(line, nil) {
			t.Errorf("BENCHMARKS.md:%d: %s (rewrite the prose in the program and run make bench)", i+1, p)
		}
	}
}

// TestProseCheckFindsRot makes sure the check can fail.
func TestProseCheckFindsRot(t *testing.T) {
	idx := indexModule(t)
	for _, c := range []struct{ text, want string }{
		{"a commit (`commitLocked`, blockstore/journal.go) syncs", "commitLocked"},
		{"a commit (blockstore/journal.go) and `Pool.commitLocked`", "commitLocked"},
		{"see journal.go", "journal.go"},
		{"see blockstore/nosuchfile.go", "nosuchfile.go"},
		{"`Pool.NoSuchMethod`", "NoSuchMethod"},
		{"`Options{DirectIO: true, NoSuchField: 1}`", "NoSuchField"},
		{"`format.NodeCapacity`", "format"},
		{"`go run ./blockstore/internal/benchreport -only check`", "benchreport"},
		{"written by the tool (`blockstore/internal/benchreport`)", "benchreport"},
	} {
		got := idx.problems(c.text, nil)
		if len(got) != 1 || !strings.Contains(got[0], c.want) {
			t.Errorf("%q: problems %q, want one naming %q", c.text, got, c.want)
		}
	}
	for _, ok := range []string{
		"a commit (blockstore/journal.go) ends in `Pool.Flush`; `go run ./bench/storebench -quick`",
		"`Options{DirectIO: true}`, `Stats().MetadataBytes`, `export.Detect`, `O_DIRECT`, `fdatasync`",
		"written by the tool (`bench/storebench`), from `/proc/self/status` and `fs/ext4/file.c`",
	} {
		if got := idx.problems(ok, nil); len(got) > 0 {
			t.Errorf("%q: problems %q, want none", ok, got)
		}
	}
}

// pkgDecls is what one package directory declares.
type pkgDecls struct {
	dir, name  string
	internal   bool
	exported   map[string]bool // "Name", "Type.Method", "Type.Field"
	unexported map[string]bool // top-level names, methods and fields that are not exported
}

// index is what the module declares, outside the benchmark programs.
type index struct {
	byDir  map[string]*pkgDecls
	byName map[string][]*pkgDecls // package name → packages
	types  map[string][]*pkgDecls // exported type name → packages declaring it
	// hidden is every unexported identifier declared in a package outside bench/, with one
	// package declaring it.
	hidden map[string]string
}

func indexModule(t *testing.T) *index {
	t.Helper()
	idx := &index{byDir: map[string]*pkgDecls{}, byName: map[string][]*pkgDecls{}, types: map[string][]*pkgDecls{}, hidden: map[string]string{}}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (n == "testdata" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(rel)
		p := idx.byDir[dir]
		if p == nil {
			p = &pkgDecls{dir: dir, name: f.Name.Name, internal: strings.Contains("/"+dir+"/", "/internal/"),
				exported: map[string]bool{}, unexported: map[string]bool{}}
			idx.byDir[dir] = p
			idx.byName[p.name] = append(idx.byName[p.name], p)
		}
		add := func(name string, exported bool) {
			if exported {
				p.exported[name] = true
			} else {
				p.unexported[name] = true
			}
		}
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				name := d.Name.Name
				if d.Recv != nil && len(d.Recv.List) == 1 {
					typ := recvType(d.Recv.List[0].Type)
					add(typ+"."+name, ast.IsExported(typ) && d.Name.IsExported())
				}
				add(name, d.Name.IsExported())
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch s := spec.(type) {
					case *ast.TypeSpec:
						add(s.Name.Name, s.Name.IsExported())
						if s.Name.IsExported() && !slices.Contains(idx.types[s.Name.Name], p) {
							idx.types[s.Name.Name] = append(idx.types[s.Name.Name], p)
						}
						var members []*ast.Field
						switch typ := s.Type.(type) {
						case *ast.StructType:
							members = typ.Fields.List
						case *ast.InterfaceType:
							members = typ.Methods.List
						}
						for _, fld := range members {
							for _, n := range fld.Names {
								add(s.Name.Name+"."+n.Name, s.Name.IsExported() && n.IsExported())
								add(n.Name, n.IsExported())
							}
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							add(n.Name, n.IsExported())
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir, p := range idx.byDir {
		if dir == "bench" || strings.HasPrefix(dir, "bench/") {
			continue
		}
		for n := range p.unexported {
			if !strings.Contains(n, ".") && len(n) > 2 {
				if old, ok := idx.hidden[n]; !ok || dir < old {
					idx.hidden[n] = dir
				}
			}
		}
	}
	return idx
}

func recvType(e ast.Expr) string {
	for {
		switch x := e.(type) {
		case *ast.StarExpr:
			e = x.X
		case *ast.IndexExpr:
			e = x.X
		case *ast.IndexListExpr:
			e = x.X
		case *ast.Ident:
			return x.Name
		default:
			return ""
		}
	}
}

var (
	codeSpan = regexp.MustCompile("`([^`]+)`")
	// A Go name as prose gives it: Name, Type.Method, pkg.Name, with calls "()" dropped;
	// optionally a composite literal Type{Field: value, ...}.
	goName    = regexp.MustCompile(`^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(\{.*\})?$`)
	litField  = regexp.MustCompile(`(?:^\{|,)\s*([A-Za-z_]\w*)\s*:`)
	goFileRef = regexp.MustCompile(`(?:^|[\s(\x60"'])((?:[\w.-]+/)*[\w-]+\.go)\b`)
	goRunRef  = regexp.MustCompile(`go (?:run|build|test|vet) (?:-[\w=.]+ )*\./([\w./-]+)`)
	// A path in a code span: dir/dir or dir/file, from the module root.
	pathSpan = regexp.MustCompile(`^([\w.-]+)(?:/[\w.-]+)+/?$`)
)

// problems returns what is wrong with the code the text names. own is the package of the text
// (its own unexported names are fine: the test sees them exist), nil for the report.
func (idx *index) problems(text string, own *pkgDecls) []string {
	var out []string
	for _, m := range goFileRef.FindAllStringSubmatch(text, -1) {
		path := m[1]
		if !strings.Contains(path, "/") {
			out = append(out, "names file "+path+" without its directory (write the path from the module root, e.g. blockstore/journal.go)")
			continue
		}
		if _, err := os.Stat(filepath.Join(root, path)); err != nil {
			out = append(out, "names file "+path+", which does not exist")
		}
	}
	for _, m := range goRunRef.FindAllStringSubmatch(text, -1) {
		dir := strings.TrimSuffix(m[1], "/...")
		if fi, err := os.Stat(filepath.Join(root, dir)); err != nil || !fi.IsDir() {
			out = append(out, "names package ./"+dir+", which does not exist")
		}
	}
	for _, m := range codeSpan.FindAllStringSubmatch(text, -1) {
		if p := pathSpan.FindStringSubmatch(strings.TrimSpace(m[1])); p != nil {
			// A path of this module (its first directory exists here) must exist.
			if fi, err := os.Stat(filepath.Join(root, p[1])); err == nil && fi.IsDir() {
				if _, err := os.Stat(filepath.Join(root, p[0])); err != nil {
					out = append(out, "names "+p[0]+", which does not exist")
				}
			}
			continue
		}
		span := strings.ReplaceAll(strings.TrimSpace(m[1]), "()", "")
		g := goName.FindStringSubmatch(span)
		if g == nil {
			continue
		}
		out = append(out, idx.checkName(g[1], g[2], own)...)
	}
	return out
}

// checkName checks one dotted name (and the fields of a composite literal of it).
func (idx *index) checkName(name, lit string, own *pkgDecls) []string {
	comps := strings.Split(name, ".")
	var out []string
	// pkg.Name...: a package of this module.
	if pkgs := idx.byName[comps[0]]; len(pkgs) > 0 && len(comps) > 1 && !ast.IsExported(comps[0]) && comps[0] != "main" {
		rest := strings.Join(comps[1:], ".")
		for _, p := range pkgs {
			if p.internal {
				return []string{"names " + name + " of the internal package " + p.dir + " (name what the public API shows, or the file)"}
			}
			if p.exported[rest] || (len(comps) > 2 && p.exported[comps[1]]) {
				return nil
			}
		}
		return []string{"names " + name + ", which " + comps[0] + " does not export"}
	}
	// Type.Member or Type{Field: ...}: an exported type of this module.
	if ps := idx.types[comps[0]]; len(ps) > 0 {
		var members []string
		if len(comps) > 1 {
			members = append(members, comps[1])
		}
		if lit != "" {
			for _, f := range litField.FindAllStringSubmatch(lit, -1) {
				members = append(members, f[1])
			}
		}
		for _, mem := range members {
			if !slices.ContainsFunc(ps, func(p *pkgDecls) bool { return p.exported[comps[0]+"."+mem] }) {
				out = append(out, "names "+comps[0]+"."+mem+", which no package of this module declares as exported")
			}
		}
		return out
	}
	// Anything else is not this module's unless it is an unexported identifier of it.
	for _, c := range comps {
		if ast.IsExported(c) || (own != nil && own.unexported[c]) {
			continue
		}
		if dir, ok := idx.hidden[c]; ok {
			out = append(out, "names "+c+", unexported in "+dir+" (name the package and file instead)")
		}
	}
	return out
}

func goFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(names, func(n string) bool { return strings.HasSuffix(n, "_test.go") })
}
