// Package pgtest runs throwaway PostgreSQL servers for tests and makes the backups the image
// builder's tests restore: real pg_dump, pg_dumpall and pg_basebackup output of a source
// instance with known data. Servers run as the postgres OS user when the tests run as root.
//
// Tests that need PostgreSQL call Require, which skips them when it is not installed, except
// when the environment variable CI is "true": there it fails them (CI installs PostgreSQL, and a
// skip would hide a broken install).
//
// It must not know the image builder's internals: it makes servers and backups the way users do,
// with the real tools.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
)

// tools are the binaries the tests use.
var tools = []string{"postgres", "initdb", "pg_ctl", "psql", "pg_dump", "pg_dumpall", "pg_basebackup", "pg_restore"}

// findBinDir returns the directory of the newest complete PostgreSQL installation.
func findBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	var missing []string
	for _, d := range dirs {
		ok := true
		for _, tool := range tools {
			if _, err := os.Stat(filepath.Join(d, tool)); err != nil {
				missing = append(missing, filepath.Join(d, tool))
				ok = false
				break
			}
		}
		if ok {
			return d, nil
		}
	}
	if len(dirs) == 0 {
		return "", errors.New("no PostgreSQL installation in /usr/lib/postgresql/*/bin or on PATH")
	}
	return "", fmt.Errorf("no complete PostgreSQL installation (missing %s)", strings.Join(missing, ", "))
}

func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Require returns the directory of the PostgreSQL binaries, or skips the test (fails it when CI
// is "true") when PostgreSQL or, as root, the postgres OS user is missing.
func Require(t testing.TB) string {
	t.Helper()
	bin, err := findBinDir()
	if err == nil {
		_, err = engine.ResolveUser("", "postgres")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required when CI=true: %v", err)
		}
		t.Skipf("PostgreSQL is not available (install postgresql; CI=true makes this a failure): %v", err)
	}
	return bin
}

// user is the OS user servers and tools run as.
func user() (*engine.User, error) { return engine.ResolveUser("", "postgres") }

// Dir returns a new empty directory that the postgres user can reach and write: t.TempDir with
// its parent made traversable (0711) and the directory itself given to the user.
func Dir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	u, err := user()
	if err != nil {
		t.Fatal(err)
	}
	if err := u.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// RunDir returns a new directory with a short path, for a server's socket (Unix socket paths
// are limited to 107 bytes; test names make t.TempDir long). It is removed at the end of the
// test.
func RunDir(t testing.TB) string {
	t.Helper()
	return enginetest.RuntimeDir(t)
}

// Server is a throwaway PostgreSQL server on a Unix socket (no TCP listener), run with pg_ctl.
type Server struct {
	Bin    string // directory of the binaries
	Data   string // data directory
	Socket string // socket directory
	Port   int    // the port in the socket's name
	user   *engine.User
}

// StartServer makes a new instance in dir (which must not exist; its parent must be reachable by
// the postgres user) and starts it. The caller stops it with Stop.
func StartServer(bin, dir string) (*Server, error) {
	u, err := user()
	if err != nil {
		return nil, err
	}
	if err := u.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Bin: bin, Data: filepath.Join(dir, "data"), Socket: filepath.Join(dir, "s"), Port: 5432, user: u}
	if len(s.Socket) > 90 {
		return nil, fmt.Errorf("pgtest: socket directory %s is too long", s.Socket)
	}
	if err := u.MkdirAll(s.Socket, 0o700); err != nil {
		return nil, err
	}
	if _, err := s.run("initdb", "-D", s.Data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, err
	}
	opts := fmt.Sprintf("-k %s -p %d -c listen_addresses='' -c fsync=off", s.Socket, s.Port)
	if _, err := s.run("pg_ctl", "-D", s.Data, "-l", filepath.Join(dir, "server.log"), "-o", opts, "-w", "-t", "120", "start"); err != nil {
		return nil, err
	}
	return s, nil
}

// Stop stops the server (fast shutdown).
func (s *Server) Stop() error {
	_, err := s.run("pg_ctl", "-D", s.Data, "-m", "fast", "-w", "stop")
	return err
}

// env is the client environment that reaches the server.
func (s *Server) env() []string {
	return []string{"PGHOST=" + s.Socket, "PGPORT=" + strconv.Itoa(s.Port), "PGUSER=postgres", "PGDATABASE=postgres"}
}

// run runs one of the installation's tools as the server's user, with the client environment,
// and returns its standard output.
func (s *Server) run(tool string, args ...string) (string, error) {
	return s.runPath(filepath.Join(s.Bin, tool), args...)
}

// runSystem runs a system tool (cp, tar), found on PATH, as run does.
func (s *Server) runSystem(tool string, args ...string) (string, error) {
	p, err := exec.LookPath(tool)
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	return s.runPath(p, args...)
}

func (s *Server) runPath(path string, args ...string) (string, error) {
	tool := filepath.Base(path)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := s.user.Command(ctx, "", path, args, s.env()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("pgtest: %s %s: %w\n%s", tool, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Run runs a client tool (psql, pg_dump, ...) on the server; see run.
func (s *Server) Run(tool string, args ...string) (string, error) { return s.run(tool, args...) }

// Psql runs sql in database db with psql -X -At -v ON_ERROR_STOP=1 and returns its output
// without the last newline.
func (s *Server) Psql(db, sql string) (string, error) {
	out, err := s.run("psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)
	return strings.TrimSuffix(out, "\n"), err
}
