package wire

import "errors"

// Errors of the readers. Each is wrapped with what was read.
var (
	// ErrNotEvent: the line is not a build event (not a JSON object, or a 1.0 line with a
	// field 1.0 did not have, or without a step). Readers of a log keep it as a log line.
	ErrNotEvent = errors.New("wire: not a build event")
	// ErrMalformed: the document says it is in this format (it has the version field) but
	// breaks it: a version that is not MAJOR.MINOR, a field of the wrong type, an event
	// without a step.
	ErrMalformed = errors.New("wire: malformed")
	// ErrUnsupportedVersion: the document is in a major version this package does not read.
	ErrUnsupportedVersion = errors.New("wire: unsupported format version")
	// ErrUnknownKind: the event is of a kind this package does not know (a newer minor
	// version's); readers skip it.
	ErrUnknownKind = errors.New("wire: unknown build event kind")
)
