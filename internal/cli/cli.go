// Package cli holds what the thin mains under cmd/ share: the logging flags and the way a
// command runs until SIGTERM or SIGINT and turns its outcome into an exit code. It must not know
// any command's flags beyond these, nor the product's layers.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
)

// LogFlags are the logging flags: -v and --log-format.
type LogFlags struct {
	// Verbosity: 0 logs at info, 1 and more at debug.
	Verbosity int
	// Format is "text" or "json".
	Format string
}

// Register defines the flags on fs.
func (l *LogFlags) Register(fs *flag.FlagSet) {
	fs.IntVar(&l.Verbosity, "v", 0, "log verbosity: 0 info, 1 and more debug")
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json")
}

// Check returns an error naming the flag that has a bad value.
func (l LogFlags) Check() error {
	if err := CheckFormat(l.Format); err != nil {
		return err
	}
	switch {
	case l.Verbosity < 0:
		return fmt.Errorf("-v %d: must not be negative", l.Verbosity)
	}
	return nil
}

// Logger returns the logger the flags ask for, writing to w.
func (l LogFlags) Logger(w io.Writer) *slog.Logger { return NewLogger(w, l.Format, l.Verbosity) }

// Formats are the values --log-format takes.
var Formats = []string{"text", "json"}

// CheckFormat fails unless format is one of Formats, naming the flag.
func CheckFormat(format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("--log-format %q: want text or json", format)
	}
	return nil
}

// NewLogger returns a logger writing to w in format ("json", else text), at Debug when
// verbosity is above 0, else at Info: the one way the commands turn --log-format and -v into
// a structured logger.
func NewLogger(w io.Writer, format string, verbosity int) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if verbosity > 0 {
		opts.Level = slog.LevelDebug
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Main finishes a command's main: after parsing (parseErr: flag.ErrHelp exits 0, another error
// is a usage error, exit 2), it runs run until SIGTERM or SIGINT (run's ctx ends) and returns the
// exit code: 0, or 1 when run failed. Errors are written to stderr, prefixed with name.
func Main(name string, stderr io.Writer, parseErr error, run func(ctx context.Context) error) int {
	if errors.Is(parseErr, flag.ErrHelp) {
		return 0
	}
	if parseErr != nil {
		fmt.Fprintf(stderr, "%s: %v (see --help)\n", name, parseErr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}
