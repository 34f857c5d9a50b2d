// Package cmdlog is the one way the commands turn their --log-format and -v flags into a
// structured logger (log/slog): text or JSON, at Info, or at Debug from verbosity 1 on.
package cmdlog

import (
	"fmt"
	"io"
	"log/slog"
)

// Formats are the values --log-format takes.
var Formats = []string{"text", "json"}

// CheckFormat fails unless format is one of Formats, naming the flag.
func CheckFormat(format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("--log-format %q: want text or json", format)
	}
	return nil
}

// New returns a logger writing to w in format ("json", else text), at Debug when verbosity
// is above 0, else at Info.
func New(w io.Writer, format string, verbosity int) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if verbosity > 0 {
		opts.Level = slog.LevelDebug
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
