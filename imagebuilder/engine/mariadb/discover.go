package mariadb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Options configure Discover.
type Options struct {
	// BinDirs are the directories searched for server binaries (mariadbd, then mysqld), in
	// order. Empty means /usr/sbin, /usr/bin, /usr/local/sbin, /usr/local/bin,
	// /usr/local/mysql/bin and /usr/local/mariadb/bin. A server's client tools are looked for in
	// its own directory, its sibling bin directory (/usr/sbin -> /usr/bin), then BinDirs.
	BinDirs []string
	// RunAs is the OS user servers and their tools run as when an operation's options name none
	// ("" = "mysql"). Only used when running as root: see engine.ResolveUser.
	RunAs string
}

var defaultBinDirs = []string{
	"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin",
	"/usr/local/mysql/bin", "/usr/local/mariadb/bin",
}

// defaultUser is the OS user the Debian and upstream packages run the server as.
const defaultUser = "mysql"

// versionTimeout bounds `mariadbd --version`.
const versionTimeout = 10 * time.Second

// Discover finds the MariaDB and MySQL servers installed under opts.BinDirs and returns one
// engine per distinct server (kind and version), telling MariaDB from Oracle MySQL (and its
// derivatives, such as Percona Server) by the server's --version output. Finding none is not an
// error. A server that is found but cannot be used (its version cannot be read, its client
// tools are missing) is left out, and the error, matching ErrTool, says why; the engines that
// can be used are returned with it.
func Discover(opts Options) ([]engine.Engine, error) {
	dirs := opts.BinDirs
	if len(dirs) == 0 {
		dirs = defaultBinDirs
	}
	seenBin := map[string]bool{}
	seenVersion := map[string]bool{}
	var found []engine.Engine
	var errs []error
	for _, dir := range dirs {
		for _, name := range []string{"mariadbd", "mysqld"} {
			bin := filepath.Join(dir, name)
			real, err := filepath.EvalSymlinks(bin)
			if err != nil {
				continue // not there
			}
			if st, err := os.Stat(real); err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
				continue
			}
			if seenBin[real] {
				continue // /usr/sbin/mysqld -> mariadbd
			}
			seenBin[real] = true
			s, err := probe(bin, dirs, opts.RunAs)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			key := string(s.kind) + " " + s.version
			if seenVersion[key] {
				continue
			}
			seenVersion[key] = true
			found = append(found, s)
		}
	}
	return found, errors.Join(errs...)
}

// Adapter is the MariaDB and MySQL adapter as the registry lists it.
type Adapter struct{}

var _ engine.Adapter = Adapter{}

// Kinds are MariaDB and MySQL, which Discover tells apart by the server's --version output.
func (Adapter) Kinds() []imagebuilder.Engine {
	return []imagebuilder.Engine{imagebuilder.EngineMariaDB, imagebuilder.EngineMySQL}
}

// Discover is Discover with the default options.
func (Adapter) Discover() ([]engine.Engine, error) { return Discover(Options{}) }

// URL returns mysql://user:password@host:port/database (the URI form of MySQL Shell's
// connection strings).
func (Adapter) URL(c engine.ConnInfo) string { return engine.FormatURL("mysql", c, "") }

// probe reads the version of the server binary bin and finds its tools.
func probe(bin string, dirs []string, runAs string) (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--no-defaults", "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%w: %s --version: %w: %s", ErrTool, bin, err, strings.TrimSpace(string(out)))
	}
	kind, version, err := parseVersion(string(out))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrTool, bin, err)
	}
	s := &server{kind: kind, version: version, bin: bin, runAs: runAs}
	search := append([]string{filepath.Dir(bin), filepath.Join(filepath.Dir(filepath.Dir(bin)), "bin")}, dirs...)
	var missing []string
	switch kind {
	case imagebuilder.EngineMariaDB:
		s.client = lookTool(search, "mariadb", "mysql")
		s.installDB = lookTool(search, "mariadb-install-db", "mysql_install_db")
		if s.client == "" {
			missing = append(missing, "mariadb (client)")
		}
		if s.installDB == "" {
			missing = append(missing, "mariadb-install-db")
		}
		// Optional: without them, RestorePhysical says what to install.
		s.backupTool = lookTool(search, "mariadb-backup", "mariabackup")
		s.mbstream = lookTool(search, "mbstream")
		s.binlogTool = lookTool(search, "mariadb-binlog", "mysqlbinlog")
	default:
		s.client = lookTool(search, "mysql")
		if s.client == "" {
			missing = append(missing, "mysql (client)")
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s %s (%s) has no %s in %s", ErrTool, kind, version, bin,
			strings.Join(missing, " nor "), strings.Join(search, ", "))
	}
	return s, nil
}

// lookTool returns the first executable called one of names in one of dirs, or "".
func lookTool(dirs []string, names ...string) string {
	for _, name := range names {
		for _, dir := range dirs {
			p := filepath.Join(dir, name)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
				return p
			}
		}
	}
	return ""
}

// versionRE finds the version in a server's --version output, e.g.
// "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)" or
// "/usr/sbin/mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)".
var versionRE = regexp.MustCompile(`\bVer\s+(\d+\.\d+(?:\.\d+)?)(\S*)`)

// parseVersion reads a server's --version output: the engine is MariaDB when the output says
// so after "Ver", MySQL otherwise; the version is the numeric part of the word after "Ver" ("10.11.19" of
// "10.11.19-MariaDB-0+deb12u1", "8.0.35" of Percona's "8.0.35-27").
func parseVersion(out string) (imagebuilder.Engine, string, error) {
	loc := versionRE.FindStringSubmatchIndex(out)
	if loc == nil {
		line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		if len(line) > 120 {
			line = line[:120] + "..."
		}
		return "", "", fmt.Errorf("no version in --version output %q", line)
	}
	version := out[loc[2]:loc[3]]
	// Only what follows "Ver" counts: the binary's path, before it, may say anything.
	if strings.Contains(strings.ToLower(out[loc[3]:]), "mariadb") {
		return imagebuilder.EngineMariaDB, version, nil
	}
	return imagebuilder.EngineMySQL, version, nil
}
