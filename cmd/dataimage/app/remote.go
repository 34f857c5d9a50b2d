package app

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/internal/units"
	"github.com/dataimage/dataimage/local"
)

// remoteFlags say which registry a command uses and how to reach it. URL flag's name varies
// (--to for push, --from otherwise).
type remoteFlags struct {
	url, endpoint, region, caFile string
	pathStyle                     bool
}

const registryHelp = `A registry is a bucket of an S3 server (s3://bucket/prefix: AWS S3, MinIO, Ceph RGW, SeaweedFS,
...) or a directory (file:///mnt/nfs/images), holding images as export sets
(docs/export-sets.md). Without --to or --from, the daemon's default registry (daemon --remote) is
used. S3 credentials come from this command's environment as the AWS tools read them
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; else ~/.aws/credentials and
~/.aws/config, profile AWS_PROFILE), else from the daemon's; the region from --region,
AWS_REGION or the profile; the endpoint from --endpoint, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,
else the daemon's default.`

func (r *remoteFlags) add(fs *pflag.FlagSet, urlFlag string) {
	fs.StringVar(&r.url, urlFlag, "", "the registry: s3://bucket/prefix or file:///dir (default: the daemon's --remote)")
	fs.StringVar(&r.endpoint, "endpoint", "", "the S3 server, e.g. https://minio.example:9000 (default: AWS S3, or the daemon's)")
	fs.StringVar(&r.region, "region", "", "the S3 region")
	fs.StringVar(&r.caFile, "ca-file", "", "PEM bundle of the certificate authorities the S3 server's certificate is checked against")
	fs.BoolVar(&r.pathStyle, "path-style", false, "address the bucket in the URL's path (most S3-compatible servers want it)")
}

// remote returns the request's registry: the flags, then this command's AWS environment.
func (c *cli) remote(r remoteFlags) (local.Remote, error) {
	env, err := remote.LoadAWSEnv(c.env.getenv)
	if err != nil {
		return local.Remote{}, err
	}
	if r.url != "" {
		if _, err := remote.ParseURL(r.url); err != nil {
			return local.Remote{}, &usageError{err}
		}
	}
	return local.Remote{URL: r.url, Endpoint: firstSet(r.endpoint, env.Endpoint), Region: firstSet(r.region, env.Region),
		CAFile: r.caFile, PathStyle: r.pathStyle, Credentials: env.Credentials}, nil
}

// transfer runs a push or a pull: the registry from rf, the daemon, the progress on stderr.
func (c *cli) transfer(cmd *cobra.Command, rf remoteFlags, run func(svc local.Service, r local.Remote, progress func(wire.Event)) (*local.Image, error)) (*local.Image, error) {
	r, err := c.remote(rf)
	if err != nil {
		return nil, err
	}
	svc, err := c.service(cmd)
	if err != nil {
		return nil, err
	}
	tty, width := c.env.terminal(c.env.stderr)
	p := newProgress(c.env.stderr, tty, width, c.verbose > 0, c.env.now)
	img, err := run(svc, r, p.event)
	p.finish()
	return img, err
}

func firstSet(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (c *cli) imagePushCmd() *cobra.Command {
	var rf remoteFlags
	var whole bool
	cmd := &cobra.Command{
		Use:   "push NAME [--to REGISTRY]",
		Short: "Push an image into a registry (S3 or a directory)",
		Long: `Push an image into a registry under its name, so that other machines (and Kubernetes nodes) can
pull it. An image made from another one that was pushed or pulled before (a clone's revision made
into an image) is pushed incrementally: only the blocks that changed are read and uploaded.
Objects the registry holds already are not uploaded again, so an interrupted push resumes where
it stopped when run again. The image's digest, its identity in every registry, is shown at the
end and by 'image get'.

--whole pushes every chunk whole, referencing no data of the image's ancestors: use it for an
image that must not keep its parent's data alive in the registry (a masked image of an
unmasked one).

` + registryHelp,
		Example: `  dataimage image push sales-2024 --to s3://images/team --endpoint https://minio.example:9000 --path-style
  dataimage image push sales-2024 --to file:///mnt/nfs/images
  dataimage image push sales-masked --whole`,
		Args: oneName("image"),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := c.transfer(cmd, rf, func(svc local.Service, r local.Remote, progress func(wire.Event)) (*local.Image, error) {
				return svc.PushImage(cmd.Context(), local.PushRequest{Image: args[0], Remote: r, Whole: whole}, progress)
			})
			if err != nil {
				return failed(err, args[0], "push image %s", args[0])
			}
			return c.emit(img, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Image %s pushed: %s\n", img.Name, img.Digest)
				return err
			})
		},
	}
	rf.add(cmd.Flags(), "to")
	cmd.Flags().BoolVar(&whole, "whole", false, "write every chunk whole: reference no data of the image's ancestors")
	return cmd
}

func (c *cli) imagePullCmd() *cobra.Command {
	var rf remoteFlags
	var name string
	cmd := &cobra.Command{
		Use:   "pull REF [--from REGISTRY]",
		Short: "Pull an image from a registry (by name or sha256 digest)",
		Long: `Pull an image from a registry into the pool: REF is its name in the registry or its digest
(sha256:...). When the pool holds an image it was made from (its parent, or an earlier
ancestor), the pull starts from a clone of that one and downloads and writes only what differs,
so the two share their other blocks. Every object is verified against its digest; the image
appears only once it is complete, and a failed pull leaves nothing behind.

` + registryHelp,
		Example: `  dataimage image pull sales-2024 --from s3://images/team --endpoint https://minio.example:9000 --path-style
  dataimage image pull sha256:3f1c... --from file:///mnt/nfs/images --name sales-copy`,
		Args: oneName("image"),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := c.transfer(cmd, rf, func(svc local.Service, r local.Remote, progress func(wire.Event)) (*local.Image, error) {
				return svc.PullImage(cmd.Context(), local.PullRequest{Ref: args[0], Remote: r, Name: name}, progress)
			})
			if err != nil {
				return failed(err, args[0], "pull image %s", args[0])
			}
			return c.emit(img, func(w io.Writer) error {
				fmt.Fprintf(w, "Image %s pulled: %s\n", img.Name, img.Digest)
				return c.view().image(w, img)
			})
		},
	}
	rf.add(cmd.Flags(), "from")
	cmd.Flags().StringVar(&name, "name", "", "the local image's name (default: the image's own)")
	return cmd
}

// remoteList lists a registry's images (image list --remote).
func (c *cli) remoteList(cmd *cobra.Command, rf remoteFlags) error {
	r, err := c.remote(rf)
	if err != nil {
		return err
	}
	svc, err := c.service(cmd)
	if err != nil {
		return err
	}
	images, err := svc.RemoteImages(cmd.Context(), r)
	if err != nil {
		return fmt.Errorf("list the registry's images: %w", err)
	}
	if images == nil {
		images = []local.RemoteImage{}
	}
	return c.emit(images, func(w io.Writer) error {
		if len(images) == 0 {
			fmt.Fprintln(c.env.stderr, "No images in the registry. Push one with: dataimage image push NAME --to REGISTRY")
			return nil
		}
		return c.view().remoteImages(w, images)
	})
}

// remoteImages writes the table of a registry's images.
func (v view) remoteImages(w io.Writer, images []local.RemoteImage) error {
	t := newTable(w)
	fmt.Fprintln(t, "NAMES\tDIGEST\tIMAGE\tENGINE\tVERSION\tSIZE\tSTORED\tCREATED")
	for _, im := range images {
		short := im.Digest.Short()
		if im.Error != "" {
			fmt.Fprintf(t, "%s\t%s\t(unreadable: %s)\n", dash(strings.Join(im.Names, ",")), short, im.Error)
			continue
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(strings.Join(im.Names, ",")), short, im.Name, dash(string(im.Engine)),
			dash(im.Version), units.FormatBytes(im.Size), units.FormatBytes(im.StoredBytes), v.ago(im.Created))
	}
	return t.Flush()
}

// remoteDelete deletes an image from a registry (image delete --remote).
func (c *cli) remoteDelete(cmd *cobra.Command, ref string, rf remoteFlags) error {
	r, err := c.remote(rf)
	if err != nil {
		return err
	}
	svc, err := c.service(cmd)
	if err != nil {
		return err
	}
	res, err := svc.DeleteRemoteImage(cmd.Context(), ref, r)
	if err != nil {
		return failed(err, ref, "delete %s from the registry", ref)
	}
	return c.emit(res, func(w io.Writer) error {
		if !res.Deleted {
			fmt.Fprintf(w, "Name %s deleted from the registry; image %s stays under its other names.\n", ref, res.Digest)
			return nil
		}
		fmt.Fprintf(w, "Image %s deleted from the registry.\n", res.Digest)
		if res.GC != "" {
			_, err := fmt.Fprintf(w, "Its data stays until the next delete collects it: %s.\n", res.GC)
			return err
		}
		_, err := fmt.Fprintf(w, "Collected %d objects (%s) no image needs any more.\n", res.Collected, units.FormatBytes(res.CollectedBytes))
		return err
	})
}
