package app

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dataimage/dataimage/local"
)

// Errors of the command itself; the daemon's are local's (local.ErrNotFound, ...).
var (
	// errUsage marks a mistake in how the command was called: exit status 2.
	errUsage = errors.New("usage error")
	// errProblems: pool check found problems (exit status 1 after the report).
	errProblems = errors.New("pool check found problems")
	// errDaemonNotRunning: daemon stop or status found no daemon.
	errDaemonNotRunning = errors.New("daemon is not running")
)

// usageError is a usage mistake: it prints as its message alone and matches errUsage.
type usageError struct{ err error }

func (e *usageError) Error() string           { return e.err.Error() }
func (e *usageError) Unwrap() []error         { return []error{errUsage, e.err} }
func usagef(format string, args ...any) error { return &usageError{fmt.Errorf(format, args...)} }

// failed says what the command was doing when err happened (format and args), unless err is
// the daemon's own message and names the object (name) already: "clone c1 does not exist" needs
// no "get clone c1: " before it. The chain is kept either way.
func failed(err error, name, format string, args ...any) error {
	var le *local.Error
	if errors.As(err, &le) && name != "" && namesObject(le.Message, name) {
		return err
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// namesObject reports whether msg holds name as a word of its own (names are made of letters,
// digits, '-', '_' and '.').
func namesObject(msg, name string) bool {
	isNameChar := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
	}
	for _, w := range strings.FieldsFunc(msg, func(r rune) bool { return !isNameChar(r) }) {
		if strings.TrimRight(w, ".") == name || w == name {
			return true
		}
	}
	return false
}
