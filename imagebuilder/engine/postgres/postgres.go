// Package postgres is the PostgreSQL adapter of the image builder: it implements engine.Engine and
// engine.Instance with the real PostgreSQL server and client tools (initdb, postgres, psql,
// pg_restore) of every version installed on the machine.
//
// # Instances
//
// Init runs initdb with the administrative user AdminUser (trust on the Unix socket,
// scram-sha-256 over TCP). Start runs the postgres binary itself (not pg_ctl), so that the
// adapter owns the process: Stop sends SIGINT (fast shutdown) and, past the deadline, SIGQUIT
// and SIGKILL. Everything that is not data lives in the runtime directory given to Start: the
// Unix socket, the access rules (pg_hba.conf and pg_ident.conf, generated and passed with -c
// hba_file / ident_file), the pid file and server.log, the server's standard error. The data
// directory only holds data, so an image carries no access rules of its own.
//
// # Isolation
//
// Every server Start runs, for a build or a clone, is isolated (isolate.go): the settings that
// archive, restore or stream WAL, apply subscriptions or wait for a synchronous standby are
// overridden on its command line, the recovery signal files are removed, subscriptions are
// disabled and detached from their publishers' slots, and over TCP it admits nobody until
// SetPassword, then the administrative role with that password only (no other role, no
// replication). PrepareImage writes the same settings into the image's postgresql.auto.conf and
// leaves the administrative role without a password.
//
// # Backups
//
// Detect tells the formats apart by content: pg_dump archives (custom, directory, tar), plain
// SQL from pg_dump or pg_dumpall (by their header comment) or any other SQL script, tar
// archives (plain, gzip, lz4 or zstd) of a base backup, of its WAL or of one of its tablespaces,
// a directory holding them (pg_basebackup -Ft), and WAL segments (by their page header).
// RestorePhysical unpacks base backups before the server starts (tablespaces beside the data
// directory, backup_manifest verified with pg_verifybackup) and replays WAL past them to a
// recovery target (recover.go); RestoreLogical restores dumps through a running server. See
// their documentation for what they do about roles, standby settings, tablespaces and missing
// configuration.
//
// It must not know the store, CSI, Kubernetes or the other adapters: callers reach it through the
// engine interfaces, and only engine/registry names it.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// AdminUser is the administrative role the adapter connects as: the bootstrap superuser of the
// instances Init makes. Start creates it in an instance restored from a cluster whose bootstrap
// superuser has another name.
const AdminUser = "postgres"

// DefaultRunAs is the OS user servers run as when neither Options.RunAs nor a RunAs option
// names one.
const DefaultRunAs = "postgres"

// defaultDatabase is the database that every instance has and that clients use when they name
// none.
const defaultDatabase = "postgres"

// socketOnlyPort is the port a server without a TCP listener runs on: PostgreSQL names its Unix
// socket after the port (.s.PGSQL.5432).
const socketOnlyPort = 5432

// Options are Discover's options.
type Options struct {
	// BinDirs are extra directories holding a PostgreSQL installation's binaries (postgres,
	// initdb, psql, pg_restore), searched before the standard places. An installation listed
	// here that is incomplete or broken is an error; one found in the standard places is
	// skipped.
	BinDirs []string
	// RunAs is the OS user the servers run as when a call's RunAs option is empty
	// ("" = DefaultRunAs).
	RunAs string
}

// debianBinGlob matches the Debian and official-container-image layout,
// /usr/lib/postgresql/<major>/bin.
const debianBinGlob = "/usr/lib/postgresql/*/bin"

// requiredTools are the binaries an installation must have for the adapter to use it.
var requiredTools = []string{"postgres", "initdb", "psql", "pg_restore"}

// Discover finds every installed PostgreSQL server: opts.BinDirs, then /usr/lib/postgresql/<major>/bin
// (Debian and the official container image), then the directory of the postgres binary found
// on PATH (symbolic links resolved). A directory found twice, or a second installation of a
// version already found, is skipped. The version of each is the one `postgres --version`
// prints, e.g. "15.18". The engines come sorted by version, newest first.
func Discover(opts Options) ([]engine.Engine, error) {
	runAs := opts.RunAs
	if runAs == "" {
		runAs = DefaultRunAs
	}
	type candidate struct {
		dir      string
		explicit bool
	}
	var cands []candidate
	for _, d := range opts.BinDirs {
		cands = append(cands, candidate{d, true})
	}
	if dirs, err := filepath.Glob(debianBinGlob); err == nil {
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, d := range dirs {
			cands = append(cands, candidate{d, false})
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		cands = append(cands, candidate{filepath.Dir(p), false})
	}

	var engines []engine.Engine
	var errs []error
	seenDir := map[string]bool{}
	seenVersion := map[string]bool{}
	for _, c := range cands {
		dir, err := filepath.Abs(c.dir)
		if err == nil {
			if real, err := filepath.EvalSymlinks(dir); err == nil {
				dir = real
			}
		}
		if seenDir[dir] {
			continue
		}
		seenDir[dir] = true
		e, err := probe(dir, runAs)
		if err != nil {
			if c.explicit {
				errs = append(errs, err)
			}
			continue
		}
		if seenVersion[e.version] {
			continue
		}
		seenVersion[e.version] = true
		engines = append(engines, e)
	}
	sort.SliceStable(engines, func(i, j int) bool { return newer(engines[i].Version(), engines[j].Version()) })
	return engines, errors.Join(errs...)
}

// probe returns the installation in dir, or why it cannot be used.
func probe(dir, runAs string) (*pgEngine, error) {
	for _, tool := range requiredTools {
		st, err := os.Stat(filepath.Join(dir, tool))
		if err != nil {
			return nil, fmt.Errorf("postgres: installation in %s: %w", dir, err)
		}
		if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("postgres: installation in %s: %s is not executable", dir, tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("postgres: installation in %s: postgres --version: %w", dir, err)
	}
	v, err := parseVersion(string(out))
	if err != nil {
		return nil, fmt.Errorf("postgres: installation in %s: %w", dir, err)
	}
	return &pgEngine{version: v, bin: dir, runAs: runAs}, nil
}

// parseVersion takes the version from `postgres --version` output, e.g. "15.18" from
// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
func parseVersion(out string) (string, error) {
	const marker = "(PostgreSQL) "
	i := strings.Index(out, marker)
	if i < 0 {
		return "", fmt.Errorf("postgres --version printed %q, not \"postgres (PostgreSQL) <version>\"", strings.TrimSpace(out))
	}
	v := strings.Fields(out[i+len(marker):])
	if len(v) == 0 || v[0] == "" || v[0][0] < '0' || v[0][0] > '9' {
		return "", fmt.Errorf("postgres --version printed %q: no version number", strings.TrimSpace(out))
	}
	return v[0], nil
}

// newer reports whether version a sorts above b: dot-separated components compared as
// numbers where both are all digits ("15.10" above "15.9"), else as text.
func newer(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		an, aerr := strconv.Atoi(as[i])
		bn, berr := strconv.Atoi(bs[i])
		if aerr == nil && berr == nil {
			return an > bn
		}
		return as[i] > bs[i]
	}
	return len(as) > len(bs)
}

// pgEngine is one PostgreSQL installation.
type pgEngine struct {
	version string
	bin     string // directory of the binaries
	runAs   string // default OS user
}

func (e *pgEngine) Kind() imagebuilder.Engine { return imagebuilder.EnginePostgres }

func (e *pgEngine) Version() string { return e.version }

func (e *pgEngine) String() string { return "PostgreSQL " + e.version + " (" + e.bin + ")" }

// Physical reports whether format is restored into the data directory before the server
// starts: base backups and WAL are, dumps are not.
func (e *pgEngine) Physical(format imagebuilder.BackupFormat) bool {
	return format == imagebuilder.FormatBaseBackupTar || format == imagebuilder.FormatWAL
}

// tool returns the path of one of the installation's binaries.
func (e *pgEngine) tool(name string) string { return filepath.Join(e.bin, name) }

// User resolves the OS user for a call's RunAs option ("" = Options.RunAs, else DefaultRunAs).
func (e *pgEngine) User(runAs string) (*engine.User, error) {
	return engine.ResolveUser(runAs, e.runAs)
}

// Adapter is the PostgreSQL adapter as the registry lists it.
type Adapter struct{}

var _ engine.Adapter = Adapter{}

// Kinds is PostgreSQL.
func (Adapter) Kinds() []imagebuilder.Engine {
	return []imagebuilder.Engine{imagebuilder.EnginePostgres}
}

// Discover is Discover with the default options.
func (Adapter) Discover() ([]engine.Engine, error) { return Discover(Options{}) }

// URL returns postgresql://user:password@host:port/database?sslmode=disable: the servers the
// adapter runs have no TLS certificate, and libpq's default (prefer) would try TLS first.
func (Adapter) URL(c engine.ConnInfo) string {
	return engine.FormatURL("postgresql", c, "sslmode=disable")
}
