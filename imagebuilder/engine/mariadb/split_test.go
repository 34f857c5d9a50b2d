package mariadb

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder/engine/internal/scriptsplit"
)

func TestSplitScript(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want []statement
	}{
		{"empty", "", nil},
		{"only comments", "-- a\n# b\n/* c */\n", nil},
		{"two statements", "SELECT 1;\nSELECT 2;\n", []statement{{"SELECT 1", 1}, {"SELECT 2", 2}}},
		{"last without delimiter", "SELECT 1;\n\nSELECT\n 2", []statement{{"SELECT 1", 1}, {"SELECT\n 2", 3}}},
		{"empty statements", ";; SELECT 1 ;;", []statement{{"SELECT 1 ", 1}}},
		{"quotes", "SELECT 'a;''b\\';c', \"d;\\\"e\", `f;``g`;\nSELECT 2;",
			[]statement{{"SELECT 'a;''b\\';c', \"d;\\\"e\", `f;``g`", 1}, {"SELECT 2", 2}}},
		{"backslash in a quoted identifier is a character", "SELECT 1 AS `a\\`; SELECT 2;", []statement{{"SELECT 1 AS `a\\`", 1}, {"SELECT 2", 1}}},
		{"comments", "# x;\nUPDATE t -- y;\n SET a = 1 /* z; */ # w;\n;\nSELECT 3--1;",
			[]statement{{"UPDATE t -- y;\n SET a = 1 /* z; */ # w;\n", 2}, {"SELECT 3--1", 5}}},
		{"executable comments are statements", "/*!40101 SET NAMES utf8mb4 */;\n/*M!100616 SET NOTE_VERBOSITY=0 */;\n/* not */",
			[]statement{{"/*!40101 SET NAMES utf8mb4 */", 1}, {"/*M!100616 SET NOTE_VERBOSITY=0 */", 2}}},
		{"delimiter", "DELIMITER $$\nCREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND$$\ndelimiter ;\nCALL p();\n",
			[]statement{{"CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND", 2}, {"CALL p()", 8}}},
		{"two-character delimiter", "DELIMITER //\nSELECT 1; SELECT 2//\n  DELIMITER ;\nSELECT 3;",
			[]statement{{"SELECT 1; SELECT 2", 2}, {"SELECT 3", 4}}},
		{"delimiter as a word inside a statement", "SELECT delimiter FROM t;", []statement{{"SELECT delimiter FROM t", 1}}},
		{"NULL literal", "INSERT INTO t VALUES (\\N, 'a');", []statement{{"INSERT INTO t VALUES (\\N, 'a')", 1}}},
		{"USE and HELP are SQL", "USE shop;\nhelp 'contents';", []statement{{"USE shop", 1}, {"help 'contents'", 2}}},
		{"client command names inside a statement", "SELECT system, source FROM status;", []statement{{"SELECT system, source FROM status", 1}}},
		{"lines counted in quotes", "SELECT 'a\nb', `c\nd`, /*\n*/ 1;\nSELECT 2;", []statement{{"SELECT 'a\nb', `c\nd`, /*\n*/ 1", 1}, {"SELECT 2", 5}}},
		{"non-ASCII", "UPDATE clientes SET año = 'é;';", []statement{{"UPDATE clientes SET año = 'é;'", 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := splitScript([]byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("splitScript(%q) =\n%+v\nwant\n%+v", tc.src, got, tc.want)
			}
		})
	}
}

func TestSplitScriptRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		line      int
		msg       string
	}{
		{"system", "SELECT 1;\nsystem touch /tmp/x\n", 2, "system is a command of the mariadb client, not SQL"},
		{"system in capitals after a comment", "-- masking\n  SYSTEM ls;", 2, "system is a command of the mariadb client"},
		{"source", "source /etc/passwd", 1, "source is a command of the mariadb client"},
		{"backslash shell", "SELECT 1;\n\n\\! touch /tmp/x\n", 3, `\! is a command of the mariadb client`},
		{"backslash source after a statement", "SELECT 1 \\. /tmp/x", 1, `\. is a command of the mariadb client`},
		{"tee", "tee /tmp/out;", 1, "tee is a command of the mariadb client"},
		{"connect", "UPDATE t SET a = 1;\nconnect other;", 2, "connect is a command of the mariadb client"},
		{"delimiter without one", "DELIMITER\nSELECT 1;", 1, "DELIMITER takes one delimiter"},
		{"delimiter with a backslash", "DELIMITER \\\\\nSELECT 1;", 1, "may not hold a backslash or a quote"},
		{"unterminated string", "SELECT 1;\nSELECT 'a\\';\n", 2, "the string that starts here never ends"},
		{"unterminated identifier", "SELECT `a;\n", 1, "the quoted identifier that starts here never ends"},
		{"unterminated comment", "SELECT 1; /* x\n", 1, "the /* comment that starts here never ends"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := splitScript([]byte(tc.src))
			var se *scriptsplit.Error
			if !errors.As(err, &se) || se.Line != tc.line || !strings.Contains(se.Msg, tc.msg) {
				t.Fatalf("splitScript(%q) = %v (%+v); want line %d: %q", tc.src, err, se, tc.line, tc.msg)
			}
		})
	}
}

// FuzzSplitScript checks that splitting never panics and that statements come in order, at the
// lines they are on, non-empty and without a client command at their start.
func FuzzSplitScript(f *testing.F) {
	for _, s := range []string{
		"SELECT 1;", "DELIMITER $$\nBEGIN SELECT 1; END$$\n", "SELECT 'a\\'';", "/*!40101 SET x=1*/;", "system ls",
		"INSERT INTO t VALUES (\\N);", "-- c\n#d\nSELECT 1--2", "SELECT `a``b`;",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		stmts, err := splitScript(src)
		if err != nil {
			var se *scriptsplit.Error
			if !errors.As(err, &se) || se.Line < 1 || se.Line > strings.Count(string(src), "\n")+1 {
				t.Fatalf("error %v: not a *scriptsplit.Error with a line of the script", err)
			}
			return
		}
		for _, s := range stmts {
			if strings.Trim(s.text, " \t\r\n\f\v") == "" {
				t.Fatalf("empty statement on line %d", s.line)
			}
			j := 0
			for j < len(s.text) && isNameByte(s.text[j]) {
				j++
			}
			if clientCommands[strings.ToLower(s.text[:j])] {
				t.Fatalf("statement %q starts with a client command", s.text)
			}
			at := strings.Index(string(src), s.text)
			if at < 0 {
				t.Fatalf("statement %q is not in the script", s.text)
			}
		}
	})
}
