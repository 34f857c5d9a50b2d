//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The known data of the source database: sales(id, item) with ids 1..salesRows.
const (
	salesRows  = 1000
	salesQuery = "SELECT count(*) || '|' || sum(id) FROM sales"
	salesWant  = "1000|500500"
)

// pgUser is the node's postgres user: the host's PostgreSQL runs as it.
type pgUser struct {
	uid, gid int
}

func lookupPostgres(t *testing.T) pgUser {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("the node's postgres user (make deps installs PostgreSQL): %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return pgUser{uid: uid, gid: gid}
}

// asPostgres runs one of the host PostgreSQL's programs as the postgres user.
func asPostgres(t *testing.T, program string, args ...string) string {
	t.Helper()
	bin := filepath.Join("/usr/lib/postgresql", cfg.postgresVersion, "bin", program)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("PostgreSQL %s on the node (make deps installs it): %v", cfg.postgresVersion, err)
	}
	c, cancel := context.WithTimeout(ctx(t), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(c, "runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
	cmd.Dir = "/"
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", program, strings.Join(args, " "), err, out.String())
	}
	return strings.TrimSpace(out.String())
}

// makeBackup makes a real PostgreSQL instance on the node with the known sales data, takes a
// base backup of it with `pg_basebackup -Ft -X stream` (base.tar and pg_wal.tar) into a new
// directory under E2E_STATE/backups, and removes the instance. The directory is the hostPath
// backup source of a DataImage; it is removed when t ends.
func makeBackup(t *testing.T, name string) string {
	t.Helper()
	return makeFilledBackup(t, name, 0)
}

// fillerRowsPerMiB is about how many rows of makeFilledBackup's table take a MiB.
const fillerRowsPerMiB = 3500

// makeFilledBackup is makeBackup with a table filler(i int, pad text) of about fillMiB MiB
// besides (fillMiB*fillerRowsPerMiB rows of 256 random hex digits, about 290 bytes a row on disk: about half of it compresses
// away, like much real data).
func makeFilledBackup(t *testing.T, name string, fillMiB int) string {
	t.Helper()
	pg := lookupPostgres(t)
	root := filepath.Join(cfg.state, "backups")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	work, err := os.MkdirTemp(root, name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	// The server's directories, owned by postgres; the parents are 0755.
	data, run, backup := filepath.Join(work, "source"), filepath.Join(work, "run"), filepath.Join(work, "backup")
	for _, d := range []string{work, data, run, backup} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, pg.uid, pg.gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(data, 0o700); err != nil {
		t.Fatal(err)
	}
	asPostgres(t, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
	asPostgres(t, "pg_ctl", "-D", data, "-l", filepath.Join(run, "server.log"), "-w",
		"-o", fmt.Sprintf("-p 5432 -k %s -c listen_addresses=", run), "start")
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			asPostgres(t, "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
		}
	}
	t.Cleanup(func() {
		if !stopped {
			// The test failed midway: the server must not outlive it.
			exec.Command("runuser", "-u", "postgres", "--", filepath.Join("/usr/lib/postgresql", cfg.postgresVersion, "bin", "pg_ctl"),
				"-D", data, "-m", "immediate", "-w", "stop").Run()
		}
	})
	asPostgres(t, "psql", "-h", run, "-p", "5432", "-U", "postgres", "-d", "postgres", "-AtX", "-v", "ON_ERROR_STOP=1", "-c",
		fmt.Sprintf("CREATE TABLE sales (id int PRIMARY KEY, item text NOT NULL); "+
			"INSERT INTO sales SELECT i, 'item-' || i FROM generate_series(1, %d) AS i", salesRows))
	if got := asPostgres(t, "psql", "-h", run, "-p", "5432", "-U", "postgres", "-d", "postgres", "-AtX", "-c", salesQuery); got != salesWant {
		t.Fatalf("the source holds %q, want %q", got, salesWant)
	}
	if fillMiB > 0 {
		asPostgres(t, "psql", "-h", run, "-p", "5432", "-U", "postgres", "-d", "postgres", "-AtX", "-v", "ON_ERROR_STOP=1", "-c",
			fmt.Sprintf("CREATE TABLE filler AS SELECT i, %s AS pad FROM generate_series(1, %d) AS i",
				strings.TrimSuffix(strings.Repeat("md5(random()::text) || ", 8), " || "),
				fillMiB*fillerRowsPerMiB))
		size := asPostgres(t, "psql", "-h", run, "-p", "5432", "-U", "postgres", "-d", "postgres", "-AtX", "-c",
			"SELECT pg_size_pretty(pg_database_size('postgres'))")
		t.Logf("backup %s: database of %s", name, size)
	}
	asPostgres(t, "pg_basebackup", "-h", run, "-p", "5432", "-U", "postgres", "-D", backup, "-Ft", "-X", "stream", "--checkpoint=fast")
	stop()
	for _, f := range []string{"base.tar", "pg_wal.tar"} {
		p := filepath.Join(backup, f)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("pg_basebackup -Ft wrote no %s: %v", f, err)
		}
		// pg_basebackup writes 0600 files of the node's postgres user; the build Job runs as
		// the engine image's postgres user (uid 999), not root, and must be able to read them
		// (docs/kubernetes.md, "What an admin allows").
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	return backup
}

// makeBadBackup writes a backup directory whose base.tar is not a tar archive.
func makeBadBackup(t *testing.T, name string) string {
	t.Helper()
	root := filepath.Join(cfg.state, "backups")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte("this is not a tar archive\n"), 4096)
	for _, f := range []string{"base.tar", "pg_wal.tar"} {
		if err := os.WriteFile(filepath.Join(dir, f), junk, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
