// Package imagebuilder builds data images from image definitions.
//
// This file and its neighbours hold the image definition: a YAML document, compatible with
// Redgate Clone's data image definitions, that says how to build one image:
//
//	name: sales-2024
//	engine: postgres
//	version: "16"
//	sourceType: backup
//	backups:
//	  - path: sales/base.tar
//	    format: basebackup-tar
//	  - path: sales/pg_wal.tar
//	tags: [sales, nightly]
//	lifetime: 72h
//
// ParseDefinition checks the syntax and the types; Validate checks the rules against what the
// builder has (engine versions, the backup root, the default lifetime); LoadDefinition does both
// for a file. Every problem is reported at once in a *DefinitionError, which matches
// ErrInvalidDefinition.
//
// It must not know the store, CSI, Kubernetes or any engine's internals: engine kinds are names
// here (engines.go), and the adapters live under imagebuilder/engine.
package imagebuilder

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Definition is an image definition. Its field names are the YAML (and JSON) names, so that the
// same struct can serve as the spec of a Kubernetes custom resource. Values are kept as written;
// the Normalized* and Resolve* methods give the normalized forms, and are meaningful once
// Validate has passed.
type Definition struct {
	// Name names the image: ASCII letters, digits, '-', '_' and '.'; starts with a letter or a
	// digit; not only digits; at most 63 characters; case-sensitive. Required.
	Name string `json:"name" yaml:"name"`
	// Engine is the database engine: postgres (or postgresql), mysql or mariadb, in any case.
	// Required.
	Engine string `json:"engine" yaml:"engine"`
	// Version is the engine version, matched against the versions available to the builder
	// (see Versions.Match). Required.
	Version string `json:"version" yaml:"version"`
	// SourceType is empty (a fresh instance) or backup (restored from Backups), in any case.
	// Required.
	SourceType string `json:"sourceType" yaml:"sourceType"`
	// Backups are the files restored into the image, in order. Required (at least one) for
	// sourceType backup, refused for sourceType empty.
	Backups []Backup `json:"backups,omitempty" yaml:"backups,omitempty"`
	// InitialDatabaseName is the database the instance starts with (see Validate for the rule).
	// Optional.
	InitialDatabaseName string `json:"initialDatabaseName,omitempty" yaml:"initialDatabaseName,omitempty"`
	// Tags label the image: each non-empty, at most 63 characters, no duplicates. Optional.
	Tags []string `json:"tags,omitempty" yaml:"tags,omitempty"`
	// Lifetime is how long the image lives: "0" for never, or <n>s, <n>m or <n>h (see
	// ParseLifetime). Empty means the builder's default.
	Lifetime string `json:"lifetime,omitempty" yaml:"lifetime,omitempty"`
	// PreScript is a SQL script file run before the backups are restored, as a path relative to
	// the backup root. Only with sourceType backup. Optional.
	PreScript string `json:"preScript,omitempty" yaml:"preScript,omitempty"`
	// PostScript is a SQL script file run after the backups are restored, as a path relative to
	// the backup root. Only with sourceType backup. Optional.
	PostScript string `json:"postScript,omitempty" yaml:"postScript,omitempty"`
	// RecoveryTarget is where replaying the log given with a physical backup stops
	// (point-in-time recovery); see RecoveryTarget. Only with sourceType backup. Optional.
	RecoveryTarget *RecoveryTarget `json:"recoveryTarget,omitempty" yaml:"recoveryTarget,omitempty"`
}

// Backup is one backup file (or directory) of a definition.
type Backup struct {
	// Path is relative to the builder's backup root, with '/' as the separator; it may not leave
	// the root. Required.
	Path string `json:"path" yaml:"path"`
	// Format is the backup's format, in any case; empty means detected from the content when
	// the image is built. See Engine.Formats for what each engine takes.
	Format string `json:"format,omitempty" yaml:"format,omitempty"`
}

// SourceType says where an image's data comes from.
type SourceType string

// The source types a definition may name.
const (
	SourceEmpty  SourceType = "empty"
	SourceBackup SourceType = "backup"
)

// BackupFormat is a normalized backup format. The empty format means "detect it".
type BackupFormat string

// The backup formats a definition may name.
const (
	FormatDetect        BackupFormat = ""
	FormatBaseBackupTar BackupFormat = "basebackup-tar"    // pg_basebackup --format=tar
	FormatPgDumpCustom  BackupFormat = "pg_dump-custom"    // pg_dump --format=custom
	FormatSQL           BackupFormat = "sql"               // a plain SQL script (pg_dump, mysqldump, mariadb-dump)
	FormatPgDumpAll     BackupFormat = "pg_dumpall"        // pg_dumpall output
	FormatPgDumpDir     BackupFormat = "pg_dump-directory" // pg_dump --format=directory
	FormatPgDumpTar     BackupFormat = "pg_dump-tar"       // pg_dump --format=tar
	FormatWAL           BackupFormat = "wal"               // WAL segments to replay: a directory or a tar of them
	FormatMariaBackup   BackupFormat = "mariabackup"       // mariabackup --backup: a target directory or an xbstream
	FormatBinlog        BackupFormat = "binlog"            // a MariaDB/MySQL binary log file to replay
)

// Limits of the definition's values.
const (
	maxNameLen   = 63
	maxTagLen    = 63
	maxDBNameLen = 63 // PostgreSQL's limit (NAMEDATALEN-1); MySQL allows 64
)

// ValidationEnv is what Validate checks a definition against: what the builder has.
type ValidationEnv struct {
	// Versions are the engine versions available to the builder.
	Versions Versions
	// DefaultLifetime is the lifetime of images whose definition has none.
	DefaultLifetime Lifetime
	// BackupRoot is the directory backup and script paths are relative to.
	BackupRoot string
	// CheckPaths makes Validate check that every backup and script path exists under
	// BackupRoot (scripts must be regular files). Symbolic links may not lead out of the root.
	CheckPaths bool
}

// NormalizedEngine returns the engine in normal form, or "" if Engine names none.
func (d *Definition) NormalizedEngine() Engine {
	e, _ := ParseEngine(d.Engine)
	return e
}

// NormalizedSourceType returns the source type in lower case, or "" if SourceType names none.
func (d *Definition) NormalizedSourceType() SourceType {
	switch s := SourceType(lowerASCII(d.SourceType)); s {
	case SourceEmpty, SourceBackup:
		return s
	}
	return ""
}

// ResolveVersion returns the available version the definition's Version matches (see
// Versions.Match).
func (d *Definition) ResolveVersion(env ValidationEnv) (string, error) {
	var ps problems
	engine := checkEngine(&ps, d.Engine)
	v := checkVersion(&ps, engine, d.Version, env.Versions)
	return v, ps.err()
}

// ResolveLifetime returns the definition's lifetime, or env.DefaultLifetime when it has none.
func (d *Definition) ResolveLifetime(env ValidationEnv) (Lifetime, error) {
	if d.Lifetime == "" {
		return env.DefaultLifetime, nil
	}
	return ParseLifetime(d.Lifetime)
}

// PreScriptPath returns PreScript cleaned (path.Clean), or "" when there is none.
func (d *Definition) PreScriptPath() string { return cleanPath(d.PreScript) }

// PostScriptPath returns PostScript cleaned (path.Clean), or "" when there is none.
func (d *Definition) PostScriptPath() string { return cleanPath(d.PostScript) }

// NormalizedPath returns Path cleaned (path.Clean): "./a//b" becomes "a/b".
func (b Backup) NormalizedPath() string { return cleanPath(b.Path) }

// NormalizedFormat returns Format in lower case (FormatDetect when empty). It does not check
// that the format is known: Validate does.
func (b Backup) NormalizedFormat() BackupFormat { return BackupFormat(lowerASCII(b.Format)) }

// lowerASCII maps A-Z to a-z and leaves every other byte alone. Keywords are matched with it
// rather than strings.ToLower, which would let "BAC\u212AUP" (a Kelvin sign) name backup.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func cleanPath(p string) string {
	if p == "" {
		return ""
	}
	return path.Clean(p)
}

// maxDefinitionSize bounds a definition file; real ones are a few hundred bytes.
const maxDefinitionSize = 1 << 20

// LoadDefinition reads, parses and validates the definition in the file at path. Definition
// errors are a *DefinitionError naming the file.
func LoadDefinition(path string, env ValidationEnv) (*Definition, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("imagebuilder: load image definition: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxDefinitionSize+1))
	if err != nil {
		return nil, fmt.Errorf("imagebuilder: load image definition: %w", err)
	}
	d, err := ParseDefinition(data)
	if err == nil {
		err = d.Validate(env)
	}
	if err != nil {
		var de *DefinitionError
		if errors.As(err, &de) {
			de.Path = path
		}
		return nil, err
	}
	return d, nil
}

// Validate checks the definition's rules against env and reports every broken rule at once, at
// most one per field, in field order, as a *DefinitionError. When env.CheckPaths is set and the
// backup root cannot be opened, that error comes joined after the definition's problems.
//
// The rules beyond those on the fields' docs:
//   - initialDatabaseName: 1 to 63 characters, an ASCII letter or '_' followed by ASCII letters,
//     digits and '_' (an identifier that needs no quoting in PostgreSQL, MySQL and MariaDB), and
//     not a system database of the engine (template0, template1; information_schema, mysql,
//     performance_schema, sys).
//   - paths (backups, scripts): valid UTF-8 without control characters or '\'; relative; not
//     leaving the root once cleaned; not the root itself; no two backups naming the same path.
//   - tags: valid UTF-8 without control characters; the 63-character limit counts characters.
func (d *Definition) Validate(env ValidationEnv) error {
	var ps problems
	checkName(&ps, d.Name)
	engine := checkEngine(&ps, d.Engine)
	checkVersion(&ps, engine, d.Version, env.Versions)
	source := d.NormalizedSourceType()
	switch {
	case d.SourceType == "":
		ps.add(0, "sourceType", "required")
	case source == "":
		ps.add(0, "sourceType", "must be empty or backup, got %q", d.SourceType)
	}

	var root *os.Root
	var rootErr error
	if env.CheckPaths {
		root, rootErr = os.OpenRoot(env.BackupRoot)
		if rootErr != nil {
			rootErr = fmt.Errorf("imagebuilder: open backup root: %w", rootErr)
		} else {
			defer root.Close()
		}
	}

	switch {
	case source == SourceBackup && len(d.Backups) == 0:
		ps.add(0, "backups", "at least one backup is required when sourceType is backup")
	case source == SourceEmpty && len(d.Backups) > 0:
		ps.add(0, "backups", "not allowed when sourceType is empty")
	default:
		seen := make(map[string]int, len(d.Backups))
		for i, b := range d.Backups {
			field := fmt.Sprintf("backups[%d]", i)
			if checkPath(&ps, field+".path", b.Path, root, false) {
				clean := b.NormalizedPath()
				if j, dup := seen[clean]; dup {
					ps.add(0, field+".path", "names the same path as backups[%d].path", j)
				} else {
					seen[clean] = i
				}
			}
			checkFormat(&ps, field+".format", engine, b.Format)
		}
	}

	checkDBName(&ps, engine, d.InitialDatabaseName)
	checkTags(&ps, d.Tags)
	if d.Lifetime != "" {
		if _, rule := parseLifetime(d.Lifetime); rule != "" {
			ps.add(0, "lifetime", "%s", rule)
		}
	}
	for _, s := range []struct{ field, path string }{{"preScript", d.PreScript}, {"postScript", d.PostScript}} {
		switch {
		case s.path == "":
		case source == SourceEmpty:
			ps.add(0, s.field, "only allowed when sourceType is backup")
		default:
			checkPath(&ps, s.field, s.path, root, true)
		}
	}

	checkRecoveryTarget(&ps, d.RecoveryTarget, engine, source)

	err := ps.err()
	if rootErr != nil {
		if err == nil {
			return rootErr
		}
		return &bothErrors{err, rootErr}
	}
	return err
}

// bothErrors is a definition's problems and the builder's own error, on one line. Unlike
// fmt.Errorf, it builds its message when asked, after LoadDefinition has set the path.
type bothErrors struct{ def, env error }

func (e *bothErrors) Error() string   { return e.def.Error() + "; " + e.env.Error() }
func (e *bothErrors) Unwrap() []error { return []error{e.def, e.env} }

func checkName(ps *problems, name string) {
	const field = "name"
	switch {
	case name == "":
		ps.add(0, field, "required")
	case len(name) > maxNameLen:
		ps.add(0, field, "must be at most %d characters, got %d", maxNameLen, len(name))
	case strings.IndexFunc(name, func(r rune) bool { return !isNameChar(r) }) >= 0:
		ps.add(0, field, "may contain only ASCII letters, digits, '-', '_' and '.', got %q", name)
	case !isAlnum(rune(name[0])):
		ps.add(0, field, "must start with a letter or a digit, got %q", name)
	case isDigits(name):
		ps.add(0, field, "must not be purely numeric, got %q", name)
	}
}

func checkEngine(ps *problems, s string) Engine {
	engine, ok := ParseEngine(s)
	switch {
	case s == "":
		ps.add(0, "engine", "required")
	case !ok:
		ps.add(0, "engine", "must be one of %s; got %q", strings.Join(EngineNames(), ", "), s)
	}
	return engine
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

func isNameChar(r rune) bool { return isAlnum(r) || r == '-' || r == '_' || r == '.' }

// checkVersion checks version against the versions of engine (skipping the match when engine
// is unknown: that is engine's problem) and returns the version it matches.
func checkVersion(ps *problems, engine Engine, version string, versions Versions) string {
	const field = "version"
	if version == "" {
		ps.add(0, field, "required")
		return ""
	}
	if engine == "" {
		return ""
	}
	if v, ok := versions.Match(engine, version); ok {
		return v
	}
	avail := versions.sorted(engine)
	if len(avail) == 0 {
		ps.add(0, field, "no %s versions are available to this builder", engine)
	} else {
		ps.add(0, field, "%s %q is not available; available: %s", engine, version, strings.Join(avail, ", "))
	}
	return ""
}

// checkPath checks a backup or script path, and when root is not nil that it exists there
// (a regular file if file is set). It reports whether the path itself is well-formed.
func checkPath(ps *problems, field, p string, root *os.Root, file bool) bool {
	clean := cleanPath(p)
	switch {
	case p == "":
		ps.add(0, field, "required")
	case !utf8.ValidString(p):
		ps.add(0, field, "must be valid UTF-8, got %q", p)
	case strings.IndexFunc(p, unicode.IsControl) >= 0:
		ps.add(0, field, "must not contain control characters, got %q", p)
	case strings.Contains(p, `\`):
		ps.add(0, field, "must use / as the separator, got %q", p)
	case path.IsAbs(p):
		ps.add(0, field, "must be relative to the backup root, got %q", p)
	case clean == ".." || strings.HasPrefix(clean, "../"):
		ps.add(0, field, "must not leave the backup root, got %q", p)
	case clean == ".":
		ps.add(0, field, "must name a file inside the backup root, not the root itself, got %q", p)
	default:
		if root != nil {
			checkExists(ps, field, clean, root, file)
		}
		return true
	}
	return false
}

func checkExists(ps *problems, field, clean string, root *os.Root, file bool) {
	fi, err := root.Stat(clean)
	switch {
	case os.IsNotExist(err):
		ps.add(0, field, "%q does not exist under the backup root", clean)
	case err != nil:
		ps.add(0, field, "cannot be checked under the backup root: %v", err)
	case file && !fi.Mode().IsRegular():
		ps.add(0, field, "%q under the backup root is not a regular file", clean)
	}
}

func checkFormat(ps *problems, field string, engine Engine, format string) {
	if format == "" {
		return
	}
	f := BackupFormat(lowerASCII(format))
	allowed := engine.Formats()
	where := " for " + string(engine)
	if engine == "" {
		allowed = allFormats()
		where = ""
	}
	for _, a := range allowed {
		if f == a {
			return
		}
	}
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = string(a)
	}
	if len(names) == 1 {
		ps.add(0, field, "must be %s%s (or omitted to detect it), got %q", names[0], where, format)
		return
	}
	ps.add(0, field, "must be one of %s%s (or omitted to detect it), got %q", strings.Join(names, ", "), where, format)
}

func checkDBName(ps *problems, engine Engine, name string) {
	const field = "initialDatabaseName"
	if name == "" {
		return
	}
	if len(name) > maxDBNameLen {
		ps.add(0, field, "must be at most %d characters, got %d", maxDBNameLen, len(name))
		return
	}
	for i, r := range name {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_'
		if !letter && (i == 0 || r < '0' || r > '9') {
			ps.add(0, field, "must be an ASCII letter or '_' followed by ASCII letters, digits and '_', got %q", name)
			return
		}
	}
	for _, sys := range engine.systemDatabases() {
		if lowerASCII(name) == sys {
			ps.add(0, field, "%q is a system database of %s", name, engine)
			return
		}
	}
}

func checkTags(ps *problems, tags []string) {
	seen := make(map[string]int, len(tags))
	for i, t := range tags {
		field := fmt.Sprintf("tags[%d]", i)
		switch {
		case t == "":
			ps.add(0, field, "must not be empty")
		case !utf8.ValidString(t):
			ps.add(0, field, "must be valid UTF-8, got %q", t)
		case utf8.RuneCountInString(t) > maxTagLen:
			ps.add(0, field, "must be at most %d characters, got %d", maxTagLen, utf8.RuneCountInString(t))
		case strings.IndexFunc(t, unicode.IsControl) >= 0:
			ps.add(0, field, "must not contain control characters, got %q", t)
		default:
			if j, dup := seen[t]; dup {
				ps.add(0, field, "duplicate of tags[%d] (%q)", j, t)
			} else {
				seen[t] = i
			}
		}
	}
}
