package scriptsplit

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

func TestSkipQuoted(t *testing.T) {
	for _, tc := range []struct {
		name      string
		src       string // the quote is at the first byte
		backslash bool
		next      int // -1: never ends
		newlines  int
	}{
		{"plain", `'abc' x`, false, 5, 0},
		{"empty", `'' x`, false, 2, 0},
		{"doubled quote", `'a''b' x`, false, 6, 0},
		{"doubled quote at the end", `'a'''`, false, 5, 0},
		{"other quotes inside", "\"a'`b\" x", false, 6, 0},
		{"backslash plain", `'a\' x`, false, 4, 0},
		{"backslash escapes the quote", `'a\'b' x`, true, 6, 0},
		{"escaped backslash", `'a\\' x`, true, 5, 0},
		{"newlines", "'a\nb\n' x", false, 6, 2},
		{"escaped newline", "'a\\\nb' x", true, 6, 1},
		{"never ends", "'abc\n", false, -1, 1},
		{"a doubled quote does not end it", `'abc''`, false, -1, 0},
		{"an escaped quote does not end it", `'abc\'`, true, -1, 0},
		{"a backslash at the end", `'abc\`, true, -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := []byte(tc.src)
			next, newlines, ok := SkipQuoted(src, 0, src[0], tc.backslash)
			require.Equal(t, tc.newlines, newlines)
			if tc.next < 0 {
				require.False(t, ok)
				require.Equal(t, len(src), next)
				return
			}
			require.True(t, ok)
			require.Equal(t, tc.next, next)
			require.Equal(t, src[0], src[next-1], "just past the closing quote")
		})
	}
	// From the middle of a text.
	next, _, ok := SkipQuoted([]byte(`SELECT "a""b", 1`), 7, '"', false)
	require.True(t, ok)
	require.Equal(t, 13, next)
}

func TestRefused(t *testing.T) {
	err := Refused("preScript x.sql", Unterminated(3, "string", '\''))
	var se *engine.ScriptError
	require.ErrorAs(t, err, &se)
	require.Equal(t, 3, se.Line)
	require.ErrorIs(t, err, engine.ErrScriptRefused)
	require.ErrorIs(t, err, engine.ErrScript)
	require.Equal(t, "preScript x.sql line 3: engine: script refused: the string that starts here never ends (a missing ')", err.Error())

	other := errors.New("read failed")
	require.Equal(t, other, Refused("preScript x.sql", other))
}
