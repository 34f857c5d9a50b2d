package local

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dataimage/dataimage/blockstore/export"
)

// FuzzCheckName: a name checkName accepts is safe wherever the daemon puts it: a path element
// (mount point, runtime directory) that stays in its directory, an export id, a pool object name
// that cannot pass for another kind of object.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"sales-2024", "a", "..", ".a", "a/b", "123", "x.y_z", strings.Repeat("n", 64), "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if checkName("name", name) != nil {
			return
		}
		if filepath.Base(name) != name || name == "." || name == ".." || strings.HasPrefix(name, ".") {
			t.Fatalf("accepted name %q is not a plain path element", name)
		}
		if !export.ValidID(cloneExportID(name)) || !export.ValidID(buildExportID(name)) {
			t.Fatalf("accepted name %q makes an invalid export id", name)
		}
		if strings.Contains(name, "/") {
			t.Fatalf("accepted name %q has a slash: pool object names would be ambiguous", name)
		}
	})
}

// FuzzLoadCatalog: any catalog file is loaded or refused without panicking, and one that loads
// writes back as it read.
func FuzzLoadCatalog(f *testing.F) {
	f.Add([]byte(`{"version":1,"images":{"a":{"name":"a","engine":"postgres"}},"clones":{"c":{"name":"c","image":"a","revisions":[{"name":"r"}]}}}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"images":{"a":null}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "catalog.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := loadCatalog(path)
		if err != nil {
			return
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal a loaded catalog: %v", err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := loadCatalog(path)
		if err != nil {
			t.Fatalf("a catalog written back does not load: %v\n%s", err, out)
		}
		out2, _ := json.Marshal(again)
		if string(out) != string(out2) {
			t.Fatalf("catalog changed on a round trip:\n%s\n%s", out, out2)
		}
	})
}
