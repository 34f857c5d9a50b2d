// Command imagebench measures data images end to end on this machine and writes the "Data images"
// part of BENCHMARKS.md (make bench runs it after the block store report):
//
//  1. image build from a pg_basebackup tar vs plain `tar -x` of the same tar onto ext4 on a loop
//     device over a raw file;
//  2. pgbench TPS on a clone vs on the same data on ext4 over a raw loop file;
//  3. clone create -> accepting connections, for a small (empty) and a large image;
//  4. space: N clones each running the same pgbench transactions: pool growth vs the bytes the
//     transactions rewrote;
//  5. image build from a mariabackup stream (1 GiB of InnoDB data) vs mbstream -x + mariabackup
//     --prepare of the same stream onto ext4 on a raw loop file;
//  6. export sets: push and pull of an image against a real S3 server vs minio-go moving its raw
//     bytes, and the bytes and pool growth of incremental pushes and pulls (transfer.go runs
//     exportset/poolvol's BenchmarkTransfer).
//
// Everything runs against the real daemon code (local, in process) and the real
// PostgreSQL and MariaDB of this machine; the baselines use the same PostgreSQL, data and settings. Scratch
// files go in a temporary directory under -dir and are removed at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/postgres"
	"github.com/dataimage/dataimage/internal/atomicfile"
	"github.com/dataimage/dataimage/internal/units"
	"github.com/dataimage/dataimage/local"
)

// config is what the flags say.
type config struct {
	dir      string
	quick    bool
	write    bool
	out      string
	scale    int
	clients  int
	duration time.Duration
	rounds   int
	clones   int
	txns     int
	creates  int
	only     string
	// mariaSize is the InnoDB data of the mariabackup section's source.
	mariaSize int64
}

// dataPlaneArg and holderArg, as the first argument with a home as the second, make this
// program run that home's data plane (local.RunDataPlane) or FUSE holder (local.RunHolder)
// until SIGTERM: the bench's daemon starts them so, as the dataimage command starts
// `dataimage dataplane` and `dataimage fuse-holder`.
const (
	dataPlaneArg = "-run-dataplane"
	holderArg    = "-run-fuse-holder"
)

func main() {
	if len(os.Args) == 3 && (os.Args[1] == dataPlaneArg || os.Args[1] == holderArg) {
		run := local.RunDataPlane
		if os.Args[1] == holderArg {
			run = local.RunHolder
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := run(ctx, local.Config{Home: os.Args[2], Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "imagebench: %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	var c config
	flag.StringVar(&c.dir, "dir", "/var/tmp", "directory for scratch files (a temporary directory is made and removed in it); its disk is the one measured")
	flag.BoolVar(&c.quick, "quick", false, "smoke run of a few minutes: pgbench scale 5, 5 s runs, 5 clones")
	flag.BoolVar(&c.write, "write", false, "also write the report into -out (replacing its data-image part)")
	flag.StringVar(&c.out, "out", "BENCHMARKS.md", "file written with -write")
	flag.IntVar(&c.scale, "scale", 0, "pgbench scale of the large image (default 50: about 750 MiB; 5 with -quick)")
	flag.IntVar(&c.clients, "clients", 4, "pgbench clients of the TPS comparison")
	flag.DurationVar(&c.duration, "duration", 0, "duration of each pgbench run of the TPS comparison (default 30s, 5s with -quick)")
	flag.IntVar(&c.rounds, "rounds", 0, "rounds of alternating baseline and clone pgbench runs (default 3, 1 with -quick)")
	flag.IntVar(&c.clones, "clones", 0, "clones of the space measurement (default 20, 5 with -quick)")
	flag.IntVar(&c.txns, "transactions", 0, "pgbench transactions each clone of the space measurement runs (default 2000, 200 with -quick)")
	flag.IntVar(&c.creates, "creates", 0, "clones created per image for the creation time (default 5, 3 with -quick)")
	flag.StringVar(&c.only, "only", "", "comma-separated sections: build, tps, create, space, mariabackup, transfer (default all; a partial report cannot be written)")
	var mariaSize units.SizeFlag
	flag.Var(&mariaSize, "mariadb-size", "InnoDB data of the mariabackup section's source (default 1Gi, 64Mi with -quick)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: imagebench [flags]\n\nMeasures data image builds, clones and pgbench on clones against baselines on a raw loop file\n(see BENCHMARKS.md), as root, with PostgreSQL and MariaDB (with mariadb-backup) installed.\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	c.mariaSize = int64(mariaSize)
	c.defaults()
	if c.write && c.only != "" {
		fmt.Fprintln(os.Stderr, "imagebench: -write needs every section (drop -only)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "imagebench:", err)
		os.Exit(1)
	}
}

func (c *config) defaults() {
	def := func(v *int, full, quick int) {
		if *v == 0 {
			*v = full
			if c.quick {
				*v = quick
			}
		}
	}
	def(&c.scale, 50, 5)
	def(&c.rounds, 3, 1)
	def(&c.clones, 20, 5)
	def(&c.txns, 2000, 200)
	def(&c.creates, 5, 3)
	if c.mariaSize == 0 {
		c.mariaSize = 1 << 30
		if c.quick {
			c.mariaSize = 64 << 20
		}
	}
	if c.duration == 0 {
		c.duration = 30 * time.Second
		if c.quick {
			c.duration = 5 * time.Second
		}
	}
}

func (c *config) runs(section string) bool {
	if c.only == "" {
		return true
	}
	for _, s := range strings.Split(c.only, ",") {
		if strings.TrimSpace(s) == section {
			return true
		}
	}
	return false
}

// bench is one run: its scratch directory, the PostgreSQL it uses and what to undo at the end.
type bench struct {
	ctx   context.Context
	cfg   config
	dir   string // scratch directory (0711: the postgres user walks through it)
	start time.Time
	pg    engine.Engine
	undo  undoStack
	log   *slog.Logger
}

func run(ctx context.Context, c config) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the bench mounts file systems and attaches loop devices")
	}
	// The bench is PostgreSQL's (pgbench, pg_basebackup): it takes the newest server the
	// PostgreSQL adapter finds.
	pgs, err := postgres.Discover(postgres.Options{})
	if len(pgs) == 0 {
		return fmt.Errorf("no PostgreSQL server (hack/install-deps.sh installs it): %w", errors.Join(engine.ErrNotFound, err))
	}
	pg := pgs[0]
	dir, err := os.MkdirTemp(c.dir, "imagebench-")
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	b := &bench{ctx: ctx, cfg: c, dir: dir, start: time.Now(), pg: pg,
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer func() {
		b.undo.run(b.logf)
		if err := os.RemoveAll(dir); err != nil {
			b.logf("remove %s: %v", dir, err)
		}
	}()
	rep, err := b.all()
	if err != nil {
		return err
	}
	rep.elapsed = time.Since(b.start)
	md := rep.markdown()
	fmt.Print(md)
	if c.write {
		if err := spliceReport(c.out, md); err != nil {
			return err
		}
		b.logf("wrote the data image part of %s", c.out)
	}
	return nil
}

// logf prints progress on stderr with the time since the start.
func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// undoStack runs cleanups in reverse order, also after a failure.
type undoStack struct{ fns []undoFn }

type undoFn struct {
	what string
	fn   func() error
}

// push adds fn and returns a function that runs it now (once) instead of at the end.
func (u *undoStack) push(what string, fn func() error) func() error {
	done := false
	u.fns = append(u.fns, undoFn{what, func() error {
		if done {
			return nil
		}
		done = true
		return fn()
	}})
	return u.fns[len(u.fns)-1].fn
}

func (u *undoStack) run(logf func(string, ...any)) {
	for i := len(u.fns) - 1; i >= 0; i-- {
		if err := u.fns[i].fn(); err != nil {
			logf("cleanup (%s): %v", u.fns[i].what, err)
		}
	}
	u.fns = nil
}

// spliceReport replaces the data image part of the file at path (from the marker line to the
// end) with md, or appends it when the file has no such part.
func spliceReport(path, md string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s := string(old)
	if i := strings.Index(s, markerPrefix); i >= 0 {
		s = s[:i]
	} else if s != "" && !strings.HasSuffix(s, "\n\n") {
		s = strings.TrimRight(s, "\n") + "\n\n"
	}
	return atomicfile.WriteFile(path, []byte(s+md), 0o644)
}
