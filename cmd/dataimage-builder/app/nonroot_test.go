package app

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// The build Job runs the builder as the engine's server user, with no capability, no privilege
// escalation and a read-only root file system (controllers/dataimage, build.go). These tests
// run the static builder binary the same way on this machine, without a cluster: in a mount
// namespace of its own where the root file system is read-only and only the pod's writable
// places are writable (the build volume, a fresh /tmp, the runtime directory, the termination
// log's directory; the backups read-only), switched by setpriv to the engine's user with no
// supplementary group, no capability (bounding set emptied) and no_new_privs.

// sandbox is the pod's layout on this machine.
type sandbox struct {
	uid, gid int
	// writable are directories bind-mounted writable; readOnly, bind-mounted read-only.
	writable, readOnly []string
}

// requireSandbox skips t unless it runs as root with unshare and setpriv (util-linux), which it
// needs to make the sandbox; under CI=true it fails instead.
func requireSandbox(t *testing.T) {
	t.Helper()
	var missing string
	switch {
	case os.Geteuid() != 0:
		missing = "root"
	default:
		for _, tool := range []string{"unshare", "setpriv", "mount"} {
			if _, err := exec.LookPath(tool); err != nil {
				missing = tool
			}
		}
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the non-root build test needs %s (CI=true)", missing)
	}
	t.Skipf("the non-root build test needs %s", missing)
}

// run runs argv in the sandbox and returns its exit code, stdout and stderr.
func (s sandbox) run(t *testing.T, argv []string) (int, string, string) {
	t.Helper()
	// The script runs as root in a new mount namespace (private: nothing goes back to the
	// machine's), makes its mounts, checks that the root file system is read-only, then
	// becomes the engine's user and runs argv.
	script := `set -eu
for d in $WRITABLE; do mount --bind "$d" "$d"; done
for d in $READONLY; do mount --bind "$d" "$d"; mount -o remount,bind,ro "$d"; done
mount -o remount,bind,ro /
mount -t tmpfs -o mode=1777,size=256m tmpfs /tmp
if touch /.dataimage-rw-probe 2>/dev/null; then echo "the root file system is writable" >&2; exit 97; fi
exec setpriv --reuid="$RUN_UID" --regid="$RUN_GID" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- \
	env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", script, "sandbox"}, argv...)...)
	cmd.Env = append(os.Environ(), "WRITABLE="+strings.Join(s.writable, " "), "READONLY="+strings.Join(s.readOnly, " "),
		"RUN_UID="+strconv.Itoa(s.uid), "RUN_GID="+strconv.Itoa(s.gid))
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "unshare: %v\n%s", err, stderr.String())
		code = ee.ExitCode()
	}
	require.NotEqual(t, 97, code, stderr.String())
	return code, stdout.String(), stderr.String()
}

// baseDir returns a new directory outside /tmp (the sandbox mounts a fresh /tmp), traversable
// by everyone, removed when t ends.
func baseDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "dib-nonroot-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o711))
	return dir
}

// buildBinary builds cmd/dataimage-builder as the image has it (static, CGO_ENABLED=0: its
// os/user reads /etc/passwd) into dir.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "bin", "dataimage-builder")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build cmd/dataimage-builder: %s", out)
	require.NoError(t, os.Chmod(filepath.Dir(bin), 0o755))
	return bin
}

// giveTree gives dir and everything under it to uid:gid, files mode fileMode and directories
// 0755: backups made elsewhere, which the build can read but not write.
func giveTree(t *testing.T, dir string, uid, gid int, fileMode os.FileMode) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o755)
		}
		return os.Chmod(p, fileMode)
	}))
}

// volumeDir makes a directory as the kubelet leaves a fresh volume's root for a pod with
// fsGroup gid: owned by root, group gid, setgid and group-writable.
func volumeDir(t *testing.T, path string, gid int) string {
	t.Helper()
	require.NoError(t, os.Mkdir(path, 0o755))
	require.NoError(t, os.Chown(path, 0, gid))
	require.NoError(t, os.Chmod(path, 0o775|os.ModeSetgid))
	return path
}

// emptyDir makes a directory as the kubelet makes an emptyDir volume: root's, mode 0777.
func emptyDir(t *testing.T, path string) string {
	t.Helper()
	require.NoError(t, os.Mkdir(path, 0o777))
	require.NoError(t, os.Chmod(path, 0o777))
	return path
}

// baseBackupSource runs a throwaway source server under dir with the table sales (300 rows)
// in the database postgres, and takes a base backup of it with `pg_basebackup -Ft -X stream`
// into backup (base.tar, pg_wal.tar).
func baseBackupSource(t *testing.T, pg engine.Engine, dir, backup string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	src := filepath.Join(dir, "source")
	require.NoError(t, pg.Init(ctx, src, engine.InitOptions{}))
	inst, err := pg.Start(ctx, src, engine.StartOptions{RuntimeDir: runDir(t, 0o700)})
	require.NoError(t, err)
	defer func() { require.NoError(t, inst.Stop(ctx)) }()
	require.NoError(t, inst.Exec(ctx, "postgres", strings.NewReader(`
		CREATE TABLE sales (id int PRIMARY KEY, item text NOT NULL);
		INSERT INTO sales SELECT g, 'item ' || g FROM generate_series(1, 300) g;`)))
	socks, _ := filepath.Glob(filepath.Join(inst.Conn().Socket, ".s.PGSQL.[0-9]*[0-9]"))
	require.Len(t, socks, 1, "the source's socket")
	port := strings.TrimPrefix(filepath.Ext(socks[0]), ".")
	require.NoError(t, u.MkdirAll(backup, 0o755))
	cmd := u.Command(ctx, "", pgTool(t, pg, "pg_basebackup"), []string{"-h", inst.Conn().Socket, "-p", port,
		"-U", inst.Conn().User, "-D", backup, "--format=tar", "--wal-method=stream", "--checkpoint=fast", "--no-sync"})
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "pg_basebackup: %s", out)
}

// sandboxBuild runs the builder binary bin as u in the sandbox, with the Job's flags, on
// definition def with the backups under backups (read-only), into a fresh volume under base,
// checks that it succeeded, that it made the steps want and that everything it made is u's,
// and returns the volume and the outcome.
func sandboxBuild(t *testing.T, u *engine.User, base, bin, backups, def string, want []string) (string, *builder.Outcome) {
	t.Helper()
	vol := volumeDir(t, filepath.Join(base, "vol"), u.GID)
	run := emptyDir(t, filepath.Join(base, "run"))
	term := emptyDir(t, filepath.Join(base, "term"))
	sb := sandbox{uid: u.UID, gid: u.GID, writable: []string{vol, run, term}, readOnly: []string{backups, filepath.Dir(bin)}}

	// The sandbox is what the test says: the engine's user and group only, no capability,
	// no new privileges; /tmp and the volume writable, the root file system and the backups
	// not.
	code, stdout, stderr := sb.run(t, []string{"sh", "-c", `id -u; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status
for d in /tmp "$0" "$1" "$2" /var/tmp /etc; do if touch "$d/.probe" 2>/dev/null; then rm "$d/.probe"; echo "$d writable"; fi; done`,
		vol, backups, base})
	require.Equal(t, 0, code, stderr)
	require.Equal(t, fmt.Sprintf("%d\n%d\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\n/tmp writable\n%s writable\n", u.UID, u.GID, vol),
		stdout)

	code, stdout, stderr = sb.run(t, []string{bin, "--definition-json", def, "--root", vol, "--backup-root", backups,
		"--runtime-dir", filepath.Join(run, "build"), "--output", "json", "--termination-log", filepath.Join(term, "termination-log")})
	b, err := os.ReadFile(filepath.Join(term, "termination-log"))
	require.NoError(t, err, "stderr:\n%s", stderr)
	o, err := wire.ParseOutcome(b)
	require.NoError(t, err)
	require.Equal(t, 0, code, "outcome %+v\nstderr:\n%s", o, stderr)
	require.True(t, o.OK, "%+v", o)
	require.Equal(t, want, steps(events(t, stdout)))

	// Everything the build made is the engine user's, with the volume's group.
	var foreign []string
	require.NoError(t, filepath.WalkDir(engine.DataDir(vol), func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != u.UID || int(st.Gid) != u.GID {
			foreign = append(foreign, p)
		}
		return nil
	}))
	require.Empty(t, foreign, "files not owned by %d:%d", u.UID, u.GID)
	return vol, o
}

// TestBuildAsEngineUser builds an image from a real pg_basebackup tar with the static builder
// binary running as the postgres user in the sandbox, as the build Job runs it: it succeeds,
// writes nothing but the volume, the runtime directory and /tmp, and the image holds the data.
func TestBuildAsEngineUser(t *testing.T) {
	pg := requirePostgres(t)
	requireSandbox(t)
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	require.NotZero(t, u.UID)

	base := baseDir(t)
	bin := buildBinary(t, base)
	backups := filepath.Join(base, "backups")
	require.NoError(t, os.Mkdir(backups, 0o755))
	baseBackupSource(t, pg, base, filepath.Join(backups, "sales"))
	giveTree(t, backups, 0, 0, 0o644) // root's, as a backup volume may be: readable, not writable

	major := strings.Split(pg.Version(), ".")[0]
	def := `{"name":"sales","engine":"postgres","version":"` + major + `","sourceType":"backup",` +
		`"backups":[{"path":"sales/base.tar","format":"basebackup-tar"},{"path":"sales/pg_wal.tar"}]}`
	vol, o := sandboxBuild(t, u, base, bin, backups, def,
		[]string{StepValidate, builder.StepRestore, builder.StepStart, builder.StepCheckpoint, builder.StepStop})
	require.Equal(t, imagebuilder.EnginePostgres, o.Engine)
	require.Equal(t, pg.Version(), o.EngineVersion)
	require.Equal(t, "300|45150", query(t, pg, vol, "postgres", "SELECT count(*) || '|' || sum(id) FROM sales"))
}

// TestBuildAsEngineUserMariaDB builds an empty MariaDB image with an initial database the same
// way, as the mysql user: mariadb-install-db and the server run as the builder's own user.
func TestBuildAsEngineUserMariaDB(t *testing.T) {
	my := requireMariaDB(t)
	requireSandbox(t)
	u, err := engine.ResolveUser("", "mysql")
	require.NoError(t, err)
	require.NotZero(t, u.UID)

	base := baseDir(t)
	bin := buildBinary(t, base)
	backups := emptyDir(t, filepath.Join(base, "backups"))
	require.NoError(t, os.Chmod(backups, 0o755))
	v := strings.Split(my.Version(), ".")
	def := `{"name":"shop","engine":"mariadb","version":"` + v[0] + "." + v[1] + `","sourceType":"empty","initialDatabaseName":"shop"}`
	vol, o := sandboxBuild(t, u, base, bin, backups, def,
		[]string{StepValidate, builder.StepInit, builder.StepStart, builder.StepCheckpoint, builder.StepStop})
	require.Equal(t, imagebuilder.EngineMariaDB, o.Engine)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := my.Start(ctx, vol, engine.StartOptions{RuntimeDir: runDir(t, 0o755)})
	require.NoError(t, err)
	defer func() { require.NoError(t, inst.Stop(ctx)) }()
	out, err := inst.Query(ctx, "", "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop'")
	require.NoError(t, err)
	require.Equal(t, "1", strings.TrimSpace(out))
}
