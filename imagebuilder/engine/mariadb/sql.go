package mariadb

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxDatabaseName is MariaDB's and MySQL's limit on a database name, in characters.
const maxDatabaseName = 64

// checkDatabaseName refuses names the server would refuse or mangle: empty, too long, invalid
// UTF-8, NUL, '/', '\' or '.' (database names are directory names), or trailing spaces.
func checkDatabaseName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty database name")
	case !utf8.ValidString(name):
		return fmt.Errorf("database name %q is not valid UTF-8", name)
	case utf8.RuneCountInString(name) > maxDatabaseName:
		return fmt.Errorf("database name %q is longer than %d characters", name, maxDatabaseName)
	case strings.ContainsAny(name, "\x00/\\."):
		return fmt.Errorf("database name %q contains NUL, '/', '\\' or '.'", name)
	case strings.HasSuffix(name, " "):
		return fmt.Errorf("database name %q ends with a space", name)
	}
	return nil
}

// quoteIdent quotes an identifier with backquotes, doubling the backquotes it holds.
func quoteIdent(name string) string {
	return "`" + strings.ReplaceAll(name, "`", "``") + "`"
}

// quoteString quotes s as a string literal for a session whose sql_mode has no
// NO_BACKSLASH_ESCAPES (scripts that use it set sql_mode first).
func quoteString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\x00", `\0`, "\x1a", `\Z`)
	return "'" + r.Replace(s) + "'"
}
