package mariadb

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/internal/scriptsplit"
)

// A definition's script runs as an account made for it ('dataimage_script_<random>'@'localhost',
// a random password, one connection at most), through go-sql-driver/mysql over the server's
// socket, one statement at a time. The driver has none of the client's commands (system,
// source, \!) and refuses LOAD DATA LOCAL INFILE. The account has, on each database that exists
// when the script starts except the system ones (mysql, information_schema,
// performance_schema, sys), what a masking script needs: SELECT, INSERT, UPDATE, DELETE,
// CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW
// VIEW, CREATE ROUTINE, ALTER ROUTINE, TRIGGER, REFERENCES, and DELETE HISTORY on MariaDB
// (system-versioned tables keep old rows otherwise). The database names are escaped in the
// grants, so that "_" and "%" in a name match only themselves (a database "m_sql" must not
// reach mysql).
//
// It has no global privilege, so a script cannot read or write the server's files (FILE:
// SELECT ... INTO OUTFILE, LOAD DATA INFILE, LOAD_FILE), change settings or stop the server
// (SUPER, SHUTDOWN), see or kill other sessions, create databases or accounts, grant anything,
// install plugins or functions from libraries (INSERT on mysql.*), or name another definer.
//
// Afterwards the account's sessions are killed and it is dropped, unless the script made views,
// routines, triggers or events, which run as their definer: then it is locked (ACCOUNT LOCK)
// and kept, so that they keep working, and nobody can log in with it.

// scriptUserPrefix starts the name of a script's account.
const scriptUserPrefix = "dataimage_script_"

// scriptSkipDatabases are the databases a script gets no privilege on.
var scriptSkipDatabases = []string{"mysql", "information_schema", "performance_schema", "sys"}

// scriptPrivileges are a script's privileges on each database; MariaDB adds DELETE HISTORY.
const scriptPrivileges = "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, " +
	"LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, TRIGGER, REFERENCES"

// scriptCleanupTimeout bounds removing a script's account, also after the build's context ended.
const scriptCleanupTimeout = time.Minute

// RunScript runs s in database db ("" = none selected: the script names its databases or USEs
// one) as an account made for it (see above), one statement at a time, stopping at the first
// error. The script is split as the mariadb client splits it (splitScript, DELIMITER
// included); a client command anywhere refuses the whole script before anything runs. A
// script that ends inside a transaction (MariaDB), or sets an sql_mode that changes how
// quotes are read (ANSI_QUOTES, NO_BACKSLASH_ESCAPES), fails.
func (in *instance) RunScript(ctx context.Context, db string, s engine.Script) error {
	defer in.flushLog()
	stmts, err := splitScript(s.SQL)
	if err != nil {
		return scriptsplit.Refused(s.Name, err)
	}
	user, err := engine.ScriptAccountName(scriptUserPrefix)
	if err != nil {
		return err
	}
	password, err := engine.RandomPassword()
	if err != nil {
		return err
	}
	setupErr := in.createScriptUser(ctx, user, password)
	var runErr error
	if setupErr == nil {
		runErr = in.runStatements(ctx, db, user, password, s, stmts)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scriptCleanupTimeout)
	defer cancel()
	dropErr := in.dropScriptUser(cctx, user)
	if setupErr != nil {
		return errors.Join(setupErr, dropErr)
	}
	return errors.Join(runErr, dropErr)
}

// account is user@localhost as SQL.
func account(user string) string { return quoteString(user) + "@'localhost'" }

// createScriptUser creates the script's account with its privileges (see above).
func (in *instance) createScriptUser(ctx context.Context, user, password string) error {
	out, err := in.query(ctx, "", "SELECT HEX(SCHEMA_NAME) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ("+
		quoteStrings(scriptSkipDatabases)+") ORDER BY 1")
	if err != nil {
		return in.serverError("script account", fmt.Errorf("list databases: %w", err))
	}
	privileges := scriptPrivileges
	if in.srv.mariaDB() {
		privileges += ", DELETE HISTORY"
	}
	var b strings.Builder
	b.WriteString("SET SESSION sql_mode = '';\n") // quoteString's escapes need backslashes on
	fmt.Fprintf(&b, "CREATE USER %s IDENTIFIED BY %s WITH MAX_USER_CONNECTIONS 1;\n", account(user), quoteString(password))
	for _, h := range strings.Fields(out) {
		name, err := hex.DecodeString(h)
		if err != nil {
			return fmt.Errorf("%s: script account: database name %q: %w", in.srv.kind, h, err)
		}
		fmt.Fprintf(&b, "GRANT %s ON %s.* TO %s;\n", privileges, quoteIdent(escapeGrantPattern(string(name))), account(user))
	}
	if err := in.execSQL(ctx, "script account", "", b.String()); err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), password, "<password>"))
	}
	// Checked once more: no global privilege.
	global, err := in.query(ctx, "", "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = "+
		quoteString("'"+user+"'@'localhost'")+" AND PRIVILEGE_TYPE <> 'USAGE'")
	if err != nil {
		return in.serverError("script account", fmt.Errorf("check its privileges: %w", err))
	}
	if g := strings.Fields(global); len(g) > 0 {
		return fmt.Errorf("%s: the script's account would have the global privileges %s: the script is not run", in.srv.kind, strings.Join(g, ", "))
	}
	// MariaDB 10.11 grants PUBLIC's privileges to every account, and USER_PRIVILEGES does not
	// list them.
	if in.srv.mariaDB() {
		public, err := in.query(ctx, "", "SELECT CONCAT_WS(', ', "+
			"IF(EXISTS (SELECT 1 FROM mysql.global_priv WHERE User = 'PUBLIC' AND Host = '' AND JSON_VALUE(Priv, '$.access') <> 0), 'global privileges', NULL), "+
			"IF(EXISTS (SELECT 1 FROM mysql.db WHERE User = 'PUBLIC' AND Host = '' AND 'mysql' LIKE Db), 'privileges on the mysql database', NULL), "+
			"IF(EXISTS (SELECT 1 FROM mysql.tables_priv WHERE User = 'PUBLIC' AND Host = '' AND Db = 'mysql'), 'privileges on tables of the mysql database', NULL))")
		if err != nil {
			return in.serverError("script account", fmt.Errorf("check PUBLIC's privileges: %w", err))
		}
		if public = strings.TrimSpace(public); public != "" && public != "NULL" {
			return fmt.Errorf("%s: the instance grants PUBLIC %s, which every account has, the script's too: the script is not run", in.srv.kind, public)
		}
	}
	return nil
}

// probeScriptAccount checks, as the script's account, that it can neither read the server's
// files (LOAD_FILE of the server's own pid file) nor the mysql database, whatever granted it.
func probeScriptAccount(ctx context.Context, conn *sql.Conn) error {
	var readsFiles bool
	if err := conn.QueryRowContext(ctx, "SELECT LOAD_FILE(@@pid_file) IS NOT NULL").Scan(&readsFiles); err != nil {
		return fmt.Errorf("check the script's account: %w", err)
	}
	if readsFiles {
		return errors.New("the script's account can read the server's files (FILE): the script is not run")
	}
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM mysql.user").Scan(&n); err == nil {
		return errors.New("the script's account can read the mysql database: the script is not run")
	}
	return nil
}

// escapeGrantPattern escapes the wildcards of a database name in GRANT ... ON `db`.*: "_" and
// "%" (and the backslash) match only themselves.
func escapeGrantPattern(name string) string {
	return strings.NewReplacer(`\`, `\\`, `_`, `\_`, `%`, `\%`).Replace(name)
}

// quoteStrings quotes each of ss as a string literal and joins them with commas.
func quoteStrings(ss []string) string {
	q := make([]string, len(ss))
	for k, s := range ss {
		q[k] = quoteString(s)
	}
	return strings.Join(q, ", ")
}

// dropScriptUser kills the account's sessions and drops it, or locks it when objects run as
// their definer with it.
func (in *instance) dropScriptUser(ctx context.Context, user string) error {
	exists, err := in.query(ctx, "", "SELECT COUNT(*) FROM mysql.user WHERE User = "+quoteString(user)+" AND Host = 'localhost'")
	if err != nil {
		return in.serverError("drop script account", err)
	}
	if strings.TrimSpace(exists) == "0" {
		return nil // its creation failed
	}
	ids, err := in.query(ctx, "", "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = "+quoteString(user))
	if err != nil {
		return in.serverError("drop script account", err)
	}
	for _, id := range strings.Fields(ids) {
		if _, err := strconv.ParseUint(id, 10, 64); err != nil {
			return fmt.Errorf("%s: drop script account: session id %q", in.srv.kind, id)
		}
		// The session may end by itself first: "Unknown thread id" is fine.
		if _, err := in.query(ctx, "", "KILL CONNECTION "+id); err != nil && !strings.Contains(err.Error(), "1094") {
			return in.serverError("drop script account", err)
		}
	}
	definer := quoteString(user + "@localhost")
	n, err := in.query(ctx, "", "SELECT (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE DEFINER = "+definer+
		") + (SELECT COUNT(*) FROM information_schema.VIEWS WHERE DEFINER = "+definer+
		") + (SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE DEFINER = "+definer+
		") + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE DEFINER = "+definer+")")
	if err != nil {
		return in.serverError("drop script account", err)
	}
	stmt := "DROP USER " + account(user) + ";\n"
	if strings.TrimSpace(n) != "0" {
		stmt = "ALTER USER " + account(user) + " ACCOUNT LOCK;\n"
	}
	return in.execSQL(ctx, "drop script account", "", stmt)
}

// runStatements connects as user to database db ("" = none) and runs stmts, the statements of
// s, stopping at the first error.
func (in *instance) runStatements(ctx context.Context, db, user, password string, s engine.Script, stmts []statement) error {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd = user, password
	cfg.Net, cfg.Addr = "unix", in.socket
	cfg.DBName = db
	cfg.Timeout = 30 * time.Second
	cfg.Logger = &mysql.NopLogger{}
	cfg.AllowAllFiles = false // LOAD DATA LOCAL INFILE reads no file of the builder
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return fmt.Errorf("%s: script connection: %w", in.srv.kind, err)
	}
	pool := sql.OpenDB(connector)
	defer pool.Close()
	pool.SetMaxOpenConns(1)
	conn, err := pool.Conn(ctx)
	if err != nil {
		return &engine.ScriptError{Script: s.Name, Err: fmt.Errorf("connect as %s: %w", user, err)}
	}
	defer conn.Close()
	if err := probeScriptAccount(ctx, conn); err != nil {
		return &engine.ScriptError{Script: s.Name, Err: err}
	}
	for _, st := range stmts {
		if _, err := conn.ExecContext(ctx, st.text); err != nil {
			return &engine.ScriptError{Script: s.Name, Line: st.line, Statement: engine.ShortStatement(st.text), Err: err}
		}
		if strings.Contains(strings.ToLower(st.text), "sql_mode") {
			var mode string
			if err := conn.QueryRowContext(ctx, "SELECT @@SESSION.sql_mode").Scan(&mode); err != nil {
				return &engine.ScriptError{Script: s.Name, Line: st.line, Statement: engine.ShortStatement(st.text), Err: err}
			}
			for _, m := range []string{"ANSI_QUOTES", "NO_BACKSLASH_ESCAPES"} {
				if strings.Contains(","+mode+",", ","+m+",") {
					return &engine.ScriptError{Script: s.Name, Line: st.line, Statement: engine.ShortStatement(st.text),
						Err: fmt.Errorf("scripts may not set sql_mode %s: the script is split into statements with the default quoting rules", m)}
				}
			}
		}
	}
	if in.srv.mariaDB() {
		var inTx int
		if err := conn.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&inTx); err != nil {
			return &engine.ScriptError{Script: s.Name, Err: err}
		}
		if inTx != 0 {
			return &engine.ScriptError{Script: s.Name, Err: errors.New("the script ended inside a transaction (START TRANSACTION or autocommit off, without COMMIT): its changes since then are rolled back")}
		}
	}
	return nil
}
