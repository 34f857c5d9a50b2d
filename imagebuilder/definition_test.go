package imagebuilder

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testEnv is a builder with a few versions of each engine and a one-day default lifetime.
func testEnv() ValidationEnv {
	return ValidationEnv{
		Versions: Versions{
			EnginePostgres: {"16", "14.12", "15"},
			EngineMySQL:    {"8.0.36", "8.4.2"},
			EngineMariaDB:  {"11.4"},
		},
		DefaultLifetime: Lifetime{Duration: 24 * time.Hour},
	}
}

func TestGoodDefinitions(t *testing.T) {
	tests := []struct {
		file string
		want Definition
	}{
		{"empty.yaml", Definition{
			Name: "scratch", Engine: "PostgreSQL", Version: "16", SourceType: "Empty",
			InitialDatabaseName: "app_dev",
		}},
		{"pg-basebackup.yaml", Definition{
			Name: "sales-2024.06", Engine: "postgres", Version: "16", SourceType: "backup",
			Backups: []Backup{
				{Path: "sales/base.tar", Format: "basebackup-tar"},
				{Path: "./sales//pg_wal.tar", Format: "BaseBackup-Tar"},
			},
			Tags:     []string{"sales", "nightly"},
			Lifetime: "72h",
		}},
		{"mysql-dump.yaml", Definition{
			Name: "Shop_Orders", Engine: "mysql", Version: "8.0", SourceType: "BACKUP",
			Backups:    []Backup{{Path: "shop/orders.sql", Format: "sql"}},
			PreScript:  "scripts/before.sql",
			PostScript: "scripts/mask-customers.sql",
			Tags:       []string{"shop", "masked", "2024"},
			Lifetime:   "0",
		}},
		{"pg-pitr.yaml", Definition{
			Name: "sales-before-migration", Engine: "postgres", Version: "16", SourceType: "backup",
			Backups:        []Backup{{Path: "sales/base.tar.zst"}, {Path: "sales/wal/", Format: "wal"}},
			RecoveryTarget: &RecoveryTarget{Time: "2026-12-01T10:00:00Z", Inclusive: new(false)},
		}},
		{"mariadb-binlog.yaml", Definition{
			Name: "shop-pitr", Engine: "mariadb", Version: "11.4", SourceType: "backup",
			Backups: []Backup{
				{Path: "shop/backup.xb.zst"}, {Path: "shop/mariadb-bin.000007", Format: "binlog"}, {Path: "shop/mariadb-bin.000008"},
			},
			RecoveryTarget: &RecoveryTarget{GTID: "0-1-1042"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			d, err := LoadDefinition(filepath.Join("testdata", tt.file), testEnv())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*d, tt.want) {
				t.Errorf("got %+v\nwant %+v", *d, tt.want)
			}
		})
	}
}

func TestNormalization(t *testing.T) {
	env := testEnv()
	load := func(name string) *Definition {
		t.Helper()
		d, err := LoadDefinition(filepath.Join("testdata", name), env)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	empty := load("empty.yaml")
	if got := empty.NormalizedEngine(); got != EnginePostgres {
		t.Errorf("engine PostgreSQL: got %q, want postgres", got)
	}
	if got := empty.NormalizedSourceType(); got != SourceEmpty {
		t.Errorf("sourceType Empty: got %q, want empty", got)
	}
	if got, err := empty.ResolveLifetime(env); err != nil || got != env.DefaultLifetime {
		t.Errorf("omitted lifetime: got %v, %v, want the default %v", got, err, env.DefaultLifetime)
	}
	if empty.PreScriptPath() != "" || empty.PostScriptPath() != "" {
		t.Errorf("no scripts: got %q, %q", empty.PreScriptPath(), empty.PostScriptPath())
	}

	pg := load("pg-basebackup.yaml")
	if got := pg.Backups[1].NormalizedPath(); got != "sales/pg_wal.tar" {
		t.Errorf("path ./sales//pg_wal.tar: got %q", got)
	}
	if got := pg.Backups[1].NormalizedFormat(); got != FormatBaseBackupTar {
		t.Errorf("format BaseBackup-Tar: got %q", got)
	}
	if got, err := pg.ResolveVersion(env); err != nil || got != "16" {
		t.Errorf("version 16 among 14.12, 15, 16: got %q, %v", got, err)
	}
	if got, err := pg.ResolveLifetime(env); err != nil || got != (Lifetime{Duration: 72 * time.Hour}) {
		t.Errorf("lifetime 72h: got %v, %v", got, err)
	}

	my := load("mysql-dump.yaml")
	if got := my.NormalizedSourceType(); got != SourceBackup {
		t.Errorf("sourceType BACKUP: got %q", got)
	}
	if got, err := my.ResolveVersion(env); err != nil || got != "8.0.36" {
		t.Errorf("version 8.0 among 8.0.36, 8.4.2: got %q, %v", got, err)
	}
	if got, err := my.ResolveLifetime(env); err != nil || !got.Never || got.Expires() {
		t.Errorf("lifetime 0: got %+v, %v, want never", got, err)
	}
	if got := my.PostScriptPath(); got != "scripts/mask-customers.sql" {
		t.Errorf("postScript: got %q", got)
	}
	if got := my.Backups[0].NormalizedFormat(); got != FormatSQL {
		t.Errorf("format sql: got %q", got)
	}
	if got := (Backup{Path: "x"}).NormalizedFormat(); got != FormatDetect {
		t.Errorf("no format: got %q, want detect", got)
	}
}

// TestBadDefinitions gives each bad definition the exact error it gets: ParseDefinition's, or
// Validate's (against testEnv) when it parses.
func TestBadDefinitions(t *testing.T) {
	const (
		ok   = "engine: postgres\nversion: '16'\nsourceType: empty\n" // all but the name
		pfx  = "imagebuilder: invalid image definition: "
		bkup = "name: a\nengine: postgres\nversion: '16'\nsourceType: backup\n"
	)
	tests := []struct {
		name, yaml, want string
	}{
		// The document.
		{"empty", "", "the definition is empty"},
		{"only a comment", "# nothing\n", "the definition is empty"},
		{"null document", "---\n~\n", "the definition is empty"},
		{"two documents", "name: a\n---\nname: b\n", "line 2: the definition must be a single YAML document, found another one"},
		{"bad second document", "name: a\n---\n[\n", "line 3: invalid YAML: did not find expected node content"},
		{"syntax error", "name: a\n  engine: [\n", "line 2: invalid YAML: mapping values are not allowed in this context"},
		{"tab indentation", "\tname: a\n", "invalid YAML: found character that cannot start any token"},
		{"a list", "- name: a\n", "line 1: the definition must be a mapping of fields, got a list"},
		{"a scalar", "hello\n", `line 1: the definition must be a mapping of fields, got "hello"`},
		{"too large", "name: " + strings.Repeat("a", maxDefinitionSize) + "\n", "the definition is larger than 1048576 bytes"},

		// Fields and types.
		{"unknown field", ok + "name: a\ncolour: red\n", "line 5: colour: unknown field"},
		{"field in the wrong case", ok + "Name: a\n", `line 4: Name: unknown field (did you mean "name"?)`},
		{"repeated field", ok + "name: a\nname: b\n", "line 5: name: repeated (first at line 4)"},
		{"merge key", "base: &b {name: a}\n<<: *b\n", "line 1: base: unknown field; line 2: <<: merge keys are not supported"},
		{"non-string key", ok + "[name]: a\n", "line 4: field names must be strings, got a list"},
		{"name a list", ok + "name: [a]\n", "line 4: name: must be a string, got a list"},
		{"version a mapping", "name: a\nengine: postgres\nversion: {major: 16}\nsourceType: empty\n", "line 3: version: must be a string, got a mapping"},
		{"custom tag", ok + "name: !secret a\n", "line 4: name: must be a string, got a value tagged !secret"},
		{"binary", ok + "name: !!binary YQ==\n", "line 4: name: must be a string, got binary data"},
		{"tags a string", ok + "name: a\ntags: nightly\n", `line 5: tags: must be a list, got "nightly"`},
		{"tag null", ok + "name: a\ntags: [a, ~]\n", "line 5: tags[1]: must be a string, got null"},
		{"tag a list", ok + "name: a\ntags: [[a]]\n", "line 5: tags[0]: must be a string, got a list"},
		{"backups a mapping", bkup + "backups: {path: a}\n", "line 5: backups: must be a list, got a mapping"},
		{"backup a string", bkup + "backups: [a.tar]\n", `line 5: backups[0]: must be a mapping with path and format, got "a.tar"`},
		{"backup unknown field", bkup + "backups:\n  - path: a.tar\n    file: b.tar\n", "line 7: backups[0].file: unknown field"},
		{"backup repeated field", bkup + "backups:\n  - path: a.tar\n    path: b.tar\n", "line 7: backups[0].path: repeated (first at line 6)"},
		{"backup path a list", bkup + "backups:\n  - path: [a.tar]\n", "line 6: backups[0].path: must be a string, got a list"},
		{"many problems", "{x: 1" + strings.Repeat(", x: 1", 24) + "}\n",
			"line 1: x: unknown field; " + strings.Repeat("line 1: x: repeated (first at line 1); ", 19) + "and 5 more problems"},
		{"several problems in document order", "colour: red\nname: [a]\ntags: x\n",
			`line 1: colour: unknown field; line 2: name: must be a string, got a list; line 3: tags: must be a list, got "x"`},

		// name.
		{"no name", ok, "name: required"},
		{"null name", ok + "name:\n", "name: required"},
		{"name too long", ok + "name: " + strings.Repeat("n", 64) + "\n", "name: must be at most 63 characters, got 64"},
		{"name with a space", ok + "name: my image\n", `name: may contain only ASCII letters, digits, '-', '_' and '.', got "my image"`},
		{"name with a slash", ok + "name: a/b\n", `name: may contain only ASCII letters, digits, '-', '_' and '.', got "a/b"`},
		{"name not ASCII", ok + "name: café\n", `name: may contain only ASCII letters, digits, '-', '_' and '.', got "café"`},
		{"name dot-dot", ok + "name: ..\n", `name: must start with a letter or a digit, got ".."`},
		{"name starting with a dash", ok + "name: -x\n", `name: must start with a letter or a digit, got "-x"`},
		{"name numeric", ok + "name: 42\n", `name: must not be purely numeric, got "42"`},

		// engine and version.
		{"no engine", "name: a\nversion: '16'\nsourceType: empty\n", "engine: required"},
		{"unknown engine", "name: a\nengine: oracle\nversion: '19'\nsourceType: empty\n", `engine: must be one of postgres, postgresql, mysql, mariadb; got "oracle"`},
		{"no version", "name: a\nengine: postgres\nsourceType: empty\n", "version: required"},
		{"version not available", "name: a\nengine: postgres\nversion: 17\nsourceType: empty\n", `version: postgres "17" is not available; available: 14.12, 15, 16`},
		{"version more precise than available", "name: a\nengine: postgres\nversion: 16.4\nsourceType: empty\n", `version: postgres "16.4" is not available; available: 14.12, 15, 16`},
		{"version of another series", "name: a\nengine: mariadb\nversion: '10.6'\nsourceType: empty\n", `version: mariadb "10.6" is not available; available: 11.4`},

		// sourceType and backups.
		{"no sourceType", "name: a\nengine: postgres\nversion: '16'\n", "sourceType: required"},
		{"unknown sourceType", "name: a\nengine: postgres\nversion: '16'\nsourceType: snapshot\n", `sourceType: must be empty or backup, got "snapshot"`},
		{"backup without backups", bkup, "backups: at least one backup is required when sourceType is backup"},
		{"backup with an empty list", bkup + "backups: []\n", "backups: at least one backup is required when sourceType is backup"},
		{"empty with backups", ok + "name: a\nbackups: [{path: a.tar}]\n", "backups: not allowed when sourceType is empty"},
		{"backup path missing", bkup + "backups: [{format: sql}]\n", "backups[0].path: required"},
		{"backup path absolute", bkup + "backups: [{path: /srv/a.tar}]\n", `backups[0].path: must be relative to the backup root, got "/srv/a.tar"`},
		{"backup path escaping", bkup + "backups: [{path: x/../../a.tar}]\n", `backups[0].path: must not leave the backup root, got "x/../../a.tar"`},
		{"backup path the root", bkup + "backups: [{path: x/..}]\n", `backups[0].path: must name a file inside the backup root, not the root itself, got "x/.."`},
		{"backup path with backslashes", bkup + "backups: [{path: 'a\\b.tar'}]\n", `backups[0].path: must use / as the separator, got "a\\b.tar"`},
		{"backup path with a newline", bkup + "backups: [{path: \"a\\nb\"}]\n", `backups[0].path: must not contain control characters, got "a\nb"`},
		{"same backup twice", bkup + "backups: [{path: a.tar}, {path: ./a.tar}]\n", "backups[1].path: names the same path as backups[0].path"},
		{"unknown format", bkup + "backups: [{path: a.tar, format: zip}]\n", `backups[0].format: must be one of basebackup-tar, pg_dump-custom, pg_dump-directory, pg_dump-tar, sql, pg_dumpall, wal for postgres (or omitted to detect it), got "zip"`},
		{"postgres format for mysql", "name: a\nengine: mysql\nversion: '8.4.2'\nsourceType: backup\nbackups: [{path: a.dump, format: pg_dump-custom}]\n",
			`backups[0].format: must be sql for mysql (or omitted to detect it), got "pg_dump-custom"`},
		{"format with an unknown engine", "name: a\nengine: db2\nversion: '1'\nsourceType: backup\nbackups: [{path: a, format: tar}]\n",
			`engine: must be one of postgres, postgresql, mysql, mariadb; got "db2"; backups[0].format: must be one of basebackup-tar, pg_dump-custom, pg_dump-directory, pg_dump-tar, sql, pg_dumpall, wal, mariabackup, binlog (or omitted to detect it), got "tar"`},

		// initialDatabaseName.
		{"database name starting with a digit", ok + "name: a\ninitialDatabaseName: 1db\n", `initialDatabaseName: must be an ASCII letter or '_' followed by ASCII letters, digits and '_', got "1db"`},
		{"database name with a dash", ok + "name: a\ninitialDatabaseName: my-db\n", `initialDatabaseName: must be an ASCII letter or '_' followed by ASCII letters, digits and '_', got "my-db"`},
		{"database name too long", ok + "name: a\ninitialDatabaseName: " + strings.Repeat("d", 64) + "\n", "initialDatabaseName: must be at most 63 characters, got 64"},
		{"postgres system database", ok + "name: a\ninitialDatabaseName: Template1\n", `initialDatabaseName: "Template1" is a system database of postgres`},
		{"mysql system database", "name: a\nengine: mysql\nversion: '8.4'\nsourceType: empty\ninitialDatabaseName: mysql\n", `initialDatabaseName: "mysql" is a system database of mysql`},

		// tags.
		{"empty tag", ok + "name: a\ntags: [a, '']\n", "tags[1]: must not be empty"},
		{"tag too long", ok + "name: a\ntags: [" + strings.Repeat("é", 64) + "]\n", "tags[0]: must be at most 63 characters, got 64"},
		{"duplicate tag", ok + "name: a\ntags: [x, y, x]\n", `tags[2]: duplicate of tags[0] ("x")`},
		{"tag with a tab", ok + "name: a\ntags: [\"a\\tb\"]\n", `tags[0]: must not contain control characters, got "a\tb"`},

		// lifetime.
		{"lifetime in days", ok + "name: a\nlifetime: 1d\n", `lifetime: must be 0 (never expires) or <n>s, <n>m or <n>h with n a whole number, got "1d"`},
		{"negative lifetime", ok + "name: a\nlifetime: -5m\n", `lifetime: must be 0 (never expires) or <n>s, <n>m or <n>h with n a whole number, got "-5m"`},
		{"lifetime without a unit", ok + "name: a\nlifetime: 5\n", `lifetime: must be 0 (never expires) or <n>s, <n>m or <n>h with n a whole number, got "5"`},
		{"lifetime overflowing", ok + "name: a\nlifetime: 3000000h\n", `lifetime: "3000000h" is too long: at most 2562047h`},
		{"zero lifetime with a unit", ok + "name: a\nlifetime: 0m\n", `lifetime: "0m" is ambiguous: write 0 for a lifetime that never expires`},

		// scripts.
		{"preScript with an empty source", ok + "name: a\npreScript: before.sql\n", "preScript: only allowed when sourceType is backup"},
		{"postScript with an empty source", ok + "name: a\npostScript: after.sql\n", "postScript: only allowed when sourceType is backup"},
		{"script path absolute", bkup + "backups: [{path: a.sql}]\npostScript: /etc/passwd\n", `postScript: must be relative to the backup root, got "/etc/passwd"`},
		{"script path escaping", bkup + "backups: [{path: a.sql}]\npreScript: ../x.sql\n", `preScript: must not leave the backup root, got "../x.sql"`},

		// recoveryTarget.
		{"target with an empty source", ok + "name: a\nrecoveryTarget: {lsn: 0/3000060}\n", "recoveryTarget: only allowed when sourceType is backup"},
		{"target a string", bkup + "backups: [{path: a}]\nrecoveryTarget: 0/3000060\n", `line 6: recoveryTarget: must be a mapping with one of time, lsn, name, gtid, binlogPosition (and inclusive), got "0/3000060"`},
		{"target unknown field", bkup + "backups: [{path: a}]\nrecoveryTarget: {xid: 7}\n", "line 6: recoveryTarget.xid: unknown field"},
		{"no target", bkup + "backups: [{path: a}]\nrecoveryTarget: {inclusive: true}\n", "recoveryTarget: must set exactly one of time, lsn, name, gtid, binlogPosition"},
		{"two targets", bkup + "backups: [{path: a}]\nrecoveryTarget: {lsn: 0/1, name: x}\n", "recoveryTarget: must set exactly one of time, lsn, name, gtid, binlogPosition, got lsn and name"},
		{"inclusive not a bool", bkup + "backups: [{path: a}]\nrecoveryTarget: {lsn: 0/1, inclusive: 'no'}\n", `line 6: recoveryTarget.inclusive: must be true or false, got "no"`},
		{"time without a zone", bkup + "backups: [{path: a}]\nrecoveryTarget: {time: '2026-12-01 10:00:00'}\n", `recoveryTarget.time: must be an RFC 3339 time with a time zone (2026-12-01T10:00:00Z), got "2026-12-01 10:00:00"`},
		{"bad lsn", bkup + "backups: [{path: a}]\nrecoveryTarget: {lsn: 3000060}\n", `recoveryTarget.lsn: must be a WAL location X/X in hexadecimal (0/3000060), got "3000060"`},
		{"restore point too long", bkup + "backups: [{path: a}]\nrecoveryTarget: {name: " + strings.Repeat("n", 64) + "}\n", `recoveryTarget.name: must be a restore point name of at most 63 bytes without control characters, got "` + strings.Repeat("n", 64) + `"`},
		{"gtid for postgres", bkup + "backups: [{path: a}]\nrecoveryTarget: {gtid: 0-1-42}\n", "recoveryTarget.gtid: postgres takes a recovery target of time, lsn, name only"},
		{"lsn for mariadb", "name: a\nengine: mariadb\nversion: '11.4'\nsourceType: backup\nbackups: [{path: a}]\nrecoveryTarget: {lsn: 0/1}\n", "recoveryTarget.lsn: mariadb takes a recovery target of time, gtid, binlogPosition only"},
		{"target for mysql", "name: a\nengine: mysql\nversion: '8.0'\nsourceType: backup\nbackups: [{path: a}]\nrecoveryTarget: {gtid: 0-1-42}\n", "recoveryTarget.gtid: mysql takes no recovery target"},
		{"bad gtid", "name: a\nengine: mariadb\nversion: '11.4'\nsourceType: backup\nbackups: [{path: a}]\nrecoveryTarget: {gtid: '0-1'}\n", `recoveryTarget.gtid: must be domain-server-sequence GTIDs separated by commas (0-1-42), got "0-1"`},
		{"bad binlog position", "name: a\nengine: mariadb\nversion: '11.4'\nsourceType: backup\nbackups: [{path: a}]\nrecoveryTarget: {binlogPosition: 'bin.1:x'}\n", `recoveryTarget.binlogPosition: must be a binary log file and offset, file:offset (mariadb-bin.000003:1234), got "bin.1:x"`},

		// Everything at once, in field order.
		{"every field wrong",
			"name: '7'\nengine: postgresql\nversion: '9'\nsourceType: empty\nbackups: [{path: a}]\ninitialDatabaseName: 'x y'\ntags: ['']\nlifetime: 1.5h\npreScript: p.sql\npostScript: q.sql\n",
			`name: must not be purely numeric, got "7"; version: postgres "9" is not available; available: 14.12, 15, 16; backups: not allowed when sourceType is empty; ` +
				`initialDatabaseName: must be an ASCII letter or '_' followed by ASCII letters, digits and '_', got "x y"; tags[0]: must not be empty; ` +
				`lifetime: must be 0 (never expires) or <n>s, <n>m or <n>h with n a whole number, got "1.5h"; ` +
				`preScript: only allowed when sourceType is backup; postScript: only allowed when sourceType is backup`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ParseDefinition([]byte(tt.yaml))
			if err == nil {
				err = d.Validate(testEnv())
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if got := err.Error(); got != pfx+tt.want {
				t.Errorf("got  %q\nwant %q", got, pfx+tt.want)
			}
			if !errors.Is(err, ErrInvalidDefinition) {
				t.Errorf("errors.Is(err, ErrInvalidDefinition) is false for %v", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("errors.As finds no *FieldError in %v", err)
			}
		})
	}
}

// TestCheckPaths checks backup and script paths against a real backup root.
func TestCheckPaths(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	for _, name := range []string{"db/base.tar", "db/pg_wal.tar", "scripts/post.sql", filepath.Join(outside, "secret.sql")} {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(root, name)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(outside, "secret.sql"), filepath.Join(root, "scripts/escape.sql")); err != nil {
		t.Fatal(err)
	}
	env := testEnv()
	env.BackupRoot, env.CheckPaths = root, true

	def := func(backups []Backup, pre, post string) *Definition {
		return &Definition{Name: "a", Engine: "postgres", Version: "16", SourceType: "backup", Backups: backups, PreScript: pre, PostScript: post}
	}
	good := def([]Backup{{Path: "db/base.tar"}, {Path: "db/pg_wal.tar"}, {Path: "db"}}, "", "scripts/post.sql")
	if err := good.Validate(env); err != nil {
		t.Errorf("existing paths: %v", err)
	}

	const pfx = "imagebuilder: invalid image definition: "
	bad := def([]Backup{{Path: "db/missing.tar"}}, "scripts", "scripts/escape.sql")
	err := bad.Validate(env)
	want := pfx + `backups[0].path: "db/missing.tar" does not exist under the backup root; ` +
		`preScript: "scripts" under the backup root is not a regular file; ` +
		`postScript: cannot be checked under the backup root: statat scripts/escape.sql: path escapes from parent`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}

	// The same definition is fine when paths are not checked.
	env.CheckPaths = false
	if err := bad.Validate(env); err != nil {
		t.Errorf("unchecked paths: %v", err)
	}

	// A backup root that cannot be opened is an error of the builder, not of the definition.
	env.CheckPaths, env.BackupRoot = true, filepath.Join(root, "nowhere")
	err = good.Validate(env)
	if err == nil || errors.Is(err, ErrInvalidDefinition) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing backup root: got %v, want a not-exist error that is not ErrInvalidDefinition", err)
	}
	// With definition problems too, both are reported, and the result matches both.
	err = def(nil, "", "").Validate(env)
	want = pfx + "backups: at least one backup is required when sourceType is backup; imagebuilder: open backup root: " +
		"open " + env.BackupRoot + ": no such file or directory"
	if err == nil || err.Error() != want || !errors.Is(err, ErrInvalidDefinition) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

func TestNoVersionsAvailable(t *testing.T) {
	d := &Definition{Name: "a", Engine: "mariadb", Version: "11", SourceType: "empty"}
	err := d.Validate(ValidationEnv{Versions: Versions{EnginePostgres: {"16"}}})
	const want = "imagebuilder: invalid image definition: version: no mariadb versions are available to this builder"
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	if _, err := d.ResolveVersion(ValidationEnv{}); err == nil || err.Error() != want {
		t.Errorf("ResolveVersion: got %v\nwant %s", err, want)
	}
	d.Engine = "sybase"
	if v, err := d.ResolveVersion(testEnv()); err == nil || v != "" {
		t.Errorf("ResolveVersion with an unknown engine: got %q, %v", v, err)
	}
}

func TestLoadDefinitionErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(p, []byte("name: 1\nengine: postgres\nversion: '16'\nsourceType: empty\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadDefinition(p, testEnv())
	want := "imagebuilder: invalid image definition " + p + `: name: must not be purely numeric, got "1"`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	var de *DefinitionError
	if !errors.As(err, &de) || de.Path != p || len(de.Problems) != 1 || de.Problems[0].Field != "name" {
		t.Errorf("got %#v, want a *DefinitionError for %s with one problem in name", err, p)
	}

	_, err = LoadDefinition(filepath.Join(dir, "missing.yaml"), testEnv())
	if !errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrInvalidDefinition) {
		t.Errorf("missing file: got %v", err)
	}
}

// TestParseTypes checks how scalars of other YAML types land in string fields, and that null and
// empty lists are the same as leaving a field out.
func TestParseTypes(t *testing.T) {
	d, err := ParseDefinition([]byte("name: true\nengine: postgres\nversion: 16.10\nsourceType: empty\nlifetime: 0\ntags: []\nbackups: ~\ninitialDatabaseName:\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Definition{Name: "true", Engine: "postgres", Version: "16.10", SourceType: "empty", Lifetime: "0"}
	if !reflect.DeepEqual(*d, want) {
		t.Errorf("got %#v\nwant %#v", *d, want)
	}
}

// TestJSON checks that the JSON names (for a Kubernetes custom resource) are the YAML names.
func TestJSON(t *testing.T) {
	d, err := LoadDefinition(filepath.Join("testdata", "mysql-dump.yaml"), testEnv())
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"name":"Shop_Orders","engine":"mysql","version":"8.0","sourceType":"BACKUP",` +
		`"backups":[{"path":"shop/orders.sql","format":"sql"}],"tags":["shop","masked","2024"],"lifetime":"0",` +
		`"preScript":"scripts/before.sql","postScript":"scripts/mask-customers.sql"}`
	if string(data) != want {
		t.Errorf("got  %s\nwant %s", data, want)
	}
	// JSON is YAML: the JSON form parses back to the same definition.
	back, err := ParseDefinition(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, d) {
		t.Errorf("JSON round trip: got %+v, want %+v", back, d)
	}
}
