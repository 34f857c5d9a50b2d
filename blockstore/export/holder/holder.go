// Package holder keeps open descriptors for a process that may die, and gives them back to the
// process that replaces it.
//
// A FUSE connection lives as long as any descriptor of it is open, and ends, failing every
// request, when the last one closes. A data plane that serves exports over FUSE puts a copy of
// each connection's descriptors (by SCM_RIGHTS) and the parameters needed to serve it again
// (opaque bytes, e.g. fusedev.Params) in a holder, a separate small process. When the data plane
// dies, the holder's copies keep the connections, and the kernel queues their requests; the
// restarted data plane gets the descriptors back and serves on (fusedev.Adopt). When an export is
// torn down, its key is dropped and the holder closes its copies.
//
// The holder keeps its state in memory only: if the holder itself dies, its copies close with it,
// and every connection whose server is not running at that moment is aborted (I/O errors on its
// device); connections whose server runs keep going, and the server puts them again into the
// restarted holder. That is why it is small and meant to change rarely: a restart of the holder
// is the one restart that is not free.
//
// Server: Listen, then Run (or New and Serve). Client: Dial, then Put, Get, Drop, List, Wait.
// Only processes of the holder's own user may talk to it (SO_PEERCRED); the socket file is mode
// 0600.
//
// It must not know what the descriptors are (FUSE connections or anything else) nor what the
// bytes kept with them mean: it holds, hands out copies, and closes.
package holder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the holder listens unless told otherwise (cmd/dataimage-fuse-holder).
const DefaultSocket = "/run/dataimage/fuse-holder.sock"

// Holder holds descriptors under keys, in memory.
type Holder struct {
	log *slog.Logger

	mu struct {
		sync.Mutex
		entries map[string]entry
		conns   map[net.Conn]struct{} // open client connections, closed by Close
		closed  bool
	}
}

type entry struct {
	fds    []int
	params []byte
}

// New returns an empty Holder. log may be nil.
func New(log *slog.Logger) *Holder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Holder{log: log}
	h.mu.entries = map[string]entry{}
	h.mu.conns = map[net.Conn]struct{}{}
	return h
}

// Listen makes the holder's socket at path (a stale socket file there is replaced), mode 0600.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Run holds descriptors for the clients of l (see Listen) until ctx ends or serving fails, then
// closes l and everything held (Close): what the holder process does.
func Run(ctx context.Context, l *net.UnixListener, log *slog.Logger) error {
	h := New(log)
	served := make(chan error, 1)
	go func() { served <- h.Serve(l) }()
	h.log.Info("holder: serving", "socket", l.Addr().String())
	var err error
	select {
	case <-ctx.Done():
		l.Close()
		err = <-served
	case err = <-served:
		l.Close()
	}
	if keys := h.Keys(); len(keys) > 0 {
		h.log.Warn("holder: exiting while holding: those whose server is not running end now", "keys", keys)
	}
	h.Close()
	if err != nil {
		return fmt.Errorf("holder: serve: %w", err)
	}
	return nil
}

// Serve answers clients on l until l is closed (it then returns nil) or the Holder is.
func (h *Holder) Serve(l *net.UnixListener) error {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		h.mu.Lock()
		if h.mu.closed {
			h.mu.Unlock()
			c.Close()
			return nil
		}
		h.mu.conns[c] = struct{}{}
		h.mu.Unlock()
		go h.serveConn(c)
	}
}

// Close closes every connection and every held descriptor: what the holder's exit does.
func (h *Holder) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.closed = true
	for c := range h.mu.conns {
		c.Close()
	}
	for k, e := range h.mu.entries {
		closeAll(e.fds)
		delete(h.mu.entries, k)
	}
}

// Keys returns the keys held, sorted.
func (h *Holder) Keys() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := make([]string, 0, len(h.mu.entries))
	for k := range h.mu.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (h *Holder) serveConn(c *net.UnixConn) {
	defer func() {
		h.mu.Lock()
		delete(h.mu.conns, c)
		h.mu.Unlock()
		c.Close()
	}()
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	if err := checkPeer(raw); err != nil {
		h.log.Warn("holder: refused a client", "err", err)
		return
	}
	for {
		var req request
		fds, ok, err := recv(raw, &req)
		if err != nil {
			// A bad packet gets an answer; the connection goes on.
			if errors.Is(err, ErrInvalid) || errors.Is(err, ErrProtocol) {
				if send(raw, errReply(err), nil) == nil {
					continue
				}
			}
			return
		}
		if !ok {
			return
		}
		rep, out := h.handle(req, fds)
		err = send(raw, rep, out)
		closeAll(out)
		if err != nil {
			h.log.Warn("holder: reply failed", "op", req.Op, "key", req.Key, "err", err)
			return
		}
	}
}

func errReply(err error) reply {
	code := codeInternal
	switch {
	case errors.Is(err, ErrNotFound):
		code = codeNotFound
	case errors.Is(err, ErrInvalid):
		code = codeInvalid
	case errors.Is(err, ErrProtocol):
		code = codeProtocol
	}
	return reply{V: version, Code: code, Error: err.Error()}
}

// handle serves one request. It owns fds: they are held, or closed. The descriptors it returns
// are copies of the held ones, to be sent and closed (so that a concurrent drop cannot close
// them under the send).
func (h *Holder) handle(req request, fds []int) (reply, []int) {
	keep := false
	defer func() {
		if !keep {
			closeAll(fds)
		}
	}()
	if req.V != version {
		return errReply(fmt.Errorf("%w: version %d, this holder speaks %d", ErrProtocol, req.V, version)), nil
	}
	if req.Op != "list" {
		if err := validKey(req.Key); err != nil {
			return errReply(err), nil
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		return errReply(errors.New("holder closing")), nil
	}
	switch req.Op {
	case "put":
		if len(fds) == 0 {
			return errReply(fmt.Errorf("%w: put %s without descriptors", ErrInvalid, req.Key)), nil
		}
		if old, ok := h.mu.entries[req.Key]; ok {
			closeAll(old.fds)
		}
		h.mu.entries[req.Key] = entry{fds: fds, params: req.Params}
		keep = true
		h.log.Info("holder: holding", "key", req.Key, "fds", len(fds))
		return reply{V: version}, nil
	case "get":
		e, ok := h.mu.entries[req.Key]
		if !ok {
			return errReply(fmt.Errorf("%w: %s", ErrNotFound, req.Key)), nil
		}
		dups := make([]int, 0, len(e.fds))
		for _, fd := range e.fds {
			d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				closeAll(dups)
				return errReply(fmt.Errorf("duplicate descriptor: %w", err)), nil
			}
			dups = append(dups, d)
		}
		return reply{V: version, Params: e.params, FDs: len(dups)}, dups
	case "drop":
		e, ok := h.mu.entries[req.Key]
		if !ok {
			return errReply(fmt.Errorf("%w: %s", ErrNotFound, req.Key)), nil
		}
		closeAll(e.fds)
		delete(h.mu.entries, req.Key)
		h.log.Info("holder: dropped", "key", req.Key)
		return reply{V: version}, nil
	case "list":
		keys := make([]string, 0, len(h.mu.entries))
		for k := range h.mu.entries {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return reply{V: version, Keys: keys}, nil
	}
	return errReply(fmt.Errorf("%w: unknown op %q", ErrProtocol, req.Op)), nil
}

// checkPeer admits only processes of the holder's own user (and root).
func checkPeer(raw syscall.RawConn) error {
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if me := uint32(os.Geteuid()); cred.Uid != me && cred.Uid != 0 {
		return fmt.Errorf("peer pid %d uid %d: only uid %d may use this holder", cred.Pid, cred.Uid, me)
	}
	return nil
}
