package app

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/dataimage/dataimage/local"
)

func (c *cli) cloneCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "clone",
		Aliases: []string{"clones"},
		Short:   "Make, list, reset and delete clones",
		Long: `A clone (a data container) is a writable copy of an image with a database server of its own,
listening on a port of this machine. Making one takes a second or two whatever the image's size:
the clone shares the image's blocks and stores only what it changes. Clones keep running after
the command returns, and come back when the daemon restarts.`,
		Example: `  psql "$(dataimage clone create --image sales-2024 --name sales-dev)"
  dataimage clone list
  dataimage clone save sales-dev --revision before-migration
  dataimage clone reset sales-dev --to before-migration
  dataimage clone delete sales-dev`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(c.cloneCreateCmd(), c.cloneListCmd(), c.cloneGetCmd(), c.cloneDeleteCmd(),
		c.cloneStopCmd(), c.cloneStartCmd(), c.cloneResetCmd(), c.cloneSaveCmd())
	return cmd
}

func (c *cli) cloneCreateCmd() *cobra.Command {
	var req local.CloneRequest
	var lifetime lifetimeFlag
	cmd := &cobra.Command{
		Use:   "create --image IMAGE",
		Short: "Make a clone of an image and start its server",
		Long: `Make a clone of an image and start its database server. The clone's connection string goes
to stdout (the whole clone with -o json or -o yaml), so that it can be used at once; what
happened goes to stderr.`,
		Example: `  # Connect at once
  psql "$(dataimage clone create --image sales-2024)"

  # A named clone on a fixed port, kept for two hours
  dataimage clone create --image sales-2024 --name sales-dev --port 55432 --lifetime 2h`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag(cmd, "image"); err != nil {
				return err
			}
			if req.Port < 0 || req.Port > 65535 {
				return usagef("%s: --port %d: want 1 to 65535 (or 0 for a free port)", cmd.CommandPath(), req.Port)
			}
			req.Lifetime = string(lifetime)
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			start := c.env.now()
			cl, err := svc.CreateClone(cmd.Context(), req)
			if err != nil {
				return failed(err, req.Image, "create a clone of image %s", req.Image)
			}
			if cl.CreateSeconds <= 0 {
				cl.CreateSeconds = c.env.now().Sub(start).Seconds()
			}
			return c.emit(cl, func(w io.Writer) error {
				fmt.Fprintf(c.env.stderr, "Clone %s of image %s is %s on port %d (created in %s).\n",
					cl.Name, cl.Image, cl.State, cl.Port, formatSeconds(cl.CreateSeconds))
				_, err := fmt.Fprintln(w, cl.Connection)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Image, "image", "", "the image to clone (required)")
	f.StringVar(&req.Name, "name", "", "the clone's name (default: the image's name and a random suffix)")
	f.Var(&lifetime, "lifetime", `how long the clone lives: "0" for ever, or <n>s, <n>m, <n>h (default: the daemon's clone lifetime)`)
	f.IntVar(&req.Port, "port", 0, "the server's TCP port (default: a free one)")
	return cmd
}

func (c *cli) cloneListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the clones",
		Long:    `List the clones, by name: image, state, port, the bytes their writes added to the pool, age and expiry.`,
		Example: `  dataimage clone list
  dataimage clone list -o yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			clones, err := svc.Clones(cmd.Context())
			if err != nil {
				return fmt.Errorf("list clones: %w", err)
			}
			if clones == nil {
				clones = []local.Clone{}
			}
			return c.emit(clones, func(w io.Writer) error {
				if len(clones) == 0 {
					fmt.Fprintln(c.env.stderr, "No clones. Make one with: dataimage clone create --image IMAGE")
					return nil
				}
				return c.view().clones(w, clones)
			})
		},
	}
}

func (c *cli) cloneGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a clone, with its connection string",
		Long:  `Show a clone in detail: state, connection string (with the password), sizes, lifetime and saved revisions.`,
		Example: `  dataimage clone get sales-dev
  dataimage clone get sales-dev -o json`,
		Args: oneName("clone"),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			cl, err := svc.Clone(cmd.Context(), args[0])
			if err != nil {
				return failed(err, args[0], "get clone %s", args[0])
			}
			return c.emit(cl, func(w io.Writer) error { return c.view().clone(w, cl) })
		},
	}
}

func (c *cli) cloneDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Stop a clone's server and delete the clone",
		Long:    `Stop a clone's server and delete the clone with its saved revisions, freeing what its writes added.`,
		Example: `  dataimage clone delete sales-dev`,
		Args:    oneName("clone"),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			if err := svc.DeleteClone(cmd.Context(), args[0]); err != nil {
				return failed(err, args[0], "delete clone %s", args[0])
			}
			fmt.Fprintf(c.env.stderr, "Clone %s deleted.\n", args[0])
			return nil
		},
	}
}

// cloneOp is a verb that changes one clone and shows the result: stop, start, reset.
func (c *cli) cloneOp(cmd *cobra.Command, name, done string, op func(context.Context, local.Service) (*local.Clone, error)) error {
	svc, err := c.service(cmd)
	if err != nil {
		return err
	}
	start := c.env.now()
	cl, err := op(cmd.Context(), svc)
	if err != nil {
		return err
	}
	took := c.env.now().Sub(start).Seconds()
	return c.emit(cl, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "Clone %s %s in %s: %s.\n", name, done, formatSeconds(took), cl.State)
		return err
	})
}

func (c *cli) cloneStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "stop NAME",
		Short:   "Stop a clone's server; its data stays",
		Long:    `Stop a clone's server cleanly and release its volume. Its data stays; 'clone start' starts it again.`,
		Example: `  dataimage clone stop sales-dev`,
		Args:    oneName("clone"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.cloneOp(cmd, args[0], "stopped", func(ctx context.Context, svc local.Service) (*local.Clone, error) {
				cl, err := svc.StopClone(ctx, args[0])
				if err != nil {
					return nil, failed(err, args[0], "stop clone %s", args[0])
				}
				return cl, nil
			})
		},
	}
}

func (c *cli) cloneStartCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "start NAME",
		Short:   "Start a stopped clone's server",
		Long:    `Start a stopped (or failed) clone's server again, on its port if that is still free.`,
		Example: `  dataimage clone start sales-dev`,
		Args:    oneName("clone"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.cloneOp(cmd, args[0], "started", func(ctx context.Context, svc local.Service) (*local.Clone, error) {
				cl, err := svc.StartClone(ctx, args[0])
				if err != nil {
					return nil, failed(err, args[0], "start clone %s", args[0])
				}
				return cl, nil
			})
		},
	}
}

func (c *cli) cloneResetCmd() *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "reset NAME [--to REVISION|image]",
		Short: "Discard a clone's changes",
		Long: `Discard a clone's changes, in a second whatever their size: back to a saved revision (--to
REVISION), to the image (--to image), or by default to the last saved revision (the image when
there is none). The server restarts on the same port.`,
		Example: `  dataimage clone reset sales-dev
  dataimage clone reset sales-dev --to before-migration
  dataimage clone reset sales-dev --to image`,
		Args: oneName("clone"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("to") && to == "" {
				return usagef("%s: --to is empty: want a revision name or %q", cmd.CommandPath(), local.ResetToImage)
			}
			target := to
			if target == "" {
				target = "the last saved revision"
			}
			return c.cloneOp(cmd, args[0], "reset to "+target, func(ctx context.Context, svc local.Service) (*local.Clone, error) {
				cl, err := svc.ResetClone(ctx, args[0], to)
				if err != nil {
					return nil, failed(err, args[0], "reset clone %s", args[0])
				}
				return cl, nil
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", `a saved revision, or "image" (default: the last saved revision, or the image)`)
	return cmd
}

func (c *cli) cloneSaveCmd() *cobra.Command {
	var revision string
	cmd := &cobra.Command{
		Use:   "save NAME [--revision REVISION]",
		Short: "Save a clone's current state as a revision",
		Long:  `Save a clone's current state as a revision, to reset to later or to make an image from.`,
		Example: `  dataimage clone save sales-dev
  dataimage clone save sales-dev --revision before-migration`,
		Args: oneName("clone"),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			rev, err := svc.SaveClone(cmd.Context(), args[0], revision)
			if err != nil {
				return failed(err, args[0], "save clone %s", args[0])
			}
			return c.emit(rev, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Clone %s saved as revision %s.\n", args[0], rev.Name)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&revision, "revision", "", "the revision's name (default: rev-N)")
	return cmd
}
