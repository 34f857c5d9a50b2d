package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// leftovers returns the temporary files of target's replacements left in its directory.
func leftovers(t *testing.T, target string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".tmp-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	// The mode is perm exactly, whatever the umask.
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	for i, perm := range []fs.FileMode{0o644, 0o600, 0o640} {
		want := fmt.Sprintf("version %d\n", i)
		if err := WriteFile(path, []byte(want), perm); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, path); got != want {
			t.Errorf("after write %d: %q, want %q", i, got, want)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != perm {
			t.Errorf("write %d: mode %v, want %v", i, st.Mode(), perm)
		}
	}
	if l := leftovers(t, path); len(l) > 0 {
		t.Errorf("temporary files left: %v", l)
	}
	if err := WriteFile(filepath.Join(t.TempDir(), "missing", "x"), nil, 0o600); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing/x") {
		t.Errorf("write in a missing directory: %v", err)
	}
}

func TestCloseOnExec(t *testing.T) {
	f, err := Create(filepath.Join(t.TempDir(), "x"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	flags, err := unix.FcntlInt(f.f.Fd(), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("the temporary file's descriptor is not close-on-exec (flags %#x)", flags)
	}
}

func TestChown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	path := filepath.Join(t.TempDir(), "owned")
	f, err := Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	if _, err := f.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := f.Chown(4321, 4322); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Sys().(*syscall.Stat_t); s.Uid != 4321 || s.Gid != 4322 {
		t.Errorf("owner %d:%d, want 4321:4322", s.Uid, s.Gid)
	}
}

// record makes the failpoints record the steps, and fail the one named fail (if any).
func record(t *testing.T, fail string) *[]string {
	t.Helper()
	var steps []string
	failpointHook = func(step string) error {
		steps = append(steps, step)
		if step == fail {
			return fmt.Errorf("injected failure at %s", step)
		}
		return nil
	}
	t.Cleanup(func() { failpointHook = nil })
	return &steps
}

func replace(path, data string, chown bool) error {
	f, err := Create(path, 0o640)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write([]byte(data)); err != nil {
		return err
	}
	if chown {
		if err := f.Chown(os.Getuid(), os.Getgid()); err != nil {
			return err
		}
	}
	return f.Commit()
}

// commitOrder is the package comment's commit order.
var commitOrder = []string{stepCreate, stepWrite, stepChown, stepChmod, stepSync, stepClose, stepRename, stepSyncDir}

func TestCommitOrder(t *testing.T) {
	steps := record(t, "")
	if err := replace(filepath.Join(t.TempDir(), "x"), "new", true); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(*steps, commitOrder) {
		t.Errorf("steps %v, want %v", *steps, commitOrder)
	}
}

// TestFailEachStep fails every step in turn: before the rename, the target keeps its old
// content; from the rename's success on, it has the new one; either way, no temporary file is
// left and the error names the target and keeps the cause.
func TestFailEachStep(t *testing.T) {
	for _, fail := range commitOrder {
		t.Run(fail, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "catalog.json")
			if err := WriteFile(path, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			record(t, fail)
			err := replace(path, "new", true)
			if err == nil || !strings.Contains(err.Error(), "injected failure at "+fail) || !strings.Contains(err.Error(), "replace "+path) {
				t.Fatalf("error %v, want the injected failure, naming %s", err, path)
			}
			want := "old"
			if fail == stepSyncDir {
				want = "new"
			}
			if got := readFile(t, path); got != want {
				t.Errorf("after a failed %s: %q, want %q", fail, got, want)
			}
			if l := leftovers(t, path); len(l) > 0 {
				t.Errorf("after a failed %s, temporary files left: %v", fail, l)
			}
		})
	}
}

// TestRenameFails: a real failure (the target is a directory) leaves it as it was.
func TestRenameFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy")
	if err := os.MkdirAll(filepath.Join(path, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := WriteFile(path, []byte("x"), 0o600)
	if err == nil || !strings.Contains(err.Error(), "rename") {
		t.Fatalf("replacing a directory: %v, want a failed rename", err)
	}
	if st, err := os.Stat(filepath.Join(path, "sub")); err != nil || !st.IsDir() {
		t.Errorf("the directory changed: %v", err)
	}
	if l := leftovers(t, path); len(l) > 0 {
		t.Errorf("temporary files left: %v", l)
	}
}

func TestUseAfterCommit(t *testing.T) {
	f, err := Create(filepath.Join(t.TempDir(), "x"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	f.Abort()
	if _, err := f.Write([]byte("late")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Commit: %v", err)
	}
	if err := f.Commit(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Commit twice: %v", err)
	}
}

const (
	childEnv    = "ATOMICFILE_TEST_CHILD"
	versionSize = 256 << 10
)

// version is the content of the i-th replacement: versionSize bytes of one value.
func version(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, versionSize) }

// TestMain runs the child of TestKilledWriter when asked.
func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		for i := 1; ; i++ {
			if err := WriteFile(path, version(i), 0o600); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
	os.Exit(m.Run())
}

// TestKilledWriter SIGKILLs a process that replaces a file over and over, at random moments:
// the file is always one whole version, and at most one temporary file per kill is left.
func TestKilledWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	if err := WriteFile(path, version(0), 0o600); err != nil {
		t.Fatal(err)
	}
	const kills = 20
	seen := map[byte]bool{}
	for k := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(5+rand.IntN(40)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err == nil || stderr.Len() > 0 {
			t.Fatalf("kill %d: the writer ended with %v: %s", k, err, stderr.String())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("kill %d: %v", k, err)
		}
		if len(b) != versionSize || !bytes.Equal(b, bytes.Repeat(b[:1], versionSize)) {
			t.Fatalf("kill %d: the file is not one whole version (%d bytes, starting %q)", k, len(b), b[:min(len(b), 8)])
		}
		seen[b[0]] = true
	}
	if len(seen) < 2 {
		t.Errorf("the writer never got a version in before being killed (saw %d)", len(seen))
	}
	if l := leftovers(t, path); len(l) > kills {
		t.Errorf("%d temporary files left by %d kills", len(l), kills)
	}
}
