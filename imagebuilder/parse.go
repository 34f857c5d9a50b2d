package imagebuilder

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ParseDefinition parses one image definition from YAML. It checks the syntax and the types
// only (Validate checks the rules) and is strict:
//   - the input must hold exactly one YAML document, a mapping, and at most 1 MiB;
//   - field names are case-sensitive, and an unknown or repeated field is an error;
//   - a string field takes any scalar as written ("version: 16.10" is "16.10"); a list field
//     takes a sequence; null or an empty list is the same as leaving the field out;
//   - merge keys (<<) and custom tags are refused.
//
// Every problem is reported at once, in document order, with its line, as a *DefinitionError.
func ParseDefinition(data []byte) (*Definition, error) {
	var ps problems
	if len(data) > maxDefinitionSize {
		ps.add(0, "", "the definition is larger than %d bytes", maxDefinitionSize)
		return nil, ps.err()
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			ps.add(0, "", "the definition is empty")
		} else {
			syntaxError(&ps, err)
		}
		return nil, ps.err()
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		ps.add(next.Line, "", "the definition must be a single YAML document, found another one")
		return nil, ps.err()
	case !errors.Is(err, io.EOF):
		syntaxError(&ps, err)
		return nil, ps.err()
	}

	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	root = deref(root)
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		ps.add(0, "", "the definition is empty")
		return nil, ps.err()
	}
	if root.Kind != yaml.MappingNode {
		ps.add(root.Line, "", "the definition must be a mapping of fields, got %s", describe(root))
		return nil, ps.err()
	}

	var d Definition
	strField := func(p *string) func(*yaml.Node, string) {
		return func(n *yaml.Node, field string) { *p, _ = scalar(&ps, n, field, true) }
	}
	fields := map[string]func(*yaml.Node, string){
		"name":                strField(&d.Name),
		"engine":              strField(&d.Engine),
		"version":             strField(&d.Version),
		"sourceType":          strField(&d.SourceType),
		"initialDatabaseName": strField(&d.InitialDatabaseName),
		"lifetime":            strField(&d.Lifetime),
		"preScript":           strField(&d.PreScript),
		"postScript":          strField(&d.PostScript),
		"tags": func(n *yaml.Node, field string) {
			for i, item := range sequence(&ps, n, field) {
				s, _ := scalar(&ps, item, fmt.Sprintf("%s[%d]", field, i), false)
				d.Tags = append(d.Tags, s)
			}
		},
		"backups": func(n *yaml.Node, field string) {
			for i, item := range sequence(&ps, n, field) {
				d.Backups = append(d.Backups, parseBackup(&ps, item, fmt.Sprintf("%s[%d]", field, i)))
			}
		},
		"recoveryTarget": func(n *yaml.Node, field string) { d.RecoveryTarget = parseRecoveryTarget(&ps, n, field) },
	}
	mapping(&ps, root, "", fields)
	if err := ps.err(); err != nil {
		return nil, err
	}
	return &d, nil
}

// syntaxError reports a YAML syntax error, taking its line out of the library's message
// ("yaml: line 3: did not find expected key").
func syntaxError(ps *problems, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if _, scanErr := fmt.Sscanf(msg, "line %d: ", &line); scanErr == nil && line > 0 {
		msg = msg[strings.Index(msg, ": ")+2:]
	} else {
		line = 0
	}
	ps.add(line, "", "invalid YAML: %s", msg)
}

func parseBackup(ps *problems, n *yaml.Node, field string) Backup {
	var b Backup
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, field, "must be a mapping with path and format, got %s", describe(n))
		return b
	}
	mapping(ps, n, field+".", map[string]func(*yaml.Node, string){
		"path":   func(v *yaml.Node, f string) { b.Path, _ = scalar(ps, v, f, true) },
		"format": func(v *yaml.Node, f string) { b.Format, _ = scalar(ps, v, f, true) },
	})
	return b
}

// parseRecoveryTarget parses recoveryTarget: a mapping of strings and the boolean inclusive;
// null gives none.
func parseRecoveryTarget(ps *problems, n *yaml.Node, field string) *RecoveryTarget {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, field, "must be a mapping with one of time, lsn, name, gtid, binlogPosition (and inclusive), got %s", describe(n))
		return nil
	}
	var t RecoveryTarget
	str := func(p *string) func(*yaml.Node, string) {
		return func(v *yaml.Node, f string) { *p, _ = scalar(ps, v, f, true) }
	}
	mapping(ps, n, field+".", map[string]func(*yaml.Node, string){
		"time":           str(&t.Time),
		"lsn":            str(&t.LSN),
		"name":           str(&t.Name),
		"gtid":           str(&t.GTID),
		"binlogPosition": str(&t.BinlogPosition),
		"inclusive": func(v *yaml.Node, f string) {
			v = deref(v)
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
				ps.add(v.Line, f, "must be true or false, got %s", describe(v))
				return
			}
			b := v.Value == "true" || v.Value == "True" || v.Value == "TRUE"
			t.Inclusive = &b
		},
	})
	return &t
}

// mapping walks the mapping n, calling fields[key] for each known key with the value and the
// field's path (prefix+key), and reports unknown, repeated and non-string keys.
func mapping(ps *problems, n *yaml.Node, prefix string, fields map[string]func(*yaml.Node, string)) {
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			ps.add(k.Line, strings.TrimSuffix(prefix, "."), "field names must be strings, got %s", describe(k))
			continue
		}
		field := prefix + k.Value
		if k.ShortTag() == "!!merge" {
			ps.add(k.Line, field, "merge keys are not supported")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			ps.add(k.Line, field, "repeated (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		parse, ok := fields[k.Value]
		if !ok {
			ps.add(k.Line, field, "unknown field%s", suggest(k.Value, fields))
			continue
		}
		parse(v, field)
	}
}

// suggest returns ` (did you mean "x"?)` when key differs from a known field only in case.
func suggest(key string, fields map[string]func(*yaml.Node, string)) string {
	for f := range fields {
		if strings.EqualFold(f, key) {
			return fmt.Sprintf(" (did you mean %q?)", f)
		}
	}
	return ""
}

// sequence returns the items of the sequence n; null gives none.
func sequence(ps *problems, n *yaml.Node, field string) []*yaml.Node {
	n = deref(n)
	switch {
	case n.Kind == yaml.SequenceNode:
		return n.Content
	case isNull(n):
		return nil
	}
	ps.add(n.Line, field, "must be a list, got %s", describe(n))
	return nil
}

// scalarTags are the tags whose scalars a string field takes, as written.
var scalarTags = map[string]bool{"!!str": true, "!!int": true, "!!float": true, "!!bool": true, "!!timestamp": true}

// scalar returns the text of the scalar n. Null gives "" and false when nullOK, else a problem.
func scalar(ps *problems, n *yaml.Node, field string, nullOK bool) (string, bool) {
	n = deref(n)
	switch {
	case isNull(n) && nullOK:
		return "", false
	case n.Kind == yaml.ScalarNode && scalarTags[n.ShortTag()]:
		return n.Value, true
	}
	ps.add(n.Line, field, "must be a string, got %s", describe(n))
	return "", false
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// deref follows an alias to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// describe names the kind of a node for an error message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch t := n.ShortTag(); t {
		case "!!null":
			return "null"
		case "!!binary":
			return "binary data"
		default:
			if scalarTags[t] {
				return fmt.Sprintf("%q", n.Value)
			}
			return fmt.Sprintf("a value tagged %s", t)
		}
	}
	return "a YAML node of kind " + fmt.Sprint(n.Kind)
}
