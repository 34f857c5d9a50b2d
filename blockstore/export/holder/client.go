package holder

import (
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// callTimeout bounds one request and its reply: a holder that takes longer is stuck, and the
// request fails with an error wrapping os.ErrDeadlineExceeded.
const callTimeout = 5 * time.Second

// Client talks to a holder. Its methods are safe for concurrent use (one request at a time).
type Client struct {
	mu   sync.Mutex
	conn *net.UnixConn
	raw  syscall.RawConn
}

// Dial connects to the holder listening at path.
func Dial(path string) (*Client, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Client{conn: c, raw: raw}, nil
}

// Close closes the connection. What the holder holds stays.
func (c *Client) Close() error { return c.conn.Close() }

// Put has the holder hold copies of fds and params under key, replacing (and closing) what it
// held there. fds stay the caller's.
func (c *Client) Put(key string, fds []int, params []byte) error {
	if err := validKey(key); err != nil {
		return err
	}
	if len(fds) == 0 || len(fds) > MaxFDs {
		return fmt.Errorf("%w: put %s with %d descriptors: want 1 to %d", ErrInvalid, key, len(fds), MaxFDs)
	}
	_, _, err := c.call(request{V: version, Op: "put", Key: key, Params: params}, fds)
	return err
}

// Get returns new descriptors of the files held under key (close-on-exec; the caller owns them),
// and the params. Nothing held under key is ErrNotFound.
func (c *Client) Get(key string) (fds []int, params []byte, err error) {
	if err := validKey(key); err != nil {
		return nil, nil, err
	}
	rep, fds, err := c.call(request{V: version, Op: "get", Key: key}, nil)
	if err != nil {
		return nil, nil, err
	}
	if len(fds) != rep.FDs {
		closeAll(fds)
		return nil, nil, fmt.Errorf("%w: get %s: %d descriptors received, %d announced", ErrProtocol, key, len(fds), rep.FDs)
	}
	return fds, rep.Params, nil
}

// Drop has the holder close what it holds under key. Nothing held is ErrNotFound.
func (c *Client) Drop(key string) error {
	if err := validKey(key); err != nil {
		return err
	}
	_, _, err := c.call(request{V: version, Op: "drop", Key: key}, nil)
	return err
}

// List returns the keys held, sorted.
func (c *Client) List() ([]string, error) {
	rep, _, err := c.call(request{V: version, Op: "list"}, nil)
	return rep.Keys, err
}

// Wait returns when the holder closes the connection: it exited (or the Client was closed). A
// process uses a Client of its own for it, on which it makes no request: the holder never sends
// anything unasked, so anything that arrives is a protocol error.
func (c *Client) Wait() error {
	var rep reply
	fds, ok, err := recv(c.raw, &rep)
	closeAll(fds)
	switch {
	case err != nil:
		return fmt.Errorf("holder: wait: %w", err)
	case ok:
		return fmt.Errorf("%w: wait: the holder sent a message unasked", ErrProtocol)
	}
	return nil
}

func (c *Client) call(req request, fds []int) (reply, []int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.conn.SetDeadline(time.Now().Add(callTimeout)); err != nil {
		return reply{}, nil, fmt.Errorf("holder: %s %s: %w", req.Op, req.Key, err)
	}
	if err := send(c.raw, req, fds); err != nil {
		return reply{}, nil, fmt.Errorf("holder: %s %s: %w", req.Op, req.Key, err)
	}
	var rep reply
	got, ok, err := recv(c.raw, &rep)
	if err == nil && !ok {
		err = fmt.Errorf("%w: connection closed by the holder", ErrProtocol)
	}
	if err != nil {
		return reply{}, nil, fmt.Errorf("holder: %s %s: %w", req.Op, req.Key, err)
	}
	if rep.V != version {
		closeAll(got)
		return reply{}, nil, fmt.Errorf("%w: %s %s: reply of version %d, want %d", ErrProtocol, req.Op, req.Key, rep.V, version)
	}
	if rep.Code != "" || rep.Error != "" {
		closeAll(got)
		return reply{}, nil, &RemoteError{Op: req.Op, Key: req.Key, Code: rep.Code, Msg: rep.Error}
	}
	return rep, got, nil
}

// PID returns the process id of the holder (SO_PEERCRED: as the kernel saw it when the
// connection was made), e.g. to stop a holder that holds nothing.
func (c *Client) PID() (int, error) {
	var cred *unix.Ucred
	var cerr error
	if err := c.raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("holder: SO_PEERCRED: %w", cerr)
	}
	return int(cred.Pid), nil
}
