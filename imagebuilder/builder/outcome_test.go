package builder

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

func TestOutcomeOf(t *testing.T) {
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	ok := OutcomeOf(&Result{Engine: imagebuilder.EnginePostgres, Version: "15.18", DataBytes: 1 << 20,
		DataState: engine.DataState{Time: at, Source: "backup_label START TIME"}}, nil)
	assert.Equal(t, Outcome{OK: true, Engine: imagebuilder.EnginePostgres, EngineVersion: "15.18", DataBytes: 1 << 20,
		DataStateTime: at, DataStateSource: "backup_label START TIME"}, ok)

	fail := OutcomeOf(nil, &StepError{Step: StepPostScript, Err: errors.New("psql: ERROR: relation \"x\" does not exist"), LogTail: "line 1\nline 2"})
	assert.Equal(t, Outcome{Step: StepPostScript, Message: `psql: ERROR: relation "x" does not exist`, LogTail: "line 1\nline 2"}, fail)

	other := OutcomeOf(nil, errors.New("no engine"))
	assert.Equal(t, Outcome{Step: "build", Message: "no engine"}, other)
}
