package local

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	builderapp "github.com/dataimage/dataimage/cmd/dataimage-builder/app"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
)

// TestPrepareSameVerdicts runs the same definitions, with the same backup roots, through the
// two paths that build images and expects the same verdicts, word for word: the local daemon
// (prepareBuild, the first thing BuildImage does) and the Kubernetes image-builder Job (the
// builder binary's Run, which the Job's command calls). A definition both accept goes on, in
// the builder binary, to the check of its root, which the test makes fail (it holds an
// instance already): so nothing is built.
//
// The two copies this replaces disagreed (run this test against local.validateDefinition and
// dataimage-builder/app.validate to see it):
//   - "empty definition, backup root missing": the daemon opened any backup root it was given
//     and refused an empty image when the root did not exist (its default root on a share
//     that is not mounted, say); the builder binary looked at the root only when the
//     definition names paths. The daemon's copy was wrong: an empty image reads no backup.
//   - "relative backup root": the daemon refused a relative root; the builder binary opened it
//     against its working directory (its command line now makes it absolute first).
//   - "backups without a backup root": the same refusal in other words.
func TestPrepareSameVerdicts(t *testing.T) {
	set, err := registry.Discover()
	var major string
	for _, e := range set {
		if e.Kind() == imagebuilder.EnginePostgres {
			major, _, _ = strings.Cut(e.Version(), ".")
		}
	}
	if major == "" {
		skipOrFail(t, "no PostgreSQL server is installed (discover: %v); make deps", err)
	}

	dir := t.TempDir()
	backups := filepath.Join(dir, "backups")
	writeTestFile(t, filepath.Join(backups, "shop.dump"), "dump")
	writeTestFile(t, filepath.Join(backups, "post.sql"), "SELECT 1;\n")
	require.NoError(t, os.Mkdir(filepath.Join(backups, "scripts"), 0o755))
	missing := filepath.Join(dir, "missing")
	// The builder binary's root holds an instance: a definition it accepts stops there.
	root := filepath.Join(dir, "root")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "data"), 0o755))
	rootInUse := "dataimage-builder: the root already holds an instance: " + filepath.Join(root, "data") + " exists (build into a fresh volume)"

	head := "name: shop\nengine: postgres\nversion: \"" + major + "\"\n"
	empty := head + "sourceType: empty\n"
	backup := head + "sourceType: backup\nbackups: [{path: shop.dump}]\n"
	defPath := filepath.Join(dir, "def.yaml")
	invalid := "imagebuilder: invalid image definition " + defPath + ": "

	for _, tc := range []struct {
		name       string
		def        string
		backupRoot string
		want       string // "": accepted
	}{
		{"empty definition, no backup root", empty, "", ""},
		{"empty definition, backup root", empty, backups, ""},
		{"empty definition, backup root missing", empty, missing, ""},
		{"backup", backup + "postScript: post.sql\n", backups, ""},
		{"backup missing", head + "sourceType: backup\nbackups: [{path: gone.dump}]\n", backups,
			invalid + `backups[0].path: "gone.dump" does not exist under the backup root`},
		{"script is a directory", backup + "postScript: scripts\n", backups,
			invalid + `postScript: "scripts" under the backup root is not a regular file`},
		{"backups without a backup root", backup, "",
			"builder: no backup root: image definition " + defPath + " names backups or scripts"},
		{"backups, backup root missing", backup, missing,
			"imagebuilder: open backup root: open " + missing + ": no such file or directory"},
		{"relative backup root", backup, "backups",
			`builder: the backup root must be an absolute path, got "backups"`},
		{"relative backup root, empty definition", empty, "backups",
			`builder: the backup root must be an absolute path, got "backups"`},
		{"script on an empty definition", empty + "preScript: post.sql\n", backups,
			invalid + "preScript: only allowed when sourceType is backup"},
		{"unknown field", "name: shop\nengin: postgres\n", backups,
			invalid + `line 2: engin: unknown field`},
		{"unknown version", "name: shop\nengine: postgres\nversion: \"7\"\nsourceType: empty\n", "",
			invalid + `version: postgres "7" is not available; available: `},
		{"several problems", "name: \"42\"\nengine: postgres\nversion: \"" + major + "\"\nsourceType: empty\nbackups: [{path: a.tar}]\nlifetime: 3d\n", backups,
			invalid + `name: must not be purely numeric, got "42"; backups: not allowed when sourceType is empty; ` +
				`lifetime: must be 0 (never expires) or <n>s, <n>m or <n>h with n a whole number, got "3d"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeTestFile(t, defPath, tc.def)

			// The local daemon.
			s, err := Config{Home: filepath.Join(dir, "home")}.settings()
			require.NoError(t, err)
			d := &Daemon{cfg: s}
			_, err = d.prepareBuild(BuildRequest{Definition: []byte(tc.def), DefinitionPath: defPath, BackupRoot: tc.backupRoot})
			local := ""
			if err != nil {
				require.ErrorIs(t, err, ErrInvalid, "a refused definition is an invalid request")
				local = err.Error()
			}

			// The builder binary, as the image-builder Job runs it.
			var events []wire.Event
			o := builderapp.Run(context.Background(), builderapp.Config{
				DefinitionFile:  defPath,
				Root:            root,
				BackupRoot:      tc.backupRoot,
				DefaultLifetime: imagebuilder.Lifetime{Never: true},
				Output:          builderapp.OutputJSON,
			}, func(ev wire.Event) { events = append(events, ev) }, slog.New(slog.NewTextHandler(io.Discard, nil)))
			require.False(t, o.OK)
			require.Equal(t, builderapp.StepValidate, o.Step)
			require.Empty(t, events, "nothing started")
			job := o.Message
			if job == rootInUse {
				job = "" // accepted: refused only for its root, after the preparation
			}

			require.Equal(t, local, job, "the daemon's verdict and the Job's")
			if tc.want == "" || strings.HasSuffix(tc.want, ": ") {
				require.True(t, strings.HasPrefix(local, tc.want), "verdict %q, want %q...", local, tc.want)
				if tc.want != "" {
					require.Greater(t, len(local), len(tc.want))
				}
				return
			}
			require.Equal(t, tc.want, local)
		})
	}
}
