package imagebuilder

import "slices"

// This file is the definition format's list of engines: the kinds a definition's engine field
// may name, and what the format checks per kind (the backup formats a backup may declare, the
// database names an initial database may not take). It is the one place outside the engine
// adapters (imagebuilder/engine/...) that names a kind: definitions are validated where no
// adapter is linked (the Kubernetes controller, the API types), so the format keeps its own list,
// and everything else that depends on the kind (server users, settings, files, connection URLs)
// is the adapters'. A test in imagebuilder/engine/registry keeps it so, and checks that every
// kind listed here has exactly one adapter.

// Engine is a normalized database engine name: a kind.
type Engine string

// The engines a definition may name.
const (
	EnginePostgres Engine = "postgres"
	EngineMySQL    Engine = "mysql"
	EngineMariaDB  Engine = "mariadb"
)

// engineSpec is what the definition format knows of one kind.
type engineSpec struct {
	kind Engine
	// aliases are other names a definition may give the kind (compared case-insensitively).
	aliases []string
	// formats are the backup formats the kind's adapter restores, FormatDetect aside.
	formats []BackupFormat
	// targets are the recovery target kinds the kind's adapter replays its log to.
	targets []TargetKind
	// systemDatabases are the names an initial database may not take (compared
	// case-insensitively).
	systemDatabases []string
}

// engines lists the kinds in the order messages name them.
var engines = []engineSpec{
	{
		kind:            EnginePostgres,
		aliases:         []string{"postgresql"},
		formats:         []BackupFormat{FormatBaseBackupTar, FormatPgDumpCustom, FormatPgDumpDir, FormatPgDumpTar, FormatSQL, FormatPgDumpAll, FormatWAL},
		targets:         []TargetKind{TargetTime, TargetLSN, TargetName},
		systemDatabases: []string{"template0", "template1"},
	},
	{
		kind:            EngineMySQL,
		formats:         []BackupFormat{FormatSQL},
		systemDatabases: []string{"information_schema", "mysql", "performance_schema", "sys"},
	},
	{
		kind:            EngineMariaDB,
		formats:         []BackupFormat{FormatSQL, FormatMariaBackup, FormatBinlog},
		targets:         []TargetKind{TargetTime, TargetGTID, TargetBinlogPosition},
		systemDatabases: []string{"information_schema", "mysql", "performance_schema", "sys"},
	},
}

// Engines returns the kinds a definition may name, in the order messages name them.
func Engines() []Engine {
	out := make([]Engine, len(engines))
	for i, s := range engines {
		out[i] = s.kind
	}
	return out
}

// EngineNames returns every name a definition's engine field accepts (each kind, then its
// aliases), in lower case, in the order messages name them.
func EngineNames() []string {
	var out []string
	for _, s := range engines {
		out = append(out, string(s.kind))
		out = append(out, s.aliases...)
	}
	return out
}

// ParseEngine returns the engine s names, case-insensitively: a kind or one of its aliases
// (see EngineNames).
func ParseEngine(s string) (Engine, bool) {
	name := lowerASCII(s)
	for _, spec := range engines {
		if name == string(spec.kind) {
			return spec.kind, true
		}
		if slices.Contains(spec.aliases, name) {
			return spec.kind, true
		}
	}
	return "", false
}

// spec returns e's entry, or nil for a name the format does not list.
func (e Engine) spec() *engineSpec {
	for i := range engines {
		if engines[i].kind == e {
			return &engines[i]
		}
	}
	return nil
}

// Formats returns the backup formats engine e can restore, FormatDetect aside.
func (e Engine) Formats() []BackupFormat {
	if s := e.spec(); s != nil {
		return append([]BackupFormat(nil), s.formats...)
	}
	return nil
}

// allFormats returns every backup format some engine restores, FormatDetect aside, in the order
// the engines list them.
func allFormats() []BackupFormat {
	var out []BackupFormat
	for _, s := range engines {
		for _, f := range s.formats {
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	return out
}

// systemDatabases returns the names an initial database of engine e may not take.
func (e Engine) systemDatabases() []string {
	if s := e.spec(); s != nil {
		return s.systemDatabases
	}
	return nil
}

// takesTarget reports whether engine e replays its log to a recovery target of kind k.
func (e Engine) takesTarget(k TargetKind) bool {
	if s := e.spec(); s != nil {
		for _, t := range s.targets {
			if t == k {
				return true
			}
		}
	}
	return false
}
