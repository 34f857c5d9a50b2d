package engine

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestUserWriteFile: the file is replaced with the content and mode asked, owned by the user
// when running as root.
func TestUserWriteFile(t *testing.T) {
	u := &User{Name: "server", UID: 4321, GID: 4322}
	path := filepath.Join(t.TempDir(), "pg_hba.conf")
	if err := os.WriteFile(path, []byte("old rules\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteFile(path, []byte("new rules\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "new rules\n" {
		t.Fatalf("content %q, %v", b, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode())
	}
	s := st.Sys().(*syscall.Stat_t)
	want := [2]uint32{uint32(os.Getuid()), uint32(os.Getgid())}
	if os.Geteuid() == 0 {
		want = [2]uint32{4321, 4322}
	}
	if got := [2]uint32{s.Uid, s.Gid}; got != want {
		t.Errorf("owner %v, want %v", got, want)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".pg_hba.conf.tmp-*")); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}
}
