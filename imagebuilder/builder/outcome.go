package builder

import (
	"errors"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// Outcome is a build's result as the image-builder Job reports it: package wire's Outcome,
// which owns its JSON form.
type Outcome = wire.Outcome

// OutcomeOf returns the Outcome of a build that returned res and err.
func OutcomeOf(res *Result, err error) Outcome {
	if err != nil {
		o := Outcome{Step: "build", Message: err.Error()}
		var se *StepError
		if errors.As(err, &se) {
			o.Step, o.Message, o.LogTail = se.Step, se.Err.Error(), se.LogTail
		}
		return o
	}
	return Outcome{OK: true, Engine: res.Engine, EngineVersion: res.Version, DataBytes: res.DataBytes,
		DataStateTime: res.DataState.Time, DataStateSource: res.DataState.Source, LogPosition: res.DataState.LogPosition}
}
