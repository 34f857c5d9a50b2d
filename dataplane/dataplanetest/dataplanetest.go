// Package dataplanetest serves a data plane on a unix socket for tests, so that they go
// through the real transport (packages driver, nodevolume, local, sanity). It is for tests only.
package dataplanetest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/dataplane"
)

// SocketDir returns a new directory for sockets, removed at cleanup. Its path is short: a unix
// socket's path is limited to 107 bytes, and t.TempDir's can be longer.
func SocketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Serve serves store (a *dataplane.Local, usually) on a new socket and returns a client of it.
// Cleanup stops the server (before the cleanups registered earlier, such as the pool's close).
func Serve(t testing.TB, store dataplane.Store) *dataplane.Client {
	t.Helper()
	sock := filepath.Join(SocketDir(t), "dataplane.sock")
	lis, err := dataplane.Listen(sock)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dataplane.NewServer(store, "test", nil).Serve(ctx, lis) }()
	c := dataplane.NewClient(sock)
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err, "serve the data plane")
		case <-time.After(time.Minute):
			t.Error("the data plane's server did not stop")
		}
	})
	return c
}
