package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dataimage/dataimage/local"
)

func (c *cli) imageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "image",
		Aliases: []string{"images"},
		Short:   "Build, list and delete data images",
		Long: `A data image is a frozen snapshot of a whole database instance, built from an image
definition: an empty instance, or one restored from backups. Clones start from images.`,
		Example: `  dataimage image build -f sales/image.yaml
  dataimage image list
  dataimage image get sales-2024 -o yaml
  dataimage image delete sales-2024
  dataimage image push sales-2024 --to s3://images/team
  dataimage image pull sales-2024 --from s3://images/team`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(c.imageBuildCmd(), c.imageListCmd(), c.imageGetCmd(), c.imageDeleteCmd(), c.imageCreateCmd(),
		c.imagePushCmd(), c.imagePullCmd())
	return cmd
}

func (c *cli) imageBuildCmd() *cobra.Command {
	var file, backupRoot string
	cmd := &cobra.Command{
		Use:   "build -f FILE",
		Short: "Build an image from an image definition",
		Long: `Build an image from an image definition (YAML): the daemon makes a fresh volume, initializes
or restores the database instance into it (backup paths are relative to the backup root), runs
the definition's scripts, stops the server cleanly and freezes the volume as the image.

Progress goes to stderr: on a terminal a bar redrawn in place, otherwise a line per step and a
line every few seconds. The engine's log is shown with -v. At the end the image's summary goes
to stdout (the whole image with -o json or -o yaml).

An image definition:

  name: sales-2024
  engine: postgres            # postgres, mysql or mariadb
  version: "15"
  sourceType: backup          # or empty
  backups:
    - path: base.tar          # pg_basebackup -Ft: base.tar, then pg_wal.tar
    - path: pg_wal.tar
  tags: [sales, nightly]
  lifetime: "0"               # never expires; or 72h, 30m, ...`,
		Example: `  # Backups next to the definition
  dataimage image build -f /backups/sales/image.yaml

  # Backups elsewhere
  dataimage image build -f image.yaml --backup-root /mnt/backups/sales

  # An empty PostgreSQL 15 instance
  printf 'name: scratch\nengine: postgres\nversion: "15"\nsourceType: empty\n' > scratch.yaml
  dataimage image build -f scratch.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag(cmd, "file"); err != nil {
				return err
			}
			return c.buildImage(cmd, file, backupRoot)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the image definition, a YAML file (required)")
	cmd.Flags().StringVar(&backupRoot, "backup-root", "", "directory the definition's backup and script paths are relative to (default: the definition's directory)")
	return cmd
}

func (c *cli) buildImage(cmd *cobra.Command, file, backupRoot string) error {
	abs, err := filepath.Abs(file)
	if err != nil {
		return fmt.Errorf("image definition %s: %w", file, err)
	}
	def, err := os.ReadFile(abs)
	if err != nil {
		return fmt.Errorf("read image definition: %w", err)
	}
	if backupRoot == "" {
		backupRoot = filepath.Dir(abs)
	}
	if backupRoot, err = filepath.Abs(backupRoot); err != nil {
		return fmt.Errorf("backup root %s: %w", backupRoot, err)
	}
	svc, err := c.service(cmd)
	if err != nil {
		return err
	}
	tty, width := c.env.terminal(c.env.stderr)
	p := newProgress(c.env.stderr, tty, width, c.verbose > 0, c.env.now)
	start := c.env.now()
	img, err := svc.BuildImage(cmd.Context(), local.BuildRequest{Definition: def, DefinitionPath: abs, BackupRoot: backupRoot}, p.event)
	p.finish()
	if err != nil {
		// The daemon's definition errors name the file already.
		var le *local.Error
		if errors.As(err, &le) && strings.Contains(le.Message, abs) {
			return err
		}
		return fmt.Errorf("build image from %s: %w", file, err)
	}
	if img.BuildSeconds <= 0 {
		img.BuildSeconds = c.env.now().Sub(start).Seconds()
	}
	return c.emit(img, func(w io.Writer) error { return c.view().built(w, img) })
}

// built writes a build's summary.
func (v view) built(w io.Writer, im *local.Image) error {
	fmt.Fprintf(w, "Image %s built in %s.\n", im.Name, formatSeconds(im.BuildSeconds))
	if err := v.image(w, im); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nMake a clone: dataimage clone create --image %s\n", im.Name)
	return err
}

func (c *cli) imageListCmd() *cobra.Command {
	var rf remoteFlags
	var inRegistry bool
	cmd := &cobra.Command{
		Use:     "list [--remote [--from REGISTRY]]",
		Aliases: []string{"ls"},
		Short:   "List the images (here, or in a registry)",
		Long: `List the images, by name: engine and version, volume size, the bytes the image's data holds
in the pool, its clones, when it was built and when it expires.

With --remote, list a registry's images instead: the names that point at each, its digest, its
own name, engine and version, size, the bytes its objects take in the registry, and when it was
made. ` + registryHelp,
		Example: `  dataimage image list
  dataimage image list -o json
  dataimage image list --remote --from s3://images/team`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if inRegistry {
				return c.remoteList(cmd, rf)
			}
			for _, f := range []string{"from", "endpoint", "region", "ca-file", "path-style"} {
				if cmd.Flags().Changed(f) {
					return usagef("%s: --%s needs --remote", cmd.CommandPath(), f)
				}
			}
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			images, err := svc.Images(cmd.Context())
			if err != nil {
				return fmt.Errorf("list images: %w", err)
			}
			if images == nil {
				images = []local.Image{}
			}
			return c.emit(images, func(w io.Writer) error {
				if len(images) == 0 {
					fmt.Fprintln(c.env.stderr, "No images. Build one with: dataimage image build -f FILE")
					return nil
				}
				return c.view().images(w, images)
			})
		},
	}
	cmd.Flags().BoolVar(&inRegistry, "remote", false, "list a registry's images")
	rf.add(cmd.Flags(), "from")
	return cmd
}

func (c *cli) imageGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show an image",
		Long:  `Show an image in detail: its source, backups, tags, sizes, build time, lifetime and clones.`,
		Example: `  dataimage image get sales-2024
  dataimage image get sales-2024 -o yaml`,
		Args: oneName("image"),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			img, err := svc.Image(cmd.Context(), args[0])
			if err != nil {
				return failed(err, args[0], "get image %s", args[0])
			}
			return c.emit(img, func(w io.Writer) error { return c.view().image(w, img) })
		},
	}
}

func (c *cli) imageDeleteCmd() *cobra.Command {
	var rf remoteFlags
	var inRegistry bool
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete an image (here, or from a registry)",
		Long: `Delete an image and free the blocks only it holds. An image that still has clones is not
deleted: delete its clones first (images made from its clones' revisions are independent and do
not count).

With --remote, delete the image from a registry instead (NAME is a name there, or a digest):
the name goes, and the image with it unless another name points at it; then the objects no
image of the registry needs any more are collected. A collection waits for no push: while one
runs, the data stays until a later delete collects it. ` + registryHelp,
		Example: `  dataimage image delete sales-2024
  dataimage image delete sales-2023 --remote --from s3://images/team`,
		Args: oneName("image"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if inRegistry {
				return c.remoteDelete(cmd, args[0], rf)
			}
			for _, f := range []string{"from", "endpoint", "region", "ca-file", "path-style"} {
				if cmd.Flags().Changed(f) {
					return usagef("%s: --%s needs --remote", cmd.CommandPath(), f)
				}
			}
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			if err := svc.DeleteImage(cmd.Context(), args[0]); err != nil {
				return failed(err, args[0], "delete image %s", args[0])
			}
			fmt.Fprintf(c.env.stderr, "Image %s deleted.\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&inRegistry, "remote", false, "delete the image from a registry")
	rf.add(cmd.Flags(), "from")
	return cmd
}

func (c *cli) imageCreateCmd() *cobra.Command {
	var req local.ImageFromCloneRequest
	var lifetime lifetimeFlag
	cmd := &cobra.Command{
		Use:   "create --from-clone CLONE --name NAME",
		Short: "Make an image from a clone (a saved revision or its current state)",
		Long: `Make an image from one of a clone's saved revisions (--revision), or from the clone's current
state. The new image is independent of the clone and of the clone's image: it stays when they
are deleted. Like any image, it shares the blocks it has in common with them.`,
		Example: `  # Save a clone's state, then graduate it to an image of its own
  dataimage clone save sales-dev --revision masked
  dataimage image create --from-clone sales-dev --revision masked --name sales-masked --tags masked,qa

  # The clone as it is now, kept for a day
  dataimage image create --from-clone sales-dev --name sales-dev-snap --lifetime 24h`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range []string{"from-clone", "name"} {
				if err := requireFlag(cmd, f); err != nil {
					return err
				}
			}
			req.Lifetime = string(lifetime)
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			img, err := svc.ImageFromClone(cmd.Context(), req)
			if err != nil {
				return failed(err, req.Name, "create image %s from clone %s", req.Name, req.Clone)
			}
			from := "clone " + req.Clone
			if img.FromRevision != "" {
				from += ", revision " + img.FromRevision
			}
			return c.emit(img, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Image %s created from %s.\n", img.Name, from)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Clone, "from-clone", "", "the clone (required)")
	f.StringVar(&req.Revision, "revision", "", "the clone's saved revision (default: the clone's current state)")
	f.StringVar(&req.Name, "name", "", "the new image's name (required)")
	f.StringSliceVar(&req.Tags, "tags", nil, "the new image's tags, comma-separated")
	f.Var(&lifetime, "lifetime", `how long the image lives: "0" for ever, or <n>s, <n>m, <n>h (default: the daemon's image lifetime)`)
	return cmd
}
