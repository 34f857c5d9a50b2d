// Package engine is the adapter between the image builder and a database server: one Engine per
// engine kind and version installed on the machine (PostgreSQL 15, MariaDB 10.11, ...), found by
// Discover. An Engine makes an empty instance (Init), starts a server on an instance's data
// directory (Start) and restores physical backups into a data directory before the server starts
// (RestorePhysical); a running Instance runs SQL scripts, restores logical backups, checkpoints
// and stops cleanly.
//
// Every adapter runs the real server and the real client tools of its engine, and speaks the
// engine's wire protocol (pgx, go-sql-driver/mysql) only for a definition's scripts, which must
// not reach a client's commands (see RunScript).
//
// # Adding an engine
//
// Everything that depends on the engine kind lives in its adapter (a package under
// imagebuilder/engine/): an Adapter (the kinds it serves, how it finds its servers, the URL
// clients connect with), its Engines and its Instances. Adding an engine is writing an adapter,
// listing it in imagebuilder/engine/registry, listing its kind in the definition format
// (imagebuilder/engines.go: the names a definition may give it, the backup formats it
// restores, its system databases), and running the conformance tests of
// imagebuilder/engine/enginetest from the adapter's tests. No other package names a kind: a
// test of the registry fails when one does.
//
// # Layout of an instance
//
// An instance lives in one directory, the root of a volume's file system: the engine's data
// directory is DataDir(root) (root/data), owned by the user the server runs as. An adapter may
// keep data of the instance beside it, under root (PostgreSQL's restored tablespaces), reached
// from the data directory by relative links only, so that a copy of the volume mounted
// anywhere (a clone) is self-contained. Everything the
// server needs that is not data (sockets, generated access rules, the server's log, the pid
// file) lives in a runtime directory outside the volume, given to Start, so an image holds data
// only and each clone brings its own access rules.
//
// # Isolation
//
// A server Start runs reaches nothing outside its instance: no WAL or binary log archived,
// streamed or replayed, no primary followed, no subscription applied, no standby waited for, and
// over TCP no login but the administrative user's with the password SetPassword gave. The
// builder calls Instance.PrepareImage last, so that the image itself carries the same (for a
// server started on it by other means) and no password of its source.
//
// It must not know its callers: builds, the store, CSI, Kubernetes or the single-machine product.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
)

// Errors. Adapters wrap them with %w and the context (engine, file, command).
var (
	// ErrNotFound: no installed engine matches (kind, version).
	ErrNotFound = errors.New("engine: not installed")
	// ErrFormat: a backup's content is not in a format the engine restores, or not the format
	// it was said to be in.
	ErrFormat = errors.New("engine: unrecognized backup format")
	// ErrServer: the server failed to start, stopped unexpectedly, or refused a script. The
	// *ServerError carrying it has the tail of the server's log.
	ErrServer = errors.New("engine: server failed")
	// ErrRestoreLimit: a physical backup would restore more bytes or more files than
	// RestoreOptions allows (an archive that expands beyond its volume: a tar bomb).
	ErrRestoreLimit = errors.New("engine: backup exceeds the restore's limits")
	// ErrNotRunning: Adopt found no server of the instance running (no pid file, or one that
	// names a process that is gone or is not the instance's server).
	ErrNotRunning = errors.New("engine: no server runs on the instance")
)

// DataDir is where an instance rooted at root keeps its data directory.
func DataDir(root string) string { return filepath.Join(root, "data") }

// Adapter is an engine adapter as the registry lists it: what it knows before it finds any
// server. The registry (imagebuilder/engine/registry) is the one place that lists them.
type Adapter interface {
	// Kinds are the engine kinds the adapter serves (MariaDB's serves MariaDB and MySQL), each a
	// kind of the definition format (imagebuilder.Engines) that no other adapter serves.
	Kinds() []imagebuilder.Engine
	// Discover returns the adapter's servers installed on this machine, in their standard
	// places, running as the users their packages make (see the adapter's own Discover for its
	// options). An installation that cannot be used is left out, and the error says why; the
	// engines that can be used are returned with it.
	Discover() ([]Engine, error)
	// URL returns the URL a client reaches the server c describes with (c.Host, c.Port,
	// c.User, c.Password, c.Database; c.Engine is one of Kinds), the password in it:
	// postgresql://..., mysql://.... It needs no running server: a stopped clone has one too.
	URL(c ConnInfo) string
}

// Engine is one installed engine at one version.
type Engine interface {
	// Kind is the engine kind: one of its adapter's Kinds.
	Kind() imagebuilder.Engine
	// Version is the full version of the server binary, e.g. "15.18" or "10.11.19".
	Version() string
	// User returns the OS user the engine's servers and tools run as for a RunAs option: the
	// user called runAs or, when runAs is empty, the engine's default (its Discover option,
	// else the user its packages make: postgres, mysql); see ResolveUser for a process that
	// does not run as root. Callers that make directories the server must reach ask it.
	User(runAs string) (*User, error)
	// Init makes an empty instance under root (DataDir(root) must not exist yet): initdb or
	// mariadb-install-db. The instance's administrative user is AdminUser.
	Init(ctx context.Context, root string, opts InitOptions) error
	// Detect names the format of the backup at path (a file, or a directory of files), by
	// content, or fails with ErrFormat naming what it found.
	Detect(path string) (imagebuilder.BackupFormat, error)
	// Physical reports whether format restores files into the data directory before the server
	// starts (pg_basebackup tar) rather than through a running server (dumps).
	Physical(format imagebuilder.BackupFormat) bool
	// RestorePhysical restores physical backups (in the order given, e.g. base.tar then
	// pg_wal.tar) into DataDir(root), which must not exist yet, so that the next Start recovers
	// to consistency. It records the data's point in time in the returned DataState.
	RestorePhysical(ctx context.Context, root string, backups []BackupFile, opts RestoreOptions) (DataState, error)
	// Start starts a server on the instance under root and waits until it accepts
	// connections (or recovery finishes and it does). The context bounds the start only; the
	// server runs until Instance.Stop.
	//
	// Every server Start runs is isolated, for builds and clones alike: it archives, streams
	// and replays no WAL or binary log to or from anywhere, follows no primary, applies no
	// subscription, starts no replication of its own, and makes no commit wait for a standby,
	// whatever the data directory's configuration says (the adapter overrides it on the
	// server's command line and removes the replication state it finds; see the adapters). With
	// a TCP listener, it admits nobody over TCP until Instance.SetPassword.
	Start(ctx context.Context, root string, opts StartOptions) (Instance, error)
	// PrepareClone readies the instance under root, a copy of a running server's data (a
	// snapshot of a clone, an image or a revision made from one), for Start: it removes what
	// the server that ran on the original keeps in its data directory to lock it (PostgreSQL's
	// postmaster.pid), which names a process that may still run and would stop the new
	// server from starting. REQUIRES that no process works on root: the caller holds the
	// instance (a clone's lock) and has stopped whatever ran there. It changes nothing else
	// and is a no-op for an engine that keeps no such lock in the data directory.
	PrepareClone(root string) error
	// Adopt returns the server that a Start of an earlier process (one that died or restarted
	// since: the local daemon) left running on the instance under root, given the options of
	// that Start (RuntimeDir, RunAs, ListenAddress and Port; Output is not followed), once it
	// answers a query through its socket. The Instance works as a started one does (Stop,
	// Checkpoint, Query, Conn without the password, Done, PID, LogTail), except that the
	// server is not this process's child: its exit status is unknown, and a server that
	// exits is taken to have stopped cleanly. It fails with an error wrapping ErrNotRunning
	// when no server of the instance runs, and with a *ServerError when one runs but does not
	// answer (the caller stops it: kill the processes working on root).
	Adopt(ctx context.Context, root string, opts StartOptions) (Instance, error)
}

// Instance is a running server.
type Instance interface {
	// Conn says how to reach the server.
	Conn() ConnInfo
	// Exec runs the SQL script read from r in database db ("" = the default) with the engine's
	// client (psql -v ON_ERROR_STOP=1, mariadb), as the administrative user, stopping at the
	// first error. It is for the adapters' own SQL and for tests: a definition's scripts go
	// through RunScript.
	Exec(ctx context.Context, db string, r io.Reader) error
	// RunScript runs a definition's script (preScript, postScript) in database db ("" = the
	// default) through the engine's wire protocol, one statement at a time, stopping at the
	// first error, as an account made for the script: it can read and change the image's data
	// and schema, but not the server's files, programs, settings or accounts (see the
	// adapter). The account cannot log in once RunScript returns. Client commands (psql's
	// backslash commands, the mariadb client's system, source, ...) are refused before any
	// statement runs. A failed or refused statement is a *ScriptError naming the script, the
	// line and the statement.
	RunScript(ctx context.Context, db string, s Script) error
	// Query runs one SQL statement and returns its output as the client prints it unaligned
	// and without headers (psql -At, mariadb -N -B), for checks and tests.
	Query(ctx context.Context, db, sql string) (string, error)
	// CreateDatabase creates database name if it does not exist.
	CreateDatabase(ctx context.Context, name string) error
	// RestoreLogical restores a logical backup (a dump) through the server. The data's point in
	// time is taken from the dump when it records one.
	RestoreLogical(ctx context.Context, b BackupFile, opts RestoreOptions) (DataState, error)
	// SetPassword sets the password of the administrative user for TCP connections (creating
	// the TCP account where the engine separates accounts by host) and admits that user, with
	// that password, over TCP: the one login a server started with a TCP listener accepts over
	// TCP. It returns once new connections are admitted.
	SetPassword(ctx context.Context, password string) error
	// PrepareImage makes the data safe to freeze as an image that clones start from: it removes
	// what links the data to servers outside the instance (replica configuration, subscriptions
	// that own a slot on their publisher) and writes the isolation settings into the data's own
	// configuration where the engine keeps one, so that a server started on the image by other
	// means than Start is isolated too; the image carries no password of the administrative
	// user's and no account that logs in over TCP. The builder runs it after the scripts, before
	// the last checkpoint.
	PrepareImage(ctx context.Context) error
	// Checkpoint makes everything written so far durable in the data files (for a server
	// started Volatile: written to them; the caller syncs the file system).
	Checkpoint(ctx context.Context) error
	// Stop shuts the server down cleanly (PostgreSQL fast shutdown, MariaDB shutdown) and
	// waits for it; past the context's deadline it kills it and says so.
	Stop(ctx context.Context) error
	// Done is closed when the server process has exited, for whatever reason.
	Done() <-chan struct{}
	// PID is the server's process ID.
	PID() int
	// LogTail returns the last n lines of the server's log.
	LogTail(n int) string
}

// ConnInfo says how to reach a running server (Adapter.URL makes its URL).
type ConnInfo struct {
	Engine imagebuilder.Engine
	// Host and Port of the TCP listener; Port 0 when the server listens on its socket only.
	Host string
	Port int
	// Socket is the Unix socket's path (PostgreSQL: its directory).
	Socket   string
	User     string
	Password string
	Database string
}

// FormatURL returns scheme://user:password@host:port/database?rawQuery for c, every part
// escaped (the password even when empty; no "?" when rawQuery is empty): the URL form the
// adapters' Adapter.URL share.
func FormatURL(scheme string, c ConnInfo, rawQuery string) string {
	u := url.URL{
		Scheme:   scheme,
		User:     url.UserPassword(c.User, c.Password),
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Path:     "/" + c.Database,
		RawQuery: rawQuery,
	}
	return u.String()
}

// InitOptions are Init's options.
type InitOptions struct {
	// RunAs is the OS user the server runs as ("" = the engine's default, "postgres" or
	// "mysql"; ignored unless running as root).
	RunAs string
	// Database is a database to create besides the engine's own ("" = none).
	Database string
}

// StartOptions are Start's options.
type StartOptions struct {
	// RuntimeDir holds the socket, the generated access rules, the log and the pid file. It
	// must exist and should be short (Unix socket paths are limited to 107 bytes); Start gives
	// it to the server's user (User) with mode 0700, so its parents must let that user through.
	RuntimeDir string
	// RunAs: see InitOptions.
	RunAs string
	// ListenAddress and Port of the TCP listener; Port 0 means no TCP listener (builds).
	ListenAddress string
	Port          int
	// Settings are extra server settings (name = value), e.g. shared_buffers.
	Settings map[string]string
	// Volatile says that nothing the server writes needs to survive a crash before a clean
	// Stop: the caller throws the instance away if the server or the machine crashes (a build)
	// and syncs the file system after Stop. The adapter may then skip its own syncs
	// (PostgreSQL: fsync and synchronous_commit off); Checkpoint and a clean Stop still write
	// everything to the data files. The settings it uses are Start's own: Settings may not
	// change them.
	Volatile bool
	// Output, if set, receives the server's log lines as they are written (besides the log
	// file), e.g. to stream a build's log.
	Output io.Writer
}

// RestoreOptions are the restores' options.
type RestoreOptions struct {
	// RunAs: see InitOptions.
	RunAs string
	// Database is the database a single-database dump is restored into ("" = the engine's
	// default database).
	Database string
	// RecordedDatabase restores a single-database dump that records the name of the database
	// it was dumped from (PostgreSQL's pg_dump archive formats) into a database of that name,
	// made if missing, instead of Database. The builder sets it for a definition with several
	// dumps: one per database. A dump that records no name (plain SQL) still goes into Database.
	RecordedDatabase bool
	// Progress, if set, is called with the bytes of backup input consumed so far, at most a few
	// times a second and once at the end.
	Progress func(done int64)
	// MaxBytes bounds what a physical restore writes: the total size of the files it restores
	// from all the backups (a sparse file counts its holes), e.g. the size of the volume
	// restored into. MaxMembers bounds the number of archive members (files, directories,
	// links) it restores from all of them. A backup past either fails the restore with
	// ErrRestoreLimit before the member that passes it is written. Zero or negative: no limit.
	MaxBytes   int64
	MaxMembers int64
	// RecoveryTarget, for a physical restore, is where replaying the log given with the backup
	// (WAL, binary logs) stops; nil replays all of it. A target the log does not reach fails
	// the restore naming the last log file replayed. The image keeps no trace of the replay's
	// configuration (see Isolation).
	RecoveryTarget *imagebuilder.RecoveryTarget
}

// BackupFile is one backup of a definition, resolved to a path on this machine.
type BackupFile struct {
	Path   string
	Format imagebuilder.BackupFormat // never FormatDetect: callers run Detect first
	Size   int64                     // bytes (the sum of the files, for a directory)
}

// DataState is the point in time a restored backup holds.
type DataState struct {
	// Time is when the data was as restored (a base backup's start, a dump's creation); zero
	// if the backup does not say.
	Time time.Time
	// Source says where Time came from, e.g. "backup_label START TIME".
	Source string
	// LogPosition is the engine's log position the data stands at, in the engine's own terms
	// and prefixed with what it is: "LSN 0/3000060" (PostgreSQL: where recovery ended),
	// "GTID 0-1-42" or "binlog mariadb-bin.000003:1234" (MariaDB; both, separated by ", ",
	// when both are known); empty when the backup does not say.
	LogPosition string
}

// ServerError is a failure of the server or of a client tool, with the tail of the server's log.
type ServerError struct {
	Op      string // what was being done: "start", "exec", "pg_restore", ...
	Err     error
	LogTail string
}

func (e *ServerError) Error() string {
	msg := e.Op + ": " + e.Err.Error()
	if e.LogTail != "" {
		msg += "\nserver log (last lines):\n" + e.LogTail
	}
	return msg
}

func (e *ServerError) Unwrap() []error { return []error{ErrServer, e.Err} }

// Set is the engines installed on a machine.
type Set []Engine

// Versions lists the set's versions by engine, for imagebuilder.ValidationEnv.
func (s Set) Versions() imagebuilder.Versions {
	v := imagebuilder.Versions{}
	for _, e := range s {
		v[e.Kind()] = append(v[e.Kind()], e.Version())
	}
	return v
}

// Lookup returns the engine of kind that version names (see imagebuilder.Versions.Match).
func (s Set) Lookup(kind imagebuilder.Engine, version string) (Engine, error) {
	match, ok := s.Versions().Match(kind, version)
	if !ok {
		avail := s.Versions()[kind]
		if len(avail) == 0 {
			return nil, fmt.Errorf("%w: %s %s (no %s server on this machine)", ErrNotFound, kind, version, kind)
		}
		return nil, fmt.Errorf("%w: %s %s (available: %s)", ErrNotFound, kind, version, strings.Join(avail, ", "))
	}
	for _, e := range s {
		if e.Kind() == kind && e.Version() == match {
			return e, nil
		}
	}
	panic("engine: Versions and the set disagree") // unreachable: Versions is built from s
}
