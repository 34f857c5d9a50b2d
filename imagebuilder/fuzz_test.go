package imagebuilder

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParseDefinition: ParseDefinition never panics, fails only with a *DefinitionError, and a
// definition it accepts marshals back to YAML that parses to an equal value (and validates the
// same way).
func FuzzParseDefinition(f *testing.F) {
	for _, name := range []string{"empty.yaml", "pg-basebackup.yaml", "mysql-dump.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"", "---\n", "name: a\n---\nname: b\n", "name: [a]\nName: b\nname: c\n",
		"a: &x [*x]\n", "<<: {name: a}\n", "name: !!binary YQ==\n", "tags: &t [a, *t]\n",
		`{"name":"a","engine":"mysql","version":"8.0","sourceType":"backup","backups":[{"path":"a"}]}`,
		"backups: [{path: a, format: sql}, {path: ~}]\ntags: [1, 2.5, true, 2001-01-01]\n",
	} {
		f.Add([]byte(s))
	}
	env := testEnv()
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDefinition(data)
		if err != nil {
			checkDefinitionError(t, err)
			return
		}
		verr := d.Validate(env)
		if verr != nil {
			checkDefinitionError(t, verr)
		}
		back := roundTrip(t, d)
		if berr := back.Validate(env); (berr == nil) != (verr == nil) {
			t.Fatalf("Validate before the round trip: %v; after: %v", verr, berr)
		}
	})
}

// FuzzValidate: Validate never panics, fails only with a *DefinitionError, and a definition it
// accepts round-trips through YAML to an equal value that still validates, whose normalized
// accessors give known values.
func FuzzValidate(f *testing.F) {
	f.Add("a", "postgres", "16", "empty", uint8(0), "", "", "", "", "db", "x,y", "0", "", "")
	f.Add("sales-1", "PostgreSQL", "15", "Backup", uint8(2), "db/base.tar", "basebackup-tar", "db/wal.tar", "", "", "", "72h", "", "post.sql")
	f.Add("Shop", "mysql", "8.0", "backup", uint8(1), "shop.sql", "SQL", "", "", "shop", "a", "90m", "pre.sql", "scripts/post.sql")
	f.Add("m", "mariadb", "11", "backup", uint8(1), "m/../x", "sql", "", "", "_x", "", "1s", "", "")
	f.Add("42", "oracle", "", "snapshot", uint8(3), "/abs", "zip", "../up", "tar", "1db", ",", "1d", "../p", "/q")
	root := f.TempDir()
	for _, name := range []string{"db/base.tar", "db/wal.tar", "shop.sql", "pre.sql", "scripts/post.sql"} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			f.Fatal(err)
		}
	}
	env := testEnv()
	checked := env
	checked.BackupRoot, checked.CheckPaths = root, true
	f.Fuzz(func(t *testing.T, name, engine, version, source string, nBackups uint8,
		path1, format1, path2, format2, dbName, tags, lifetime, pre, post string) {
		d := &Definition{
			Name: name, Engine: engine, Version: version, SourceType: source,
			InitialDatabaseName: dbName, Lifetime: lifetime, PreScript: pre, PostScript: post,
		}
		for i := range int(nBackups % 4) {
			b := []Backup{{path1, format1}, {path2, format2}, {path1, format2}}[i]
			d.Backups = append(d.Backups, b)
		}
		if tags != "" {
			d.Tags = strings.Split(tags, ",")
		}
		if err := d.Validate(checked); err != nil {
			checkDefinitionError(t, err)
		}
		err := d.Validate(env)
		if err != nil {
			checkDefinitionError(t, err)
			return
		}
		back := roundTrip(t, d)
		if err := back.Validate(env); err != nil {
			t.Fatalf("valid before the round trip, not after: %v", err)
		}
		if d.NormalizedEngine() == "" || d.NormalizedSourceType() == "" {
			t.Fatalf("valid with engine %q, source type %q", d.NormalizedEngine(), d.NormalizedSourceType())
		}
		if _, err := d.ResolveVersion(env); err != nil {
			t.Fatalf("valid, but ResolveVersion: %v", err)
		}
		if l, err := d.ResolveLifetime(env); err != nil || (!l.Never && l.Duration <= 0) {
			t.Fatalf("valid, but ResolveLifetime: %+v, %v", l, err)
		}
		for _, b := range d.Backups {
			if !slices.Contains(d.NormalizedEngine().Formats(), b.NormalizedFormat()) && b.NormalizedFormat() != FormatDetect {
				t.Fatalf("valid with format %q for %s", b.NormalizedFormat(), d.NormalizedEngine())
			}
		}
	})
}

// checkDefinitionError fails unless err is a *DefinitionError with problems, matching
// ErrInvalidDefinition, that prints on one line.
func checkDefinitionError(t *testing.T, err error) {
	t.Helper()
	var de *DefinitionError
	if !errors.As(err, &de) || len(de.Problems) == 0 || !errors.Is(err, ErrInvalidDefinition) {
		t.Fatalf("want a *DefinitionError with problems, got %#v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error spans several lines: %q", err)
	}
}

// roundTrip marshals d to YAML and parses it back, failing unless the result equals d.
func roundTrip(t *testing.T, d *Definition) *Definition {
	t.Helper()
	data, err := yaml.Marshal(d)
	if err != nil {
		t.Fatalf("marshal %#v: %v", d, err)
	}
	back, err := ParseDefinition(data)
	if err != nil {
		t.Fatalf("parse the marshalled %#v:\n%s\n%v", d, data, err)
	}
	if !reflect.DeepEqual(back, d) {
		t.Fatalf("round trip changed the definition:\n got %#v\nwant %#v\nYAML:\n%s", back, d, data)
	}
	return back
}
