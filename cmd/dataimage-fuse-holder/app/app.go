// Package app is the dataimage-fuse-holder command: flags into a Config, then holder.Run.
package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/dataimage/dataimage/blockstore/export/holder"
	"github.com/dataimage/dataimage/internal/cli"
)

// Version is the holder's version (set at link time with -X).
var Version = "dev"

// Config is what the flags say.
type Config struct {
	// Socket is where the holder listens.
	Socket string
	Log    cli.LogFlags
}

func parse(args []string, out io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("dataimage-fuse-holder", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: dataimage-fuse-holder [flags]\n\n"+
			"Keeps a copy of the /dev/fuse connection of each of the node's exports (sent by the process\n"+
			"that serves them over --socket), so that the exports survive that process's death: their I/O\n"+
			"waits in the kernel until the next process takes them over. It holds them in memory only:\n"+
			"when it exits, the exports whose server is not running at that moment end (I/O errors), and\n"+
			"the servers that run put theirs into the next holder. Run it apart from the servers, and\n"+
			"restart it only while they run. It must run as the servers' user (or root).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Socket, "socket", holder.DefaultSocket, "the Unix socket to listen on (made mode 0600; a stale one is replaced)")
	c.Log.Register(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	case !filepath.IsAbs(c.Socket):
		return c, fmt.Errorf("--socket %q: want an absolute path", c.Socket)
	}
	return c, c.Log.Check()
}

// Main runs the command until SIGTERM or SIGINT and returns its exit code.
func Main(args []string, stderr io.Writer) int {
	c, err := parse(args, stderr)
	return cli.Main("dataimage-fuse-holder", stderr, err, func(ctx context.Context) error {
		log := c.Log.Logger(stderr)
		log.Info("starting", "version", Version, "socket", c.Socket)
		l, err := holder.Listen(c.Socket)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", c.Socket, err)
		}
		return holder.Run(ctx, l, log)
	})
}
