package blockstore_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/dataimage/dataimage/blockstore"
)

// mustCreate creates a pool file in a temp dir and closes it (with a Check) at cleanup.
func mustCreate(t testing.TB, size int64, opts blockstore.Options) (*blockstore.Pool, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pool")
	opts.Size = size
	p, err := blockstore.Create(path, opts)
	if err != nil {
		t.Fatalf("create pool: %v", err)
	}
	t.Cleanup(func() { mustCheckClose(t, p) })
	return p, path
}

// mustCheckClose runs a full Check and closes the pool, unless it is closed already.
func mustCheckClose(t testing.TB, p *blockstore.Pool) {
	t.Helper()
	rep, err := p.Check(false)
	if errors.Is(err, blockstore.ErrClosed) {
		return
	}
	if err != nil || !rep.OK() {
		t.Errorf("check: %v: %v %v", err, rep, rep.RefcountErrors)
	}
	if err := p.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

func mustCheck(t testing.TB, p *blockstore.Pool) *blockstore.CheckReport {
	t.Helper()
	rep, err := p.Check(false)
	if err != nil || !rep.OK() {
		t.Fatalf("check: %v: %v %v", err, rep, rep.RefcountErrors)
	}
	return rep
}

func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

func mustRead(t testing.TB, r interface {
	ReadAt([]byte, int64) (int, error)
}, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if k, err := r.ReadAt(b, off); err != nil || k != n {
		t.Fatalf("read %d bytes at %d: n=%d err=%v", n, off, k, err)
	}
	return b
}

func mustEqual(t testing.TB, got, want []byte, what string) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: contents differ at byte %d (len %d vs %d)", what, i, len(got), len(want))
	}
}
