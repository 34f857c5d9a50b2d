package builder

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

func TestOutcomeRoundTrip(t *testing.T) {
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	ok := OutcomeOf(&Result{Engine: imagebuilder.EnginePostgres, Version: "15.18", DataBytes: 1 << 20,
		DataState: engine.DataState{Time: at, Source: "backup_label START TIME"}}, nil)
	got, err := ParseOutcome(ok.Encode())
	require.NoError(t, err)
	assert.Equal(t, ok, *got)
	assert.True(t, got.OK)

	fail := OutcomeOf(nil, &StepError{Step: StepPostScript, Err: errors.New("psql: ERROR: relation \"x\" does not exist"), LogTail: "line 1\nline 2"})
	got, err = ParseOutcome(fail.Encode())
	require.NoError(t, err)
	assert.Equal(t, Outcome{Step: StepPostScript, Message: `psql: ERROR: relation "x" does not exist`, LogTail: "line 1\nline 2"}, *got)

	other := OutcomeOf(nil, errors.New("no engine"))
	assert.Equal(t, Outcome{Step: "build", Message: "no engine"}, other)
}

func TestOutcomeEncodeFits(t *testing.T) {
	var tail []string
	for i := range 500 {
		tail = append(tail, strings.Repeat("x", 20)+" line "+string(rune('a'+i%26)))
	}
	o := Outcome{Step: StepRestore, Message: strings.Repeat("é", 3000), LogTail: strings.Join(tail, "\n")}
	b := o.Encode()
	require.LessOrEqual(t, len(b), MaxOutcomeBytes)
	got, err := ParseOutcome(b)
	require.NoError(t, err)
	assert.Empty(t, got.LogTail, "the log tail goes before the message is cut")
	assert.True(t, strings.HasSuffix(got.Message, "..."), "the cut message is marked")
	assert.True(t, strings.HasPrefix(got.Message, "éé"))

	// A long log tail alone keeps its newest lines.
	o = Outcome{Step: StepStart, Message: "server failed", LogTail: strings.Join(tail, "\n")}
	got, err = ParseOutcome(o.Encode())
	require.NoError(t, err)
	assert.Equal(t, "server failed", got.Message)
	assert.True(t, strings.HasSuffix(o.LogTail, got.LogTail), "the newest lines are kept")
	assert.NotEmpty(t, got.LogTail)
}

func TestParseOutcomeRefuses(t *testing.T) {
	for _, in := range []string{``, `{`, `{"ok":false}`, `{"ok":true,"extra":1}`, `[]`} {
		_, err := ParseOutcome([]byte(in))
		assert.Error(t, err, "%q", in)
	}
}
