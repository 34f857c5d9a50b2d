package mariadb

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder/engine/internal/scriptsplit"
)

// This file splits a definition's script into statements the way the mariadb client does, so
// that RunScript can send them one at a time through the driver and name the line of the one
// that fails; DELIMITER works as in the client, and the client's own commands, which only the
// client would run, are refused.

// statement is one statement of a script.
type statement struct {
	// text is the statement without its delimiter; comments inside it are kept, those before
	// it are not (but /*! ... */, which the server runs, is part of the statement).
	text string
	// line is the 1-based line of the statement's first character.
	line int
}

// clientCommands are the mariadb (mysql) client's commands by name: none is SQL the server
// knows (USE and HELP are, and go through). DELIMITER is handled by the splitter.
var clientCommands = map[string]bool{
	"system": true, "source": true, "connect": true, "pager": true, "nopager": true, "tee": true,
	"notee": true, "exit": true, "quit": true, "charset": true, "warnings": true, "nowarning": true,
	"prompt": true, "rehash": true, "status": true, "ego": true, "go": true, "print": true,
	"clear": true, "edit": true, "resetconnection": true, "query_attributes": true, "ssl_session_data_print": true,
}

// splitter is the state of one splitScript call.
type splitter struct {
	src   []byte
	i     int // the next byte to read
	line  int // the line of src[i]
	delim string
	// start is the offset of the statement's first character (-1 before it), startLine its line.
	start, startLine int
	out              []statement
}

// splitScript splits a MariaDB or MySQL script into statements as the mariadb client does: the
// delimiter (";" until a DELIMITER line changes it) ends a statement except inside quotes
// ('...', "...", `...`, with backslash escapes in strings) and comments (#, "-- ", /* */); a
// last statement without a delimiter counts. Strings are read as with the default sql_mode
// (backslashes escape; NO_BACKSLASH_ESCAPES is not followed).
//
// The client's commands are refused with their line: a backslash command outside quotes (\!,
// \., \u, ...; \N, the NULL literal, is SQL) and a statement that starts with a command's name
// (system, source, connect, tee, pager, exit, ...). So are unterminated quotes and comments.
func splitScript(src []byte) ([]statement, error) {
	s := &splitter{src: src, line: 1, delim: ";", start: -1}
	for s.i < len(src) {
		if err := s.next(); err != nil {
			return nil, err
		}
	}
	if s.start >= 0 {
		s.end(len(src))
	}
	return s.out, nil
}

// next reads one token.
func (s *splitter) next() error {
	src, c := s.src, s.src[s.i]
	if s.start < 0 && s.atLineStart() && s.wordAt(s.i, "delimiter") {
		return s.delimiter()
	}
	switch {
	case c == '\n':
		s.line++
		s.i++
	case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
		s.i++
	case c == '#' || (c == '-' && s.peek(1) == '-' && (s.i+2 >= len(src) || src[s.i+2] <= ' ')):
		for s.i < len(src) && src[s.i] != '\n' {
			s.i++
		}
	case c == '/' && s.peek(1) == '*':
		if s.peek(2) == '!' || (s.peek(2) == 'M' && s.peek(3) == '!') {
			if err := s.mark(); err != nil { // an executable comment: SQL the server runs
				return err
			}
		}
		return s.comment()
	case strings.HasPrefix(string(src[s.i:min(len(src), s.i+len(s.delim))]), s.delim):
		if s.start >= 0 {
			s.end(s.i)
		}
		s.i += len(s.delim)
	case c == '\'' || c == '"' || c == '`':
		if err := s.mark(); err != nil {
			return err
		}
		return s.quoted(c)
	case c == '\\':
		if s.peek(1) == 'N' && !isNameByte(s.peek(2)) {
			if err := s.mark(); err != nil {
				return err
			}
			s.i += 2
			return nil
		}
		j := min(len(src), s.i+2)
		return &scriptsplit.Error{Line: s.line, Msg: fmt.Sprintf(
			"%s is a command of the mariadb client: scripts run through the server's protocol, without the client, and may not hold its commands", src[s.i:j])}
	default:
		if err := s.mark(); err != nil {
			return err
		}
		s.i++
	}
	return nil
}

// peek returns the byte n after the current one, or 0 past the end.
func (s *splitter) peek(n int) byte {
	if s.i+n < len(s.src) {
		return s.src[s.i+n]
	}
	return 0
}

// atLineStart reports whether only blanks precede the current byte on its line.
func (s *splitter) atLineStart() bool {
	for j := s.i - 1; j >= 0; j-- {
		switch s.src[j] {
		case '\n':
			return true
		case ' ', '\t', '\r':
		default:
			return false
		}
	}
	return true
}

// wordAt reports whether the word w (any case) is at offset j, not followed by a word byte.
func (s *splitter) wordAt(j int, w string) bool {
	return len(s.src)-j >= len(w) && strings.EqualFold(string(s.src[j:j+len(w)]), w) && !isNameByte(byteAt(s.src, j+len(w)))
}

// mark records that a statement begins at the current byte, refusing one that starts with a
// client command's name.
func (s *splitter) mark() error {
	if s.start >= 0 {
		return nil
	}
	j := s.i
	for j < len(s.src) && isNameByte(s.src[j]) {
		j++
	}
	if w := strings.ToLower(string(s.src[s.i:j])); clientCommands[w] {
		return &scriptsplit.Error{Line: s.line, Msg: fmt.Sprintf(
			"%s is a command of the mariadb client, not SQL: scripts run through the server's protocol, without the client, and may not hold its commands", w)}
	}
	s.start, s.startLine = s.i, s.line
	return nil
}

// end closes the statement that runs up to end (exclusive).
func (s *splitter) end(end int) {
	s.out = append(s.out, statement{text: string(s.src[s.start:end]), line: s.startLine})
	s.start = -1
}

// delimiter reads a DELIMITER line and sets the delimiter it names.
func (s *splitter) delimiter() error {
	nl := bytes.IndexByte(s.src[s.i:], '\n')
	lineEnd := len(s.src)
	if nl >= 0 {
		lineEnd = s.i + nl
	}
	args := strings.Fields(string(s.src[s.i+len("delimiter") : lineEnd]))
	switch {
	case len(args) != 1:
		return &scriptsplit.Error{Line: s.line, Msg: "DELIMITER takes one delimiter, e.g. DELIMITER $$"}
	case strings.ContainsAny(args[0], "\\'\"`"):
		return &scriptsplit.Error{Line: s.line, Msg: fmt.Sprintf("DELIMITER %s: a delimiter may not hold a backslash or a quote", args[0])}
	}
	s.delim = args[0]
	s.i = lineEnd
	return nil
}

// comment skips a /* */ comment (they do not nest).
func (s *splitter) comment() error {
	line := s.line
	k := bytes.Index(s.src[s.i+2:], []byte("*/"))
	if k < 0 {
		return &scriptsplit.Error{Line: line, Msg: "the /* comment that starts here never ends"}
	}
	end := s.i + 2 + k + 2
	s.line += bytes.Count(s.src[s.i:end], []byte{'\n'})
	s.i = end
	return nil
}

// quoted skips a string ('...', "...") or a quoted identifier (`...`) that starts at the
// current byte: a doubled quote stands for itself; a backslash escapes the next byte in strings.
func (s *splitter) quoted(q byte) error {
	next, newlines, ok := scriptsplit.SkipQuoted(s.src, s.i, q, q != '`')
	if !ok {
		what := "string"
		if q == '`' {
			what = "quoted identifier"
		}
		return scriptsplit.Unterminated(s.line, what, q)
	}
	s.i, s.line = next, s.line+newlines
	return nil
}

// isNameByte reports whether c may be part of an unquoted name (bytes of non-ASCII
// characters may).
func isNameByte(c byte) bool {
	return c == '_' || c == '$' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80
}

func byteAt(b []byte, j int) byte {
	if j < len(b) {
		return b[j]
	}
	return 0
}
