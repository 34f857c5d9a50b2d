// Package builder builds a data image's content: it fills a fresh, empty file system (the root
// of a volume) with a database instance made from an image definition, and leaves it stopped
// cleanly, ready to be frozen as an image. It does not care where it runs: the local daemon
// calls it on a mounted pool volume, a Kubernetes Job on a mounted PVC.
//
// # Steps
//
// A build runs these steps, each reported through Request.Progress and timed in Result.Steps:
//
//	empty:    init -> start -> checkpoint -> stop
//	logical:  init -> start -> prescript -> restore -> postscript -> checkpoint -> stop
//	physical: restore -> start -> prescript -> postscript -> checkpoint -> stop
//
// Logical backups (dumps) are restored through the running server, in the definition's order,
// after the preScript, so that it can prepare the instance (roles, extensions, settings) for
// them. A physical backup (a base backup) is the whole instance: it is restored before any
// server can run, and the server it starts recovers it to consistency; there is nothing a script
// could prepare that the restore would not replace, so the preScript runs once the restored
// server is up, just before the postScript.
//
// # Databases and scripts
//
// The definition's initialDatabaseName is created at init for empty and logical builds. A
// single dump is restored into it (without it, into the engine's default database). With
// several dumps, each dump that records the database it was dumped from (PostgreSQL's pg_dump
// archive formats: custom, directory, tar) goes into a database of that name
// (engine.RestoreOptions.RecordedDatabase), and one that records none (plain SQL) into
// initialDatabaseName as a single dump would, in the definition's order.
// When a backup makes its own databases (pg_dumpall), it is created after the restores if the
// dumps did not make it, and for physical builds once the server is up if the backup lacks it.
// Scripts run in initialDatabaseName when it exists at that point, else in the engine's default
// database, through engine.Instance.RunScript: the engine's wire protocol, no client commands,
// as an account made for the script that can change the image's data and schema but not reach
// the server's files, programs or accounts. They are files under the backup root, read through
// an os.Root so that no path or link leads out of it, at most engine.MaxScriptSize each; a
// failed statement fails the step with the script, the line and the statement.
//
// # Limits
//
// A physical restore writes at most Request.MaxRestoreBytes (by default the size of the volume
// built into) and at most Request.MaxArchiveMembers files, directories and links (by default
// DefaultMaxArchiveMembers); a backup past either (a tar bomb) fails the restore step with
// engine.ErrRestoreLimit, naming the archive, the member and the limit, before that member is
// written. Logical restores and scripts write through the server, into the volume's file
// system, which is as large as the volume.
//
// # Failures
//
// Every failure of a step is a *StepError naming the step, with the tail of the server's log
// when a server ran; all errors match ErrBuild. The server is stopped (killed past a deadline)
// before Build returns; what is left in Root is the caller's to discard.
//
// It must not know where its root comes from (a local pool volume or a build Job's CSI volume),
// nor the store, CSI or Kubernetes; it reaches engines only through the engine interfaces.
package builder

import (
	"context"
	"log/slog"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// The steps of a build, as Event.Step, StepTime.Step and StepError.Step name them.
const (
	StepInit       = "init"
	StepRestore    = "restore"
	StepStart      = "start"
	StepPreScript  = "prescript"
	StepPostScript = "postscript"
	StepCheckpoint = "checkpoint"
	StepStop       = "stop"
)

// Request is what to build and where. Prepare makes one from a definition as written, with
// Definition, Env and Engines set.
type Request struct {
	// Definition is the image definition, already validated against Env.
	Definition *imagebuilder.Definition
	// Env is what the definition was validated against: the backup root its backup and
	// script paths are relative to, the engine versions, the default lifetime.
	Env imagebuilder.ValidationEnv
	// Engines are the installed engines; the definition's engine and version pick one.
	Engines engine.Set
	// Root is the fresh, empty file system the instance is built in (a mounted volume); the
	// engine's data directory is engine.DataDir(Root). Its parents must be traversable by the
	// server's user.
	Root string
	// RuntimeDir holds the server's socket, log and generated files during the build. It is
	// outside Root, exists or is made, and is given to the server's user; its parents must be
	// traversable by that user, and its path short (Unix socket paths are limited to 107
	// bytes).
	RuntimeDir string
	// RunAs is the OS user the server runs as ("" = the engine's default).
	RunAs string
	// MaxRestoreBytes bounds what a physical restore (a base backup's archives) writes: the
	// total size of its files, a sparse file counting its holes. Zero means the size of the
	// file system that holds Root (the volume's); negative, no limit.
	MaxRestoreBytes int64
	// MaxArchiveMembers bounds the members (files, directories, links) a physical restore's
	// archives hold together. Zero means DefaultMaxArchiveMembers; negative, no limit.
	MaxArchiveMembers int64
	// Progress, if set, receives the build's events, from one goroutine at a time.
	Progress func(Event)
	// Logger receives the build's structured log (nil = none).
	Logger *slog.Logger
}

// DefaultMaxArchiveMembers is Request.MaxArchiveMembers's default: far more than the files of
// a PostgreSQL instance with tens of thousands of tables (each has three or four), and about
// 120 MiB of the builder's memory at most (what the restore keeps per member).
const DefaultMaxArchiveMembers = 1_000_000

// Event is one progress report of a build: package wire's Event, which owns its JSON form (the
// builder's wire format, read by the DataImage controller and the dataimage command).
type Event = wire.Event

// Result describes a finished build.
type Result struct {
	Engine  imagebuilder.Engine
	Version string // the engine version the image was built with
	// DataState is the point in time the data holds: the latest a backup records.
	DataState engine.DataState
	Lifetime  imagebuilder.Lifetime
	// DataBytes is the disk space the instance takes (allocated blocks under Root: the data
	// directory and, for a base backup with tablespaces, the tablespaces beside it).
	DataBytes int64
	// Steps are the steps run, in order, with how long each took.
	Steps []StepTime
}

// StepTime is how long one step took.
type StepTime struct {
	Step     string
	Duration time.Duration
}

// Build builds the image req describes into req.Root. See the package documentation for the
// steps and what happens on failure.
func Build(ctx context.Context, req Request) (*Result, error) {
	b, err := newBuild(req)
	if err != nil {
		return nil, err
	}
	return b.run(ctx)
}
