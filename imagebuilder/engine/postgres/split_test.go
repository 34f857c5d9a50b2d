package postgres

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine/internal/scriptsplit"
)

func TestSplitScript(t *testing.T) {
	type st struct {
		text string
		line int
		data string // COPY data; "-" for a statement that is not COPY FROM STDIN
	}
	plain := func(text string, line int) st { return st{text, line, "-"} }
	for _, tc := range []struct {
		name string
		src  string
		want []st
	}{
		{"empty", "", nil},
		{"only comments", "-- a\n/* b */\n  \n", nil},
		{"two statements", "SELECT 1;\nSELECT 2;\n", []st{plain("SELECT 1", 1), plain("SELECT 2", 2)}},
		{"last without semicolon", "SELECT 1;\n\n  SELECT\n  2\n", []st{plain("SELECT 1", 1), plain("SELECT\n  2\n", 3)}},
		{"empty statements", ";;SELECT 1;;", []st{plain("SELECT 1", 1)}},
		{"comments before are dropped, inside kept", "-- x;\n/* y; */ UPDATE t -- z;\n SET a = 1;", []st{plain("UPDATE t -- z;\n SET a = 1", 2)}},
		{"nested comment", "/* a /* b; */ c; */ SELECT 1;", []st{plain("SELECT 1", 1)}},
		{"strings", "SELECT 'a;b''c', \"x;\"\"y\";\nSELECT 2;", []st{plain(`SELECT 'a;b''c', "x;""y"`, 1), plain("SELECT 2", 2)}},
		{"backslash in a standard string is a character", `SELECT 'a\'; SELECT 2;`, []st{plain(`SELECT 'a\'`, 1), plain("SELECT 2", 1)}},
		{"escape string", `SELECT E'a\';b', e'\\'; SELECT 2;`, []st{plain(`SELECT E'a\';b', e'\\'`, 1), plain("SELECT 2", 1)}},
		{"unicode string", `SELECT U&'d\0061t;a', U&"x;y"; SELECT 2;`, []st{plain(`SELECT U&'d\0061t;a', U&"x;y"`, 1), plain("SELECT 2", 1)}},
		{"a word ending in e is not an escape string", `SELECT type'a;b'; SELECT 2;`, []st{plain(`SELECT type'a;b'`, 1), plain("SELECT 2", 1)}},
		{"dollar quotes", "CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n  RETURN 1;\nEND\n$$ LANGUAGE plpgsql;\nDO $body$ BEGIN PERFORM 1; END $body$;",
			[]st{plain("CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n  RETURN 1;\nEND\n$$ LANGUAGE plpgsql", 1), plain("DO $body$ BEGIN PERFORM 1; END $body$", 6)}},
		{"dollar quote with another tag inside", "SELECT $a$ $b$ ; $a$; SELECT 2;", []st{plain("SELECT $a$ $b$ ; $a$", 1), plain("SELECT 2", 1)}},
		{"parameters and dollars in names", "PREPARE p AS SELECT $1; SELECT a$b$ FROM t;", []st{plain("PREPARE p AS SELECT $1", 1), plain("SELECT a$b$ FROM t", 1)}},
		{"parentheses", "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); DELETE FROM v);\nSELECT 2;",
			[]st{plain("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); DELETE FROM v)", 1), plain("SELECT 2", 2)}},
		{"begin atomic", "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC\n  INSERT INTO t VALUES (1);\n  SELECT CASE WHEN true THEN 1 END;\nEND;\nSELECT 2;",
			[]st{plain("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC\n  INSERT INTO t VALUES (1);\n  SELECT CASE WHEN true THEN 1 END;\nEND", 1), plain("SELECT 2", 5)}},
		{"begin outside a routine is a transaction", "BEGIN;\nUPDATE t SET a = 1;\nCOMMIT;", []st{plain("BEGIN", 1), plain("UPDATE t SET a = 1", 2), plain("COMMIT", 3)}},
		{"copy from stdin", "COPY t (a, b) FROM STDIN;\n1\tx\n2\ty;\n\\.\nSELECT 2;\n",
			[]st{{"COPY t (a, b) FROM STDIN", 1, "1\tx\n2\ty;\n"}, plain("SELECT 2", 5)}},
		{"copy from stdin with options, data to the end", "copy t from stdin with (format csv);\n1,x\r\n",
			[]st{{"copy t from stdin with (format csv)", 1, "1,x\r\n"}}},
		{"copy from stdin, \\. with CR", "COPY t FROM stdin;\r\n1\r\n\\.\r\nSELECT 2;",
			[]st{{"COPY t FROM stdin", 1, "1\r\n"}, plain("SELECT 2", 4)}},
		{"copy to stdout", "COPY (SELECT * FROM stdin_t) TO STDOUT; SELECT 2;", []st{plain("COPY (SELECT * FROM stdin_t) TO STDOUT", 1), plain("SELECT 2", 1)}},
		{"lines counted in quotes and comments", "SELECT 'a\nb', $$\n$$, \"c\nd\" /*\n*/;\n-- x\nSELECT 2;",
			[]st{plain("SELECT 'a\nb', $$\n$$, \"c\nd\" /*\n*/", 1), plain("SELECT 2", 7)}},
		{"non-ASCII names", "UPDATE clientes SET año = 1, 名前 = 'é;';", []st{plain("UPDATE clientes SET año = 1, 名前 = 'é;'", 1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := splitScript([]byte(tc.src))
			require.NoError(t, err)
			var have []st
			for _, s := range got {
				data := "-"
				if s.copyIn {
					data = string(s.data)
				}
				have = append(have, st{s.text, s.line, data})
				require.Equal(t, s.text, tc.src[s.offset:s.offset+len(s.text)], "offset")
			}
			require.Equal(t, tc.want, have)
		})
	}
}

func TestSplitScriptRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		line      int
		msg       string
	}{
		{"shell", "SELECT 1;\n\\! touch /tmp/x\n", 2, `\! is a psql meta-command`},
		{"meta-command after a statement", "SELECT 1 \\gexec\n", 1, `\gexec is a psql meta-command`},
		{"connect", "UPDATE t SET a = 1;\n\n\\c other\n", 3, `\c is a psql meta-command`},
		{"copy", "\\copy t from '/etc/passwd'", 1, `\copy is a psql meta-command`},
		{"include", "/* x */ \\i /etc/passwd", 1, `\i is a psql meta-command`},
		{"unterminated string", "SELECT 1;\nSELECT 'abc;\n", 2, "the string that starts here never ends"},
		{"unterminated identifier", "SELECT \"abc;\n", 1, "the quoted identifier that starts here never ends"},
		{"unterminated escape string", "SELECT E'abc\\';\n", 1, "the string that starts here never ends"},
		{"unterminated comment", "SELECT 1; /* /* */\n", 1, "the /* comment that starts here never ends"},
		{"unterminated dollar quote", "DO $x$ BEGIN END $y$;", 1, "the dollar-quoted string $x$ that starts here never ends"},
		{"copy data on the statement's line", "COPY t FROM STDIN; 1\n", 1, "COPY ... FROM STDIN takes its data from the lines after it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := splitScript([]byte(tc.src))
			var se *scriptsplit.Error
			require.ErrorAs(t, err, &se)
			require.Equal(t, tc.line, se.Line)
			require.Contains(t, se.Msg, tc.msg)
		})
	}
}

func TestLinesBefore(t *testing.T) {
	text := "SELECT\n  é,\n  nosuch"
	pos := len([]rune(text[:strings.Index(text, "nosuch")])) + 1
	require.Equal(t, 2, linesBefore(text, pos))
	require.Equal(t, 0, linesBefore(text, 1))
	require.Equal(t, 0, linesBefore(text, 0))
}

// FuzzSplitScript checks that splitting never panics, that statements come in order inside
// the script, at the lines they are on, and that a script split without error has no
// meta-command outside what it keeps as statements and data.
func FuzzSplitScript(f *testing.F) {
	for _, s := range []string{
		"SELECT 1;", "COPY t FROM STDIN;\n1\n\\.\n", "DO $$ BEGIN END $$;", "SELECT E'\\'';", "/* /* */ */ SELECT 1",
		"CREATE FUNCTION f() BEGIN ATOMIC SELECT 1; END;", "\\! ls", "SELECT 'a' \\g", "SELECT $1, a$b",
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
		last := 0
		for _, s := range stmts {
			if s.offset < last || s.offset+len(s.text) > len(src) || string(src[s.offset:s.offset+len(s.text)]) != s.text {
				t.Fatalf("statement %q at %d is not where it says", s.text, s.offset)
			}
			if want := strings.Count(string(src[:s.offset]), "\n") + 1; s.line != want {
				t.Fatalf("statement %q on line %d, says %d", s.text, want, s.line)
			}
			if strings.Trim(s.text, " \t\r\n\f\v") == "" {
				t.Fatalf("empty statement at %d", s.offset)
			}
			last = s.offset + len(s.text)
		}
	})
}
