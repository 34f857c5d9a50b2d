package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/internal/units"
	"github.com/dataimage/dataimage/local"
)

// daemonOptions are the daemon's flags.
type daemonOptions struct {
	poolSize      units.SizeFlag
	preallocate   bool
	volumeSize    units.SizeFlag
	listenAddress string
	backupRoot    string
	imageLifetime lifetimeFlag
	cloneLifetime lifetimeFlag
	reapInterval  time.Duration
	maxMembers    int64
	remote        remoteFlags // the default registry
}

// daemonFlagNames are the daemon's flags, in the order they are forwarded.
var daemonFlagNames = []string{"pool-size", "preallocate", "volume-size", "listen-address", "backup-root", "image-lifetime", "clone-lifetime", "reap-interval", "max-archive-members",
	"remote", "remote-endpoint", "remote-region", "remote-ca-file", "remote-path-style"}

// addFlags defines the daemon's flags in fs, hidden ones for the commands that only forward them.
func (d *daemonOptions) addFlags(fs *pflag.FlagSet, hidden bool) {
	fs.Var(&d.poolSize, "pool-size", "size of the pool file made at the first start, e.g. 64Gi (default "+units.FormatSize(local.DefaultPoolSize)+"; sparse unless --preallocate)")
	fs.BoolVar(&d.preallocate, "preallocate", false, "make the pool file thick (fallocated) at the first start: faster first writes")
	fs.Var(&d.volumeSize, "volume-size", "size of the thin volume an image is built in, and so of its clones (default "+units.FormatSize(local.DefaultVolumeSize)+")")
	fs.StringVar(&d.listenAddress, "listen-address", local.DefaultListenAddress, "IP address the clones' servers listen on")
	fs.StringVar(&d.backupRoot, "backup-root", "", "backup root of builds that name none (image build sends the definition's directory)")
	fs.Var(&d.imageLifetime, "image-lifetime", `lifetime of images whose definition names none: "0" (never, the default) or <n>s, <n>m, <n>h`)
	fs.Var(&d.cloneLifetime, "clone-lifetime", `lifetime of clones made without --lifetime: "0" (never, the default) or <n>s, <n>m, <n>h`)
	fs.DurationVar(&d.reapInterval, "reap-interval", local.DefaultReapInterval, "how often expired clones and images are deleted")
	fs.Int64Var(&d.maxMembers, "max-archive-members", 0, fmt.Sprintf("most files, directories and links a base backup's archives may hold (0: %d; negative: no limit); a build also writes at most --volume-size", builder.DefaultMaxArchiveMembers))
	fs.StringVar(&d.remote.url, "remote", "", "the default registry of image push and pull: s3://bucket/prefix or file:///dir")
	fs.StringVar(&d.remote.endpoint, "remote-endpoint", "", "the default registry's S3 server, e.g. https://minio.example:9000")
	fs.StringVar(&d.remote.region, "remote-region", "", "the default registry's S3 region")
	fs.StringVar(&d.remote.caFile, "remote-ca-file", "", "PEM bundle of the certificate authorities the default registry's S3 server is checked against")
	fs.BoolVar(&d.remote.pathStyle, "remote-path-style", false, "address the default registry's bucket in the URL's path")
	if hidden {
		for _, name := range daemonFlagNames {
			if err := fs.MarkHidden(name); err != nil {
				panic(err) // unreachable: every name was just defined
			}
		}
	}
}

// forward returns the daemon flags given on cmd's command line, for a daemon that cmd starts.
// Only inherited flags count: `image build --backup-root` is the build's own.
func (d *daemonOptions) forward(cmd *cobra.Command) []string {
	var args []string
	inherited := cmd.InheritedFlags()
	for _, name := range daemonFlagNames {
		if f := inherited.Lookup(name); f != nil && f.Changed {
			args = append(args, "--"+name+"="+f.Value.String())
		}
	}
	return args
}

// daemonConfig is the daemon's configuration: config and the default registry, whose
// credentials (and the region and endpoint its flags do not give) come from the daemon's AWS
// environment.
func (c *cli) daemonConfig() (local.Config, error) {
	cfg := c.config()
	r, err := c.remote(c.daemon.remote)
	if err != nil {
		return cfg, fmt.Errorf("the default registry: %w", err)
	}
	cfg.Remote = r
	return cfg, nil
}

// config is the configuration of the daemon and the data plane. The daemon starts the home's
// data plane, when none runs, as `dataimage dataplane` with the pool's flags of this command
// line.
func (c *cli) config() local.Config {
	d := &c.daemon
	dpArgs := []string{"dataplane", "--home", c.home, "--log-format", c.logFormat, "--preallocate=" + strconv.FormatBool(d.preallocate)}
	if d.poolSize != 0 {
		dpArgs = append(dpArgs, "--pool-size="+d.poolSize.String())
	}
	if c.verbose > 0 {
		dpArgs = append(dpArgs, "-v")
	}
	return local.Config{
		DataPlane:            local.DataPlaneCommand{Args: dpArgs},
		Home:                 c.home,
		PoolSize:             int64(d.poolSize),
		Preallocate:          d.preallocate,
		BackupRoot:           d.backupRoot,
		ListenAddress:        d.listenAddress,
		DefaultImageLifetime: string(d.imageLifetime),
		DefaultCloneLifetime: string(d.cloneLifetime),
		ReapInterval:         d.reapInterval,
		VolumeSize:           int64(d.volumeSize),
		MaxArchiveMembers:    d.maxMembers,
		Logger:               c.logger(),
	}
}

func (c *cli) daemonCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon in the foreground; stop it; show its status",
		Long: `Run the daemon of the data home in the foreground, logging to stderr, until SIGINT or SIGTERM
stops it cleanly (the clones' servers stop too, and start again with the next daemon).

The daemon owns the pool under --home (made at the first start, --pool-size), builds images,
serves each clone's volume to the kernel, mounts it and runs the clone's database server. Other
commands start a daemon in the background when none is running, with the daemon flags given on
their own command line (its output goes to daemon.log in the home). Only one daemon runs per
home. As root, the database servers run as their own OS users (postgres, mysql), so the home and
the backups must be reachable by them.`,
		Example: `  # In the foreground, with a 200 GiB pool made at the first start
  dataimage daemon --home /srv/dataimage --pool-size 200Gi

  # Clones expire after 8 hours unless made with --lifetime
  dataimage daemon --clone-lifetime 8h

  dataimage daemon status
  dataimage daemon stop`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.daemonConfig()
			if err != nil {
				return err
			}
			if err := local.RunDaemon(cmd.Context(), cfg); err != nil {
				return fmt.Errorf("daemon of %s: %w", c.home, err)
			}
			return nil
		},
	}
	c.daemon.addFlags(cmd.Flags(), false)
	cmd.AddCommand(c.daemonStopCmd(), c.daemonStatusCmd())
	return cmd
}

func (c *cli) dataPlaneCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dataplane",
		Short: "Run the data plane (the pool and the clones' I/O) in the foreground",
		Long: `Run the data plane of the data home in the foreground, logging to stderr, until SIGINT or SIGTERM.

The data plane is the process that owns the pool under --home (made at the first start,
--pool-size) and serves the volumes of images and clones to the kernel as block devices; the
daemon mounts them and runs the servers. It is a process of its own so that the daemon can be
restarted, upgraded or killed without touching the clones' I/O: their servers go on reading and
writing, and the next daemon carries on with them. The daemon starts it in the background when
none runs (its output goes to dataplane.log in the home) and stops it when the daemon stops
cleanly; run it by hand only to watch it. Only one data plane runs per home.`,
		Example: `  dataimage dataplane --home /srv/dataimage --pool-size 200Gi`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := dataplane.BecomeIOFlusher(); err != nil {
				c.logger().Warn("cannot make the data plane an I/O flusher", "err", err)
			}
			if err := local.RunDataPlane(cmd.Context(), c.config()); err != nil {
				return fmt.Errorf("data plane of %s: %w", c.home, err)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.Var(&c.daemon.poolSize, "pool-size", "size of the pool file made at the first start, e.g. 64Gi (default "+units.FormatSize(local.DefaultPoolSize)+"; sparse unless --preallocate)")
	fs.BoolVar(&c.daemon.preallocate, "preallocate", false, "make the pool file thick (fallocated) at the first start: faster first writes")
	return cmd
}

func (c *cli) daemonStopCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop the running daemon",
		Long: `Ask the daemon of the data home to stop (SIGTERM) and wait until it has: it stops the clones'
servers cleanly and closes the pool. The clones start again with the next daemon.`,
		Example: `  dataimage daemon stop
  dataimage daemon stop --home /srv/dataimage --timeout 5m`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pid, err := daemonPID(c.home)
			if err != nil {
				return err
			}
			if err := unix.Kill(pid, unix.SIGTERM); err != nil {
				return fmt.Errorf("stop the daemon of %s (pid %d): %w", c.home, pid, err)
			}
			fmt.Fprintf(c.env.stderr, "Stopping the daemon of %s (pid %d)...\n", c.home, pid)
			if err := waitExit(cmd.Context(), pid, timeout); err != nil {
				return fmt.Errorf("stop the daemon of %s (pid %d): %w", c.home, pid, err)
			}
			fmt.Fprintf(c.env.stderr, "Daemon stopped.\n")
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the daemon to stop")
	return cmd
}

// daemonStatus is what daemon status shows.
type daemonStatus struct {
	Home    string            `json:"home"`
	Running bool              `json:"running"`
	PID     int               `json:"pid,omitempty"`
	Socket  string            `json:"socket"`
	Log     string            `json:"log"`
	Pool    *local.PoolStatus `json:"pool,omitempty"`
}

func (c *cli) daemonStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show whether the daemon runs, and its pool's use (exit status 1 when it does not run)",
		Long: `Show whether the daemon of the data home runs, its process ID, socket and log, and its pool's
use. It does not start a daemon; the exit status is 1 when none runs.`,
		Example: `  dataimage daemon status
  dataimage daemon status -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st := daemonStatus{Home: c.home, Socket: local.SocketPath(c.home), Log: local.LogPath(c.home)}
			pid, err := daemonPID(c.home)
			if err == nil {
				st.Running, st.PID = true, pid
				cl, cerr := local.Connect(cmd.Context(), c.home, local.ConnectOptions{})
				if cerr == nil {
					st.Pool, cerr = cl.PoolStatus(cmd.Context())
					cl.Close()
				}
				if cerr != nil {
					return fmt.Errorf("daemon of %s (pid %d): %w", c.home, pid, cerr)
				}
			} else if !errors.Is(err, errDaemonNotRunning) {
				return err
			}
			if err := c.emit(st, func(w io.Writer) error { return c.view().daemon(w, &st) }); err != nil {
				return err
			}
			if !st.Running {
				return fmt.Errorf("%w (home %s)", errDaemonNotRunning, c.home)
			}
			return nil
		},
	}
}

// daemon writes the daemon's status.
func (v view) daemon(w io.Writer, st *daemonStatus) error {
	t := newTable(w)
	state := "not running"
	if st.Running {
		state = "running, pid " + strconv.Itoa(st.PID)
	}
	fmt.Fprintf(t, "Daemon:\t%s\n", state)
	fmt.Fprintf(t, "Home:\t%s\n", st.Home)
	fmt.Fprintf(t, "Socket:\t%s\n", st.Socket)
	fmt.Fprintf(t, "Log:\t%s\n", st.Log)
	if st.Pool != nil {
		poolRows(t, st.Pool)
	}
	return t.Flush()
}

// daemonPID returns the process ID of the daemon serving home's socket, as the kernel reports the
// socket's owner (SO_PEERCRED): no pid file to go stale. It fails with errDaemonNotRunning when
// nothing answers on the socket.
func daemonPID(home string) (int, error) {
	sock := local.SocketPath(home)
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) {
			return 0, fmt.Errorf("%w (home %s)", errDaemonNotRunning, home)
		}
		return 0, fmt.Errorf("reach the daemon of %s: %w", home, err)
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("daemon socket %s: %w", sock, err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("daemon socket %s: %w", sock, err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("daemon socket %s: peer credentials: %w", sock, credErr)
	}
	return int(cred.Pid), nil
}

// waitExit waits until process pid has exited, for at most timeout.
func waitExit(ctx context.Context, pid int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if exited(pid) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still running after %v: %w", timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// exited reports whether process pid is gone, or a zombie waiting for its parent to reap it (a
// daemon started by this process, e.g. in tests).
func exited(pid int) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// "pid (comm) S ...": the state follows the last ')', as comm may hold one.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}
