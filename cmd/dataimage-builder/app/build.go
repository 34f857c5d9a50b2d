package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
	"github.com/dataimage/dataimage/internal/units"
)

// Steps of the builder besides builder.Build's.
const (
	// StepValidate reads and validates the definition and checks the root: a failure here
	// starts nothing.
	StepValidate = "validate"
)

// Run validates and builds the image c describes, reporting progress through event (called
// from one goroutine at a time), and returns the outcome. A failure before the build starts
// is an outcome with Step StepValidate.
func Run(ctx context.Context, c Config, event func(builder.Event), log *slog.Logger) builder.Outcome {
	refused := func(err error) builder.Outcome {
		return builder.Outcome{Step: StepValidate, Message: err.Error()}
	}
	req, err := prepare(c)
	if err != nil {
		return refused(err)
	}
	def, env := req.Definition, req.Env
	version, _ := def.ResolveVersion(env) // Validate checked it
	what := fmt.Sprintf("%s %s (%s), source %s", def.NormalizedEngine(), def.Version, version, def.NormalizedSourceType())
	if n := len(def.Backups); n > 0 {
		what += fmt.Sprintf(", %d backup(s) under %s", n, env.BackupRoot)
	}
	runtimeDir, cleanup, err := runtimeDir(c.RuntimeDir)
	if err != nil {
		return refused(err)
	}
	defer cleanup()
	eng, err := req.Engines.Lookup(def.NormalizedEngine(), version)
	if err != nil {
		return refused(err)
	}
	if err := prepareRoot(c.Root, runtimeDir, eng, c.RunAs); err != nil {
		return refused(err)
	}
	event(builder.Event{Step: StepValidate, Message: fmt.Sprintf("image %s: %s, into %s", def.Name, what, c.Root)})

	log.Info("image build started", "image", def.Name, "engine", def.NormalizedEngine(), "version", version, "root", c.Root, "runtimeDir", runtimeDir)
	req.Root, req.RuntimeDir, req.RunAs = c.Root, runtimeDir, c.RunAs
	// A physical restore writes at most the size of the root's file system (the PVC's).
	req.MaxArchiveMembers = c.MaxArchiveMembers
	req.Progress, req.Logger = event, log
	res, err := builder.Build(ctx, req)
	// builder.Build syncs the root's file system in its stop step: the data is on the volume
	// when it returns, before anyone snapshots it.
	return builder.OutcomeOf(res, err) // the builder logged a failure already
}

// prepare reads the definition and prepares the build (builder.Prepare) against the engines
// installed here, the backup root and the default lifetime.
func prepare(c Config) (builder.Request, error) {
	data, err := readDefinition(c)
	if err != nil {
		return builder.Request{}, err
	}
	if !filepath.IsAbs(c.Root) {
		return builder.Request{}, fmt.Errorf("dataimage-builder: root %q: want an absolute path", c.Root)
	}
	return builder.Prepare(builder.Input{
		Definition:      data,
		DefinitionPath:  c.DefinitionFile,
		BackupRoot:      c.BackupRoot,
		DefaultLifetime: c.DefaultLifetime,
		Engines: func() (engine.Set, error) {
			set, err := registry.Discover()
			if err != nil {
				return nil, fmt.Errorf("dataimage-builder: no database engine found on this machine: %w", err)
			}
			return set, nil
		},
	})
}

// prepareRoot makes the root if it does not exist, refuses one that holds an instance, and —
// running as root, with the server running as another user — makes sure that user can reach
// the root and the runtime directory: a fresh file system's root directory may be 0700, and
// every parent must be traversable.
func prepareRoot(root, runtimeDir string, eng engine.Engine, runAs string) error {
	data := engine.DataDir(root)
	if _, err := os.Lstat(data); err == nil {
		return fmt.Errorf("%w: %s exists (build into a fresh volume)", ErrRootInUse, data)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dataimage-builder: root: %w", err)
	}
	var u *engine.User // the server's user, when it needs the directories opened to it
	if os.Geteuid() == 0 {
		var err error
		if u, err = eng.User(runAs); err != nil {
			return fmt.Errorf("dataimage-builder: %w", err)
		}
		if u.UID == 0 {
			u = nil
		}
	}
	if u != nil {
		for _, dir := range []string{root, runtimeDir} {
			if err := traversable(filepath.Dir(dir), u.Name); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("dataimage-builder: root: %w", err)
	}
	if u == nil {
		return nil
	}
	fi, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("dataimage-builder: root: %w", err)
	}
	if fi.Mode().Perm()&0o001 == 0 {
		if err := os.Chmod(root, fi.Mode().Perm()|0o011); err != nil {
			return fmt.Errorf("dataimage-builder: make root %s traversable for %s: %w", root, u.Name, err)
		}
	}
	return nil
}

// traversable checks that dir and its parents that exist can be traversed by others.
func traversable(dir, user string) error {
	for ; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// made later, traversable (0755 or the user's own)
		case err != nil:
			return fmt.Errorf("dataimage-builder: %w", err)
		case fi.Mode().Perm()&0o001 == 0:
			return fmt.Errorf("%w: %s is %s, not traversable by %s (make it 0711 or 0755)", ErrUnreachable, dir, fi.Mode().Perm(), user)
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// runtimeDir returns the server's runtime directory: dir when given (the build makes it), else
// a fresh directory with a short path under /run (or the temporary directory where /run is not
// writable), which cleanup removes.
func runtimeDir(dir string) (_ string, cleanup func(), err error) {
	if dir != "" {
		if !filepath.IsAbs(dir) {
			return "", nil, fmt.Errorf("dataimage-builder: runtime directory %q: want an absolute path", dir)
		}
		return dir, func() {}, nil
	}
	for _, parent := range []string{"/run", os.TempDir()} {
		if dir, err = os.MkdirTemp(parent, "dataimage-build-"); err == nil {
			return dir, func() { _ = os.RemoveAll(dir) }, nil
		}
	}
	return "", nil, fmt.Errorf("dataimage-builder: make a runtime directory: %w", err)
}

// readDefinition returns the definition of --definition (YAML) or --definition-json.
func readDefinition(c Config) ([]byte, error) {
	if c.DefinitionFile != "" {
		data, err := os.ReadFile(c.DefinitionFile)
		if err != nil {
			return nil, fmt.Errorf("dataimage-builder: read the definition: %w", err)
		}
		return data, nil
	}
	return definitionJSON([]byte(c.DefinitionJSON))
}

// describe is a one-line account of an outcome, for people.
func describe(o builder.Outcome) string {
	if !o.OK {
		msg := fmt.Sprintf("build failed at step %s: %s", o.Step, o.Message)
		if tail := strings.TrimSpace(o.LogTail); tail != "" && !strings.Contains(o.Message, tail) {
			msg += "\nengine log (last lines):\n" + tail
		}
		return msg
	}
	msg := fmt.Sprintf("image built: %s %s, %s of data", o.Engine, o.EngineVersion, units.FormatBytes(o.DataBytes))
	if !o.DataStateTime.IsZero() {
		msg += ", data as of " + o.DataStateTime.UTC().Format(time.RFC3339)
	}
	return msg
}
