package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/internal/units"
)

// Deadlines of the stops: a clean stop after the checkpoint, and the stop after a failure (past
// it the server is killed).
const (
	stopTimeout        = 10 * time.Minute
	failureStopTimeout = 30 * time.Second
)

// build is one run of Build.
type build struct {
	req      Request
	def      *imagebuilder.Definition
	eng      engine.Engine
	lifetime imagebuilder.Lifetime
	log      *slog.Logger

	// progressMu serializes the calls of req.Progress (the server's log lines come from the
	// engine's goroutine).
	progressMu sync.Mutex
	// step is the step running, for the server's log lines.
	step atomic.Value // string
	// logLines forwards the server's log as events.
	logLines *lineWriter

	inst  engine.Instance // the running server, nil when none runs
	steps []StepTime
}

// newBuild checks the request and resolves the engine and the lifetime.
func newBuild(req Request) (*build, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: bad request: %s", ErrBuild, fmt.Sprintf(format, args...))
	}
	def := req.Definition
	switch {
	case def == nil:
		return nil, bad("no image definition")
	case req.Root == "" || !filepath.IsAbs(req.Root):
		return nil, bad("the root must be an absolute path, got %q", req.Root)
	case req.RuntimeDir == "" || !filepath.IsAbs(req.RuntimeDir):
		return nil, bad("the runtime directory must be an absolute path, got %q", req.RuntimeDir)
	}
	kind := def.NormalizedEngine()
	if kind == "" {
		return nil, bad("definition %s: unknown engine %q", def.Name, def.Engine)
	}
	version, err := def.ResolveVersion(req.Env)
	if err != nil {
		return nil, fmt.Errorf("%w: definition %s: %w", ErrBuild, def.Name, err)
	}
	eng, err := req.Engines.Lookup(kind, version)
	if err != nil {
		return nil, fmt.Errorf("%w: definition %s: %w", ErrBuild, def.Name, err)
	}
	lifetime, err := def.ResolveLifetime(req.Env)
	if err != nil {
		return nil, fmt.Errorf("%w: definition %s: %w", ErrBuild, def.Name, err)
	}
	switch def.NormalizedSourceType() {
	case imagebuilder.SourceEmpty, imagebuilder.SourceBackup:
	default:
		return nil, bad("definition %s: unknown sourceType %q", def.Name, def.SourceType)
	}
	log := req.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &build{
		req:      req,
		def:      def,
		eng:      eng,
		lifetime: lifetime,
		log:      log.With("image", def.Name, "engine", kind, "version", eng.Version()),
	}
	b.step.Store("")
	b.logLines = &lineWriter{emit: func(line string) {
		b.report(Event{Step: b.step.Load().(string), Log: line})
	}}
	return b, nil
}

// report sends ev to the request's Progress.
func (b *build) report(ev Event) {
	if b.req.Progress == nil {
		return
	}
	b.progressMu.Lock()
	defer b.progressMu.Unlock()
	b.req.Progress(ev)
}

// do runs one step: it reports and logs its start, times it, and turns its failure into a
// *StepError.
func (b *build) do(step, message string, fn func() error) error {
	b.step.Store(step)
	b.report(Event{Step: step, Message: message})
	b.log.Info("build step", "step", step, "what", message)
	start := time.Now()
	err := fn()
	d := time.Since(start)
	b.steps = append(b.steps, StepTime{Step: step, Duration: d})
	if err != nil {
		b.log.Error("build step failed", "step", step, "took", d, "err", err)
		return &StepError{Step: step, Err: err, LogTail: logTail(err, b.inst)}
	}
	b.log.Info("build step done", "step", step, "took", d)
	return nil
}

// run runs the build's steps.
func (b *build) run(ctx context.Context) (res *Result, err error) {
	start := time.Now()
	defer func() {
		if err != nil {
			b.abort(ctx)
			b.log.Error("image build failed", "took", time.Since(start), "err", err)
		}
	}()
	res = &Result{Engine: b.eng.Kind(), Version: b.eng.Version(), Lifetime: b.lifetime}
	if err := b.prepareRuntimeDir(); err != nil {
		return nil, err
	}

	switch {
	case b.def.NormalizedSourceType() == imagebuilder.SourceEmpty:
		res.DataState = engine.DataState{Source: "empty instance (no backup)"}
		err = b.buildEmpty(ctx)
	case len(b.def.Backups) == 0:
		return nil, fmt.Errorf("%w: bad request: definition %s has sourceType backup and no backups", ErrBuild, b.def.Name)
	default:
		var backups []engine.BackupFile
		if backups, err = b.resolveBackups(); err != nil {
			return nil, &StepError{Step: StepRestore, Err: err}
		}
		if b.eng.Physical(backups[0].Format) {
			res.DataState, err = b.buildPhysical(ctx, backups)
		} else {
			res.DataState, err = b.buildLogical(ctx, backups)
		}
	}
	if err != nil {
		return nil, err
	}
	if err := b.stop(ctx); err != nil {
		return nil, err
	}
	// The whole root: a restored base backup's tablespaces are beside the data directory.
	res.DataBytes, err = allocatedBytes(b.req.Root)
	if err != nil {
		return nil, fmt.Errorf("%w: measure the data directory: %w", ErrBuild, err)
	}
	res.Steps = b.steps
	b.log.Info("image built", "took", time.Since(start), "dataBytes", res.DataBytes, "dataState", res.DataState.Time, "dataStateSource", res.DataState.Source, "logPosition", res.DataState.LogPosition)
	return res, nil
}

// prepareRuntimeDir makes the runtime directory if it does not exist.
func (b *build) prepareRuntimeDir() error {
	if err := os.MkdirAll(b.req.RuntimeDir, 0o700); err != nil {
		return fmt.Errorf("%w: runtime directory: %w", ErrBuild, err)
	}
	return nil
}

// buildEmpty: init -> start -> checkpoint (stop follows).
func (b *build) buildEmpty(ctx context.Context) error {
	db := b.def.InitialDatabaseName
	if err := b.init(ctx, db); err != nil {
		return err
	}
	if err := b.start(ctx, ""); err != nil {
		return err
	}
	return b.checkpoint(ctx)
}

// buildPhysical: restore -> start (recovery) -> prescript -> postscript -> checkpoint.
func (b *build) buildPhysical(ctx context.Context, backups []engine.BackupFile) (engine.DataState, error) {
	var state engine.DataState
	for i, bf := range backups {
		if !b.eng.Physical(bf.Format) {
			return state, b.mixedKinds(backups[0], bf, i)
		}
	}
	total := totalSize(backups)
	err := b.do(StepRestore, fmt.Sprintf("restoring %d physical backup file(s) into %s", len(backups), engine.DataDir(b.req.Root)), func() (err error) {
		maxBytes, maxMembers, err := b.restoreLimits()
		if err != nil {
			return err
		}
		names := make([]string, len(backups))
		for i, bf := range backups {
			names[i] = filepath.Base(bf.Path)
		}
		b.report(Event{Step: StepRestore, Message: fmt.Sprintf("extracting %s (%s)", strings.Join(names, ", "), units.FormatBytes(total)), Total: total})
		b.log.Info("restore limits", "maxBytes", maxBytes, "maxMembers", maxMembers)
		state, err = b.eng.RestorePhysical(ctx, b.req.Root, backups, engine.RestoreOptions{
			RunAs:          b.req.RunAs,
			Progress:       func(done int64) { b.report(Event{Step: StepRestore, Done: min(done, total), Total: total}) },
			MaxBytes:       maxBytes,
			MaxMembers:     maxMembers,
			RecoveryTarget: b.def.RecoveryTarget,
		})
		if err == nil {
			// The engine may skip files it does not restore (a backup manifest).
			b.report(Event{Step: StepRestore, Message: "restored", Done: total, Total: total})
		}
		return err
	})
	if err != nil {
		return state, err
	}
	// The backup may lack the initial database: it is made once the server is up.
	if err := b.start(ctx, b.def.InitialDatabaseName); err != nil {
		return state, err
	}
	if err := b.script(ctx, StepPreScript, b.def.PreScriptPath(), b.def.InitialDatabaseName); err != nil {
		return state, err
	}
	if err := b.script(ctx, StepPostScript, b.def.PostScriptPath(), b.def.InitialDatabaseName); err != nil {
		return state, err
	}
	return state, b.checkpoint(ctx)
}

// buildLogical: init -> start -> prescript -> restore -> postscript -> checkpoint.
func (b *build) buildLogical(ctx context.Context, backups []engine.BackupFile) (engine.DataState, error) {
	var state engine.DataState
	if t := b.def.RecoveryTarget; t != nil {
		return state, &StepError{Step: StepRestore, Err: fmt.Errorf("%w: recoveryTarget (%s) needs a physical backup to replay a log from; backups[0] is a logical backup (%s)",
			engine.ErrFormat, t, backups[0].Format)}
	}
	makesDatabases := false
	for i, bf := range backups {
		if b.eng.Physical(bf.Format) {
			return state, b.mixedKinds(backups[0], bf, i)
		}
		makesDatabases = makesDatabases || bf.Format == imagebuilder.FormatPgDumpAll
	}
	db := b.def.InitialDatabaseName
	initDB := db
	if makesDatabases {
		initDB = "" // the dump may make it: made after the restores otherwise
	}
	if err := b.init(ctx, initDB); err != nil {
		return state, err
	}
	if err := b.start(ctx, ""); err != nil {
		return state, err
	}
	if err := b.script(ctx, StepPreScript, b.def.PreScriptPath(), initDB); err != nil {
		return state, err
	}
	total := totalSize(backups)
	err := b.do(StepRestore, fmt.Sprintf("restoring %d logical backup(s)", len(backups)), func() error {
		var offset int64
		for i, bf := range backups {
			b.report(Event{Step: StepRestore, Message: fmt.Sprintf("restoring backups[%d] %s (%s)", i, b.def.Backups[i].NormalizedPath(), bf.Format), Done: offset, Total: total})
			s, err := b.inst.RestoreLogical(ctx, bf, engine.RestoreOptions{
				RunAs:    b.req.RunAs,
				Database: db,
				// Several dumps: one per database, each into the one it was dumped from.
				RecordedDatabase: len(backups) > 1,
				Progress:         func(done int64) { b.report(Event{Step: StepRestore, Done: offset + min(done, bf.Size), Total: total}) },
			})
			if err != nil {
				return fmt.Errorf("backups[%d] %s: %w", i, b.def.Backups[i].NormalizedPath(), err)
			}
			state = laterState(state, s)
			offset += bf.Size
			b.report(Event{Step: StepRestore, Message: fmt.Sprintf("restored backups[%d]", i), Done: offset, Total: total})
		}
		if makesDatabases && db != "" {
			return b.inst.CreateDatabase(ctx, db)
		}
		return nil
	})
	if err != nil {
		return state, err
	}
	if err := b.script(ctx, StepPostScript, b.def.PostScriptPath(), db); err != nil {
		return state, err
	}
	return state, b.checkpoint(ctx)
}

// mixedKinds is the error of a definition mixing physical and logical backups.
func (b *build) mixedKinds(first, other engine.BackupFile, i int) error {
	kind := func(f engine.BackupFile) string {
		if b.eng.Physical(f.Format) {
			return "physical"
		}
		return "logical"
	}
	return &StepError{Step: StepRestore, Err: fmt.Errorf("%w: backups[0] is a %s backup (%s) and backups[%d] a %s one (%s): an image is built from one kind",
		engine.ErrFormat, kind(first), first.Format, i, kind(other), other.Format)}
}

// laterState returns the later of two data states; a state with a time beats one without.
func laterState(a, b engine.DataState) engine.DataState {
	switch {
	case b.Time.IsZero() && !a.Time.IsZero():
		return a
	case !a.Time.IsZero() && a.Time.After(b.Time):
		return a
	}
	return b
}

func totalSize(backups []engine.BackupFile) int64 {
	var n int64
	for _, b := range backups {
		n += b.Size
	}
	return n
}

// restoreLimits returns the limits of a physical restore (see Request): 0 means none.
func (b *build) restoreLimits() (maxBytes, maxMembers int64, err error) {
	maxBytes, maxMembers = b.req.MaxRestoreBytes, b.req.MaxArchiveMembers
	if maxBytes == 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(b.req.Root, &st); err != nil {
			return 0, 0, fmt.Errorf("the size of the file system of %s, the restore's byte limit: %w", b.req.Root, err)
		}
		bsize := st.Frsize
		if bsize == 0 {
			bsize = st.Bsize
		}
		maxBytes = int64(st.Blocks) * bsize
	}
	if maxMembers == 0 {
		maxMembers = DefaultMaxArchiveMembers
	}
	return max(maxBytes, 0), max(maxMembers, 0), nil
}

// init is the init step: an empty instance, with database db when not empty.
func (b *build) init(ctx context.Context, db string) error {
	msg := "making an empty instance"
	if db != "" {
		msg += " with database " + db
	}
	return b.do(StepInit, msg, func() error {
		return b.eng.Init(ctx, b.req.Root, engine.InitOptions{RunAs: b.req.RunAs, Database: db})
	})
}

// start is the start step: the server on the socket only, its log forwarded as events; then
// database db is made unless it exists ("" = none).
func (b *build) start(ctx context.Context, db string) error {
	return b.do(StepStart, "starting the server (and recovering, after a physical restore)", func() error {
		inst, err := b.eng.Start(ctx, b.req.Root, engine.StartOptions{
			RuntimeDir: b.req.RuntimeDir,
			RunAs:      b.req.RunAs,
			// Nothing needs to reach the disk before the build ends: it ends with a checkpoint,
			// a clean shutdown and a sync of the whole file system (the stop step), and a build
			// that crashes is discarded. (That the server archives and replicates nothing is
			// the engine's own: engine.Engine.Start.)
			Volatile: true,
			Output:   b.logLines,
		})
		if err != nil {
			return err
		}
		b.inst = inst
		if db == "" {
			return nil
		}
		b.report(Event{Step: StepStart, Message: "making database " + db + " unless the backup has it"})
		return inst.CreateDatabase(ctx, db)
	})
}

// checkpoint is the checkpoint step: the data is made safe to clone (engine.Instance.PrepareImage:
// no replication, archiving or TCP login travels with the image), then durable.
func (b *build) checkpoint(ctx context.Context) error {
	return b.do(StepCheckpoint, "detaching the data from its sources, then making every change durable in the data files", func() error {
		if err := b.inst.PrepareImage(ctx); err != nil {
			return err
		}
		return b.inst.Checkpoint(ctx)
	})
}

// stop is the stop step: a clean shutdown.
func (b *build) stop(ctx context.Context) error {
	return b.do(StepStop, "stopping the server cleanly", func() error {
		sctx, cancel := context.WithTimeout(ctx, stopTimeout)
		defer cancel()
		err := b.inst.Stop(sctx)
		b.inst = nil // stopped, or killed
		b.logLines.flush()
		if err != nil {
			return err
		}
		// The server ran without fsync: what it wrote is durable once the file system is
		// synced, before anyone snapshots the volume (a Kubernetes snapshot may be taken while
		// the volume is still mounted).
		return syncFS(b.req.Root)
	})
}

// syncFS flushes the file system holding dir to its device (syncfs(2)).
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync the file system of %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync the file system of %s: %w", dir, err)
	}
	return nil
}

// abort stops a server a failed build left running, killing it past failureStopTimeout.
func (b *build) abort(ctx context.Context) {
	if b.inst == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), failureStopTimeout)
	defer cancel()
	if err := b.inst.Stop(sctx); err != nil {
		b.log.Warn("stopping the server after the failure", "err", err)
	}
	b.inst = nil
	b.logLines.flush()
}

// allocatedBytes returns the disk space the files under dir take.
func allocatedBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a file the server removed while we walked
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += info.Size()
		}
		return nil
	})
	return n, err
}
