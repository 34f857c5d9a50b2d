// Package app is the dataimage command: data images built from database backups and writable
// clones of them, served by a daemon on this machine (package local). Every verb
// but `daemon` talks to the daemon of the data home, starting it when it is not running.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dataimage/dataimage/imagebuilder"
	cmdcli "github.com/dataimage/dataimage/internal/cli"
	"github.com/dataimage/dataimage/local"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the command failed (or pool check found problems)
	exitUsage = 2 // the command was called wrongly
)

// Execute runs the dataimage command line args (without the program name), writing output to
// stdout and messages to stderr, and returns the exit status: 0, 1 when the command failed, 2
// when it was called wrongly. SIGINT and SIGTERM cancel the running command (and stop a
// foreground daemon cleanly).
func Execute(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return execute(ctx, args, newEnv(stdout, stderr))
}

// env is what the command reaches outside itself; tests replace parts of it.
type env struct {
	stdout, stderr io.Writer
	// getenv reads the environment (DATAIMAGE_HOME).
	getenv func(string) string
	// connect reaches the daemon of home, starting it with daemonArgs (the daemon flags given
	// on the command line) when it is not running.
	connect func(ctx context.Context, home string, daemonArgs []string) (client, error)
	// now is the clock; loc the time zone times are shown in.
	now func() time.Time
	loc *time.Location
	// terminal reports whether w is a terminal, and its width in columns.
	terminal func(w io.Writer) (tty bool, width int)
}

func newEnv(stdout, stderr io.Writer) *env {
	return &env{
		stdout: stdout,
		stderr: stderr,
		getenv: os.Getenv,
		connect: func(ctx context.Context, home string, daemonArgs []string) (client, error) {
			return connectDaemon(ctx, home, daemonArgs, stderr)
		},
		now:      time.Now,
		loc:      time.Local,
		terminal: terminal,
	}
}

// cli is one run of the command: its environment and the global flags.
type cli struct {
	env *env
	// Global flags.
	home      string
	output    string
	verbose   int
	logFormat string
	// daemon holds the daemon flags: local flags of `daemon`, hidden flags of every other
	// command (forwarded to a daemon that command starts).
	daemon daemonOptions
	// client is the daemon's client once connected, closed when the command ends.
	client client
}

// client is a connection to the daemon (*local.Client).
type client interface {
	local.Service
	Close() error
}

// homeEnv is the environment variable that names the data home.
const homeEnv = "DATAIMAGE_HOME"

func execute(ctx context.Context, args []string, e *env) int {
	c := &cli{env: e}
	root := c.newRoot()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if c.client != nil {
		if cerr := c.client.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close the connection to the daemon: %w", cerr)
		}
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(e.stderr, "dataimage: %v\n", err)
	if errors.Is(err, errUsage) {
		fmt.Fprintf(e.stderr, "See '%s --help'.\n", cmd.CommandPath())
		return exitUsage
	}
	return exitError
}

func (c *cli) newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "dataimage",
		Short: "Data images from database backups, and writable clones of them in seconds",
		Long: `dataimage turns database backups into data images (frozen snapshots of a whole database
instance) and serves writable clones of them, each a database server of its own, on this machine.

Images and clones live in a copy-on-write pool under the data home (--home). A clone shares the
image's blocks and stores only what it changes, so making one takes the same second or two
whatever the image's size, and a hundred clones of a 100 GiB image take little more than 100 GiB.

A daemon owns the pool and runs the clones' servers. Every command but 'daemon' talks to the
daemon of --home and starts it in the background when it is not running, passing it the daemon
flags given on the command line (see 'dataimage daemon --help'). Sizes take Kubernetes units:
512Mi, 64Gi, 1Ti (powers of 1024) or 500M, 1T (powers of 1000).`,
		Example: `  # Build an image from a definition, then make a clone and connect to it
  dataimage image build -f sales/image.yaml
  psql "$(dataimage clone create --image sales-2024)"

  # What is there, and how much room it takes
  dataimage image list
  dataimage clone list -o json
  dataimage pool status`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              cobra.ArbitraryArgs,
		RunE:              groupRun,
		PersistentPreRunE: c.checkGlobals,
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetOut(c.env.stdout)
	root.SetErr(c.env.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })

	home := c.env.getenv(homeEnv)
	if home == "" {
		home = local.DefaultHome
	}
	pf := root.PersistentFlags()
	pf.StringVar(&c.home, "home", home, "the data home: pool, state and sockets (env "+homeEnv+")")
	pf.StringVarP(&c.output, "output", "o", "table", "output format: table, json or yaml")
	pf.CountVarP(&c.verbose, "verbose", "v", "more output: the engine's log during builds, debug logs")
	pf.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	c.daemon.addFlags(pf, true)

	root.AddCommand(c.daemonCmd(), c.dataPlaneCmd(), c.fuseHolderCmd(), c.imageCmd(), c.cloneCmd(), c.poolCmd())
	return root
}

// checkGlobals validates the global flags before any command runs.
func (c *cli) checkGlobals(*cobra.Command, []string) error {
	switch c.output {
	case "table", "json", "yaml":
	default:
		return usagef("--output %q: want table, json or yaml", c.output)
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return usagef("--log-format %q: want text or json", c.logFormat)
	}
	if c.home == "" {
		return usagef("--home is empty")
	}
	abs, err := filepath.Abs(c.home)
	if err != nil {
		return fmt.Errorf("--home %s: %w", c.home, err)
	}
	c.home = abs
	return nil
}

// logger logs to stderr in the chosen format: info, or debug with -v.
func (c *cli) logger() *slog.Logger {
	return cmdcli.NewLogger(c.env.stderr, c.logFormat, c.verbose)
}

// service connects to the daemon, starting it with the daemon flags given to cmd.
func (c *cli) service(cmd *cobra.Command) (local.Service, error) {
	if c.client == nil {
		cl, err := c.env.connect(cmd.Context(), c.home, c.daemon.forward(cmd))
		if err != nil {
			return nil, err
		}
		c.client = cl
	}
	return c.client, nil
}

// connectDaemon is env.connect: local.Connect, starting this executable as the daemon (and
// saying so on stderr, as the start can take a while: the daemon restarts the clones first).
func connectDaemon(ctx context.Context, home string, daemonArgs []string, stderr io.Writer) (client, error) {
	cl, err := local.Connect(ctx, home, local.ConnectOptions{})
	if err == nil {
		return cl, nil
	}
	if !errors.Is(err, local.ErrUnavailable) {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the dataimage executable to start the daemon: %w", err)
	}
	fmt.Fprintf(stderr, "Starting the dataimage daemon of %s (log: %s)...\n", home, local.LogPath(home))
	cl, err = local.Connect(ctx, home, local.ConnectOptions{
		Start:      true,
		Executable: exe,
		DaemonArgs: append([]string{"daemon", "--home", home}, daemonArgs...),
	})
	if err != nil {
		return nil, err
	}
	return cl, nil
}

// groupRun runs a command that only groups others: help without arguments, a usage error for
// an unknown subcommand.
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return usagef("%s", msg)
}

// noArgs refuses positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), strings.Join(args, " "))
	}
	return nil
}

// oneName wants exactly one argument, the name of a what.
func oneName(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return usagef("%s needs the %s's name", cmd.CommandPath(), what)
		case len(args) > 1:
			return usagef("%s takes one %s name, got %d arguments: %q", cmd.CommandPath(), what, len(args), strings.Join(args, " "))
		case args[0] == "":
			return usagef("%s: the %s's name is empty", cmd.CommandPath(), what)
		}
		return nil
	}
}

// requireFlag is a usage error when flag name was not given a non-empty value.
func requireFlag(cmd *cobra.Command, name string) error {
	f := cmd.Flags().Lookup(name)
	if f == nil || !f.Changed || f.Value.String() == "" {
		return usagef("%s: --%s is required", cmd.CommandPath(), name)
	}
	return nil
}

// lifetimeFlag is a lifetime-valued flag ("0" or <n>s|m|h), checked when parsed.
type lifetimeFlag string

func (f *lifetimeFlag) Set(s string) error {
	if _, err := imagebuilder.ParseLifetime(s); err != nil {
		return err
	}
	*f = lifetimeFlag(s)
	return nil
}

func (f *lifetimeFlag) String() string { return string(*f) }
func (f *lifetimeFlag) Type() string   { return "lifetime" }

var _ pflag.Value = (*lifetimeFlag)(nil)
