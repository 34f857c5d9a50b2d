package postgres_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

// scriptSetup is the instance the script tests run in: tables owned by two plain roles, by the
// superuser and by a role that may run programs (ops), in database app (owned by the
// superuser) and shop (owned by alice).
const scriptSetup = `
CREATE ROLE alice NOLOGIN;
CREATE ROLE bob NOLOGIN;
CREATE ROLE ops NOLOGIN;
GRANT pg_execute_server_program TO ops;
CREATE ROLE reader NOLOGIN;
CREATE ROLE admin_of_ops NOLOGIN;
GRANT ops TO admin_of_ops;
CREATE DATABASE app;
CREATE DATABASE shop OWNER alice;
\connect app
GRANT EXECUTE ON FUNCTION pg_read_file(text) TO reader;
CREATE TABLE people (id int PRIMARY KEY, name text, email text);
ALTER TABLE people OWNER TO alice;
INSERT INTO people VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com');
CREATE TABLE cards (id int, number text);
ALTER TABLE cards OWNER TO bob;
ALTER TABLE cards ENABLE ROW LEVEL SECURITY;
CREATE POLICY none ON cards USING (false);
INSERT INTO cards VALUES (1, '4111 1111 1111 1111'), (2, '5500 0000 0000 0004');
CREATE TABLE audit (what text);
INSERT INTO audit VALUES ('secret');
CREATE TABLE ops_jobs (cmd text);
ALTER TABLE ops_jobs OWNER TO ops;
INSERT INTO ops_jobs VALUES ('keep');
\connect shop
CREATE TABLE orders (id int, customer text);
ALTER TABLE orders OWNER TO alice;
INSERT INTO orders VALUES (1, 'Ada');
`

// scriptInstance starts a fresh instance with scriptSetup, and a directory the server's user
// may write, for markers that an escape would create.
func scriptInstance(t *testing.T) (engine.Instance, string) {
	t.Helper()
	inst := newInstance(t, pgEngine(t), engine.StartOptions{})
	exec(t, inst, "", scriptSetup)
	dir := pgtest.Dir(t)
	require.NoError(t, os.Chmod(dir, 0o777))
	return inst, dir
}

// requireNoScriptRole checks that no role of a script is left, and none that can log in but
// postgres.
func requireNoScriptRole(t *testing.T, inst engine.Instance) {
	t.Helper()
	require.Equal(t, "", query(t, inst, "", "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolname LIKE 'dataimage_script_%'"))
	require.Equal(t, "postgres", query(t, inst, "", "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolcanlogin"))
}

func TestRunScriptMasks(t *testing.T) {
	inst, _ := scriptInstance(t)
	ctx := testCtx(t)
	script := `-- Masking, as a definition's postScript would.
CREATE FUNCTION mask_email(id int) RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT 'user' || id || '@example.com' $$;
UPDATE people SET name = 'person ' || id, email = mask_email(id);   -- alice's
ALTER TABLE people ADD COLUMN masked boolean DEFAULT true;         -- an owner's right
UPDATE cards SET number = 'xxxx';                                  -- bob's, with a policy that hides every row
DELETE FROM audit;                                                 -- the superuser's: row by row
CREATE TABLE fake_names (name text);
COPY fake_names (name) FROM STDIN;
Zoë
李雷
\.
DO $$ BEGIN
  INSERT INTO fake_names SELECT name || ' (masked)' FROM people;
END $$;
BEGIN;
UPDATE people SET email = lower(email);
COMMIT;
`
	require.NoError(t, inst.RunScript(ctx, "app", engine.Script{Name: "postScript post.sql", SQL: []byte(script)}))
	require.Equal(t, "person 1|user1@example.com|t\nperson 2|user2@example.com|t", query(t, inst, "app", "SELECT name, email, masked FROM people ORDER BY id"))
	require.Equal(t, "2|xxxx", query(t, inst, "app", "SELECT count(*), min(number) FROM cards"), "row security hid no row from the script")
	require.Equal(t, "0", query(t, inst, "app", "SELECT count(*) FROM audit"))
	require.Equal(t, "Zoë,person 1 (masked),person 2 (masked),李雷", query(t, inst, "app", `SELECT string_agg(name, ',' ORDER BY name COLLATE "C") FROM fake_names`))
	require.Equal(t, "dataimage_script|dataimage_script|f", query(t, inst, "app",
		"SELECT (SELECT proowner::regrole FROM pg_proc WHERE proname = 'mask_email'), (SELECT tableowner FROM pg_tables WHERE tablename = 'fake_names'), rolcanlogin FROM pg_roles WHERE rolname = 'dataimage_script'"),
		"what the script made belongs to a role that cannot log in")
	require.Equal(t, "postgres|bob|alice", query(t, inst, "app", "SELECT string_agg(tableowner, '|' ORDER BY tablename) FROM pg_tables WHERE tablename IN ('people', 'cards', 'audit')"),
		"owners unchanged")
	require.Equal(t, "f", query(t, inst, "app", "SELECT has_database_privilege('dataimage_script', 'app', 'CREATE')"), "the grants on the database are revoked")
	requireNoScriptRole(t, inst)

	// A second script, in another database that belongs to a plain role, may change what the
	// first made (it belongs to a safe role).
	require.NoError(t, inst.RunScript(ctx, "shop", engine.Script{Name: "preScript pre.sql", SQL: []byte("UPDATE orders SET customer = 'masked';\nTRUNCATE orders;\nCREATE TABLE notes (x int);\n")}))
	require.Equal(t, "0|dataimage_script", query(t, inst, "shop", "SELECT count(*), (SELECT tableowner FROM pg_tables WHERE tablename = 'notes') FROM orders"))
	require.NoError(t, inst.RunScript(ctx, "app", engine.Script{Name: "postScript again.sql", SQL: []byte("DROP FUNCTION mask_email(int);\nDROP TABLE fake_names;\n")}))
	requireNoScriptRole(t, inst)
}

func TestRunScriptRefusesEscapes(t *testing.T) {
	inst, dir := scriptInstance(t)
	ctx := testCtx(t)
	marker := filepath.Join(dir, "marker")
	ran := 0 // how many times the statement before the escape ran
	for _, tc := range []struct {
		name, stmt string
		msg        string
	}{
		{"psql shell", `\! touch ` + marker, `\! is a psql meta-command`},
		{"psql copy", `\copy audit to '` + marker + `'`, `\copy is a psql meta-command`},
		{"copy to program", `COPY (SELECT 1) TO PROGRAM 'touch ` + marker + `'`, "pg_execute_server_program"},
		{"copy to a file", `COPY audit TO '` + marker + `'`, "pg_write_server_files"},
		{"copy from a file", `COPY audit FROM '/etc/passwd'`, "pg_read_server_files"},
		{"read a file", `SELECT pg_read_file('/etc/passwd')`, "permission denied for function pg_read_file"},
		{"export a large object", `SELECT lo_export(lo_from_bytea(0, 'x'), '` + marker + `')`, "permission denied for function lo_export"},
		{"untrusted extension", `CREATE EXTENSION adminpack`, "permission denied to create extension"},
		{"file_fdw", `CREATE EXTENSION file_fdw`, "permission denied to create extension"},
		{"C function", `CREATE FUNCTION sh(cstring) RETURNS int AS 'libc.so.6', 'system' LANGUAGE c`, "permission denied for language c"},
		{"load a library", `LOAD '/usr/lib/postgresql/15/lib/plpgsql.so'`, `access to library "/usr/lib/postgresql/15/lib/plpgsql.so" is not allowed`},
		{"server settings", `ALTER SYSTEM SET archive_command = 'touch ` + marker + `'`, "permission denied to set parameter"},
		{"superuser setting", `SET log_statement = 'none'`, `permission denied to set parameter "log_statement"`},
		{"become superuser", `ALTER ROLE CURRENT_USER SUPERUSER`, "must be superuser to alter superuser roles"},
		{"set role to the superuser", `SET ROLE postgres`, `permission denied to set role "postgres"`},
		{"set role to a role that runs programs", `SET ROLE ops`, `permission denied to set role "ops"`},
		{"set role to a member of a role that runs programs", `SET ROLE admin_of_ops`, `permission denied to set role "admin_of_ops"`},
		{"set role to a role that reads files", `SET ROLE reader`, `permission denied to set role "reader"`},
		{"session authorization", `SET SESSION AUTHORIZATION postgres`, "permission denied to set session authorization"},
		{"grant program execution", `GRANT pg_execute_server_program TO CURRENT_USER`, `must have admin option on role "pg_execute_server_program"`},
		{"create a superuser", `CREATE ROLE evil SUPERUSER LOGIN`, "must be superuser to create superusers"},
		{"create a role", `CREATE ROLE plain`, "permission denied to create role"},
		{"truncate the superuser's table", `TRUNCATE audit`, "permission denied for table audit"},
		{"a table of a role that runs programs", `TRUNCATE ops_jobs`, "permission denied for table ops_jobs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := "INSERT INTO audit VALUES ('ran');\n" + tc.stmt + ";\nINSERT INTO audit VALUES ('after');\n"
			err := inst.RunScript(ctx, "app", engine.Script{Name: "preScript evil.sql", SQL: []byte(script)})
			t.Log(err)
			var se *engine.ScriptError
			require.ErrorAs(t, err, &se)
			require.ErrorIs(t, err, engine.ErrScript)
			require.Equal(t, 2, se.Line, "%v", err)
			require.Contains(t, err.Error(), "preScript evil.sql line 2: ")
			require.Contains(t, err.Error(), tc.msg)
			if !strings.HasPrefix(tc.stmt, `\`) {
				require.Contains(t, err.Error(), engine.ShortStatement(tc.stmt))
				ran++
			} else {
				require.ErrorIs(t, err, engine.ErrScriptRefused)
			}
			require.Equal(t, strconv.Itoa(ran)+"|0", query(t, inst, "app", "SELECT count(*) FILTER (WHERE what = 'ran'), count(*) FILTER (WHERE what = 'after') FROM audit"),
				"a refused script runs nothing; a failing one stops at the failure")
			_, statErr := os.Stat(marker)
			require.ErrorIs(t, statErr, os.ErrNotExist, "the escape created %s", marker)
			requireNoScriptRole(t, inst)
			require.Equal(t, "f", query(t, inst, "", "SELECT rolsuper FROM pg_roles WHERE rolname = 'ops'"))
		})
	}
}

func TestRunScriptFailures(t *testing.T) {
	inst, _ := scriptInstance(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name, script string
		line         int
		msg          string
	}{
		{"error position on a later line", "SELECT 1;\nSELECT\n  id,\n  nosuch\nFROM people;\n", 2, `column "nosuch" does not exist (SQLSTATE 42703) (at line 4)`},
		{"hint kept", "SELECT 1;\nSELECT * FROM peopel;\n", 2, `relation "peopel" does not exist`},
		{"open transaction", "BEGIN;\nUPDATE people SET name = 'x';\n", 0, "the script ended inside a transaction"},
		{"standard_conforming_strings off", "SET standard_conforming_strings = off;\n", 1, "scripts must leave standard_conforming_strings on"},
		{"unterminated string", "SELECT 1;\nSELECT 'x;\n", 2, "the string that starts here never ends"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := inst.RunScript(ctx, "app", engine.Script{Name: "postScript p.sql", SQL: []byte(tc.script)})
			var se *engine.ScriptError
			require.ErrorAs(t, err, &se)
			require.Equal(t, tc.line, se.Line, "%v", err)
			require.Contains(t, err.Error(), tc.msg)
			requireNoScriptRole(t, inst)
		})
	}
	require.Equal(t, "Ada,Grace", query(t, inst, "app", "SELECT string_agg(name, ',' ORDER BY id) FROM people"), "the open transaction was rolled back")
}

// A script that leaves a prepared transaction fails; the transaction is rolled back.
func TestRunScriptPreparedTransaction(t *testing.T) {
	inst := newInstance(t, pgEngine(t), engine.StartOptions{Settings: map[string]string{"max_prepared_transactions": "2"}})
	exec(t, inst, "", "CREATE TABLE t (x int);\n")
	err := inst.RunScript(testCtx(t), "", engine.Script{Name: "postScript p.sql", SQL: []byte("BEGIN;\nINSERT INTO t VALUES (1);\nPREPARE TRANSACTION 'left';\n")})
	var se *engine.ScriptError
	require.ErrorAs(t, err, &se)
	require.ErrorContains(t, err, "postScript p.sql: the script left prepared transaction(s) left, rolled back")
	require.Equal(t, "0|0", query(t, inst, "", "SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM pg_prepared_xacts)"))
	requireNoScriptRole(t, inst)
}

// An instance whose PUBLIC may read the server's files runs no script; one whose role
// dataimage_script is a superuser keeps nothing a script made.
func TestRunScriptUnsafeInstance(t *testing.T) {
	inst, _ := scriptInstance(t)
	ctx := testCtx(t)
	exec(t, inst, "app", "GRANT EXECUTE ON FUNCTION pg_read_file(text) TO PUBLIC;\n")
	err := inst.RunScript(ctx, "app", engine.Script{Name: "preScript p.sql", SQL: []byte("INSERT INTO audit VALUES ('ran');\n")})
	require.ErrorContains(t, err, "the script's role would have EXECUTE on pg_read_file(text)")
	require.ErrorContains(t, err, "the script is not run")
	require.Equal(t, "0", query(t, inst, "app", "SELECT count(*) FROM audit WHERE what = 'ran'"))
	requireNoScriptRole(t, inst)
	exec(t, inst, "app", "REVOKE EXECUTE ON FUNCTION pg_read_file(text) FROM PUBLIC;\nCREATE ROLE dataimage_script SUPERUSER NOLOGIN;\n")
	err = inst.RunScript(ctx, "app", engine.Script{Name: "preScript p.sql", SQL: []byte("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n")})
	require.ErrorContains(t, err, "give what it created to dataimage_script: the instance's role dataimage_script is a superuser")
	require.Equal(t, "0", query(t, inst, "app", "SELECT count(*) FROM pg_proc WHERE proname = 'f'"), "what the script made is dropped")
	requireNoScriptRole(t, inst)
}
