package postgres

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder/engine/internal/scriptsplit"
)

// This file splits a definition's script into statements the way psql does, so that RunScript
// can send them one at a time through the wire protocol and name the line of the one that
// fails, and refuses psql's meta-commands, which only psql would run.

// statement is one statement of a script.
type statement struct {
	// text is the statement without its terminating semicolon; comments inside it are kept,
	// those before it are not.
	text string
	// line is the 1-based line of the statement's first character; offset is the byte offset
	// of text in the script.
	line, offset int
	// copyIn is set for COPY ... FROM STDIN: data holds the lines that follow the statement up
	// to the line "\." (without it), as psql reads them from the script.
	copyIn bool
	data   []byte
}

// splitter is the state of one splitScript call.
type splitter struct {
	src  []byte
	i    int // the next byte to read
	line int // the line of src[i]

	// The statement being read: start is the offset of its first character (-1 before it),
	// startLine that character's line.
	start, startLine int
	// parens is the depth of parentheses: a semicolon inside them ends nothing (CREATE RULE
	// ... DO (a; b)).
	parens int
	// words are the first four unquoted words of the statement, lower case; nwords counts
	// them all; lastWord is the last token when it was an unquoted word, else "".
	words    [4]string
	nwords   int
	lastWord string
	// atomic is the depth of BEGIN ... END blocks of CREATE FUNCTION/PROCEDURE ... BEGIN
	// ATOMIC, inside which semicolons end nothing (psql's heuristic, psqlscan.l).
	atomic int
	// copyIn: the statement is COPY ... FROM STDIN.
	copyIn bool

	out []statement
}

// splitScript splits a PostgreSQL script into its statements: semicolons end statements
// except inside quotes ('...', E'...', "...", $tag$...$tag$), comments (--, nested /* */),
// parentheses and BEGIN ATOMIC bodies; a last statement without a semicolon counts. COPY ...
// FROM STDIN takes the lines after it up to "\." as its data, as psql does. Strings are read
// with standard_conforming_strings on (backslashes are plain characters in '...').
//
// A backslash outside quotes and comments is a psql meta-command (\!, \copy, \connect, \gexec,
// \i, ...), refused with the line; so are unterminated quotes and comments.
func splitScript(src []byte) ([]statement, error) {
	s := &splitter{src: src, line: 1, start: -1}
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

// mark records that the statement has begun at the current byte.
func (s *splitter) mark() {
	if s.start < 0 {
		s.start, s.startLine = s.i, s.line
	}
}

// next reads one token.
func (s *splitter) next() error {
	src, c := s.src, s.src[s.i]
	switch {
	case c == '\n':
		s.line++
		s.i++
	case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
		s.i++
	case c == '-' && s.peek(1) == '-':
		for s.i < len(src) && src[s.i] != '\n' {
			s.i++
		}
	case c == '/' && s.peek(1) == '*':
		return s.blockComment()
	case c == '\'':
		s.mark()
		s.lastWord = ""
		return s.quoted('\'', false)
	case c == '"':
		s.mark()
		s.lastWord = ""
		return s.quoted('"', false)
	case c == '$':
		s.mark()
		s.lastWord = ""
		return s.dollar()
	case c == '\\':
		return s.metaCommand()
	case isIdentStart(c):
		s.mark()
		return s.word()
	case c >= '0' && c <= '9':
		s.mark()
		s.lastWord = ""
		for s.i < len(src) && (isIdentCont(src[s.i]) || src[s.i] == '.') {
			s.i++
		}
	case c == ';' && s.parens == 0 && s.atomic == 0:
		copyIn := s.copyIn
		if s.start >= 0 {
			s.end(s.i)
		}
		s.i++
		if copyIn {
			return s.copyData()
		}
	default:
		s.mark()
		s.lastWord = ""
		switch c {
		case '(':
			s.parens++
		case ')':
			if s.parens > 0 {
				s.parens--
			}
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

// end closes the statement that runs up to end (exclusive).
func (s *splitter) end(end int) {
	s.out = append(s.out, statement{
		text:   string(s.src[s.start:end]),
		line:   s.startLine,
		offset: s.start,
		copyIn: s.copyIn,
	})
	s.start, s.parens, s.nwords, s.lastWord, s.atomic = -1, 0, 0, "", 0
	s.words = [4]string{}
	s.copyIn = false
}

// blockComment skips a /* */ comment, which nests.
func (s *splitter) blockComment() error {
	line := s.line
	depth := 0
	for s.i < len(s.src) {
		switch {
		case s.src[s.i] == '/' && s.peek(1) == '*':
			depth++
			s.i += 2
		case s.src[s.i] == '*' && s.peek(1) == '/':
			depth--
			s.i += 2
			if depth == 0 {
				return nil
			}
		default:
			if s.src[s.i] == '\n' {
				s.line++
			}
			s.i++
		}
	}
	return &scriptsplit.Error{Line: line, Msg: "the /* comment that starts here never ends"}
}

// quoted skips a quoted string or identifier that starts at the current byte (the quote q);
// backslash escapes apply in escape strings (E'...').
func (s *splitter) quoted(q byte, backslash bool) error {
	next, newlines, ok := scriptsplit.SkipQuoted(s.src, s.i, q, backslash)
	if !ok {
		what := "string"
		if q == '"' {
			what = "quoted identifier"
		}
		return scriptsplit.Unterminated(s.line, what, q)
	}
	s.i, s.line = next, s.line+newlines
	return nil
}

// dollar reads what starts with '$': a dollar-quoted string ($$...$$, $tag$...$tag$), a
// parameter ($1), or a lone '$'.
func (s *splitter) dollar() error {
	j := s.i + 1
	if j < len(s.src) && isIdentStart(s.src[j]) {
		for j < len(s.src) && isIdentCont(s.src[j]) && s.src[j] != '$' {
			j++
		}
	}
	if j >= len(s.src) || s.src[j] != '$' {
		s.i++ // $1, or a '$' that is not a delimiter
		for s.i < len(s.src) && s.src[s.i] >= '0' && s.src[s.i] <= '9' {
			s.i++
		}
		return nil
	}
	delim := s.src[s.i : j+1]
	line := s.line
	body := j + 1
	k := bytes.Index(s.src[body:], delim)
	if k < 0 {
		return &scriptsplit.Error{Line: line, Msg: fmt.Sprintf("the dollar-quoted string %s that starts here never ends", delim)}
	}
	s.line += bytes.Count(s.src[s.i:body+k], []byte{'\n'})
	s.i = body + k + len(delim)
	return nil
}

// word reads an unquoted word (keyword or identifier), or the prefix of a string (E'...',
// U&'...', U&"...").
func (s *splitter) word() error {
	j := s.i
	for j < len(s.src) && isIdentCont(s.src[j]) {
		j++
	}
	w := strings.ToLower(string(s.src[s.i:j]))
	if j < len(s.src) {
		switch {
		case w == "e" && s.src[j] == '\'':
			s.i = j
			s.lastWord = ""
			return s.quoted('\'', true)
		case w == "u" && s.src[j] == '&' && j+1 < len(s.src) && (s.src[j+1] == '\'' || s.src[j+1] == '"'):
			s.i = j + 1
			s.lastWord = ""
			return s.quoted(s.src[j+1], false)
		}
	}
	s.i = j
	if s.nwords < len(s.words) {
		s.words[s.nwords] = w
	}
	s.nwords++
	if s.routine() && s.parens == 0 {
		switch w {
		case "begin":
			s.atomic++
		case "case":
			if s.atomic > 0 { // CASE ends with END too; only inside a body
				s.atomic++
			}
		case "end":
			if s.atomic > 0 {
				s.atomic--
			}
		}
	}
	if w == "stdin" && s.lastWord == "from" && s.parens == 0 && s.words[0] == "copy" {
		s.copyIn = true
	}
	s.lastWord = w
	return nil
}

// routine reports whether the statement starts with CREATE [OR REPLACE] FUNCTION|PROCEDURE,
// whose BEGIN ATOMIC body holds semicolons.
func (s *splitter) routine() bool {
	w := s.words
	if w[0] != "create" {
		return false
	}
	if w[1] == "function" || w[1] == "procedure" {
		return true
	}
	return w[1] == "or" && w[2] == "replace" && (w[3] == "function" || w[3] == "procedure")
}

// copyData takes the data of the COPY ... FROM STDIN that just ended: the lines after the
// semicolon's line, up to a line "\." or the end of the script.
func (s *splitter) copyData() error {
	st := &s.out[len(s.out)-1]
	nl := bytes.IndexByte(s.src[s.i:], '\n')
	rest := s.src[s.i:]
	if nl >= 0 {
		rest = rest[:nl]
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return &scriptsplit.Error{Line: s.line, Msg: "COPY ... FROM STDIN takes its data from the lines after it, and this line has more after the semicolon"}
	}
	if nl < 0 {
		s.i = len(s.src)
		return nil
	}
	s.i += nl + 1
	s.line++
	begin := s.i
	for s.i < len(s.src) {
		end := bytes.IndexByte(s.src[s.i:], '\n')
		lineEnd, next := s.i+end, s.i+end+1
		if end < 0 {
			lineEnd, next = len(s.src), len(s.src)
		}
		if string(bytes.TrimRight(s.src[s.i:lineEnd], "\r")) == `\.` {
			st.data = s.src[begin:s.i]
			s.i = next
			if end >= 0 {
				s.line++
			}
			return nil
		}
		s.i = next
		if end >= 0 {
			s.line++
		}
	}
	st.data = s.src[begin:]
	return nil
}

// metaCommand refuses the psql meta-command at the current byte.
func (s *splitter) metaCommand() error {
	j := s.i + 1
	for j < len(s.src) && j-s.i < 24 && !isSpace(s.src[j]) {
		j++
	}
	return &scriptsplit.Error{Line: s.line, Msg: fmt.Sprintf(
		"%s is a psql meta-command: scripts run through the server's protocol, without psql, and may not hold meta-commands", s.src[s.i:j])}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// isIdentStart and isIdentCont are PostgreSQL's ident_start and ident_cont (scan.l): bytes of
// non-ASCII characters count as letters.
func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentCont(c byte) bool {
	return isIdentStart(c) || (c >= '0' && c <= '9') || c == '$'
}
