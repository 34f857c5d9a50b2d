package imagebuilder

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidDefinition matches (errors.Is) every error that reports a problem with an image
// definition: bad YAML, a wrong type, an unknown field or a broken rule. Errors reading the
// definition file or the backup root do not match it.
var ErrInvalidDefinition = errors.New("imagebuilder: invalid image definition")

// FieldError is one problem with one field of an image definition.
type FieldError struct {
	// Field is the path of the field, as written in the YAML: "name", "backups[1].path",
	// "tags[0]". Empty for a problem with the document as a whole.
	Field string
	// Line is the 1-based line of the problem in the YAML, or 0 when it is not known (Validate
	// works on the Go value, which does not remember lines).
	Line int
	// Rule says what is wrong, e.g. "required" or "must not be purely numeric, got \"42\"".
	Rule string
}

// Error returns "line 3: name: rule", leaving out the parts that are unknown.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Rule)
	return b.String()
}

// Is reports whether target is ErrInvalidDefinition.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidDefinition }

// DefinitionError lists every problem found in one image definition, in a stable order:
// document order for ParseDefinition, field order (the order of the Definition struct) for
// Validate. It unwraps to its problems, like an errors.Join of them, but prints on one line, so
// that it fits a log line or a Kubernetes status condition.
type DefinitionError struct {
	// Path is the file the definition was loaded from; empty when it came from bytes.
	Path string
	// Problems holds at least one problem.
	Problems []*FieldError
}

// maxPrintedProblems bounds how many problems Error prints; a 1 MiB definition can hold
// hundreds of thousands.
const maxPrintedProblems = 20

// Error returns "imagebuilder: invalid image definition[ PATH]: PROBLEM; PROBLEM; ...", with at
// most 20 problems followed by "and N more problems".
func (e *DefinitionError) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalidDefinition.Error())
	if e.Path != "" {
		b.WriteString(" ")
		b.WriteString(e.Path)
	}
	for i, p := range e.Problems {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		if i == maxPrintedProblems {
			fmt.Fprintf(&b, "and %d more problems", len(e.Problems)-i)
			break
		}
		b.WriteString(p.Error())
	}
	return b.String()
}

// Is reports whether target is ErrInvalidDefinition.
func (e *DefinitionError) Is(target error) bool { return target == ErrInvalidDefinition }

// Unwrap returns the problems, so that errors.As finds the first *FieldError.
func (e *DefinitionError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// problems collects FieldErrors in the order they are found.
type problems []*FieldError

func (ps *problems) add(line int, field, format string, args ...any) {
	*ps = append(*ps, &FieldError{Field: field, Line: line, Rule: fmt.Sprintf(format, args...)})
}

// err returns nil when there is no problem, else a *DefinitionError holding them all.
func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	return &DefinitionError{Problems: ps}
}
