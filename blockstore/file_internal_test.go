package blockstore

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// WriteAtCached goes through a shared mapping of the pool file: what it writes is read back
// through ReadAt, with and without O_DIRECT, across windows, and after a reopen; a fault in
// the mapping (the file shrank under it) is an error, not a crash.
func TestWriteAtCached(t *testing.T) {
	for _, direct := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "pool")
		f, err := openOSFile(path, true, 3*mapWindow, false, direct)
		if err != nil {
			t.Fatal(err)
		}
		want := bytes.Repeat([]byte("journal!"), 1024) // 8 KiB
		off := int64(mapWindow - 4096)                 // across the first two windows
		if n, err := f.WriteAtCached(want, off); err != nil || n != len(want) {
			t.Fatalf("direct %v: WriteAtCached: %d, %v", direct, n, err)
		}
		got := alignedBuf(len(want))
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("direct %v: ReadAt after WriteAtCached: %v, equal %v", direct, err, bytes.Equal(got, want))
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		disk, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(disk[off:off+int64(len(want))], want) {
			t.Fatalf("direct %v: the file after Close does not hold what WriteAtCached wrote (%v)", direct, err)
		}

		f, err = openOSFile(path, false, 0, false, direct)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAtCached(want, 2*mapWindow); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, mapWindow); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAtCached(want, 2*mapWindow); err == nil || !strings.Contains(err.Error(), "memory fault") {
			t.Fatalf("direct %v: WriteAtCached into a mapping past the end of the file: %v, want a memory fault", direct, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
