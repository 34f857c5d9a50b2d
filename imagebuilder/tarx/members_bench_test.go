package tarx

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkExtractMembers extracts an archive of 100,000 empty files (in directories of 1,000,
// as a PostgreSQL data directory's base/<db>/ holds them) and reports the heap Extract keeps
// per member while it runs (heap-B/member): what Options.MaxMembers bounds, and the ground for
// builder.DefaultMaxArchiveMembers.
//
//	go test -run '^$' -bench BenchmarkExtractMembers -benchtime 3x ./imagebuilder/tarx/
func BenchmarkExtractMembers(b *testing.B) {
	const n = 100_000
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range n {
		dir := fmt.Sprintf("base/%d", 16384+i/1000)
		if i%1000 == 0 {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o700}); err != nil {
				b.Fatal(err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%s/%d_fsm", dir, 16384+i), Mode: 0o600}); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	var perMember float64
	for b.Loop() {
		b.StopTimer()
		dest := b.TempDir()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		x, err := newExtractor(context.Background(), bytes.NewReader(buf.Bytes()), dest, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := x.run(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.GC() // what is still reachable: the extractor's maps
		runtime.ReadMemStats(&after)
		perMember = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(x.stats.Members)
		x.close()
		runtime.KeepAlive(x)
		b.StartTimer()
	}
	b.ReportMetric(perMember, "heap-B/member")
}
