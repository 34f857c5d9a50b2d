package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// Event is one progress report of a build. Its JSON form (MarshalJSON) is one object:
//
//	{"buildEvent":"1.1","step":"restore","message":"restoring backups[0] base.tar","done":1048576,"total":4194304}
//
// buildEvent is the format's version (always first); step is always there, the other fields
// only when set.
type Event struct {
	// Step is the step running: the builder's (init, restore, start, prescript, postscript,
	// checkpoint, stop), the builder binary's (validate) and the local daemon's (volume,
	// filesystem, freeze; push and pull, whose Done and Total count the bytes of the image read
	// and the stored bytes downloaded). A reader shows a step it does not know as it is.
	Step string
	// Message says what happens, for people.
	Message string
	// Done and Total are the bytes of backup input restored so far and in all (Total is 0 when
	// the event has no byte count).
	Done, Total int64
	// Log is one line of the engine's log, when the event forwards one.
	Log string
}

// KindProgress is the kind of every Event: the only kind of format 1.1. Its wire form omits
// the kind field. A later minor version may add kinds, for what a reader may ignore; what
// every reader must see stays a progress event.
const KindProgress = "progress"

// eventJSON is an event's wire form in format 1.x.
type eventJSON struct {
	Version string `json:"buildEvent"`
	Kind    string `json:"kind,omitempty"`
	Step    string `json:"step"`
	Message string `json:"message,omitempty"`
	Done    int64  `json:"done,omitempty"`
	Total   int64  `json:"total,omitempty"`
	Log     string `json:"log,omitempty"`
}

// event10 is format 1.0: the fields builders wrote before the format had versions.
type event10 struct {
	Step    string `json:"step"`
	Message string `json:"message,omitempty"`
	Done    int64  `json:"done,omitempty"`
	Total   int64  `json:"total,omitempty"`
	Log     string `json:"log,omitempty"`
}

// MarshalJSON returns the event in its wire form, format EventVersion, without a newline.
func (e Event) MarshalJSON() ([]byte, error) {
	return json.Marshal(eventJSON{Version: EventVersion, Step: e.Step, Message: e.Message, Done: e.Done, Total: e.Total, Log: e.Log})
}

// DecodeEvent decodes one build event: one JSON object, alone on its line (surrounding space
// is ignored). Its errors say what the line is, for a reader of a log that mixes events with
// other lines:
//
//   - ErrNotEvent: not an event; a reader of a log keeps the line as a log line.
//   - ErrUnknownKind: an event of a newer minor version that this reader does not know; skip it.
//   - ErrUnsupportedVersion: an event of another major version; the reader cannot show
//     progress, and should say so (the error's message says why).
//   - ErrMalformed: an event that breaks its own format.
//
// A line without the version field is format 1.0 and decodes only if it has 1.0's fields and
// no other.
func DecodeEvent(line []byte) (Event, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return Event{}, ErrNotEvent
	}
	var head struct {
		Version *string `json:"buildEvent"`
	}
	if !decodeOne(line, &head, false) {
		return Event{}, ErrNotEvent
	}
	if head.Version == nil {
		var old event10
		if !decodeOne(line, &old, true) || old.Step == "" {
			return Event{}, ErrNotEvent
		}
		return Event(old), nil
	}
	if err := checkVersion("build event", *head.Version); err != nil {
		return Event{}, err
	}
	var w eventJSON
	if err := json.Unmarshal(line, &w); err != nil {
		return Event{}, fmt.Errorf("%w: build event: %w", ErrMalformed, err)
	}
	switch {
	case w.Kind != "" && w.Kind != KindProgress:
		return Event{}, fmt.Errorf("%w %q (format %s)", ErrUnknownKind, w.Kind, *head.Version)
	case w.Step == "":
		return Event{}, fmt.Errorf("%w: build event without a step", ErrMalformed)
	}
	return Event{Step: w.Step, Message: w.Message, Done: w.Done, Total: w.Total, Log: w.Log}, nil
}

// decodeOne decodes line, which must hold exactly one JSON value, into v; strict refuses
// fields v does not have.
func decodeOne(line []byte, v any, strict bool) bool {
	dec := json.NewDecoder(bytes.NewReader(line))
	if strict {
		dec.DisallowUnknownFields()
	}
	if dec.Decode(v) != nil {
		return false
	}
	_, err := dec.Token()
	return err == io.EOF // nothing after the value

}
