package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Locales Init tries, in order: C.UTF-8 classifies non-ASCII characters; plain C is there on
// every system.
var initLocales = []string{"C.UTF-8", "C"}

// Init makes an empty instance under root with initdb: DataDir(root) (which must not exist
// yet), owned by the server's user, encoding UTF8, locale C.UTF-8 (C where the system lacks
// it), administrative role AdminUser, trust on the Unix socket and scram-sha-256 over TCP (the
// rules Start generates anyway). opts.Database, if set and not postgres (which initdb makes), is
// created in single-user mode, without starting a server.
func (e *pgEngine) Init(ctx context.Context, root string, opts engine.InitOptions) error {
	u, err := e.User(opts.RunAs)
	if err != nil {
		return err
	}
	if opts.Database != "" {
		if err := checkName("database", opts.Database); err != nil {
			return fmt.Errorf("postgres: init: %w", err)
		}
	}
	dataDir := engine.DataDir(root)
	if _, err := os.Lstat(dataDir); err == nil {
		return fmt.Errorf("postgres: init: data directory %s already exists", dataDir)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("postgres: init: %w", err)
	}
	if err := u.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("postgres: init: make data directory: %w", err)
	}
	var errs []error
	for _, locale := range initLocales {
		args := []string{"-D", dataDir, "-U", AdminUser, "--auth-local=trust", "--auth-host=scram-sha-256",
			"-E", "UTF8", "--locale=" + locale}
		out, err := engine.Run(u.Command(ctx, "", e.tool("initdb"), args))
		if err == nil {
			errs = nil
			break
		}
		errs = append(errs, fmt.Errorf("postgres: init %s with locale %s: %w", dataDir, locale, err))
		// initdb empties the data directory it failed in; only a missing locale is worth
		// another try.
		if ctx.Err() != nil || !localeError(out) {
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if opts.Database != "" && opts.Database != defaultDatabase {
		if err := e.createDatabaseSingle(ctx, u, dataDir, opts.Database); err != nil {
			return err
		}
	}
	return nil
}

// localeError reports whether initdb's output says it failed over the locale.
func localeError(out string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "error:") && strings.Contains(line, "locale") {
			return true
		}
	}
	return false
}

// createDatabaseSingle creates database name in the stopped instance at dataDir, with the
// server in single-user mode (exit_on_error makes a failed statement its exit status).
func (e *pgEngine) createDatabaseSingle(ctx context.Context, u *engine.User, dataDir, name string) error {
	args := []string{"--single", "-D", dataDir, "-c", "exit_on_error=on", "-c", "listen_addresses=", defaultDatabase}
	cmd := u.Command(ctx, "", e.tool("postgres"), args)
	cmd.Stdin = strings.NewReader("CREATE DATABASE " + quoteIdent(name) + "\n")
	if _, err := engine.Run(cmd); err != nil {
		return fmt.Errorf("postgres: init: create database %q: %w", name, err)
	}
	return nil
}

// checkName refuses names PostgreSQL cannot take or that would not survive a command line: empty,
// longer than 63 bytes (NAMEDATALEN-1), or with control characters.
func checkName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty %s name", what)
	case len(name) > 63:
		return fmt.Errorf("%s name %q is longer than 63 bytes", what, name)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return fmt.Errorf("%s name %q has control characters", what, name)
	}
	return nil
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteLiteral quotes an SQL string literal as an escape string (E'...'), which reads the same
// whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}
