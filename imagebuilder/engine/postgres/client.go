package postgres

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// conninfo is the libpq connection string to database db ("" = the default) over the socket, as
// AdminUser.
func (i *instance) conninfo(db string) string {
	if db == "" {
		db = defaultDatabase
	}
	return "host=" + quoteConninfo(i.runtimeDir) + " port=" + strconv.Itoa(i.port) +
		" user=" + quoteConninfo(AdminUser) + " dbname=" + quoteConninfo(db) + " application_name=dataimage"
}

// quoteConninfo quotes a value of a libpq connection string.
func quoteConninfo(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// client returns a command running one of the client tools (psql, pg_restore) as the server's
// user. The connection goes in the arguments, as conninfo.
func (i *instance) client(ctx context.Context, tool string, args ...string) *exec.Cmd {
	return i.user.Command(ctx, "", i.eng.tool(tool), args, "PGCONNECT_TIMEOUT=30")
}

// psql returns a psql command on database db that stops at the first error, reads no psqlrc
// and prints no notices of its own.
func (i *instance) psql(ctx context.Context, db string, args ...string) *exec.Cmd {
	return i.client(ctx, "psql", append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", i.conninfo(db)}, args...)...)
}

// serverError wraps a client tool's failure with the server's log tail.
func (i *instance) serverError(op string, err error) error {
	return &engine.ServerError{Op: op, Err: err, LogTail: i.LogTail(logTailLines)}
}

// Exec runs the SQL script read from r in database db ("" = postgres) with psql
// (ON_ERROR_STOP=1, so the first error stops it), as AdminUser: for the adapter's own SQL and
// tests, never for a definition's scripts (RunScript). The script may use psql's
// meta-commands, \connect included. A failure is a *engine.ServerError whose message has
// psql's error (with the script's line) and the server log's tail.
func (i *instance) Exec(ctx context.Context, db string, r io.Reader) error {
	defer i.flushLog()
	cmd := i.psql(ctx, db, "-f", "-")
	cmd.Stdin = r
	if _, err := engine.Run(cmd); err != nil {
		return i.serverError("exec", err)
	}
	return nil
}

// Query runs one SQL statement in database db ("" = postgres) and returns what psql -At prints,
// without the last newline.
func (i *instance) Query(ctx context.Context, db, sql string) (string, error) {
	defer i.flushLog()
	var out bytes.Buffer
	cmd := i.psql(ctx, db, "-A", "-t", "-c", sql)
	cmd.Stdout = &out
	if _, err := engine.Run(cmd); err != nil {
		return "", i.serverError("query", err)
	}
	return strings.TrimSuffix(out.String(), "\n"), nil
}

// execVars runs script (from stdin) in database db with psql variables set, so that the
// script quotes values itself (:'name', :"name").
func (i *instance) execVars(ctx context.Context, op, db, script string, vars map[string]string) error {
	defer i.flushLog()
	var args []string
	for k, v := range vars {
		args = append(args, "-v", k+"="+v)
	}
	cmd := i.psql(ctx, db, append(args, "-f", "-")...)
	cmd.Stdin = strings.NewReader(script)
	if _, err := engine.Run(cmd); err != nil {
		return i.serverError(op, err)
	}
	return nil
}

// CreateDatabase creates database name unless it exists.
func (i *instance) CreateDatabase(ctx context.Context, name string) error {
	if err := checkName("database", name); err != nil {
		return fmt.Errorf("postgres: create database: %w", err)
	}
	// Qualified, and with search_path pg_catalog: a script that ran in this database before
	// may have made functions (a public.format) that a superuser must not call.
	const script = `SET search_path = pg_catalog;
SELECT pg_catalog.format('CREATE DATABASE %I', :'name')
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = :'name') \gexec
`
	return i.execVars(ctx, "create database "+name, "", script, map[string]string{"name": name})
}

// SetPassword sets AdminUser's password (stored as a scram-sha-256 verifier) and opens TCP to
// that role: until the first SetPassword a server admits nobody over TCP, afterwards AdminUser
// only, with this password (see hbaRules). It returns once new TCP connections get these rules.
// The password goes to psql on its standard input, not its command line, and the statement is
// kept out of the server's log.
func (i *instance) SetPassword(ctx context.Context, password string) error {
	defer i.flushLog()
	if password == "" || strings.ContainsRune(password, 0) {
		return fmt.Errorf("postgres: set password: the password must be non-empty and without NUL bytes")
	}
	script := "SET log_statement = 'none';\n" +
		"SET log_min_error_statement = 'panic';\n" +
		"SET log_min_duration_statement = -1;\n" +
		"SET password_encryption = 'scram-sha-256';\n" +
		"ALTER ROLE " + quoteIdent(AdminUser) + " WITH LOGIN PASSWORD " + quoteLiteral(password) + ";\n"
	if err := i.setPasswordOpenTCP(ctx, script); err != nil {
		return err
	}
	i.mu.Lock()
	i.mu.conn.Password = password
	i.mu.Unlock()
	return nil
}

// Checkpoint runs CHECKPOINT: every change so far is in the data files.
func (i *instance) Checkpoint(ctx context.Context) error {
	if _, err := i.Query(ctx, "", "CHECKPOINT"); err != nil {
		return fmt.Errorf("postgres: checkpoint: %w", err)
	}
	return nil
}
