package imagebuilder

import (
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// RecoveryTarget is where the build stops replaying the log that comes with a physical backup
// (point-in-time recovery): PostgreSQL WAL past the base backup, MariaDB binary logs past the
// backup's binlog position. Exactly one of Time, LSN, Name, GTID and BinlogPosition is set;
// which ones an engine takes is in engines.go. Without a target, the log given is replayed to
// its end.
type RecoveryTarget struct {
	// Time is a point in time, RFC 3339 with a time zone ("2026-12-01T10:00:00Z"): the last
	// transaction replayed is the last one that committed at or before it (before it when
	// Inclusive is false).
	Time string `json:"time,omitempty" yaml:"time,omitempty"`
	// LSN is a PostgreSQL WAL location, "0/3000060".
	LSN string `json:"lsn,omitempty" yaml:"lsn,omitempty"`
	// Name is a PostgreSQL restore point made with pg_create_restore_point.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// GTID is a MariaDB GTID position: domain-server-sequence, one per replication domain
	// separated by commas ("0-1-42" or "0-1-42,1-2-7").
	GTID string `json:"gtid,omitempty" yaml:"gtid,omitempty"`
	// BinlogPosition is a MariaDB binary log file and offset, "mariadb-bin.000003:1234".
	BinlogPosition string `json:"binlogPosition,omitempty" yaml:"binlogPosition,omitempty"`
	// Inclusive says whether the target itself is replayed (default true): false stops just
	// before it.
	Inclusive *bool `json:"inclusive,omitempty" yaml:"inclusive,omitempty"`
}

// TargetKind names a kind of recovery target, as its field is named in a definition.
type TargetKind string

// The recovery target kinds.
const (
	TargetTime           TargetKind = "time"
	TargetLSN            TargetKind = "lsn"
	TargetName           TargetKind = "name"
	TargetGTID           TargetKind = "gtid"
	TargetBinlogPosition TargetKind = "binlogPosition"
)

// targetKinds lists the kinds in field order.
var targetKinds = []TargetKind{TargetTime, TargetLSN, TargetName, TargetGTID, TargetBinlogPosition}

// Kind returns the kind of the one target set, or "" when none or several are.
func (t *RecoveryTarget) Kind() TargetKind {
	set := t.set()
	if len(set) != 1 {
		return ""
	}
	return set[0]
}

// Value returns the value of the target of the given kind.
func (t *RecoveryTarget) Value(k TargetKind) string {
	switch k {
	case TargetTime:
		return t.Time
	case TargetLSN:
		return t.LSN
	case TargetName:
		return t.Name
	case TargetGTID:
		return t.GTID
	case TargetBinlogPosition:
		return t.BinlogPosition
	}
	return ""
}

// ParsedTime returns Time parsed; meaningful once Validate has passed.
func (t *RecoveryTarget) ParsedTime() (time.Time, error) { return time.Parse(time.RFC3339Nano, t.Time) }

// IsInclusive reports whether the target itself is replayed (Inclusive, default true).
func (t *RecoveryTarget) IsInclusive() bool { return t.Inclusive == nil || *t.Inclusive }

// String describes the target for messages: `lsn "0/3000060"`, `time "2026-..."` (exclusive).
func (t *RecoveryTarget) String() string {
	k := t.Kind()
	if k == "" {
		return "no single recovery target"
	}
	s := string(k) + " " + `"` + t.Value(k) + `"`
	if !t.IsInclusive() {
		s += " (exclusive)"
	}
	return s
}

func (t *RecoveryTarget) set() []TargetKind {
	var set []TargetKind
	for _, k := range targetKinds {
		if t.Value(k) != "" {
			set = append(set, k)
		}
	}
	return set
}

var (
	lsnRE            = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)
	gtidRE           = regexp.MustCompile(`^[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20}(,[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20})*$`)
	binlogPositionRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,200}\.[0-9]{6,}:[0-9]{1,20}$`)
	// restore point names: PostgreSQL's limit is MAXFNAMELEN-1 = 63 bytes.
	maxRestorePointLen = 63
)

// checkRecoveryTarget checks a definition's recoveryTarget: only for backups, exactly one
// target, one engine takes, well-formed.
func checkRecoveryTarget(ps *problems, t *RecoveryTarget, engine Engine, source SourceType) {
	const field = "recoveryTarget"
	if t == nil {
		return
	}
	if source == SourceEmpty {
		ps.add(0, field, "only allowed when sourceType is backup")
		return
	}
	set := t.set()
	names := make([]string, len(targetKinds))
	for i, k := range targetKinds {
		names[i] = string(k)
	}
	switch len(set) {
	case 0:
		ps.add(0, field, "must set exactly one of %s", strings.Join(names, ", "))
		return
	case 1:
	default:
		ps.add(0, field, "must set exactly one of %s, got %s and %s", strings.Join(names, ", "), set[0], set[1])
		return
	}
	k := set[0]
	sub := field + "." + string(k)
	if engine != "" && !engine.takesTarget(k) {
		var takes []string
		for _, tk := range engine.spec().targets {
			takes = append(takes, string(tk))
		}
		if len(takes) == 0 {
			ps.add(0, sub, "%s takes no recovery target", engine)
		} else {
			ps.add(0, sub, "%s takes a recovery target of %s only", engine, strings.Join(takes, ", "))
		}
		return
	}
	v := t.Value(k)
	switch k {
	case TargetTime:
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			ps.add(0, sub, "must be an RFC 3339 time with a time zone (2026-12-01T10:00:00Z), got %q", v)
		}
	case TargetLSN:
		if !lsnRE.MatchString(v) {
			ps.add(0, sub, "must be a WAL location X/X in hexadecimal (0/3000060), got %q", v)
		}
	case TargetName:
		if len(v) > maxRestorePointLen || !utf8.ValidString(v) || strings.IndexFunc(v, unicode.IsControl) >= 0 {
			ps.add(0, sub, "must be a restore point name of at most %d bytes without control characters, got %q", maxRestorePointLen, v)
		}
	case TargetGTID:
		if !gtidRE.MatchString(v) {
			ps.add(0, sub, "must be domain-server-sequence GTIDs separated by commas (0-1-42), got %q", v)
		}
	case TargetBinlogPosition:
		if !binlogPositionRE.MatchString(v) {
			ps.add(0, sub, "must be a binary log file and offset, file:offset (mariadb-bin.000003:1234), got %q", v)
		}
	}
}
