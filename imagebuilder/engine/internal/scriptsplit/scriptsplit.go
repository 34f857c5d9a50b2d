// Package scriptsplit holds what the adapters' script splitters (postgres/split.go,
// mariadb/split.go) share: the error of a script refused before any of it runs, how RunScript
// reports it, and the rule for skipping a quoted string. Each dialect (which quotes there are,
// when a backslash escapes, comments, delimiters, the client's commands) stays in its adapter.
//
// It must not know an engine.
package scriptsplit

import (
	"errors"
	"fmt"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Error is a script that cannot be split (an unterminated quote or comment) or that holds a
// client's command.
type Error struct {
	// Line is the 1-based line of the script where the refused text starts.
	Line int
	// Msg says what is refused, for people.
	Msg string
}

func (e *Error) Error() string { return e.Msg }

// Refused returns a splitter's error err as RunScript's for the script called name: an *Error
// becomes an *engine.ScriptError at its line matching engine.ErrScriptRefused; any other error
// is returned as it is.
func Refused(name string, err error) error {
	var se *Error
	if errors.As(err, &se) {
		return &engine.ScriptError{Script: name, Line: se.Line, Err: fmt.Errorf("%w: %s", engine.ErrScriptRefused, se.Msg)}
	}
	return err
}

// SkipQuoted skips the quoted text that starts at src[i], the quote q: inside it a doubled
// quote stands for itself and, with backslash, a backslash escapes the byte after it (a
// newline too). It returns the offset just past the closing quote and how many newlines it
// skipped; ok is false when the quote never ends.
func SkipQuoted(src []byte, i int, q byte, backslash bool) (next, newlines int, ok bool) {
	for i++; i < len(src); i++ {
		switch c := src[i]; {
		case c == '\\' && backslash:
			i++ // the escaped byte
			if i < len(src) && src[i] == '\n' {
				newlines++
			}
		case c == q && i+1 < len(src) && src[i+1] == q:
			i++
		case c == q:
			return i + 1, newlines, true
		case c == '\n':
			newlines++
		}
	}
	return len(src), newlines, false
}

// Unterminated is the Error for a quote q that starts at line and never ends; what names the
// quoted text: "string", "quoted identifier".
func Unterminated(line int, what string, q byte) *Error {
	return &Error{Line: line, Msg: fmt.Sprintf("the %s that starts here never ends (a missing %c)", what, q)}
}
