package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/internal/scriptsplit"
)

// A definition's script runs as a role made for it (scriptRolePrefix + random digits), through
// pgx, one statement at a time. The role is what a masking script needs and nothing that leads
// out of the server:
//
//   - LOGIN (through the build's socket, trust) with CONNECTION LIMIT 1, NOSUPERUSER,
//     NOCREATEDB, NOCREATEROLE (before PostgreSQL 16 CREATEROLE could grant
//     pg_execute_server_program), NOREPLICATION; BYPASSRLS, so that row security hides no row
//     from a script that masks them;
//   - pg_read_all_data and pg_write_all_data (PostgreSQL 14 and later): every row of every
//     table, whoever owns it, can be read, inserted, updated and deleted;
//   - membership (with inheritance) in every role of the instance that is safe: not a
//     superuser, CREATEROLE or REPLICATION role, not (through any chain of memberships) a
//     member of one, nor of pg_execute_server_program, pg_read_server_files,
//     pg_write_server_files or pg_create_subscription, and without EXECUTE on the functions
//     that reach the server's files (serverFileFunctions) in the script's database (function
//     privileges are per database, and the script reaches no other). So the script has its owners'
//     rights on everything such roles own: TRUNCATE, ALTER, DROP, CREATE INDEX, triggers,
//     ALTER ... OWNER TO, SET ROLE;
//   - CONNECT, CREATE and TEMPORARY on its database and USAGE and CREATE on its schemas when
//     their owners are not such roles (a database and a public schema that belong to the
//     superuser), so that it can create functions, tables and schemas there. These grants are
//     revoked afterwards (the ACLs then list the owner's default privileges explicitly, which
//     means the same as before).
//
// What a script cannot do, then: run programs (COPY ... PROGRAM), read or write the server's
// files (COPY to or from a file, pg_read_file, lo_import, lo_export, adminpack), load
// libraries other than $libdir/plugins, create untrusted extensions or languages, change
// server settings (ALTER SYSTEM, superuser-only settings), create, alter or grant roles, act
// as a superuser (SET ROLE, SET SESSION AUTHORIZATION), or change tables that belong to a
// superuser other than row by row (no TRUNCATE or ALTER of them).
//
// Before the script runs, the role's rights are checked once more against the same rules
// (a superuser, a dangerous predefined role or a file function among them refuses the build).
// Afterwards the role is dropped: its sessions are ended, prepared transactions it left are
// rolled back (and fail the script), what it created is given to scriptOwnerRole (NOLOGIN, no
// rights but on what it owns), so that nothing a script wrote ever runs with a superuser's
// rights, and the privileges granted to it are revoked.

// scriptRolePrefix starts the name of the role a script runs as.
const scriptRolePrefix = "dataimage_script_"

// scriptOwnerRole owns what scripts created once their role is dropped.
const scriptOwnerRole = "dataimage_script"

// unsafeRoles are the predefined roles whose members reach outside the server (or make it
// connect elsewhere). Names a version lacks match nothing.
var unsafeRoles = []string{"pg_execute_server_program", "pg_read_server_files", "pg_write_server_files", "pg_create_subscription"}

// serverFileFunctions are the functions, in any schema, that read or write the server's files
// or connect without a password (dblink_connect_u); a role that may run one is unsafe.
var serverFileFunctions = []string{
	"pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export",
	"pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls", "dblink_connect_u",
}

// scriptCleanupTimeout bounds dropping a script's role, also after the build's context ended.
const scriptCleanupTimeout = time.Minute

// RunScript runs s in database db ("" = postgres) as a role made for it (see above), one
// statement at a time through the wire protocol, stopping at the first error. The script is
// split as psql splits it (splitScript); a psql meta-command anywhere refuses the whole script
// before anything runs. A script that ends inside a transaction, or turns
// standard_conforming_strings off, fails.
func (i *instance) RunScript(ctx context.Context, db string, s engine.Script) error {
	defer i.flushLog()
	stmts, err := splitScript(s.SQL)
	if err != nil {
		return scriptsplit.Refused(s.Name, err)
	}
	if db == "" {
		db = defaultDatabase
	}
	admin, err := i.adminConn(ctx, db)
	if err != nil {
		return i.serverError("script "+s.Name, err)
	}
	defer admin.Close(context.Background())

	role, err := engine.ScriptAccountName(scriptRolePrefix)
	if err != nil {
		return err
	}
	setupErr := setupScriptRole(ctx, admin, role)
	var runErr error
	if setupErr == nil {
		runErr = i.runStatements(ctx, db, role, s, stmts)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scriptCleanupTimeout)
	defer cancel()
	dropErr := dropScriptRole(cctx, admin, role, s.Name)
	if setupErr != nil {
		return i.serverError("script "+s.Name, errors.Join(setupErr, dropErr))
	}
	return errors.Join(runErr, dropErr)
}

// connConfig returns the configuration of a connection to database db over the socket as user.
func (i *instance) connConfig(user, db string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig("host=" + quoteConninfo(i.runtimeDir) + " port=" + strconv.Itoa(i.port) +
		" user=" + quoteConninfo(user) + " dbname=" + quoteConninfo(db) + " sslmode=disable connect_timeout=30")
	if err != nil {
		return nil, fmt.Errorf("postgres: connection settings: %w", err)
	}
	return cfg, nil
}

// adminConn connects to database db as AdminUser with search_path pg_catalog: the role
// management below then calls no function and uses no operator that a script could have put
// in another schema (a startup parameter wins over ALTER DATABASE ... SET search_path, and
// functions and operators are never looked up in pg_temp unless named with it).
func (i *instance) adminConn(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := i.connConfig(AdminUser, db)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["search_path"] = "pg_catalog"
	cfg.RuntimeParams["application_name"] = "dataimage"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect to database %s as %s: %w", db, AdminUser, err)
	}
	return conn, nil
}

// safeRolesSQL lists the roles a script's role may be a member of: not predefined, not the
// script's own, not unsafe (see the top of the file). $1 is the script's role, $2 unsafeRoles,
// $3 serverFileFunctions.
const safeRolesSQL = `SELECT r.rolname FROM pg_catalog.pg_roles r
WHERE r.rolname !~ '^pg_' AND r.rolname <> $1
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles u
    WHERE (u.rolsuper OR u.rolcreaterole OR u.rolreplication OR u.rolname = ANY ($2::text[]))
      AND pg_has_role(r.oid, u.oid, 'MEMBER'))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc p
    WHERE p.proname = ANY ($3::text[])
      AND has_function_privilege(r.oid, p.oid, 'EXECUTE'))
ORDER BY 1`

// unsafeRightsSQL lists what makes the role $1 unsafe: the same rules, applied to the role
// itself once it has its memberships.
const unsafeRightsSQL = `SELECT 'the rights of role ' || quote_ident(u.rolname)
FROM pg_catalog.pg_roles u
WHERE (u.rolsuper OR u.rolcreaterole OR u.rolreplication OR u.rolname = ANY ($2::text[]))
  AND pg_has_role($1, u.oid, 'MEMBER')
UNION ALL
SELECT 'EXECUTE on ' || p.oid::regprocedure::text
FROM pg_catalog.pg_proc p
WHERE p.proname = ANY ($3::text[]) AND has_function_privilege($1, p.oid, 'EXECUTE')`

// setupScriptRole creates role and gives it what a script needs (see the top of the file), in
// the database admin is connected to.
func setupScriptRole(ctx context.Context, admin *pgx.Conn, role string) error {
	exec := func(what, sql string, args ...any) error {
		if _, err := admin.Exec(ctx, sql, args...); err != nil {
			return fmt.Errorf("postgres: script role %s: %s: %w", role, what, err)
		}
		return nil
	}
	if err := exec("create", "CREATE ROLE "+quoteIdent(role)+
		" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS INHERIT CONNECTION LIMIT 1"); err != nil {
		return err
	}
	var version int
	var versionText string
	if err := admin.QueryRow(ctx, "SHOW server_version_num").Scan(&versionText); err != nil {
		return fmt.Errorf("postgres: script role %s: server version: %w", role, err)
	}
	version, _ = strconv.Atoi(versionText)
	if version >= 140000 {
		if err := exec("grant pg_read_all_data, pg_write_all_data", "GRANT pg_read_all_data, pg_write_all_data TO "+quoteIdent(role)); err != nil {
			return err
		}
	}
	roles, err := queryStrings(ctx, admin, safeRolesSQL, role, unsafeRoles, serverFileFunctions)
	if err != nil {
		return fmt.Errorf("postgres: script role %s: list the roles it may act as: %w", role, err)
	}
	if len(roles) > 0 {
		if err := exec("grant membership", "GRANT "+quoteIdents(roles)+" TO "+quoteIdent(role)); err != nil {
			return err
		}
	}
	var ownsDB bool
	var db string
	if err := admin.QueryRow(ctx, `SELECT current_database(), pg_has_role($1, d.datdba, 'USAGE')
		FROM pg_catalog.pg_database d WHERE d.datname = current_database()`, role).Scan(&db, &ownsDB); err != nil {
		return fmt.Errorf("postgres: script role %s: database owner: %w", role, err)
	}
	if !ownsDB {
		if err := exec("grant on the database", "GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "+quoteIdent(db)+" TO "+quoteIdent(role)); err != nil {
			return err
		}
	}
	schemas, err := queryStrings(ctx, admin, `SELECT n.nspname FROM pg_catalog.pg_namespace n
		WHERE n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
		  AND n.nspname !~ '^pg_(toast|temp_)'
		  AND NOT pg_has_role($1, n.nspowner, 'USAGE') ORDER BY 1`, role)
	if err != nil {
		return fmt.Errorf("postgres: script role %s: list schemas: %w", role, err)
	}
	if len(schemas) > 0 {
		if err := exec("grant on schemas", "GRANT USAGE, CREATE ON SCHEMA "+quoteIdents(schemas)+" TO "+quoteIdent(role)); err != nil {
			return err
		}
	}
	unsafe, err := queryStrings(ctx, admin, unsafeRightsSQL, role, unsafeRoles, serverFileFunctions)
	if err != nil {
		return fmt.Errorf("postgres: script role %s: check its rights: %w", role, err)
	}
	if len(unsafe) > 0 {
		return fmt.Errorf("postgres: the script's role would have %s, which reach the server's files or programs: "+
			"the image grants them to PUBLIC or to every role; the script is not run", summary(unsafe))
	}
	return nil
}

// dropScriptRole ends role's sessions, rolls back the transactions it prepared, gives what it
// owns in admin's database to scriptOwnerRole, revokes what was granted to it and drops it. A
// prepared transaction it left fails the script (name names it); so does a scriptOwnerRole
// that is not safe, and then what the script made is dropped with its role.
func dropScriptRole(ctx context.Context, admin *pgx.Conn, role, name string) error {
	fail := func(what string, err error) error {
		return fmt.Errorf("postgres: drop script role %s: %s: %w", role, what, err)
	}
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return fail("look it up", err)
	}
	if !exists {
		return nil // its creation failed
	}
	// The script's connection is closed, but its backend may not have exited yet.
	for tick := time.NewTicker(20 * time.Millisecond); ; {
		var left int
		if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid))
			FROM pg_catalog.pg_stat_activity WHERE usename = $1`, role).Scan(&left); err != nil {
			tick.Stop()
			return fail("end its sessions", err)
		}
		if left == 0 {
			tick.Stop()
			break
		}
		select {
		case <-ctx.Done():
			tick.Stop()
			return fail("end its sessions", ctx.Err())
		case <-tick.C:
		}
	}
	gids, err := queryStrings(ctx, admin, `SELECT gid FROM pg_catalog.pg_prepared_xacts
		WHERE owner = $1 ORDER BY prepared`, role)
	if err != nil {
		return fail("list its prepared transactions", err)
	}
	var leftErr error
	for _, gid := range gids {
		if _, err := admin.Exec(ctx, "ROLLBACK PREPARED "+quoteLiteral(gid)); err != nil {
			return fail("roll back prepared transaction "+gid, err)
		}
	}
	if len(gids) > 0 {
		leftErr = &engine.ScriptError{Script: name, Err: fmt.Errorf("the script left prepared transaction(s) %s, rolled back: a script finishes what it starts", strings.Join(gids, ", "))}
	}
	var owns bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_shdepend s
		WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass
		  AND s.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)
		  AND s.deptype = 'o')`, role).Scan(&owns); err != nil {
		return fail("list what it owns", err)
	}
	var ownerErr error
	if owns {
		ownerErr = ensureScriptOwner(ctx, admin)
		if ownerErr == nil {
			_, ownerErr = admin.Exec(ctx, "REASSIGN OWNED BY "+quoteIdent(role)+" TO "+quoteIdent(scriptOwnerRole))
		}
		if ownerErr != nil {
			// What the script made is dropped with its role below: the build fails.
			ownerErr = fail("give what it created to "+scriptOwnerRole, ownerErr)
		}
	}
	if _, err := admin.Exec(ctx, "DROP OWNED BY "+quoteIdent(role)); err != nil {
		return errors.Join(ownerErr, fail("revoke its privileges", err))
	}
	if _, err := admin.Exec(ctx, "DROP ROLE "+quoteIdent(role)); err != nil {
		return errors.Join(ownerErr, fail("drop it", err))
	}
	if ownerErr != nil {
		return errors.Join(leftErr, ownerErr)
	}
	// scriptOwnerRole goes too once nothing in any database depends on it (pg_shdepend is
	// shared): a later script dropped what the earlier ones made.
	if _, err := admin.Exec(ctx, `DO $$BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = '`+scriptOwnerRole+`'
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_shdepend s WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.refobjid = r.oid)) THEN
    DROP ROLE `+quoteIdent(scriptOwnerRole)+`;
  END IF;
END$$`); err != nil {
		return fail("drop "+scriptOwnerRole+", which owns nothing", err)
	}
	return leftErr
}

// ensureScriptOwner makes scriptOwnerRole (NOLOGIN, no attributes, no memberships) unless it
// exists; one that exists must be safe, or what a script created would run with more rights
// than the script had.
func ensureScriptOwner(ctx context.Context, admin *pgx.Conn) error {
	if _, err := admin.Exec(ctx, `DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '`+scriptOwnerRole+`') THEN
    CREATE ROLE `+quoteIdent(scriptOwnerRole)+` NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE `+quoteIdent(scriptOwnerRole)+` IS 'created by dataimage: owns what the image definition''s scripts created';
  END IF;
END$$`); err != nil {
		return err
	}
	var super, login bool
	if err := admin.QueryRow(ctx, "SELECT rolsuper, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1", scriptOwnerRole).Scan(&super, &login); err != nil {
		return err
	}
	if super {
		return fmt.Errorf("the instance's role %s is a superuser: it cannot own what a script made", scriptOwnerRole)
	}
	unsafe, err := queryStrings(ctx, admin, unsafeRightsSQL, scriptOwnerRole, unsafeRoles, serverFileFunctions)
	if err != nil {
		return err
	}
	if login {
		unsafe = append(unsafe, "LOGIN")
	}
	if len(unsafe) > 0 {
		return fmt.Errorf("the instance's role %s has %s: it cannot own what a script made", scriptOwnerRole, summary(unsafe))
	}
	return nil
}

// summary joins the first few of list with commas, saying how many more there are.
func summary(list []string) string {
	const show = 4
	if len(list) <= show {
		return strings.Join(list, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(list[:show], ", "), len(list)-show)
}

// queryStrings runs a query whose rows are one text column.
func queryStrings(ctx context.Context, conn *pgx.Conn, sql string, args ...any) ([]string, error) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// quoteIdents quotes names and joins them with commas.
func quoteIdents(names []string) string {
	q := make([]string, len(names))
	for k, n := range names {
		q[k] = quoteIdent(n)
	}
	return strings.Join(q, ", ")
}

// runStatements connects to db as role and runs stmts, the statements of s, stopping at the
// first error.
func (i *instance) runStatements(ctx context.Context, db, role string, s engine.Script, stmts []statement) error {
	cfg, err := i.connConfig(role, db)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = "dataimage script"
	conn, err := pgconn.ConnectConfig(ctx, &cfg.Config)
	if err != nil {
		return &engine.ScriptError{Script: s.Name, Err: fmt.Errorf("connect to database %s as %s: %w", db, role, err)}
	}
	defer conn.Close(context.Background())
	for _, st := range stmts {
		if st.copyIn {
			_, err = conn.CopyFrom(ctx, bytes.NewReader(st.data), st.text)
		} else {
			_, err = conn.Exec(ctx, st.text).ReadAll()
		}
		if err != nil {
			return statementError(s.Name, st, err)
		}
		if conn.ParameterStatus("standard_conforming_strings") == "off" {
			return &engine.ScriptError{Script: s.Name, Line: st.line, Statement: engine.ShortStatement(st.text),
				Err: errors.New("scripts must leave standard_conforming_strings on: the script is split into statements with it on")}
		}
	}
	if tx := conn.TxStatus(); tx == 'T' || tx == 'E' {
		return &engine.ScriptError{Script: s.Name, Err: errors.New("the script ended inside a transaction (BEGIN without COMMIT): its changes since BEGIN are rolled back")}
	}
	return nil
}

// statementError is the *engine.ScriptError of statement st of script name failing with err;
// the server's detail and hint are kept, and the line the server points at when it is not the
// statement's first.
func statementError(name string, st statement, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		var extra strings.Builder
		if pe.Position > 0 {
			if l := st.line + linesBefore(st.text, int(pe.Position)); l != st.line {
				fmt.Fprintf(&extra, " (at line %d)", l)
			}
		}
		if pe.Detail != "" {
			fmt.Fprintf(&extra, "\nDETAIL: %s", pe.Detail)
		}
		if pe.Hint != "" {
			fmt.Fprintf(&extra, "\nHINT: %s", pe.Hint)
		}
		if extra.Len() > 0 {
			err = fmt.Errorf("%w%s", err, extra.String())
		}
	}
	return &engine.ScriptError{Script: name, Line: st.line, Statement: engine.ShortStatement(st.text), Err: err}
}

// linesBefore counts the newlines in text before its pos-th character (1-based, as the
// server's error position counts).
func linesBefore(text string, pos int) int {
	n, chars := 0, 0
	for k := 0; k < len(text) && chars < pos-1; {
		_, size := utf8.DecodeRuneInString(text[k:])
		if text[k] == '\n' {
			n++
		}
		k += size
		chars++
	}
	return n
}
