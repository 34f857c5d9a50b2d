package holder_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/export/holder"
)

// startHolder runs a holder (Run) on a socket in a temporary directory until cleanup.
func startHolder(t *testing.T) (*holder.Holder, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "holder.sock")
	l, err := holder.Listen(path)
	require.NoError(t, err)
	h := holder.New(nil)
	done := make(chan error, 1)
	go func() { done <- h.Serve(l) }()
	t.Cleanup(func() {
		l.Close()
		require.NoError(t, <-done)
		h.Close()
	})
	return h, path
}

func dial(t *testing.T, path string) *holder.Client {
	t.Helper()
	c, err := holder.Dial(path)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// pipe returns a pipe's ends, close-on-exec.
func pipe(t *testing.T) (r, w int) {
	t.Helper()
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	return p[0], p[1]
}

// TestHoldAcrossClose: what a client puts stays open in the holder after the client closed its own
// copy and went away; a new client gets working descriptors of the same files back, close-on-exec;
// drop closes the holder's copy.
func TestHoldAcrossClose(t *testing.T) {
	_, path := startHolder(t)
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	r, w := pipe(t)
	defer unix.Close(r)
	c1 := dial(t, path)
	require.NoError(t, c1.Put("pvc-1", []int{w}, []byte(`{"minor":45}`)))
	unix.Close(w) // the holder's copy keeps the write end open
	require.NoError(t, c1.Close())

	c2 := dial(t, path)
	keys, err := c2.List()
	require.NoError(t, err)
	assert.Equal(t, []string{"pvc-1"}, keys)
	fds, params, err := c2.Get("pvc-1")
	require.NoError(t, err)
	require.Len(t, fds, 1)
	assert.Equal(t, `{"minor":45}`, string(params))
	flags, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0)
	require.NoError(t, err)
	assert.NotZero(t, flags&unix.FD_CLOEXEC, "received descriptor is close-on-exec")
	_, err = unix.Write(fds[0], []byte("through the holder"))
	require.NoError(t, err)
	buf := make([]byte, 64)
	n, err := unix.Read(r, buf)
	require.NoError(t, err)
	assert.Equal(t, "through the holder", string(buf[:n]))
	unix.Close(fds[0])

	require.NoError(t, c2.Drop("pvc-1"))
	n, err = unix.Read(r, buf)
	require.NoError(t, err)
	assert.Zero(t, n, "EOF: the holder closed the last write end")
	require.ErrorIs(t, c2.Drop("pvc-1"), holder.ErrNotFound)
	_, _, err = c2.Get("pvc-1")
	require.ErrorIs(t, err, holder.ErrNotFound)
}

// TestPutReplaces: a second put under a key closes what the first left there.
func TestPutReplaces(t *testing.T) {
	_, path := startHolder(t)
	c := dial(t, path)
	r1, w1 := pipe(t)
	r2, w2 := pipe(t)
	defer unix.Close(r1)
	defer unix.Close(r2)
	require.NoError(t, c.Put("k", []int{w1}, nil))
	unix.Close(w1)
	require.NoError(t, c.Put("k", []int{w2, w2}, []byte("two")))
	unix.Close(w2)
	n, err := unix.Read(r1, make([]byte, 1))
	require.NoError(t, err)
	assert.Zero(t, n, "the first put's descriptor is closed")
	fds, params, err := c.Get("k")
	require.NoError(t, err)
	assert.Len(t, fds, 2)
	assert.Equal(t, "two", string(params))
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// TestHolderClose: a holder that closes (exits) closes what it holds, and a client waiting on it
// (Client.Wait) learns it.
func TestHolderClose(t *testing.T) {
	h, path := startHolder(t)
	c := dial(t, path)
	watcher := dial(t, path)
	waited := make(chan error, 1)
	go func() { waited <- watcher.Wait() }()
	r, w := pipe(t)
	defer unix.Close(r)
	require.NoError(t, c.Put("k", []int{w}, nil))
	unix.Close(w)
	assert.Equal(t, []string{"k"}, h.Keys())
	select {
	case err := <-waited:
		t.Fatalf("Wait returned while the holder runs: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	h.Close()
	require.NoError(t, <-waited, "Wait returns when the holder closes the connection")
	n, err := unix.Read(r, make([]byte, 1))
	require.NoError(t, err)
	assert.Zero(t, n)
	_, err = c.List()
	require.Error(t, err, "the connection is closed")
}

// TestBadRequests: bad keys, descriptor counts, versions and ops are refused with a code, change
// nothing, and the connection goes on; unknown fields are ignored.
func TestBadRequests(t *testing.T) {
	_, path := startHolder(t)
	c := dial(t, path)
	_, w := pipe(t)
	defer unix.Close(w)
	require.ErrorIs(t, c.Put("", []int{w}, nil), holder.ErrInvalid)
	require.ErrorIs(t, c.Put("a\nb", []int{w}, nil), holder.ErrInvalid)
	require.ErrorIs(t, c.Put("k", nil, nil), holder.ErrInvalid)
	many := make([]int, holder.MaxFDs+1)
	for i := range many {
		many[i] = w
	}
	require.ErrorIs(t, c.Put("k", many, nil), holder.ErrInvalid)

	// Raw packets: what another version of the client might send.
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	require.NoError(t, err)
	defer conn.Close()
	ask := func(msg string, fds ...int) map[string]any {
		t.Helper()
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		_, _, err := conn.WriteMsgUnix([]byte(msg), oob, nil)
		require.NoError(t, err)
		buf := make([]byte, 1<<16)
		n, _, _, _, err := conn.ReadMsgUnix(buf, nil)
		require.NoError(t, err)
		var rep map[string]any
		require.NoError(t, json.Unmarshal(buf[:n], &rep))
		return rep
	}
	assert.Equal(t, "protocol", ask(`{"v":2,"op":"list"}`)["code"])
	assert.Equal(t, "protocol", ask(`{"v":1,"op":"frobnicate","key":"k"}`)["code"])
	assert.Equal(t, "protocol", ask(`not json`)["code"])
	assert.Equal(t, "invalid", ask(`{"v":1,"op":"put","key":"k"}`)["code"], "put without descriptors")
	rep := ask(`{"v":1,"op":"put","key":"k","params":"eA==","future":{"x":1}}`, w)
	assert.Nil(t, rep["code"], "unknown fields are ignored: %v", rep)
	fds, params, err := c.Get("k")
	require.NoError(t, err)
	assert.Equal(t, "x", string(params))
	for _, fd := range fds {
		unix.Close(fd)
	}
	keys, err := c.List()
	require.NoError(t, err)
	assert.Equal(t, []string{"k"}, keys, "refused requests changed nothing")
}

// TestConcurrentClients: clients put, get and drop keys of their own at once.
func TestConcurrentClients(t *testing.T) {
	h, path := startHolder(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			c, err := holder.Dial(path)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			key := fmt.Sprint("k", i)
			for range 50 {
				var p [2]int
				if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
					errs <- err
					return
				}
				err := c.Put(key, []int{p[1]}, []byte(key))
				unix.Close(p[1])
				if err == nil {
					var fds []int
					var params []byte
					fds, params, err = c.Get(key)
					if err == nil && string(params) != key {
						err = fmt.Errorf("get %s: params %q", key, params)
					}
					for _, fd := range fds {
						unix.Close(fd)
					}
				}
				if err == nil {
					err = c.Drop(key)
				}
				unix.Close(p[0])
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Empty(t, h.Keys())
}

// TestRun: Run serves on its socket until its context ends, then closes what it holds.
func TestRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "holder.sock")
	l, err := holder.Listen(path)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- holder.Run(ctx, l, nil) }()
	c := dial(t, path)
	r, w := pipe(t)
	defer unix.Close(r)
	require.NoError(t, c.Put("k", []int{w}, nil))
	unix.Close(w)
	cancel()
	require.NoError(t, <-ran)
	n, err := unix.Read(r, make([]byte, 1))
	require.NoError(t, err)
	assert.Zero(t, n, "the holder's copy is closed when Run returns")
	_, err = holder.Dial(path)
	require.Error(t, err, "nothing listens after Run")
}

// TestPID: a client learns the holder's process id (here: this process).
func TestPID(t *testing.T) {
	_, path := startHolder(t)
	pid, err := dial(t, path).PID()
	require.NoError(t, err)
	assert.Equal(t, os.Getpid(), pid)
}
