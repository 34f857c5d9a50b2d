package builder

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// TestPrepareErrors: errors about the input match ErrInvalidInput and name the definition; the
// engines are asked for only once the definition parses, and their error is not the input's.
// (local's TestPrepareSameVerdicts runs the rules through both builders.)
func TestPrepareErrors(t *testing.T) {
	asked := 0
	noEngine := errors.New("no engine here")
	in := Input{DefinitionPath: "def.yaml", Engines: func() (engine.Set, error) { asked++; return nil, noEngine }}

	in.Definition = []byte("name: x\nengin: postgres\n")
	_, err := Prepare(in)
	require.ErrorIs(t, err, ErrInvalidInput)
	require.ErrorIs(t, err, imagebuilder.ErrInvalidDefinition)
	var de *imagebuilder.DefinitionError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "def.yaml", de.Path)
	assert.Zero(t, asked, "a definition that does not parse needs no engine")

	in.Definition = []byte("name: x\nengine: postgres\nversion: \"16\"\nsourceType: empty\n")
	_, err = Prepare(in)
	require.ErrorIs(t, err, noEngine)
	require.NotErrorIs(t, err, ErrInvalidInput, "the machine's problem, not the input's")
	assert.Equal(t, 1, asked)

	in.Engines = func() (engine.Set, error) { return engine.Set{}, nil }
	_, err = Prepare(in)
	require.ErrorIs(t, err, ErrInvalidInput)
	require.EqualError(t, err, "imagebuilder: invalid image definition def.yaml: version: no postgres versions are available to this builder")

	in.BackupRoot = "rel"
	_, err = Prepare(in)
	require.ErrorIs(t, err, ErrRelativeBackupRoot)
	require.ErrorIs(t, err, ErrInvalidInput)
}
