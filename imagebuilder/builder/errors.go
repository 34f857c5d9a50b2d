package builder

import (
	"errors"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

var (
	// ErrBuild matches (errors.Is) every error Build returns.
	ErrBuild = errors.New("builder: image build failed")
	// ErrInvalidInput matches every error of Prepare about its input: the definition, the
	// backup root (not the engines' discovery).
	ErrInvalidInput = errors.New("builder: invalid build input")
	// ErrNoBackupRoot: the definition names backups or scripts and no backup root was given.
	ErrNoBackupRoot = errors.New("builder: no backup root")
	// ErrRelativeBackupRoot: the backup root is not an absolute path.
	ErrRelativeBackupRoot = errors.New("builder: the backup root must be an absolute path")
)

// StepError is the failure of one step of a build.
type StepError struct {
	// Step is the step that failed: init, restore, start, prescript, postscript, checkpoint
	// or stop.
	Step string
	// Err is the cause.
	Err error
	// LogTail is the tail of the server's log when a server ran (or tried to start) during the
	// step, else empty.
	LogTail string
}

// Error returns "builder: step STEP failed: CAUSE", followed by the server log's tail unless the
// cause's message has it already.
func (e *StepError) Error() string {
	msg := "builder: step " + e.Step + " failed: " + e.Err.Error()
	if tail := strings.TrimSpace(e.LogTail); tail != "" && !strings.Contains(msg, tail) {
		msg += "\nserver log (last lines):\n" + tail
	}
	return msg
}

// Unwrap returns ErrBuild and the cause.
func (e *StepError) Unwrap() []error { return []error{ErrBuild, e.Err} }

// logTail returns the log tail a failure carries: the *engine.ServerError's, else the running
// server's (inst may be nil).
func logTail(err error, inst engine.Instance) string {
	var se *engine.ServerError
	if errors.As(err, &se) && se.LogTail != "" {
		return se.LogTail
	}
	if inst != nil {
		return inst.LogTail(logTailLines)
	}
	return ""
}

// logTailLines is how many lines of the server's log a StepError carries.
const logTailLines = 30
