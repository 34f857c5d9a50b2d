package local

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// serveStream answers every request on a new socket with the build stream lines, and returns
// a client of it.
func serveStream(t *testing.T, lines ...string) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, strings.Join(lines, "\n")+"\n")
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		require.NoError(t, srv.Close())
		require.ErrorIs(t, <-served, http.ErrServerClosed)
	})
	c := newClient(sock)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientReadsOtherVersions: the dataimage command reads the build stream of a daemon of
// another version (a daemon keeps running across an upgrade of the command) by the builder's
// wire format's rules: events of 1.0 (daemons from before the format had versions), of this
// format and of a newer minor one (fields it does not know ignored, kinds it does not know
// skipped) are shown; another major's are not, and the first of them says so once. The
// build's result arrives in every case.
func TestClientReadsOtherVersions(t *testing.T) {
	c := serveStream(t,
		`{"event":{"step":"volume","message":"creating a 2.0 GiB thin volume"}}`,
		`{"event":{"buildEvent":"1.1","step":"restore","done":1,"total":4}}`,
		`{"event":{"buildEvent":"1.6","step":"restore","done":2,"total":4,"rate":9},"progressOf":"image x"}`,
		`{"event":{"buildEvent":"1.6","kind":"warning","step":"restore","message":"slow disk"}}`,
		`{"event":{"buildEvent":"2.0","step":{"name":"restore"}}}`,
		`{"event":{"buildEvent":"2.0","step":{"name":"stop"}}}`,
		`{"image":{"name":"x","engine":"postgres","version":"16.4","sourceType":"empty","size":1024,"dataBytes":0,"created":"2026-01-02T03:04:05Z","lifetime":"0","clones":0}}`,
	)
	var got []wire.Event
	img, err := c.BuildImage(context.Background(), BuildRequest{Definition: []byte("name: x\n")}, func(ev wire.Event) { got = append(got, ev) })
	require.NoError(t, err)
	require.Equal(t, "x", img.Name)
	require.Equal(t, []wire.Event{
		{Step: "volume", Message: "creating a 2.0 GiB thin volume"},
		{Step: "restore", Done: 1, Total: 4},
		{Step: "restore", Done: 2, Total: 4},
		{Message: "build progress not shown: wire: unsupported format version: the build event is in format 2.0; this version of Dataimage reads 1.x"},
	}, got)

	// A failure after events of another major version is the daemon's failure.
	c = serveStream(t,
		`{"event":{"buildEvent":"2.0","step":{"name":"restore"}}}`,
		`{"error":{"kind":"build_failed","message":"local: build image x failed at step restore: boom"}}`,
	)
	_, err = c.BuildImage(context.Background(), BuildRequest{Definition: []byte("name: x\n")}, nil)
	require.ErrorIs(t, err, ErrBuildFailed)
	require.EqualError(t, err, "local: build image x failed at step restore: boom")
	require.False(t, errors.Is(err, wire.ErrUnsupportedVersion))
}
