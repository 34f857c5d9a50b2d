package mariadb_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb/internal/mariadbtest"
)

// sourceSQL is the source instance's data: text in several scripts, NULL, binary data with NUL
// and newline bytes (which mariadb-dump writes raw or escaped), a view, a procedure, and an
// AUTO_INCREMENT counter.
const sourceSQL = `
CREATE TABLE customers (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(50) NOT NULL,
  note TEXT,
  photo BLOB
) ENGINE=InnoDB;
INSERT INTO customers (name, note, photo) VALUES
  ('Zoë', 'naïve café', X'00010A0D275C1AFF'),
  ('李雷', NULL, NULL),
  ('O''Brien', 'tab	and "quotes"', X'');
CREATE TABLE orders (
  id INT PRIMARY KEY,
  customer INT NOT NULL,
  total DECIMAL(10,2) NOT NULL,
  FOREIGN KEY (customer) REFERENCES customers(id)
) ENGINE=InnoDB;
INSERT INTO orders VALUES (10, 1, 12.50), (11, 1, 7.25), (12, 2, 100.00);
CREATE VIEW totals AS SELECT customer, SUM(total) AS total FROM orders GROUP BY customer;
DELIMITER ;;
CREATE PROCEDURE order_count(OUT n INT) BEGIN SELECT COUNT(*) INTO n FROM orders; END;;
DELIMITER ;
`

// checkShop fails the test unless database db of in holds sourceSQL's data.
func checkShop(t *testing.T, in engine.Instance, db string) {
	t.Helper()
	want := map[string]string{
		"SELECT id, name, IFNULL(note, 'NULL'), HEX(photo) FROM customers ORDER BY id": "1\tZoë\tnaïve café\t00010A0D275C1AFF\n" +
			"2\t李雷\tNULL\tNULL\n3\tO'Brien\ttab\\tand \"quotes\"\t",
		"SELECT customer, total FROM totals ORDER BY customer":                                                              "1\t19.75\n2\t100.00",
		"SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'customers'": "4",
		"SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()":                            "order_count",
	}
	for q, w := range want {
		if got := mariadbtest.Query(t, in, db, q); got != w {
			t.Errorf("database %s: %s:\ngot  %q\nwant %q", db, q, got, w)
		}
	}
}

// progress records what RestoreOptions.Progress reports.
type progress struct {
	mu    sync.Mutex
	calls []int64
}

func (p *progress) report(done int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, done)
}

func (p *progress) last() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.calls) == 0 {
		return -1
	}
	return p.calls[len(p.calls)-1]
}

func backup(t *testing.T, path string) engine.BackupFile {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return engine.BackupFile{Path: path, Format: imagebuilder.FormatSQL, Size: st.Size()}
}

// TestDumpRestore dumps a source instance with the real mariadb-dump in the ways people do
// (one database, --databases, gzip'd) and restores each dump into a fresh instance.
func TestDumpRestore(t *testing.T) {
	t.Parallel()
	e := mariadbtest.Engine(t)
	src, _ := mariadbtest.Instance(t, e, engine.InitOptions{Database: "shop"}, engine.StartOptions{})
	mariadbtest.Exec(t, src, "shop", sourceSQL)
	checkShop(t, src, "shop")

	before := time.Now().UTC().Truncate(time.Second)
	single := mariadbtest.Dump(t, src, "shop")
	databases := mariadbtest.Dump(t, src, "--databases", "shop")
	after := time.Now().UTC()
	gzipped := mariadbtest.Gzip(t, single)

	t.Run("detect", func(t *testing.T) {
		for _, p := range []string{single, databases, gzipped} {
			if f, err := e.Detect(p); err != nil || f != imagebuilder.FormatSQL {
				t.Errorf("Detect(%s) = %q, %v; want sql", filepath.Base(p), f, err)
			}
		}
		// A gzip'd dump cut short is no dump.
		data, err := os.ReadFile(gzipped)
		if err != nil {
			t.Fatal(err)
		}
		cut := filepath.Join(t.TempDir(), "cut.sql.gz")
		if err := os.WriteFile(cut, data[:10], 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Detect(cut); !errors.Is(err, engine.ErrFormat) {
			t.Errorf("Detect(a cut gzip stream) = %v, want ErrFormat", err)
		}
	})

	dst, _ := mariadbtest.Instance(t, e, engine.InitOptions{}, engine.StartOptions{})
	t.Run("one database", func(t *testing.T) {
		var p progress
		b := backup(t, single)
		state, err := dst.RestoreLogical(ctx(t), b, engine.RestoreOptions{Database: "copy", Progress: p.report})
		if err != nil {
			t.Fatal(err)
		}
		checkShop(t, dst, "copy")
		if p.last() != b.Size {
			t.Errorf("last progress report %d, want the file's %d bytes", p.last(), b.Size)
		}
		if state.Time.Before(before) || state.Time.After(after) || !strings.Contains(state.Source, "Dump completed on") {
			t.Errorf("DataState = %v (%s), want between %v and %v from the dump's trailer", state.Time, state.Source, before, after)
		}
		if dst.Conn().Database != "copy" {
			t.Errorf("Conn().Database = %q, want copy", dst.Conn().Database)
		}
	})
	t.Run("one database without a target", func(t *testing.T) {
		_, err := dst.RestoreLogical(ctx(t), backup(t, single), engine.RestoreOptions{})
		if !errors.Is(err, mariadb.ErrNoDatabase) || !strings.Contains(err.Error(), single) {
			t.Fatalf("RestoreLogical without a database = %v, want ErrNoDatabase naming the file", err)
		}
	})
	t.Run("databases", func(t *testing.T) {
		// The dump creates and uses shop itself; the database given is not used.
		state, err := dst.RestoreLogical(ctx(t), backup(t, databases), engine.RestoreOptions{Database: "unused"})
		if err != nil {
			t.Fatal(err)
		}
		checkShop(t, dst, "shop")
		if got := mariadbtest.Query(t, dst, "", "SHOW DATABASES LIKE 'unused'"); got != "" {
			t.Errorf("database unused was created")
		}
		if dst.Conn().Database != "shop" {
			t.Errorf("Conn().Database = %q, want the dump's shop", dst.Conn().Database)
		}
		if state.Time.IsZero() {
			t.Errorf("no DataState time")
		}
	})
	t.Run("gzip", func(t *testing.T) {
		var p progress
		b := backup(t, gzipped)
		if _, err := dst.RestoreLogical(ctx(t), b, engine.RestoreOptions{Database: "zipped", Progress: p.report}); err != nil {
			t.Fatal(err)
		}
		checkShop(t, dst, "zipped")
		if p.last() != b.Size {
			t.Errorf("last progress report %d, want the compressed file's %d bytes", p.last(), b.Size)
		}
	})
	t.Run("broken dump", func(t *testing.T) {
		// A dump that fails half-way names the file, the database and the line.
		data, err := os.ReadFile(single)
		if err != nil {
			t.Fatal(err)
		}
		broken := filepath.Join(t.TempDir(), "broken.sql")
		bad := strings.Replace(string(data), "INSERT INTO `orders`", "INSERT INTO `orderz`", 1)
		if err := os.WriteFile(broken, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = dst.RestoreLogical(ctx(t), backup(t, broken), engine.RestoreOptions{Database: "broken"})
		var se *engine.ServerError
		if !errors.As(err, &se) || se.Op != "restore" || !strings.Contains(err.Error(), "broken.sql into database broken") ||
			!strings.Contains(err.Error(), "orderz") {
			t.Fatalf("RestoreLogical of a broken dump = %v", err)
		}
	})
	t.Run("not sql", func(t *testing.T) {
		b := backup(t, single)
		b.Format = imagebuilder.FormatPgDumpCustom
		if _, err := dst.RestoreLogical(ctx(t), b, engine.RestoreOptions{Database: "x"}); !errors.Is(err, engine.ErrFormat) {
			t.Fatalf("RestoreLogical of format %s = %v, want ErrFormat", b.Format, err)
		}
		if _, err := e.RestorePhysical(ctx(t), mariadbtest.Root(t), []engine.BackupFile{b}, engine.RestoreOptions{}); !errors.Is(err, engine.ErrFormat) {
			t.Fatalf("RestorePhysical = %v, want ErrFormat", err)
		}
	})
}

// TestDetect runs Detect on files that are not real dumps (those are in TestDumpRestore).
func TestDetect(t *testing.T) {
	e := mariadbtest.Engine(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sqlFiles := map[string]string{
		"script.sql":    "-- masking\nUPDATE customers SET name = 'x';\n",
		"compact.sql":   "/*!40101 SET NAMES utf8mb4 */;\nCREATE TABLE t (x INT);\n",
		"hash.sql":      "# a comment\n\n  create table t (x int);",
		"mysqldump.sql": "-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n--\n-- Host: localhost    Database: shop\n",
	}
	for name, content := range sqlFiles {
		if f, err := e.Detect(write(name, content)); err != nil || f != imagebuilder.FormatSQL {
			t.Errorf("Detect(%s) = %q, %v; want sql", name, f, err)
		}
	}
	if f, err := e.Detect(mariadbtest.Gzip(t, filepath.Join(dir, "script.sql"))); err != nil || f != imagebuilder.FormatSQL {
		t.Errorf("Detect(script.sql.gz) = %q, %v; want sql", f, err)
	}
	notSQL := map[string]string{
		"empty":     "",
		"garbage":   "\x00\x01\x02\xff\xfe garbage",
		"pgdump.c":  "PGDMP\x01\x0e\x00",
		"pg.sql":    "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n",
		"prose.txt": "Dear customer,\nplease find attached\n",
		"comments":  "-- nothing\n/* at all */\n",
	}
	wantWhat := map[string]string{
		"empty": "an empty file", "garbage": "binary data", "pgdump.c": "PostgreSQL custom-format",
		"pg.sql": "PostgreSQL dump", "prose.txt": `"Dear customer,"`, "comments": "only comments",
	}
	for name, content := range notSQL {
		_, err := e.Detect(write(name, content))
		if !errors.Is(err, engine.ErrFormat) || !strings.Contains(err.Error(), wantWhat[name]) || !strings.Contains(err.Error(), name) {
			t.Errorf("Detect(%s) = %v; want ErrFormat naming the file and %q", name, err, wantWhat[name])
		}
	}
	if _, err := e.Detect(mariadbtest.Gzip(t, filepath.Join(dir, "garbage"))); !errors.Is(err, engine.ErrFormat) ||
		!strings.Contains(err.Error(), "a gzip stream of binary data") {
		t.Errorf("Detect(garbage.gz) = %v", err)
	}
	if _, err := e.Detect(dir); !errors.Is(err, engine.ErrFormat) || !strings.Contains(err.Error(), "directory") {
		t.Errorf("Detect(a directory) = %v", err)
	}
	if _, err := e.Detect(filepath.Join(dir, "nosuch")); !errors.Is(err, os.ErrNotExist) || errors.Is(err, engine.ErrFormat) {
		t.Errorf("Detect(a missing file) = %v, want ErrNotExist", err)
	}
	if e.Physical(imagebuilder.FormatSQL) {
		t.Error("Physical(sql) = true")
	}
}
