package local

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/dataplane"
)

// Two callers that find no data plane at the same time both start one; one takes the lock and
// serves, and the other, which would wait for that lock and take over whenever the first one
// stops (a daemon's Close stopping "its" data plane would then leave one running), is stopped
// by the start that made it.
func TestConcurrentDataPlaneStartsLeaveOne(t *testing.T) {
	needKernel(t)
	dir := testDir(t)
	home := filepath.Join(dir, "home")
	s, err := testConfig(home, testLog(t, dir)).homeSettings()
	require.NoError(t, err)
	t.Cleanup(func() {
		killDataPlane(t, home)
		require.NoError(t, stopHolder(home))
	})

	const callers = 3
	var wg sync.WaitGroup
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := connectDataPlane(context.Background(), s)
			if err == nil {
				c.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "caller %d", i)
	}
	pid, held, err := dataplane.LockHolder(DataPlaneSocketPath(home))
	require.NoError(t, err)
	require.True(t, held)
	// Every start has returned: only the data plane that serves is left.
	require.Equal(t, []int{pid}, dataPlanesOf(home), "data plane processes of the home")

	// Stopped, it is not replaced by a process that was waiting for its lock.
	killDataPlane(t, home)
	time.Sleep(500 * time.Millisecond)
	require.False(t, dataPlaneRunning(home), "a data plane took the lock after the one that served stopped")
	// The one that served may still be exiting (it let go of the lock first); no other is left.
	require.Empty(t, slices.DeleteFunc(dataPlanesOf(home), func(p int) bool { return p == pid }), "data plane processes of the home")
}

// dataPlanesOf returns the pids of the test binary's data plane processes of home.
func dataPlanesOf(home string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if args := strings.Fields(cmdline(pid)); len(args) == 3 && args[1] == dataPlaneChildArg && args[2] == home {
			pids = append(pids, pid)
		}
	}
	return pids
}
