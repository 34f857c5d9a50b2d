package pgtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// More are the backups production teams take that Backups lacks, of a second source instance
// with static data (nothing writes while they are taken, so every table's checksum is known):
// base backups with a tablespace in every compression pg_basebackup writes, pg_dump's directory
// and tar formats, one dump per database, and WAL past a base backup with a restore point in
// it, for point-in-time recovery.
//
// The source has the tablespace ts (a directory outside its data directory), the database app
// (tables items, in the default tablespace, and ts_items, in ts) and the database shop (table
// orders, in ts).
type More struct {
	Dir string
	// TablespaceDir is the source's directory of the tablespace ts.
	TablespaceDir string

	// BaseBackups are pg_basebackup --format=tar --wal-method=stream output directories (base
	// archive, pg_wal.tar, the tablespace's <oid>.tar, backup_manifest), by compression: "none",
	// "gzip" (-z), "client-lz4", "client-zstd", "server-lz4", "server-zstd". "none" was taken
	// with --tablespace-mapping too (which the tar format records in no file).
	BaseBackups map[string]string
	// Sums are Checksums of app and shop when the base backups and dumps were taken.
	Sums map[string]string

	AppDir   string // pg_dump --format=directory of app
	AppTar   string // pg_dump --format=tar of app
	ShopDump string // pg_dump --format=custom of shop
	ShopTar  string // pg_dump --format=tar of shop

	// PITRBase is a base backup (as BaseBackups["none"]) taken before two batches of rows were
	// inserted into app.items_log: batch 1, then the restore point RestorePoint (at
	// RestorePointLSN, after RestorePointTime), then batch 2. PITRWal is a directory of the WAL
	// segments from the base backup's start to the end of batch 2; PITRWalTar a tar of the
	// same. SumsAtRestorePoint are Checksums of app at the restore point; SumsAtEnd after batch 2.
	PITRBase, PITRWal, PITRWalTar string
	RestorePoint                  string
	RestorePointLSN               string
	RestorePointTime              time.Time
	SumsAtRestorePoint, SumsAtEnd string
	Made                          time.Time
}

// ChecksumSQL returns one line per table of the current database outside the system schemas:
// the table's name, its row count and the md5 of its rows as text, ordered. Run it on the
// source and on a restore to compare them.
const ChecksumSQL = `SELECT c.relname || ':' || (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, false, '')))[1]::text
	|| ':' || (xpath('/row/m/text()', query_to_xml(format('SELECT md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''')) AS m FROM %I.%I t', n.nspname, c.relname), false, false, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1`

// moreSQL makes the source's data (each statement on its own); tsDir is the tablespace's
// directory.
func moreSQL(tsDir string) []struct{ db, sql string } {
	return []struct{ db, sql string }{
		{"postgres", "CREATE TABLESPACE ts LOCATION '" + tsDir + "'"},
		{"postgres", "CREATE DATABASE app"},
		{"postgres", "CREATE DATABASE shop TABLESPACE ts"},
		{"app", `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2));
			INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 500) g;
			CREATE TABLE ts_items (id int PRIMARY KEY, payload text) TABLESPACE ts;
			INSERT INTO ts_items SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 300) g;
			CREATE TABLE items_log (id serial PRIMARY KEY, batch int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());`},
		{"shop", `CREATE TABLE orders (id int PRIMARY KEY, item int NOT NULL, qty int NOT NULL);
			INSERT INTO orders SELECT g, g % 500 + 1, g % 7 + 1 FROM generate_series(1, 200) g;`},
	}
}

var (
	moreOnce sync.Once
	more     *More
	moreErr  error
	moreDir  string
)

// MoreFixtures returns the More backups shared by the tests of one test binary, made at the first
// call (about 15 seconds). It calls Require first. The test binary's TestMain calls Cleanup.
func MoreFixtures(t testing.TB) *More {
	t.Helper()
	bin := Require(t)
	moreOnce.Do(func() {
		moreDir, moreErr = os.MkdirTemp("", "pgtest-more-")
		if moreErr != nil {
			return
		}
		if moreErr = os.Chmod(moreDir, 0o711); moreErr != nil {
			return
		}
		more, moreErr = MakeMore(bin, moreDir)
	})
	if moreErr != nil {
		t.Fatalf("pgtest: make the backups: %v", moreErr)
	}
	return more
}

// Checksums runs ChecksumSQL in db of the server.
func (s *Server) Checksums(db string) (string, error) { return s.Psql(db, ChecksumSQL) }

// MakeMore runs a source instance under dir, fills it and takes the More backups into dir.
func MakeMore(bin, dir string) (m *More, err error) {
	src, err := StartServer(bin, filepath.Join(dir, "source"))
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, src.Stop()) }()
	tsDir := filepath.Join(dir, "source", "ts")
	if err := src.user.MkdirAll(tsDir, 0o700); err != nil {
		return nil, err
	}
	for _, s := range moreSQL(tsDir) {
		if _, err := src.Psql(s.db, s.sql); err != nil {
			return nil, err
		}
	}
	m = &More{
		Dir:           filepath.Join(dir, "backups"),
		TablespaceDir: tsDir,
		BaseBackups:   map[string]string{},
		Sums:          map[string]string{},
		Made:          time.Now().Add(-time.Second).Truncate(time.Second),
	}
	if err := src.user.MkdirAll(m.Dir, 0o755); err != nil {
		return nil, err
	}
	for _, db := range []string{"app", "shop"} {
		if m.Sums[db], err = src.Checksums(db); err != nil {
			return nil, err
		}
	}
	base := []string{"--format=tar", "--wal-method=stream", "--checkpoint=fast", "--no-sync"}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"none", []string{"--tablespace-mapping=" + tsDir + "=" + filepath.Join(dir, "elsewhere")}},
		{"gzip", []string{"-z"}},
		{"client-lz4", []string{"--compress=client-lz4"}},
		{"client-zstd", []string{"--compress=client-zstd"}},
		{"server-lz4", []string{"--compress=server-lz4"}},
		{"server-zstd", []string{"--compress=server-zstd"}},
	} {
		out := filepath.Join(m.Dir, "base-"+c.name)
		if _, err := src.run("pg_basebackup", append(append([]string{"-D", out}, base...), c.args...)...); err != nil {
			return nil, err
		}
		m.BaseBackups[c.name] = out
	}
	m.AppDir = filepath.Join(m.Dir, "app.dir")
	m.AppTar = filepath.Join(m.Dir, "app.tar")
	m.ShopDump = filepath.Join(m.Dir, "shop.dump")
	m.ShopTar = filepath.Join(m.Dir, "shop.tar")
	for _, args := range [][]string{
		{"--format=directory", "-d", "app", "-f", m.AppDir},
		{"--format=tar", "-d", "app", "-f", m.AppTar},
		{"--format=custom", "-d", "shop", "-f", m.ShopDump},
		{"--format=tar", "-d", "shop", "-f", m.ShopTar},
	} {
		if _, err := src.run("pg_dump", args...); err != nil {
			return nil, err
		}
	}
	if err := m.makePITR(src); err != nil {
		return nil, err
	}
	return m, nil
}

// makePITR takes the point-in-time recovery backups: a base backup, two batches of rows around a
// restore point, and the WAL.
func (m *More) makePITR(src *Server) error {
	m.PITRBase = filepath.Join(m.Dir, "pitr-base")
	if _, err := src.run("pg_basebackup", "-D", m.PITRBase, "--format=tar", "--wal-method=stream", "--checkpoint=fast", "--no-sync"); err != nil {
		return err
	}
	batch := func(n int) string {
		return fmt.Sprintf("INSERT INTO items_log (batch) SELECT %d FROM generate_series(1, 100); UPDATE items SET price = price + %d WHERE id %% 10 = 0;", n, n)
	}
	if _, err := src.Psql("app", batch(1)); err != nil {
		return err
	}
	var err error
	if m.SumsAtRestorePoint, err = src.Checksums("app"); err != nil {
		return err
	}
	m.RestorePoint = "before_batch_2"
	out, err := src.Psql("app", "SELECT pg_create_restore_point('"+m.RestorePoint+"'), to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
	if err != nil {
		return err
	}
	lsn, at, _ := strings.Cut(out, "|")
	m.RestorePointLSN = lsn
	if m.RestorePointTime, err = time.Parse(time.RFC3339Nano, at); err != nil {
		return fmt.Errorf("pgtest: restore point time %q: %w", at, err)
	}
	time.Sleep(50 * time.Millisecond) // batch 2 commits strictly after RestorePointTime
	if _, err := src.Psql("app", batch(2)); err != nil {
		return err
	}
	if m.SumsAtEnd, err = src.Checksums("app"); err != nil {
		return err
	}
	last, err := src.Psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
	if err != nil {
		return err
	}
	// The segments up to the one the switch ended: pg_wal may hold recycled segments with
	// later names, whose content is old.
	m.PITRWal = filepath.Join(m.Dir, "pitr-wal")
	if err := src.user.MkdirAll(m.PITRWal, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(src.Data, "pg_wal"))
	if err != nil {
		return err
	}
	var names []string
	for _, ent := range ents {
		if len(ent.Name()) == 24 && ent.Name() <= last {
			names = append(names, ent.Name())
		}
	}
	sort.Strings(names)
	for _, name := range names {
		if _, err := src.runSystem("cp", filepath.Join(src.Data, "pg_wal", name), filepath.Join(m.PITRWal, name)); err != nil {
			return err
		}
	}
	m.PITRWalTar = filepath.Join(m.Dir, "pitr-wal.tar")
	_, err = src.runSystem("tar", append([]string{"-cf", m.PITRWalTar, "-C", m.PITRWal}, names...)...)
	return err
}
