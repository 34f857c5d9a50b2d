package tarx

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExtractPgBasebackup restores a real `pg_basebackup -Ft -z -X stream` backup (base.tar.gz
// and pg_wal.tar.gz) with Owner set to the postgres user, then starts PostgreSQL on it and reads
// back a table. It skips unless it runs as root, with a postgres user and the PostgreSQL server
// binaries installed; nothing else depends on them.
func TestExtractPgBasebackup(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL twice")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run PostgreSQL as the postgres user and to chown")
	}
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Skip("no postgres user")
	}
	out, err := exec.Command("pg_config", "--bindir").Output()
	if err != nil {
		t.Skip("pg_config is not installed")
	}
	bin := strings.TrimSpace(string(out))
	for _, tool := range []string{"initdb", "pg_ctl", "pg_basebackup", "psql"} {
		if _, err := os.Stat(filepath.Join(bin, tool)); err != nil {
			t.Skipf("%s is not installed in %s", tool, bin)
		}
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)

	// t.TempDir's parents are not reachable by the postgres user.
	work, err := os.MkdirTemp("", "tarx-pg-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(work) })
	require.NoError(t, os.Chmod(work, 0o755))
	require.NoError(t, os.Chown(work, uid, gid))
	src, backup, restored := filepath.Join(work, "src"), filepath.Join(work, "backup"), filepath.Join(work, "restored")

	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Dir = work
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		require.NoError(t, cmd.Run(), "%s %v: %s%s", name, args, stdout.String(), stderr.String())
		return stdout.String()
	}
	start := func(dataDir string) {
		t.Helper()
		run("pg_ctl", "-D", dataDir, "-l", dataDir+".log", "-w", "-o", "-k "+work+" -c listen_addresses=''", "start")
		t.Cleanup(func() {
			cmd := exec.Command(filepath.Join(bin, "pg_ctl"), "-D", dataDir, "-m", "immediate", "stop")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
			_ = cmd.Run() // already stopped when the test got that far
		})
	}
	psql := func(sql string) string {
		t.Helper()
		return strings.TrimSpace(run("psql", "-h", work, "-U", "postgres", "-d", "postgres", "-tAc", sql))
	}

	run("initdb", "-D", src, "-A", "trust", "-U", "postgres", "--no-sync")
	start(src)
	psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS i")
	run("pg_basebackup", "-h", work, "-U", "postgres", "-D", backup, "-Ft", "-z", "-X", "stream", "-c", "fast", "--no-sync")
	run("pg_ctl", "-D", src, "-m", "fast", "-w", "stop")

	require.NoError(t, os.Mkdir(restored, 0o700))
	opts := Options{Owner: &Owner{UID: uid, GID: gid}}
	restore := func(archive, dest string) Stats {
		t.Helper()
		f, err := os.Open(filepath.Join(backup, archive))
		require.NoError(t, err)
		defer f.Close()
		var last [2]int64
		o := opts
		o.Progress = func(done, total int64) { last = [2]int64{done, total} }
		st, err := Extract(context.Background(), f, dest, o)
		require.NoError(t, err, archive)
		fi, err := f.Stat()
		require.NoError(t, err)
		require.Equal(t, [2]int64{fi.Size(), fi.Size()}, last, "last progress call")
		return st
	}
	st := restore("base.tar.gz", restored)
	require.Positive(t, st.Files)
	require.Positive(t, st.Dirs)
	restore("pg_wal.tar.gz", filepath.Join(restored, "pg_wal"))

	start(restored)
	require.Equal(t, "10000", psql("SELECT count(*) FROM t"))
	run("pg_ctl", "-D", restored, "-m", "fast", "-w", "stop")
}
