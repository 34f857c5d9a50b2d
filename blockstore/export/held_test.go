package export

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/blockstore/export/holder"
)

// runHolder runs a holder at path until the returned stop is called (or cleanup), and returns
// what it holds.
func runHolder(t *testing.T, path string) (keys func() []string, stop func()) {
	t.Helper()
	l, err := holder.Listen(path)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- holder.Run(ctx, l, nil) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			require.NoError(t, <-ran)
		}
	}
	t.Cleanup(stop)
	keys = func() []string {
		c, err := holder.Dial(path)
		require.NoError(t, err)
		defer c.Close()
		k, err := c.List()
		require.NoError(t, err)
		return k
	}
	return keys, stop
}

// TestHolderLinkPutsAgain: the exports of a process go into the holder; when the holder
// restarts (holding nothing), the process puts them into the new one; when the holder is not
// running at the put, they go in once it runs. Dropping the last one ends the watch.
func TestHolderLinkPutsAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "holder.sock")
	link := newHolderLink(path, slog.New(slog.DiscardHandler))
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	state := marshalHeld(fusedev.Params{Version: fusedev.ParamsVersion, Minor: 41, MaxWrite: 1 << 20, BlockSize: 4096})
	held := func(list func() []string, keys ...string) func() bool {
		return func() bool { return slices.Equal(list(), keys) }
	}

	// No holder yet: the put says so, and the export goes in once a holder runs.
	require.ErrorIs(t, link.put("/run/x/a", []int{p[1]}, state), ErrNoHolder)
	h1, stop1 := runHolder(t, path)
	require.Eventually(t, held(h1, "/run/x/a"), 10*time.Second, 5*time.Millisecond, "put once the holder runs")
	require.NoError(t, link.put("/run/x/b", []int{p[1]}, state))
	require.Equal(t, []string{"/run/x/a", "/run/x/b"}, h1())
	fds, got, err := link.get("/run/x/b")
	require.NoError(t, err)
	require.Len(t, fds, 1)
	unix.Close(fds[0])
	gp, err := unmarshalHeld(got)
	require.NoError(t, err)
	require.Equal(t, uint32(41), gp.Minor)

	// The holder restarts, empty: both go into the new one.
	stop1()
	h2, _ := runHolder(t, path)
	require.Eventually(t, held(h2, "/run/x/a", "/run/x/b"), 10*time.Second, 5*time.Millisecond, "put again after the holder restarted")

	require.NoError(t, link.drop("/run/x/a"))
	require.NoError(t, link.drop("/run/x/a"), "nothing held is not an error")
	require.Equal(t, []string{"/run/x/b"}, h2())
	require.NoError(t, link.drop("/run/x/b"))
	require.Empty(t, h2())
	require.Eventually(t, func() bool {
		link.mu.Lock()
		defer link.mu.Unlock()
		return !link.mu.watching
	}, 10*time.Second, 5*time.Millisecond, "the watch ends with the last export")
}

// TestHeldStateVersions: a held state of another version or method is refused, naming both.
func TestHeldStateVersions(t *testing.T) {
	_, err := unmarshalHeld([]byte(`{"v":2,"method":"fuse-loop","fuse":{}}`))
	require.ErrorIs(t, err, ErrLeftovers)
	require.ErrorContains(t, err, "version 2")
	_, err = unmarshalHeld([]byte(`{"v":1,"method":"ublk","fuse":{}}`))
	require.ErrorIs(t, err, ErrLeftovers)
	_, err = unmarshalHeld([]byte(`not json`))
	require.ErrorIs(t, err, ErrLeftovers)
}
