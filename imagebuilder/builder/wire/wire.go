// Package wire is the image builder's wire format: what a build tells the processes that watch
// it. It owns two documents, both JSON:
//
//   - build events (Event), one per line, while a build runs: the builder binary writes them on
//     its standard output, where the DataImage controller reads them back from the pod's log;
//     the local daemon streams them to the dataimage command in its HTTP API's build stream.
//   - the outcome (Outcome), once, when a build ends: the builder binary writes it to its
//     container's termination message, where the controller reads it from the pod's status.
//
// Writers and readers are built and upgraded apart (a DataImage may name its own builder
// image; a running daemon may be older than the command that talks to it), so both documents
// carry a format version, "MAJOR.MINOR", and readers follow these rules:
//
//   - a newer minor version only adds: fields, event kinds, step names. A reader decodes the
//     fields it knows and ignores the others, skips events of kinds it does not know
//     (ErrUnknownKind), and shows step names it does not know as they are.
//   - a newer major version changes what a field means: a reader does not guess. DecodeEvent
//     and ParseOutcome fail with ErrUnsupportedVersion, naming both versions; readers say that
//     progress cannot be shown and why, and a build is never failed for its events.
//   - version 1.0 is what builders wrote before the format had versions: events and outcomes
//     without a version field. A line without the field is read as 1.0, strictly (only 1.0's
//     fields), since a JSON line of some other program in the same log could otherwise pass
//     for an event.
//
// Writers follow the other side: a change that an older reader of the same major could
// misread is a new major version, and fields are never removed or retyped within a major.
//
// This package must not know how builds run: it imports nothing but the definition's types,
// so that readers (the controller) link no engine, store or export code.
package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// The versions this package writes. It reads every 1.x.
const (
	// EventVersion is the version of the events Event.MarshalJSON writes. 1.1 added the version
	// field itself and event kinds to 1.0.
	EventVersion = "1.1"
	// OutcomeVersion is the version of the outcome Outcome.Encode writes. 1.0 was written
	// without a version field; 1.1 added the field and logPosition. Controllers from before
	// the format had versions refuse a field they do not know: they fail the builds of a 1.1
	// builder. A controller picks the builder image it runs, so this happens only when a
	// controller is rolled back past that release while its new builders run (docs/kubernetes.md,
	// "Upgrading").
	OutcomeVersion = "1.1"
)

// readMajor is the major version this package reads.
const readMajor = 1

// version is a parsed "MAJOR.MINOR".
type version struct{ major, minor int }

func (v version) String() string { return strconv.Itoa(v.major) + "." + strconv.Itoa(v.minor) }

// parseVersion parses "MAJOR.MINOR": two decimal numbers without signs, spaces or leading
// zeros (other than "0" itself).
func parseVersion(s string) (version, bool) {
	majStr, minStr, ok := strings.Cut(s, ".")
	if !ok {
		return version{}, false
	}
	a, okA := parseNumber(majStr)
	b, okB := parseNumber(minStr)
	return version{a, b}, okA && okB
}

func parseNumber(s string) (int, bool) {
	if s == "" || len(s) > 6 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// checkVersion returns nil when v (the version field's value, as written) names a version this
// package reads, else an error matching ErrUnsupportedVersion (a newer or older major) or
// ErrMalformed (not a version).
func checkVersion(doc, v string) error {
	parsed, ok := parseVersion(v)
	switch {
	case !ok:
		return fmt.Errorf("%w: %s format version %q is not MAJOR.MINOR", ErrMalformed, doc, v)
	case parsed.major != readMajor:
		return fmt.Errorf("%w: the %s is in format %s; this version of Dataimage reads %d.x", ErrUnsupportedVersion, doc, parsed, readMajor)
	}
	return nil
}
