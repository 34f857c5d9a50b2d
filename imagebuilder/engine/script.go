package engine

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// A definition's scripts (preScript, postScript) are input from whoever writes the definition,
// not from whoever runs the builder: Instance.RunScript runs them through the engine's wire
// protocol (no client program, so no client commands such as psql's \! or the mariadb client's
// system), as an account made for the script that can change the image's data and schema but
// not reach the server's files, programs or accounts. The adapters say what their account may
// do.

// Errors of scripts.
var (
	// ErrScript matches every *ScriptError: a statement of a script failed, or the script
	// holds something scripts may not do.
	ErrScript = errors.New("engine: script failed")
	// ErrScriptRefused matches a script refused before any of it ran: a client command (psql's
	// meta-commands, the mariadb client's system, source, ...), or text the adapter cannot split
	// into statements (an unterminated quote or comment).
	ErrScriptRefused = errors.New("engine: script refused")
)

// MaxScriptSize bounds a script's size: scripts are read whole before they run.
const MaxScriptSize = 64 << 20

// Script is one script to run.
type Script struct {
	// Name names the script in errors, e.g. "preScript scripts/pre.sql".
	Name string
	// SQL is the script's text.
	SQL []byte
}

// ScriptError is the failure of one statement of a script, or the refusal of a script.
type ScriptError struct {
	// Script is Script.Name.
	Script string
	// Line is the 1-based line of the script where the failed statement starts (or the refused
	// text is); 0 when the failure is the script's as a whole (e.g. it ended inside a
	// transaction).
	Line int
	// Statement is the failed statement, shortened for messages ("" when Line is 0 or the
	// refused text is not a statement).
	Statement string
	// Err is the server's error, or an error matching ErrScriptRefused.
	Err error
}

// Error returns "SCRIPT line N: STATEMENT: ERR".
func (e *ScriptError) Error() string {
	var b strings.Builder
	b.WriteString(e.Script)
	if e.Line > 0 {
		fmt.Fprintf(&b, " line %d", e.Line)
	}
	if e.Statement != "" {
		fmt.Fprintf(&b, ": %s", e.Statement)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

// Unwrap returns ErrScript and the cause.
func (e *ScriptError) Unwrap() []error { return []error{ErrScript, e.Err} }

// maxStatementInError bounds the statement an error quotes, in bytes.
const maxStatementInError = 200

// ShortStatement returns stmt for an error message: runs of white space made one space, cut
// to about 200 bytes (at a character boundary) with "..." when longer.
func ShortStatement(stmt string) string {
	s := strings.Join(strings.Fields(stmt), " ")
	if len(s) <= maxStatementInError {
		return s
	}
	cut := maxStatementInError
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// ScriptAccountName returns a fresh name for a script's account: prefix followed by 12 random
// hexadecimal digits, so that it cannot collide with an account the image has.
func ScriptAccountName(prefix string) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("engine: script account name: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// RandomPassword returns a random password of 32 hexadecimal digits, for an account that lives
// as long as one script.
func RandomPassword() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("engine: script account password: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
