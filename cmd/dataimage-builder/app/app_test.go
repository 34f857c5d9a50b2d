package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

const emptyJSON = `{"name":"scratch","engine":"postgres","version":"15","sourceType":"empty"}`

func TestParseDefaults(t *testing.T) {
	var out bytes.Buffer
	c, err := parse([]string{"--definition-json", emptyJSON}, &out)
	require.NoError(t, err)
	require.Equal(t, Config{
		DefinitionJSON:  emptyJSON,
		Root:            "/data",
		BackupRoot:      "/backups",
		DefaultLifetime: imagebuilder.Lifetime{Never: true},
		Output:          OutputJSON,
		TerminationLog:  DefaultTerminationLog,
	}, c)
	require.Empty(t, out.String())
}

func TestParseAll(t *testing.T) {
	c, err := parse([]string{"--definition", "/defs/d.yaml", "--root", "/vol", "--backup-root", "/b",
		"--runtime-dir", "/run/x", "--run-as", "pg", "--default-lifetime", "72h", "--output", "text",
		"--termination-log", "/tmp/t", "--verbose", "--max-archive-members", "5000"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, Config{
		DefinitionFile: "/defs/d.yaml", Root: "/vol", BackupRoot: "/b", RuntimeDir: "/run/x", RunAs: "pg",
		DefaultLifetime: imagebuilder.Lifetime{Duration: 72 * time.Hour}, Output: OutputText,
		TerminationLog: "/tmp/t", TerminationLogSet: true, Verbose: true, MaxArchiveMembers: 5000,
	}, c)
}

// TestParseRelativeBackupRoot: a relative --backup-root names a directory under the working
// directory (a build's preparation takes absolute backup roots only).
func TestParseRelativeBackupRoot(t *testing.T) {
	wd, err := os.Getwd()
	require.NoError(t, err)
	c, err := parse([]string{"--definition-json", emptyJSON, "--backup-root", "b/../backups"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, filepath.Join(wd, "backups"), c.BackupRoot)
	c, err = parse([]string{"--definition-json", emptyJSON, "--backup-root", ""}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Empty(t, c.BackupRoot, "no backup root")
}

// TestMainBadFlags: bad command lines exit with code 2 and say what is wrong; --help exits 0
// and describes every flag, the output and the outcome.
func TestMainBadFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no definition", nil, "--definition or --definition-json is required"},
		{"both definitions", []string{"--definition", "d.yaml", "--definition-json", emptyJSON}, "exclude each other"},
		{"bad output", []string{"--definition-json", emptyJSON, "--output", "yaml"}, `--output "yaml": want json or text`},
		{"bad lifetime", []string{"--definition-json", emptyJSON, "--default-lifetime", "3d"}, `--default-lifetime "3d"`},
		{"empty root", []string{"--definition-json", emptyJSON, "--root", ""}, "--root is required"},
		{"unknown flag", []string{"--definition-json", emptyJSON, "--bogus"}, "flag provided but not defined: -bogus"},
		{"missing value", []string{"--definition-json"}, "flag needs an argument: -definition-json"},
		{"extra arguments", []string{"--definition-json", emptyJSON, "extra"}, "unexpected arguments: extra"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			require.Equal(t, 2, Main(tc.args, &stdout, &stderr), "stderr: %s", &stderr)
			require.Contains(t, stderr.String(), tc.want)
			require.Contains(t, stderr.String(), "dataimage-builder: ")
			require.Empty(t, stdout.String())
		})
	}
	for _, help := range []string{"--help", "-h"} {
		var stdout, stderr bytes.Buffer
		require.Equal(t, 0, Main([]string{help}, &stdout, &stderr))
		for _, w := range []string{"Usage: dataimage-builder", "-definition-json", "-definition ", "-root", "-backup-root",
			"-runtime-dir", "-run-as", "-default-lifetime", "-output", "-termination-log", "-verbose",
			"wire.Event", `"buildEvent": "` + wire.EventVersion + `"`, "wire.Outcome", "Exit codes", "validate", "syncfs"} {
			require.Contains(t, stderr.String(), w, help)
		}
	}
}

// parseDefinitionJSON parses --definition-json as a build does: definitionJSON, then the
// definition's parser (in builder.Prepare).
func parseDefinitionJSON(data []byte) (*imagebuilder.Definition, error) {
	data, err := definitionJSON(data)
	if err != nil {
		return nil, err
	}
	return imagebuilder.ParseDefinition(data)
}

// TestDefinitionJSON: a definition as JSON, or a whole DataImage spec, parses as strictly as a
// definition file.
func TestDefinitionJSON(t *testing.T) {
	def, err := parseDefinitionJSON([]byte(`{"name":"sales","engine":"PostgreSQL","version":16,"sourceType":"backup",
		"backups":[{"path":"sales/base.tar","format":"basebackup-tar"}],"tags":["a","b"],"lifetime":"72h"}`))
	require.NoError(t, err)
	require.Equal(t, &imagebuilder.Definition{Name: "sales", Engine: "PostgreSQL", Version: "16", SourceType: "backup",
		Backups: []imagebuilder.Backup{{Path: "sales/base.tar", Format: "basebackup-tar"}}, Tags: []string{"a", "b"}, Lifetime: "72h"}, def)

	// The spec of a DataImage, as the controller has it: its other fields are dropped.
	size := resource.MustParse("20Gi")
	class := "dataimage"
	spec := v1alpha1.DataImageSpec{
		Definition:       imagebuilder.Definition{Name: "sales", Engine: "postgres", Version: "16", SourceType: "empty", InitialDatabaseName: "app"},
		BackupSource:     &v1alpha1.BackupSource{HostPath: &v1alpha1.HostPathBackupSource{Path: "/srv/backups", NodeName: "n1"}},
		NodeName:         "n1",
		StorageClassName: &class,
		VolumeSize:       &size,
		Builder:          &v1alpha1.BuilderSpec{EngineImage: "postgres:16"},
	}
	js, err := json.Marshal(spec)
	require.NoError(t, err)
	def, err = parseDefinitionJSON(js)
	require.NoError(t, err)
	require.Equal(t, &spec.Definition, def)

	for _, tc := range []struct{ in, want string }{
		{`[1,2]`, "not a JSON object"},
		{`{"name":`, "not a JSON object"},
		{`{"name":"x","engine":"postgres","version":"15","sourceType":"empty","colour":"red"}`, "colour"},
		{`{"Name":"x","engine":"postgres","version":"15","sourceType":"empty"}`, "Name"},
		{`{"name":"x","engine":"postgres","version":"15","sourceType":"empty","nodeName":"n1","backupsource":{}}`, "backupsource"},
	} {
		_, err := parseDefinitionJSON([]byte(tc.in))
		require.ErrorIs(t, err, imagebuilder.ErrInvalidDefinition, tc.in)
		require.ErrorContains(t, err, tc.want, tc.in)
	}
}

// TestSpecOnlyFields: specOnlyFields are exactly the JSON fields of a DataImage spec that are
// not the definition's (a field added to the spec must be added there).
func TestSpecOnlyFields(t *testing.T) {
	var got []string
	st := reflect.TypeFor[v1alpha1.DataImageSpec]()
	for i := range st.NumField() {
		f := st.Field(i)
		if f.Anonymous {
			require.Equal(t, reflect.TypeFor[imagebuilder.Definition](), f.Type)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		got = append(got, name)
	}
	slices.Sort(got)
	want := slices.Clone(specOnlyFields)
	slices.Sort(want)
	require.Equal(t, want, got)
}

// TestTextProgress: a line per step and message, byte counts every interval and at the end,
// the engine's log only when verbose, the outcome last.
func TestTextProgress(t *testing.T) {
	for _, verbose := range []bool{false, true} {
		var out bytes.Buffer
		p := newTextProgress(&out, verbose)
		now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		p.now = func() time.Time { return now }
		step := func(d time.Duration, e builder.Event) { now = now.Add(d); p.event(e) }
		step(0, builder.Event{Step: "validate", Message: "image x"})
		step(time.Second, builder.Event{Step: "restore", Message: "restoring", Total: 4 << 20})
		step(time.Second, builder.Event{Step: "restore", Done: 1 << 20, Total: 4 << 20}) // within 2s: no line
		step(2*time.Second, builder.Event{Step: "restore", Done: 2 << 20, Total: 4 << 20})
		step(time.Second, builder.Event{Step: "restore", Log: "LOG:  redo done"})
		step(100*time.Millisecond, builder.Event{Step: "restore", Done: 4 << 20, Total: 4 << 20}) // all: a line
		step(time.Second, builder.Event{Step: "checkpoint"})
		p.finish(builder.Outcome{OK: true, Engine: "postgres", EngineVersion: "15.18", DataBytes: 40 << 20})
		want := "" +
			"[     0s] validate   image x\n" +
			"[     1s] restore    restoring\n" +
			"[     4s] restore    2 MiB / 4 MiB   50%\n"
		if verbose {
			want += "[     5s] restore    | LOG:  redo done\n"
		}
		want += "" +
			"[   5.1s] restore    4 MiB / 4 MiB  100%\n" +
			"[   6.1s] checkpoint \n" +
			"image built: postgres 15.18, 40 MiB of data\n"
		require.Equal(t, want, out.String(), "verbose %v", verbose)
	}
}

func TestDescribeFailure(t *testing.T) {
	require.Equal(t, "build failed at step restore: pg_restore: boom\nengine log (last lines):\nFATAL: x",
		describe(builder.Outcome{Step: "restore", Message: "pg_restore: boom", LogTail: "FATAL: x\n"}))
	require.Equal(t, "build failed at step validate: bad", describe(builder.Outcome{Step: "validate", Message: "bad"}))
}

// TestTerminationLog: the outcome is written in place (a bind-mounted file), created when the
// path was given, skipped when the default file or the directory is missing.
func TestTerminationLog(t *testing.T) {
	dir := t.TempDir()
	o := builder.Outcome{Step: "restore", Message: "boom", LogTail: strings.Repeat("log line\n", 1000)}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	given := filepath.Join(dir, "given")
	writeTerminationLog(Config{TerminationLog: given, TerminationLogSet: true}, o, log)
	b, err := os.ReadFile(given)
	require.NoError(t, err)
	require.LessOrEqual(t, len(b), wire.MaxOutcomeBytes)
	got, err := wire.ParseOutcome(b)
	require.NoError(t, err)
	require.Equal(t, "restore", got.Step)

	// An existing file (the kubelet's) is overwritten, also at the default path.
	require.NoError(t, os.WriteFile(given, bytes.Repeat([]byte("x"), 8000), 0o644))
	writeTerminationLog(Config{TerminationLog: given}, builder.Outcome{OK: true, Engine: "postgres", EngineVersion: "15.18"}, log)
	b, err = os.ReadFile(given)
	require.NoError(t, err)
	got, err = wire.ParseOutcome(b)
	require.NoError(t, err)
	require.True(t, got.OK)

	notGiven := filepath.Join(dir, "default")
	writeTerminationLog(Config{TerminationLog: notGiven}, o, log)
	_, err = os.Stat(notGiven)
	require.True(t, errors.Is(err, os.ErrNotExist), "the default path is not created")

	noDir := filepath.Join(dir, "missing", "log")
	writeTerminationLog(Config{TerminationLog: noDir, TerminationLogSet: true}, o, log)
	require.Contains(t, logs.String(), "termination log not written: its directory is missing")
	writeTerminationLog(Config{}, o, log) // none
}

// FuzzDefinitionJSON: parseDefinitionJSON never panics, fails only with definition errors,
// and what it accepts survives a round trip through JSON (the controller marshals the spec
// again and again).
func FuzzDefinitionJSON(f *testing.F) {
	f.Add([]byte(emptyJSON))
	f.Add([]byte(`{"name":"sales","engine":"postgres","version":16,"sourceType":"backup","backups":[{"path":"a/b.tar"}],"nodeName":"n1","volumeSize":"1Gi"}`))
	f.Add([]byte(`{"name":"x","tags":["a","b"],"builder":{"engineImage":"postgres:16"},"lifetime":"0"}`))
	f.Add([]byte(`{"name":"x","name":"y"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		def, err := parseDefinitionJSON(data)
		if err != nil {
			if !errors.Is(err, imagebuilder.ErrInvalidDefinition) {
				t.Fatalf("error that is not a definition error: %v", err)
			}
			return
		}
		again, err := json.Marshal(def)
		if err != nil {
			t.Fatal(err)
		}
		def2, err := parseDefinitionJSON(again)
		if err != nil {
			t.Fatalf("round trip of %s: %v", again, err)
		}
		if !reflect.DeepEqual(def, def2) {
			t.Fatalf("round trip changed the definition: %#v -> %#v", def, def2)
		}
	})
}
