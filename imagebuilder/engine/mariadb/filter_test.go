package mariadb

import (
	"io"
	"strings"
	"testing"
)

// skipReplicaStarts turns the replica start statements of a dump into comments, only where they
// are whole lines, and keeps everything else byte for byte.
func TestSkipReplicaStarts(t *testing.T) {
	long := strings.Repeat("x", 5000) // past the filter's buffer: read in pieces
	in := strings.Join([]string{
		"-- start slave statement to make a recovery dump)",
		"START ALL SLAVES;",
		"start slave;",
		"  START SLAVE 'c2' ;",
		"START REPLICA;\r",
		"START ALL REPLICAS;",
		"INSERT INTO t VALUES ('START SLAVE;');",
		"START SLAVE UNTIL MASTER_LOG_POS=4;",
		"STOP ALL SLAVES;",
		// The filter's buffer (4096 bytes) ends right before "START SLAVE;": a line's
		// continuation is not a line.
		"INSERT INTO t VALUES ('" + long[:4096-len("INSERT INTO t VALUES ('")] + "START SLAVE;",
		long + "',",
		"START SLAVE;",
		"last line without a newline: START SLAVE;",
	}, "\n")
	out, err := io.ReadAll(skipReplicaStarts(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(string(out), "\n")
	want := strings.Split(in, "\n")
	if len(got) != len(want) {
		t.Fatalf("%d lines out of %d", len(got), len(want))
	}
	skipped := map[int]bool{1: true, 2: true, 3: true, 4: true, 5: true, 11: true}
	for i := range want {
		if skipped[i] {
			if !strings.HasPrefix(got[i], "-- dataimage: not run (an image's server never replicates): ") {
				t.Errorf("line %d %q passed as %q", i+1, want[i], got[i])
			}
			continue
		}
		if got[i] != want[i] {
			t.Errorf("line %d changed: %q -> %q", i+1, want[i], got[i])
		}
	}
}
