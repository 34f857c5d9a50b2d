package builder

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Input is what a build is prepared from: the definition as written and what it is checked
// against.
type Input struct {
	// Definition is the image definition: YAML, or JSON (which is YAML).
	Definition []byte
	// DefinitionPath names the definition in messages (the Path of a
	// *imagebuilder.DefinitionError); it is not read. Empty: the definition is not named.
	DefinitionPath string
	// BackupRoot is the directory the definition's backup and script paths are relative to:
	// an absolute path, or empty for none.
	BackupRoot string
	// DefaultLifetime is the lifetime of an image whose definition gives none.
	DefaultLifetime imagebuilder.Lifetime
	// Engines returns the engines installed here. Prepare calls it once the definition has
	// parsed (a definition that does not parse needs no engine).
	Engines func() (engine.Set, error)
}

// Prepare parses in's definition and validates it against what the build has: the backup
// root and the installed engines. It is the one preparation of a build, whichever process runs
// it (the local daemon, the builder binary in a Kubernetes Job), so that a definition gets the
// same verdict, in the same words, everywhere.
//
// The rules beyond the definition's own (imagebuilder.Definition.Validate):
//   - a backup root is an absolute path (ErrRelativeBackupRoot): the process that builds may
//     not share the working directory of the one that named it.
//   - the backup root matters only to a definition that names backups or scripts: then it is
//     required (ErrNoBackupRoot) and opened, and every path is checked under it. For a
//     definition without paths a backup root that is given is not looked at: it may not exist
//     (a daemon's default backup root on a share that is not mounted), and an empty image
//     does not need it.
//
// It returns the Request with Definition, Env and Engines set; the caller sets where the build
// goes and how it reports. Every error about in matches ErrInvalidInput (a definition's
// problems are a *imagebuilder.DefinitionError, named with DefinitionPath); an error of
// in.Engines is returned as it is.
func Prepare(in Input) (Request, error) {
	env := imagebuilder.ValidationEnv{DefaultLifetime: in.DefaultLifetime, BackupRoot: in.BackupRoot}
	invalid := func(err error) (Request, error) {
		var de *imagebuilder.DefinitionError
		if errors.As(err, &de) && in.DefinitionPath != "" {
			de.Path = in.DefinitionPath
		}
		return Request{}, &inputError{err}
	}
	def, err := imagebuilder.ParseDefinition(in.Definition)
	if err != nil {
		return invalid(err)
	}
	if env.BackupRoot != "" && !filepath.IsAbs(env.BackupRoot) {
		return invalid(fmt.Errorf("%w, got %q", ErrRelativeBackupRoot, env.BackupRoot))
	}
	env.CheckPaths = len(def.Backups) > 0 || def.PreScript != "" || def.PostScript != ""
	if env.CheckPaths && env.BackupRoot == "" {
		name := "the image definition"
		if in.DefinitionPath != "" {
			name = "image definition " + in.DefinitionPath
		}
		return invalid(fmt.Errorf("%w: %s names backups or scripts", ErrNoBackupRoot, name))
	}
	engines, err := in.Engines()
	if err != nil {
		return Request{}, err
	}
	env.Versions = engines.Versions()
	if err := def.Validate(env); err != nil {
		return invalid(err)
	}
	return Request{Definition: def, Env: env, Engines: engines}, nil
}

// inputError is an error of Prepare about its input: its message is the cause's.
type inputError struct{ err error }

func (e *inputError) Error() string   { return e.err.Error() }
func (e *inputError) Unwrap() []error { return []error{ErrInvalidInput, e.err} }
