package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Backups are real backups of one source instance, in Dir (reachable by the postgres user).
//
// The source holds the roles alice (LOGIN, password AlicePassword) and bob (NOLOGIN), and the
// database app (owner alice) with the table items: ItemRows rows (id, name 'item <id>'), owned
// by alice, SELECT granted to bob. The table w of app gets a row per committed transaction from
// a writer that runs while the base backups are taken.
type Backups struct {
	Dir string

	Custom       string // pg_dump --format=custom of app
	Plain        string // pg_dump --verbose (plain SQL, with "-- Started on") of app
	DumpAll      string // pg_dumpall
	DumpAllClean string // pg_dumpall --clean --if-exists

	// BaseTar and BaseTarGz are pg_basebackup --format=tar --wal-method=stream output
	// directories (base.tar and pg_wal.tar; base.tar.gz and pg_wal.tar.gz with --gzip), each
	// taken while the writer was inserting into app.w. TarMinRows and TarGzMinRows are the
	// rows of w (ids 1..n) committed before each backup started.
	BaseTar, BaseTarGz       string
	TarMinRows, TarGzMinRows int64

	// Made is when the backups were taken (before the first one started).
	Made time.Time
}

// Known data of the source.
const (
	ItemRows      = 1000
	AlicePassword = "alice-secret"
)

// sourceSQL makes the source's roles, database and tables (each statement on its own).
var sourceSQL = []struct{ db, sql string }{
	{"postgres", "CREATE ROLE alice LOGIN PASSWORD '" + AlicePassword + "'"},
	{"postgres", "CREATE ROLE bob NOLOGIN"},
	{"postgres", "CREATE DATABASE app OWNER alice"},
	{"app", `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
		INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, ` + strconv.Itoa(ItemRows) + `) g;
		ALTER TABLE items OWNER TO alice;
		GRANT SELECT ON items TO bob;
		CREATE TABLE w (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
		CREATE TABLE stop_writer (x int);
		CREATE PROCEDURE writer() LANGUAGE plpgsql AS $$
		BEGIN
			WHILE NOT EXISTS (SELECT FROM stop_writer) LOOP
				INSERT INTO w DEFAULT VALUES;
				COMMIT;
				PERFORM pg_sleep(0.002);
			END LOOP;
		END $$;`},
}

var (
	fixtureOnce sync.Once
	fixture     *Backups
	fixtureErr  error
	fixtureDir  string
)

// Fixtures returns the backups shared by the tests of one test binary, made at the first call
// (about 10 seconds). It calls Require first. The test binary's TestMain calls Cleanup.
func Fixtures(t testing.TB) *Backups {
	t.Helper()
	bin := Require(t)
	fixtureOnce.Do(func() {
		fixtureDir, fixtureErr = os.MkdirTemp("", "pgtest-backups-")
		if fixtureErr != nil {
			return
		}
		if fixtureErr = os.Chmod(fixtureDir, 0o711); fixtureErr != nil {
			return
		}
		fixture, fixtureErr = MakeBackups(bin, fixtureDir)
	})
	if fixtureErr != nil {
		t.Fatalf("pgtest: make the backups: %v", fixtureErr)
	}
	return fixture
}

// Cleanup removes what Fixtures and MoreFixtures made.
func Cleanup() {
	for _, dir := range []string{fixtureDir, moreDir} {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
	}
}

// MakeBackups runs a source instance under dir, fills it and takes the backups into dir.
func MakeBackups(bin, dir string) (b *Backups, err error) {
	src, err := StartServer(bin, filepath.Join(dir, "source"))
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, src.Stop()) }()
	for _, s := range sourceSQL {
		if _, err := src.Psql(s.db, s.sql); err != nil {
			return nil, err
		}
	}

	b = &Backups{
		Dir:  filepath.Join(dir, "backups"),
		Made: time.Now().Add(-time.Second).Truncate(time.Second),
	}
	b.Custom = filepath.Join(b.Dir, "app.dump")
	b.Plain = filepath.Join(b.Dir, "app.sql")
	b.DumpAll = filepath.Join(b.Dir, "all.sql")
	b.DumpAllClean = filepath.Join(b.Dir, "all-clean.sql")
	b.BaseTar = filepath.Join(b.Dir, "base-tar")
	b.BaseTarGz = filepath.Join(b.Dir, "base-tgz")
	if err := src.user.MkdirAll(b.Dir, 0o755); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"pg_dump", "--format=custom", "-d", "app", "-f", b.Custom},
		{"pg_dump", "--verbose", "-d", "app", "-f", b.Plain},
		{"pg_dumpall", "-f", b.DumpAll},
		{"pg_dumpall", "--clean", "--if-exists", "-f", b.DumpAllClean},
	} {
		if _, err := src.run(args[0], args[1:]...); err != nil {
			return nil, err
		}
	}

	// The writer commits a row of app.w every few milliseconds until stop_writer has a row.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writer := src.user.Command(ctx, "", filepath.Join(bin, "psql"), []string{"-X", "-d", "app", "-c", "CALL writer()"}, src.env()...)
	if err := writer.Start(); err != nil {
		return nil, fmt.Errorf("pgtest: start the writer: %w", err)
	}
	writerDone := make(chan error, 1)
	go func() { writerDone <- writer.Wait() }()
	stopWriter := func() error {
		_, err := src.Psql("app", "INSERT INTO stop_writer VALUES (1)")
		select {
		case werr := <-writerDone:
			return errors.Join(err, werr)
		case <-time.After(time.Minute):
			return errors.Join(err, errors.New("pgtest: the writer did not stop"))
		}
	}
	if err := waitRows(src, 20); err != nil {
		return nil, errors.Join(err, stopWriter())
	}
	for _, bb := range []struct {
		dir  string
		min  *int64
		args []string
	}{
		{b.BaseTar, &b.TarMinRows, nil},
		{b.BaseTarGz, &b.TarGzMinRows, []string{"--gzip"}},
	} {
		n, err := committedRows(src)
		if err != nil {
			return nil, errors.Join(err, stopWriter())
		}
		*bb.min = n
		// The rate limit makes the copy last a second or two, so that the writer commits
		// during it and the restore has WAL to replay.
		args := append([]string{"-D", bb.dir, "--format=tar", "--wal-method=stream", "--checkpoint=fast", "--max-rate=20M", "--no-sync"}, bb.args...)
		if _, err := src.run("pg_basebackup", args...); err != nil {
			return nil, errors.Join(err, stopWriter())
		}
	}
	if err := stopWriter(); err != nil {
		return nil, err
	}
	return b, nil
}

// committedRows returns the highest id of app.w: every row up to it is committed.
func committedRows(src *Server) (int64, error) {
	out, err := src.Psql("app", "SELECT coalesce(max(id), 0) FROM w")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(out, 10, 64)
}

// waitRows waits until app.w has at least n rows.
func waitRows(src *Server, n int64) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		got, err := committedRows(src)
		if err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("pgtest: the writer wrote fewer than %d rows in a minute", n)
}
