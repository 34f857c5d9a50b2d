package mariadb_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb/internal/mariadbtest"
)

// scriptSetup is the instance the script tests run in: databases app, shop and m_sql (whose
// name, as a grant pattern, would match mysql).
const scriptSetup = `
CREATE DATABASE app;
CREATE TABLE app.people (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100));
INSERT INTO app.people VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com');
CREATE TABLE app.audit (what VARCHAR(20));
INSERT INTO app.audit VALUES ('secret');
CREATE TABLE app.loaded (line TEXT);
CREATE DATABASE shop;
CREATE TABLE shop.orders (id INT, customer VARCHAR(50));
INSERT INTO shop.orders VALUES (1, 'Ada');
CREATE DATABASE m_sql;
`

// scriptInstance starts a fresh instance with scriptSetup, and a directory the server's user
// may write, for markers that an escape would create.
func scriptInstance(t *testing.T) (engine.Instance, string) {
	t.Helper()
	in, _ := mariadbtest.Instance(t, mariadbtest.Engine(t), engine.InitOptions{}, engine.StartOptions{})
	mariadbtest.Exec(t, in, "", scriptSetup)
	dir := mariadbtest.Root(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return in, dir
}

// scriptAccounts lists the scripts' accounts left, with whether each is locked.
func scriptAccounts(t *testing.T, in engine.Instance) string {
	t.Helper()
	return mariadbtest.Query(t, in, "", "SELECT GROUP_CONCAT(CONCAT(User, ' ', IFNULL(JSON_VALUE(Priv, '$.account_locked'), 0))) "+
		"FROM mysql.global_priv WHERE User LIKE 'dataimage\\_script\\_%'")
}

func TestRunScriptMasks(t *testing.T) {
	t.Parallel()
	in, _ := scriptInstance(t)
	script := `-- Masking, as a definition's postScript would, in two databases.
UPDATE people SET name = CONCAT('person ', id);
DELIMITER $$
CREATE FUNCTION mask(s VARCHAR(100)) RETURNS VARCHAR(100) DETERMINISTIC
BEGIN
  RETURN CONCAT(LEFT(s, 1), '***');
END$$
DELIMITER ;
UPDATE people SET email = mask(email);
DROP FUNCTION mask;
TRUNCATE audit;
ALTER TABLE people ADD COLUMN masked BOOL DEFAULT 1;
INSERT INTO loaded SELECT LOAD_FILE('/etc/passwd');
USE shop;
UPDATE orders SET customer = 'masked';
START TRANSACTION;
INSERT INTO app.audit VALUES ('masked');
COMMIT;
`
	if err := in.RunScript(ctx(t), "app", engine.Script{Name: "postScript post.sql", SQL: []byte(script)}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ db, sql, want string }{
		{"app", "SELECT GROUP_CONCAT(CONCAT_WS(' ', name, email, masked) ORDER BY id) FROM people", "person 1 a*** 1,person 2 g*** 1"},
		{"app", "SELECT GROUP_CONCAT(what) FROM audit", "masked"},
		{"app", "SELECT COUNT(*), COUNT(line) FROM loaded", "1\t0"}, // LOAD_FILE without FILE reads nothing
		{"shop", "SELECT customer FROM orders", "masked"},
	} {
		if got := mariadbtest.Query(t, in, c.db, c.sql); got != c.want {
			t.Fatalf("%s: %q, want %q", c.sql, got, c.want)
		}
	}
	if got := scriptAccounts(t, in); got != "NULL" {
		t.Fatalf("script accounts left: %q", got)
	}

	// A script that leaves a view keeps its account, locked, so that the view works.
	if err := in.RunScript(ctx(t), "shop", engine.Script{Name: "postScript view.sql", SQL: []byte("CREATE VIEW masked_orders AS SELECT id FROM orders;\n")}); err != nil {
		t.Fatal(err)
	}
	if got := scriptAccounts(t, in); !strings.HasPrefix(got, "dataimage_script_") || !strings.HasSuffix(got, " 1") || strings.Contains(got, ",") {
		t.Fatalf("script accounts left: %q, want one, locked", got)
	}
	if got := mariadbtest.Query(t, in, "shop", "SELECT COUNT(*) FROM masked_orders"); got != "1" {
		t.Fatalf("the script's view: %q", got)
	}
}

func TestRunScriptRefusesEscapes(t *testing.T) {
	t.Parallel()
	in, dir := scriptInstance(t)
	marker := filepath.Join(dir, "marker")
	ran := 0
	for _, tc := range []struct {
		name, stmt string
		refused    bool // by the splitter, before anything runs
		msg        string
	}{
		{"client shell command", "system touch " + marker, true, "system is a command of the mariadb client"},
		{"client shell command, backslash", `\! touch ` + marker, true, `\! is a command of the mariadb client`},
		{"client source", "source /etc/passwd", true, "source is a command of the mariadb client"},
		{"outfile", "SELECT 'x' INTO OUTFILE '" + marker + "'", false, "Access denied"},
		{"dumpfile", "SELECT 'x' INTO DUMPFILE '" + marker + "'", false, "Access denied"},
		{"load data infile", "LOAD DATA INFILE '/etc/passwd' INTO TABLE loaded", false, "Access denied"},
		{"load data local infile", "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE loaded", false, "local file '/etc/passwd' is not registered"},
		{"global settings", "SET GLOBAL general_log_file = '" + marker + "'", false, "Error 1227"},
		{"grant FILE", "GRANT FILE ON *.* TO CURRENT_USER", false, "Access denied"},
		{"create an account", "CREATE USER evil IDENTIFIED BY 'x'", false, "Access denied"},
		{"install a plugin", "INSTALL SONAME 'ha_connect'", false, "INSERT command denied"},
		{"function from a library", "CREATE FUNCTION sys_exec RETURNS INT SONAME 'lib_mysqludf_sys.so'", false, "Access denied"},
		{"the mysql database", "UPDATE mysql.global_priv SET Priv = '{}'", false, "denied"},
		{"mysql through a look-alike grant", "SELECT COUNT(*) FROM mysql.db", false, "denied"},
		{"another definer", "CREATE DEFINER = root@localhost VIEW v AS SELECT 1", false, "Error 1227"},
		{"create a database", "CREATE DATABASE evil", false, "Access denied"},
		{"shutdown", "SHUTDOWN", false, "Error 1227"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := "INSERT INTO audit VALUES ('ran');\n" + tc.stmt + ";\nINSERT INTO audit VALUES ('after');\n"
			err := in.RunScript(ctx(t), "app", engine.Script{Name: "preScript evil.sql", SQL: []byte(script)})
			var se *engine.ScriptError
			if !errors.As(err, &se) || !errors.Is(err, engine.ErrScript) {
				t.Fatalf("RunScript = %v, want a *engine.ScriptError", err)
			}
			if se.Line != 2 || !strings.Contains(err.Error(), "preScript evil.sql line 2: ") || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("RunScript = %v; want line 2 and %q", err, tc.msg)
			}
			if tc.refused != errors.Is(err, engine.ErrScriptRefused) {
				t.Fatalf("RunScript = %v; refused before running: %v", err, errors.Is(err, engine.ErrScriptRefused))
			}
			if !tc.refused {
				ran++
				if !strings.Contains(err.Error(), engine.ShortStatement(tc.stmt)) {
					t.Fatalf("RunScript = %v; the statement is not named", err)
				}
			}
			want := strconv.Itoa(ran) + "\t0"
			if got := mariadbtest.Query(t, in, "app", "SELECT COUNT(IF(what = 'ran', 1, NULL)), COUNT(IF(what = 'after', 1, NULL)) FROM audit"); got != want {
				t.Fatalf("audit = %q, want %q: a refused script runs nothing, a failing one stops", got, want)
			}
			if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the escape created %s (%v)", marker, err)
			}
			if got := scriptAccounts(t, in); got != "NULL" {
				t.Fatalf("script accounts left: %q", got)
			}
		})
	}
	if got := mariadbtest.Query(t, in, "", "SELECT COUNT(*) FROM mysql.user WHERE User = 'evil'"); got != "0" {
		t.Fatalf("an account was created: %s", got)
	}
}

func TestRunScriptFailures(t *testing.T) {
	t.Parallel()
	in, _ := scriptInstance(t)
	for _, tc := range []struct {
		name, script string
		line         int
		msg          string
	}{
		{"server error", "SELECT 1;\n\nSELECT * FROM nosuch;\n", 3, "Error 1146 (42S02): Table 'app.nosuch' doesn't exist"},
		{"open transaction", "START TRANSACTION;\nUPDATE people SET name = 'x';\n", 0, "the script ended inside a transaction"},
		{"autocommit off", "SET autocommit = 0;\nUPDATE people SET name = 'x';\n", 0, "the script ended inside a transaction"},
		{"quoting rules", "SET sql_mode = 'ANSI';\n", 1, "scripts may not set sql_mode ANSI_QUOTES"},
		{"unterminated string", "SELECT 1;\nSELECT 'x;\n", 2, "the string that starts here never ends"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := in.RunScript(ctx(t), "app", engine.Script{Name: "postScript p.sql", SQL: []byte(tc.script)})
			var se *engine.ScriptError
			if !errors.As(err, &se) || se.Line != tc.line || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("RunScript = %v; want line %d and %q", err, tc.line, tc.msg)
			}
			if got := scriptAccounts(t, in); got != "NULL" {
				t.Fatalf("script accounts left: %q", got)
			}
		})
	}
	if got := mariadbtest.Query(t, in, "app", "SELECT GROUP_CONCAT(name ORDER BY id) FROM people"); got != "Ada,Grace" {
		t.Fatalf("people = %q: the open transactions were rolled back", got)
	}
}

// MariaDB 10.11 gives every account what PUBLIC has; an image (a restored mysql database) may
// grant PUBLIC FILE or rights on mysql: then no script runs.
func TestRunScriptRefusesWhatPUBLICHas(t *testing.T) {
	t.Parallel()
	in, dir := scriptInstance(t)
	marker := filepath.Join(dir, "marker")
	script := "SELECT 'x' INTO OUTFILE '" + marker + "';\n"
	for _, tc := range []struct{ grant, revoke, msg string }{
		{"GRANT FILE ON *.* TO PUBLIC", "REVOKE FILE ON *.* FROM PUBLIC", "grants PUBLIC global privileges"},
		{"GRANT INSERT ON `m%`.* TO PUBLIC", "REVOKE INSERT ON `m%`.* FROM PUBLIC", "grants PUBLIC privileges on the mysql database"},
		{"GRANT INSERT ON mysql.plugin TO PUBLIC", "REVOKE INSERT ON mysql.plugin FROM PUBLIC", "grants PUBLIC privileges on tables of the mysql database"},
	} {
		mariadbtest.Exec(t, in, "", tc.grant+";\n")
		err := in.RunScript(ctx(t), "app", engine.Script{Name: "postScript p.sql", SQL: []byte(script)})
		if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "the script is not run") {
			t.Fatalf("%s: RunScript = %v, want %q", tc.grant, err, tc.msg)
		}
		if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: the script wrote %s (%v)", tc.grant, marker, err)
		}
		if got := scriptAccounts(t, in); got != "NULL" {
			t.Fatalf("script accounts left: %q", got)
		}
		mariadbtest.Exec(t, in, "", tc.revoke+";\n")
	}
}
