package wire

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
)

func TestOutcomeRoundTrip(t *testing.T) {
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, o := range []Outcome{
		{OK: true, Engine: imagebuilder.EnginePostgres, EngineVersion: "15.18", DataBytes: 1 << 20, DataStateTime: at, DataStateSource: "backup_label START TIME"},
		{Step: "postscript", Message: `psql: ERROR: relation "x" does not exist`, LogTail: "line 1\nline 2"},
	} {
		got, err := ParseOutcome(o.Encode())
		require.NoError(t, err)
		assert.Equal(t, o, *got)
	}
}

// TestOutcomeFormats: the termination message a builder writes now is format 1.1, its version
// first; 1.0 (no version field, written before the format had versions) still reads; a later
// 1.x's fields are ignored; another major is refused, saying which.
func TestOutcomeFormats(t *testing.T) {
	now := `{"buildOutcome":"1.1","ok":true,"engine":"postgres","engineVersion":"16.4","dataStateTime":"2026-06-01T12:00:00Z","logPosition":"LSN 0/3000060","dataBytes":1048576}`
	o := Outcome{OK: true, Engine: imagebuilder.EnginePostgres, EngineVersion: "16.4", DataBytes: 1 << 20,
		DataStateTime: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC), LogPosition: "LSN 0/3000060"}
	require.Equal(t, "1.1", OutcomeVersion)
	require.Equal(t, now, string(o.Encode()))
	got, err := ParseOutcome([]byte(now))
	require.NoError(t, err)
	assert.Equal(t, o, *got)

	v10 := `{"ok":true,"engine":"postgres","engineVersion":"16.4","dataStateTime":"2026-06-01T12:00:00Z","dataBytes":1048576}`
	got, err = ParseOutcome([]byte(v10))
	require.NoError(t, err)
	o.LogPosition = ""
	assert.Equal(t, o, *got)

	newer := `{"buildOutcome":"1.4","ok":false,"step":"restore","message":"pg_restore failed","logTail":"ERROR: x",` +
		`"exitCode":1,"steps":[{"step":"init","seconds":1.5}],"node":{"name":"n1"}}`
	got, err = ParseOutcome([]byte(newer))
	require.NoError(t, err)
	assert.Equal(t, Outcome{Step: "restore", Message: "pg_restore failed", LogTail: "ERROR: x"}, *got)

	_, err = ParseOutcome([]byte(`{"buildOutcome":"2.0","ok":true,"result":{"engine":"postgres"}}`))
	require.ErrorIs(t, err, ErrUnsupportedVersion)
	require.EqualError(t, err, "wire: unsupported format version: the build outcome is in format 2.0; this version of Dataimage reads 1.x")
}

func TestParseOutcomeRefuses(t *testing.T) {
	for _, in := range []string{``, `{`, `{"ok":false}`, `[]`, `null`, `{"ok":true} {"ok":true}`, `{"ok":"yes"}`, `{"buildOutcome":"x","ok":true}`} {
		_, err := ParseOutcome([]byte(in))
		assert.ErrorIs(t, err, ErrMalformed, "%q", in)
	}
}

func TestOutcomeEncodeFits(t *testing.T) {
	var tail []string
	for i := range 500 {
		tail = append(tail, strings.Repeat("x", 20)+" line "+string(rune('a'+i%26)))
	}
	o := Outcome{Step: "restore", Message: strings.Repeat("é", 3000), LogTail: strings.Join(tail, "\n")}
	b := o.Encode()
	require.LessOrEqual(t, len(b), MaxOutcomeBytes)
	got, err := ParseOutcome(b)
	require.NoError(t, err)
	assert.Empty(t, got.LogTail, "the log tail goes before the message is cut")
	assert.True(t, strings.HasSuffix(got.Message, "..."), "the cut message is marked")
	assert.True(t, strings.HasPrefix(got.Message, "éé"))

	// A long log tail alone keeps its newest lines.
	o = Outcome{Step: "start", Message: "server failed", LogTail: strings.Join(tail, "\n")}
	got, err = ParseOutcome(o.Encode())
	require.NoError(t, err)
	assert.Equal(t, "server failed", got.Message)
	assert.True(t, strings.HasSuffix(o.LogTail, got.LogTail), "the newest lines are kept")
	assert.NotEmpty(t, got.LogTail)
}
