package postgres

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"regexp"
	"slices"
	"strings"
)

// This file finds the roles a single-database dump refers to (owners, grantees, grantors,
// policy and user mapping roles), so that RestoreLogical can create the ones the instance
// lacks: pg_dump does not dump roles, and a restore that keeps ownership fails on the first
// ALTER ... OWNER TO a missing role.
//
// It reads pg_dump's plain SQL (pg_restore --schema-only renders a custom archive as such), in
// which every statement naming a role is on one line; COPY data is skipped.

// maxScanLine is the longest line the scan looks into; longer lines are data.
const maxScanLine = 64 << 10

// scanRoles returns the roles the pg_dump SQL read from r refers to, sorted, without PUBLIC and
// the CURRENT_USER-like keywords.
func scanRoles(r io.Reader) ([]string, error) {
	roles := map[string]bool{}
	br := bufio.NewReaderSize(r, maxScanLine)
	inCopy, lineStart := false, true
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			whole := chunk[len(chunk)-1] == '\n'
			if lineStart && whole {
				line := string(bytes.TrimRight(chunk, "\r\n"))
				switch {
				case inCopy:
					inCopy = line != `\.`
				case strings.HasPrefix(line, "COPY ") && strings.HasSuffix(line, "FROM stdin;"):
					inCopy = true
				default:
					for _, role := range lineRoles(line) {
						roles[role] = true
					}
				}
			}
			lineStart = whole
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			out := make([]string, 0, len(roles))
			for r := range roles {
				out = append(out, r)
			}
			slices.Sort(out)
			return out, nil
		default:
			return nil, err
		}
	}
}

// token is one lexical token of an SQL line.
type token struct {
	text   string
	quoted bool // a "quoted identifier" (text unquoted) or a 'string' (text unquoted)
	str    bool // a 'string' literal
}

// is reports whether t is the unquoted keyword kw (case-insensitive).
func (t token) is(kw string) bool { return !t.quoted && strings.EqualFold(t.text, kw) }

// tokenize splits an SQL line into words, quoted identifiers, string literals and single
// punctuation characters, dropping a trailing -- comment.
func tokenize(line string) []token {
	var toks []token
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '-' && strings.HasPrefix(line[i:], "--"):
			return toks
		case c == '"' || c == '\'':
			var b strings.Builder
			j := i + 1
			for j < len(line) {
				if line[j] == c {
					if j+1 < len(line) && line[j+1] == c {
						b.WriteByte(c)
						j += 2
						continue
					}
					break
				}
				b.WriteByte(line[j])
				j++
			}
			toks = append(toks, token{text: b.String(), quoted: true, str: c == '\''})
			i = j + 1
		case strings.IndexByte(",;().=", c) >= 0:
			toks = append(toks, token{text: string(c)})
			i++
		default:
			j := i
			for j < len(line) && strings.IndexByte(" \t\r,;().=\"'", line[j]) < 0 {
				j++
			}
			toks = append(toks, token{text: line[i:j]})
			i = j
		}
	}
	return toks
}

// lineRoles returns the roles one line of pg_dump SQL names.
func lineRoles(line string) []string {
	if line == "" || line[0] == '-' || line[0] == '\\' || line[0] == ' ' {
		return nil
	}
	toks := tokenize(line)
	if len(toks) < 3 {
		return nil
	}
	var roles []string
	add := func(ts []token) {
		for _, t := range ts {
			if name, ok := roleName(t); ok {
				roles = append(roles, name)
			}
		}
	}
	switch {
	case toks[0].is("ALTER") && toks[1].is("DEFAULT") && toks[2].is("PRIVILEGES"):
		// ALTER DEFAULT PRIVILEGES [FOR ROLE r, ...] [IN SCHEMA s] GRANT|REVOKE ...
		rest := toks[3:]
		if len(rest) > 2 && rest[0].is("FOR") && (rest[1].is("ROLE") || rest[1].is("USER")) {
			end := 2
			for end < len(rest) && !rest[end].is("IN") && !rest[end].is("GRANT") && !rest[end].is("REVOKE") {
				end++
			}
			add(rest[2:end])
			rest = rest[end:]
		}
		for len(rest) > 0 && !rest[0].is("GRANT") && !rest[0].is("REVOKE") {
			rest = rest[1:]
		}
		add(grantRoles(rest))
	case toks[0].is("ALTER"):
		// ALTER <object> ... OWNER TO r;
		for j := 1; j+2 < len(toks); j++ {
			if toks[j].is("OWNER") && toks[j+1].is("TO") {
				add(toks[j+2 : j+3])
			}
		}
	case toks[0].is("GRANT"), toks[0].is("REVOKE"):
		add(grantRoles(toks))
	case toks[0].is("SET") && toks[1].is("SESSION") && toks[2].is("AUTHORIZATION") && len(toks) > 3:
		// pg_dump writes the name as a string literal.
		if t := toks[3]; t.str && t.text != "" {
			roles = append(roles, t.text)
		} else if !t.is("DEFAULT") {
			add(toks[3:4])
		}
	case toks[0].is("SET") && toks[1].is("ROLE"):
		if !toks[2].is("NONE") {
			add(toks[2:3])
		}
	case toks[0].is("CREATE") && toks[1].is("POLICY"):
		// CREATE POLICY p ON t [AS ...] [FOR cmd] [TO r, ...] [USING (...)] [WITH CHECK (...)];
		for j := 2; j < len(toks); j++ {
			if toks[j].is("TO") {
				end := j + 1
				for end < len(toks) && !toks[end].is("USING") && !toks[end].is("WITH") && toks[end].text != ";" {
					end++
				}
				add(toks[j+1 : end])
				break
			}
		}
	case toks[0].is("CREATE") && toks[1].is("USER") && toks[2].is("MAPPING"):
		// CREATE USER MAPPING FOR r SERVER s ...
		for j := 3; j+1 < len(toks); j++ {
			if toks[j].is("FOR") {
				add(toks[j+1 : j+2])
				break
			}
		}
	}
	return roles
}

// grantRoles returns the role tokens of a GRANT or REVOKE statement: the grantees (after the
// last TO or FROM), the grantor (GRANTED BY), and for a role membership (no ON) the granted
// roles.
func grantRoles(toks []token) []token {
	if len(toks) == 0 {
		return nil
	}
	kw := "TO"
	if toks[0].is("REVOKE") {
		kw = "FROM"
	}
	at, on := -1, false
	for j, t := range toks {
		if t.is("ON") {
			on = true
		}
		if t.is(kw) {
			at = j
		}
	}
	if at < 0 {
		return nil
	}
	var out []token
	if !on {
		// GRANT r1, r2 TO ...: the granted roles are roles too.
		start := 1
		if toks[0].is("REVOKE") && len(toks) > 3 && (toks[1].is("ADMIN") || toks[1].is("INHERIT") || toks[1].is("SET")) && toks[2].is("OPTION") && toks[3].is("FOR") {
			start = 4
		}
		out = append(out, toks[start:at]...)
	}
	for j := at + 1; j < len(toks); j++ {
		t := toks[j]
		switch {
		case t.is("WITH"), t.is("CASCADE"), t.is("RESTRICT"), t.text == ";" && !t.quoted:
			return out
		case t.is("GRANTED") && j+2 < len(toks) && toks[j+1].is("BY"):
			return append(out, toks[j+2])
		}
		out = append(out, t)
	}
	return out
}

// roleName returns the role a token names: a quoted identifier as written, a bare word folded
// to lower case; not punctuation, keywords standing for roles (PUBLIC, CURRENT_USER, ...) or
// the GROUP noise word.
func roleName(t token) (string, bool) {
	if t.str {
		return "", false
	}
	if t.quoted {
		return t.text, t.text != ""
	}
	switch strings.ToUpper(t.text) {
	case "PUBLIC", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE", "USER", "GROUP", "NONE":
		return "", false
	}
	// pg_dump quotes every name that is not a plain identifier; anything else is not a name.
	if !bareIdentRE.MatchString(t.text) {
		return "", false
	}
	return strings.ToLower(t.text), true
}

// bareIdentRE matches an identifier that needs no quotes.
var bareIdentRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
