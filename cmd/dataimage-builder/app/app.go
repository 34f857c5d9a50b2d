// Package app is the dataimage-builder command: flags into a Config, then Run.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// Version is the builder's version (set at link time with -X).
var Version = "dev"

// Output formats of the progress.
const (
	OutputJSON = "json"
	OutputText = "text"
)

// DefaultTerminationLog is where Kubernetes reads a container's termination message.
const DefaultTerminationLog = "/dev/termination-log"

// Config is what the flags say.
type Config struct {
	// DefinitionFile is a definition in YAML (--definition); DefinitionJSON one in JSON
	// (--definition-json). Exactly one is set.
	DefinitionFile string
	DefinitionJSON string
	// Root is the mounted build volume: the instance goes under it (its data directory is
	// Root/data).
	Root string
	// BackupRoot is the directory the definition's backup and script paths are relative to.
	BackupRoot string
	// RuntimeDir holds the server's socket and log during the build; empty: a fresh directory
	// under /run (or the temporary directory), removed at the end.
	RuntimeDir string
	// RunAs is the OS user the server runs as when the builder runs as root ("" = the engine's:
	// postgres, mysql).
	RunAs string
	// DefaultLifetime is the lifetime of an image whose definition gives none.
	DefaultLifetime imagebuilder.Lifetime
	// Output is OutputJSON (build events on stdout, one JSON object a line) or OutputText
	// (progress for people on stderr).
	Output string
	// TerminationLog is where the outcome goes (empty: nowhere). TerminationLogSet says the
	// path was given: the default is written only when the file exists (the kubelet makes it).
	TerminationLog    string
	TerminationLogSet bool
	// Verbose logs the builder's steps and, with text output, the engine's log lines.
	Verbose bool
	// MaxArchiveMembers bounds the files, directories and links a base backup's archives hold
	// (builder.Request.MaxArchiveMembers); a restore also writes at most the size of Root's
	// file system.
	MaxArchiveMembers int64
}

const usage = `Usage: dataimage-builder (--definition FILE | --definition-json JSON) [flags]

Builds one data image's content: a database instance made from an image definition, in a fresh
volume mounted at --root (the instance's data directory is <root>/data), left cleanly stopped
and flushed to the volume, ready to be snapshotted as the image. It is the image-builder Job's
binary: the Job runs it in the engine's own container image (e.g. postgres:16) as the engine's
OS user (uid 999 in the official images), with no capability and a read-only root file system,
and it runs the database server and its tools as itself. Run as root (locally), it runs them as
the engine's OS user instead (--run-as).

Steps: validate, then the builder's (init, restore, start, prescript, postscript, checkpoint,
stop, as the source type needs; stop ends with a syncfs of the root, so the data is on the
volume when the Job ends). Validation checks the definition against the
engine versions installed here and, when it names backups or scripts, that they exist under
--backup-root; a root that already holds an instance (<root>/data exists) is refused.

Output (--output):
  json  one build event per line on stdout, in the builder's wire format
        (imagebuilder/builder/wire.Event, versioned): {"buildEvent": "` + wire.EventVersion + `", "step",
        "message", "done", "total", "log"} (done/total: bytes of backup restored; log: a line
        of the engine's log). Logs go to stderr, as text.
  text  progress for people on stderr.

Result: at the end, success or failure, the outcome is written to --termination-log as one JSON
document of at most 4096 bytes (imagebuilder/builder/wire.Outcome: ok, engine, engineVersion,
dataStateTime, dataBytes; or the failed step, the message and the tail of the engine's log). The
default path is written only when it exists (the kubelet makes it); a path whose directory is
missing is skipped with a warning.

Exit codes: 0 built; 1 the build failed or was refused (see the outcome); 2 bad flags.

Flags:
`

// parse reads the flags into a Config.
func parse(args []string, out io.Writer) (Config, error) {
	c := Config{DefaultLifetime: imagebuilder.Lifetime{Never: true}}
	fs := flag.NewFlagSet("dataimage-builder", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usage)
		fs.PrintDefaults()
		fmt.Fprintf(out, "\nVersion: %s\n", Version)
	}
	fs.StringVar(&c.DefinitionFile, "definition", "", "the image definition: a YAML file (for local use)")
	fs.StringVar(&c.DefinitionJSON, "definition-json", "", "the image definition as JSON: an imagebuilder.Definition, or a DataImage spec (its fields other than the definition's are ignored)")
	fs.StringVar(&c.Root, "root", "/data", "the mounted build volume: the instance is built under it")
	fs.StringVar(&c.BackupRoot, "backup-root", "/backups", "the directory the definition's backup and script paths are relative to (a relative path is resolved against the working directory)")
	fs.StringVar(&c.RuntimeDir, "runtime-dir", "", "the server's runtime directory (socket, log) during the build; empty: a fresh one under /run or the temporary directory, removed at the end")
	fs.StringVar(&c.RunAs, "run-as", "", "the OS user the database server runs as when the builder runs as root (empty: the engine's, postgres or mysql)")
	lifetime := fs.String("default-lifetime", "0", "lifetime of an image whose definition gives none: 0 (never) or <n>s, <n>m, <n>h")
	fs.StringVar(&c.Output, "output", OutputJSON, "progress format: json (events on stdout) or text (for people, on stderr)")
	fs.StringVar(&c.TerminationLog, "termination-log", DefaultTerminationLog, "file the outcome is written to at the end (empty: none)")
	fs.BoolVar(&c.Verbose, "verbose", false, "log the builder's steps and, with text output, the engine's log lines")
	fs.Int64Var(&c.MaxArchiveMembers, "max-archive-members", 0, "most files, directories and links a base backup's archives may hold (0: "+strconv.Itoa(builder.DefaultMaxArchiveMembers)+"; negative: no limit); a restore also writes at most the size of --root's file system")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	fs.Visit(func(f *flag.Flag) { c.TerminationLogSet = c.TerminationLogSet || f.Name == "termination-log" })
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	// The backup root is resolved here, against the working directory of whoever runs the
	// command: a build's preparation takes absolute backup roots only (builder.Prepare).
	if c.BackupRoot != "" {
		abs, err := filepath.Abs(c.BackupRoot)
		if err != nil {
			return c, fmt.Errorf("--backup-root %q: %w", c.BackupRoot, err)
		}
		c.BackupRoot = abs
	}
	l, err := imagebuilder.ParseLifetime(*lifetime)
	if err != nil {
		return c, fmt.Errorf("--default-lifetime %q: %w", *lifetime, err)
	}
	c.DefaultLifetime = l
	switch {
	case c.DefinitionFile == "" && c.DefinitionJSON == "":
		return c, errors.New("--definition or --definition-json is required")
	case c.DefinitionFile != "" && c.DefinitionJSON != "":
		return c, errors.New("--definition and --definition-json exclude each other")
	case c.Root == "":
		return c, errors.New("--root is required")
	case c.Output != OutputJSON && c.Output != OutputText:
		return c, fmt.Errorf("--output %q: want json or text", c.Output)
	}
	return c, nil
}

// Main runs the command and returns its exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "dataimage-builder: %v (see --help)\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// A reader of stdout that goes away must not kill the build (and leave the server
	// running): with SIGPIPE handled, writes fail with EPIPE instead. Handled, not ignored, so
	// that the servers and tools the build runs get the default disposition.
	pipe := make(chan os.Signal, 1)
	signal.Notify(pipe, syscall.SIGPIPE)
	defer signal.Stop(pipe)
	level := slog.LevelWarn
	if c.Verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	var p progress
	if c.Output == OutputJSON {
		p = newJSONProgress(stdout, stderr)
	} else {
		p = newTextProgress(stderr, c.Verbose)
	}
	o := Run(ctx, c, p.event, log)
	p.finish(o)
	writeTerminationLog(c, o, log)
	if !o.OK {
		return 1
	}
	return 0
}
