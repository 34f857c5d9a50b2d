package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
)

// Outcome is a build's result as one JSON document: what the image-builder Job writes to its
// termination message (/dev/termination-log) and the DataImage controller reads back from the
// pod's status. Encode keeps it within the kubelet's limit (MaxOutcomeBytes).
//
// Format 1.0 has no version field. Later versions (OutcomeVersion) write
// "buildOutcome":"MAJOR.MINOR" first; ParseOutcome reads every 1.x (ignoring fields it does not
// know) and refuses another major version.
type Outcome struct {
	// OK says the build succeeded; then Engine, EngineVersion, DataBytes and the data state
	// are set. Otherwise Step and Message say what failed.
	OK            bool                `json:"ok"`
	Engine        imagebuilder.Engine `json:"engine,omitempty"`
	EngineVersion string              `json:"engineVersion,omitempty"`
	// DataStateTime is the point in time the data holds (zero if the backup does not say);
	// DataStateSource says where it was read.
	DataStateTime   time.Time `json:"dataStateTime,omitzero"`
	DataStateSource string    `json:"dataStateSource,omitempty"`
	// LogPosition is the engine's log position the data stands at (engine.DataState), e.g.
	// "LSN 0/3000060"; empty when the backup does not say. Added in 1.1: a 1.0 reader ignores it.
	LogPosition string `json:"logPosition,omitempty"`
	DataBytes   int64  `json:"dataBytes,omitempty"`
	// Step is the step that failed (a build step, or "validate" and the like for failures
	// before the build starts).
	Step string `json:"step,omitempty"`
	// Message is the failure's message; LogTail the tail of the engine's log.
	Message string `json:"message,omitempty"`
	LogTail string `json:"logTail,omitempty"`
}

// MaxOutcomeBytes is the kubelet's limit on a container's termination message.
const MaxOutcomeBytes = 4096

// Encode returns o as JSON of at most MaxOutcomeBytes: when it is longer, the log tail loses its
// oldest lines first, then the message is cut (marked with "...").
func (o Outcome) Encode() []byte {
	for {
		b, err := json.Marshal(struct {
			Version string `json:"buildOutcome"`
			Outcome
		}{OutcomeVersion, o})
		if err != nil {
			panic(err) // unreachable: Outcome holds only strings, numbers and a time
		}
		if len(b) <= MaxOutcomeBytes {
			return b
		}
		over := len(b) - MaxOutcomeBytes
		switch {
		case o.LogTail != "":
			if i := strings.IndexByte(o.LogTail, '\n'); i >= 0 && len(o.LogTail)-i-1 > 0 {
				o.LogTail = o.LogTail[i+1:]
			} else {
				o.LogTail = ""
			}
		case len(o.Message) > over+3:
			o.Message = strings.ToValidUTF8(o.Message[:len(o.Message)-over-3], "") + "..."
		case o.Message != "":
			o.Message = ""
		default:
			return b // nothing left to cut: the other fields are short by construction
		}
	}
}

// ParseOutcome decodes a termination message written by Encode, in any format 1.x: fields it
// does not know are ignored. Another major version fails with ErrUnsupportedVersion; a
// document that is not an outcome, with ErrMalformed.
func ParseOutcome(b []byte) (*Outcome, error) {
	var head struct {
		Version *string `json:"buildOutcome"`
	}
	if !decodeOne(b, &head, false) {
		var o Outcome
		err := json.Unmarshal(b, &o) // for the message: why it is not one JSON object
		if err == nil {
			err = errors.New("more than one JSON value")
		}
		return nil, fmt.Errorf("%w: build outcome: %w", ErrMalformed, err)
	}
	if head.Version != nil {
		if err := checkVersion("build outcome", *head.Version); err != nil {
			return nil, err
		}
	}
	var o Outcome
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("%w: build outcome: %w", ErrMalformed, err)
	}
	if !o.OK && o.Step == "" {
		return nil, fmt.Errorf("%w: build outcome: a failure without a step", ErrMalformed)
	}
	return &o, nil
}
