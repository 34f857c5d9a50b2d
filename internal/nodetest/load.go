package nodetest

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// MountSource returns the device (the source) mounted at the mount point dir.
func MountSource(t testing.TB, dir string) string {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, line := range strings.Split(string(mi), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != dir {
			continue
		}
		for i := 5; i+2 < len(f); i++ {
			if f[i] == "-" {
				return f[i+2]
			}
		}
	}
	t.Fatalf("nothing is mounted at %s", dir)
	return ""
}

// PgbenchBalanced is the SQL that is true when pgbench's balance invariant holds: every delta
// went to an account, a branch and a teller.
const PgbenchBalanced = `SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
	AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
	AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)`
