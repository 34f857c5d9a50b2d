package builder

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

// markerDir returns a directory the database servers' OS users may write: what an escaping
// script would create there, the test would find.
func markerDir(t *testing.T) string {
	t.Helper()
	dir := pgtest.Dir(t)
	require.NoError(t, os.Chmod(dir, 0o777))
	return dir
}

// A script that tries to leave the database fails the build at its line, and nothing is created
// on the host.
func TestBuildScriptEscapesPostgres(t *testing.T) {
	marker := filepath.Join(markerDir(t), "marker")
	escapes := []struct{ name, stmt, msg string }{
		{"shell", `\! touch ` + marker, `\! is a psql meta-command`},
		{"copy to program", `COPY (SELECT 1) TO PROGRAM 'touch ` + marker + `'`, "pg_execute_server_program"},
		{"untrusted extension", `CREATE EXTENSION adminpack`, "permission denied to create extension"},
		{"become superuser", `ALTER ROLE CURRENT_USER SUPERUSER`, "must be superuser to alter superuser roles"},
		{"set role", `SET ROLE postgres`, `permission denied to set role "postgres"`},
		{"grant program execution", `GRANT pg_execute_server_program TO CURRENT_USER`, `must have admin option on role "pg_execute_server_program"`},
	}
	scripts := map[string]string{}
	for i, tc := range escapes {
		scripts[scriptName(i)] = "UPDATE items SET name = 'masked';\n" + tc.stmt + ";\n"
	}
	e := newEnv(t, scripts)
	for i, tc := range escapes {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			_, _, run, err := e.build(t, "name: evil\nengine: postgres\nversion: \""+e.eng.Version()+"\"\nsourceType: backup\n"+
				"backups:\n  - path: app.dump\ninitialDatabaseName: app\npostScript: "+scriptName(i)+"\n", rec)
			var se *StepError
			require.ErrorAs(t, err, &se, "the build must fail")
			require.Equal(t, StepPostScript, se.Step)
			require.ErrorIs(t, err, engine.ErrScript)
			require.Contains(t, err.Error(), "builder: step postscript failed: postScript "+scriptName(i)+" line 2: ")
			require.Contains(t, err.Error(), tc.msg)
			_, statErr := os.Stat(marker)
			require.ErrorIs(t, statErr, os.ErrNotExist, "the script created %s", marker)
			require.Empty(t, enginetest.ServersUsing(t, run))
		})
	}
}

func scriptName(i int) string { return "evil" + string(rune('a'+i)) + ".sql" }

// A masking script changes tables owned by different roles (the database's owner and the
// superuser) in a base backup, and what it did is in the image; its role is gone.
func TestBuildScriptMasksPostgres(t *testing.T) {
	e := newEnv(t, map[string]string{
		"pre.sql": "CREATE FUNCTION mask(id bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'masked ' || id $$;\n",
		"post.sql": "UPDATE items SET name = mask(id);                 -- alice's\n" +
			"ALTER TABLE items ADD COLUMN masked boolean NOT NULL DEFAULT true;\n" +
			"DELETE FROM w WHERE id > 5;                           -- the superuser's\n" +
			"DROP FUNCTION mask(bigint);\n",
	})
	rec := &recorder{}
	_, root, _, err := e.build(t, "name: masked\nengine: postgres\nversion: \""+e.eng.Version()+"\"\nsourceType: backup\n"+
		"backups:\n  - path: base-tar/base.tar\n  - path: base-tar/pg_wal.tar\ninitialDatabaseName: app\npreScript: pre.sql\npostScript: post.sql\n", rec)
	require.NoError(t, err, rec.logText())
	inst := e.restart(t, root)
	require.Equal(t, "1000|0|masked 1", query(t, inst, "app", "SELECT count(*), count(*) FILTER (WHERE NOT masked OR name NOT LIKE 'masked %'), min(name) FILTER (WHERE id = 1) FROM items"))
	require.Equal(t, "5", query(t, inst, "app", "SELECT count(*) FROM w"))
	require.Equal(t, "alice|postgres", query(t, inst, "app", "SELECT (SELECT tableowner FROM pg_tables WHERE tablename = 'items'), (SELECT tableowner FROM pg_tables WHERE tablename = 'w')"))
	require.Equal(t, "", query(t, inst, "", "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolname LIKE 'dataimage_script%'"),
		"no role of the scripts is left (the scripts made nothing that is left)")
}

// The same for MariaDB: client commands and the server's files are out of reach; masking works
// across databases.
func TestBuildScriptsMariaDB(t *testing.T) {
	t.Parallel()
	e, set := mariaEngine(t)
	marker := filepath.Join(markerDir(t), "marker")
	escapes := []struct{ name, stmt, msg string }{
		{"system", "system touch " + marker, "system is a command of the mariadb client"},
		{"shell", `\! touch ` + marker, `\! is a command of the mariadb client`},
		{"outfile", "SELECT 'x' INTO OUTFILE '" + marker + "'", "Access denied"},
		{"load data infile", "LOAD DATA INFILE '/etc/passwd' INTO TABLE customers", "Access denied"},
		{"grant FILE", "GRANT FILE ON *.* TO CURRENT_USER", "Access denied"},
	}
	scripts := map[string]string{
		"pre.sql": "CREATE TABLE log (what VARCHAR(40));\nINSERT INTO log VALUES ('pre');\n",
		"post.sql": "UPDATE shop.customers SET name = CONCAT('customer ', id), email = NULL;\n" +
			"USE shop;\nDELETE FROM orders WHERE total < 10;\n" +
			"INSERT INTO notes.log SELECT CONCAT('orders ', COUNT(*)) FROM orders;\n",
	}
	for i, tc := range escapes {
		scripts[scriptName(i)] = "UPDATE customers SET name = 'masked';\n" + tc.stmt + ";\n"
	}
	b := mariaSource(t, e, scripts)
	version := majorMinor(e.Version())

	rec := &recorder{}
	_, root, _, err := mariaBuild(t, set, b.root, "name: masked\nengine: mariadb\nversion: \""+version+"\"\nsourceType: backup\n"+
		"backups:\n  - path: all.sql.gz\ninitialDatabaseName: notes\npreScript: pre.sql\npostScript: post.sql\n", rec)
	if err != nil {
		t.Fatalf("%v\n%s", err, rec.logText())
	}
	inst := mariaStart(t, e, root)
	for _, c := range []struct{ db, sql, want string }{
		{"shop", "SELECT GROUP_CONCAT(name ORDER BY id), COUNT(email) FROM customers", "customer 1,customer 2,customer 3\t0"},
		{"notes", "SELECT GROUP_CONCAT(what ORDER BY what) FROM log", "orders 2,pre"},
		{"", "SELECT COUNT(*) FROM mysql.global_priv WHERE User LIKE 'dataimage%'", "0"},
	} {
		if got := mariaQuery(t, inst, c.db, c.sql); got != c.want {
			t.Fatalf("%s: %q, want %q", c.sql, got, c.want)
		}
	}

	for i, tc := range escapes {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			_, _, run, err := mariaBuild(t, set, b.root, "name: evil\nengine: mariadb\nversion: \""+version+"\"\nsourceType: backup\n"+
				"backups:\n  - path: shop.sql\ninitialDatabaseName: shop\npostScript: "+scriptName(i)+"\n", rec)
			var se *StepError
			if !errors.As(err, &se) || se.Step != StepPostScript || !errors.Is(err, engine.ErrScript) {
				t.Fatalf("Build = %v; want the postscript step to fail with a script error", err)
			}
			if want := "builder: step postscript failed: postScript " + scriptName(i) + " line 2: "; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Build = %v; want %q and %q", err, want, tc.msg)
			}
			if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the script created %s (%v)", marker, err)
			}
			if pids := enginetest.ServersUsing(t, run); len(pids) != 0 {
				t.Fatalf("servers left running: %v", pids)
			}
		})
	}
}
