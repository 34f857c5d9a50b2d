package export

// Exports in a holder. With Options.Holder, every export of this process has its FUSE
// connection's descriptors and negotiated parameters in the holder (package holder, a process
// of its own: cmd/dataimage-fuse-holder), under the export's directory as key. When this process
// dies, the holder's copies keep the connections open and the kernel queues their requests; a
// new process finds them (Leftover.Held) and serves them again (Exporter.Adopt).
//
// The holder keeps what it holds in memory only. When it restarts while this process runs, the
// connections of this process's exports are still open here, so nothing is lost: this process
// notices (its watch connection to the holder ends), and puts them all in the new holder. Until
// then, the death of this process would end them.

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/blockstore/export/holder"
)

// heldVersion is the version of heldState. A process refuses to adopt a state of another
// version (ErrLeftovers): it would not know what it means.
const heldVersion = 1

// heldState is what the holder keeps of an export besides its descriptors (JSON).
type heldState struct {
	Version int    `json:"v"`
	Method  string `json:"method"`
	// FUSE is the connection's fusedev.Params.
	FUSE json.RawMessage `json:"fuse"`
}

func marshalHeld(p fusedev.Params) []byte {
	b, err := json.Marshal(heldState{Version: heldVersion, Method: MethodFUSELoop, FUSE: p.Marshal()})
	if err != nil {
		panic(err) // numbers and a JSON object always marshal
	}
	return b
}

func unmarshalHeld(b []byte) (fusedev.Params, error) {
	var s heldState
	if err := json.Unmarshal(b, &s); err != nil {
		return fusedev.Params{}, wrapf(ErrLeftovers, "held state: %v", err)
	}
	if s.Version != heldVersion || s.Method != MethodFUSELoop {
		return fusedev.Params{}, wrapf(ErrLeftovers, "held state of version %d, method %q: this process adopts version %d, %q",
			s.Version, s.Method, heldVersion, MethodFUSELoop)
	}
	p, err := fusedev.UnmarshalParams(s.FUSE)
	if err != nil {
		return p, fmt.Errorf("%w: %w", ErrLeftovers, err)
	}
	return p, nil
}

const (
	// watchRetryMin and watchRetryMax bound the wait between attempts to reach a holder that is
	// gone: the time a restarted holder waits for this process's exports.
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = time.Second
)

// holderLink is this process's side of the holder: it puts the exports of this process there,
// drops them, and puts them all again into a holder that restarted.
type holderLink struct {
	path string
	log  *slog.Logger

	// mu is held across requests to the holder: each is bounded (a stuck holder fails it after
	// a few seconds), and a holder that is not running refuses the connection at once.
	mu struct {
		sync.Mutex
		// c makes requests; nil while not connected.
		c *holder.Client
		// watch is a connection of its own that makes no request: it ends when the holder
		// exits. nil while not connected.
		watch *holder.Client
		// watching: the watch loop runs. It runs while held is not empty.
		watching bool
		// held are the exports this process serves, by key: what to put into a restarted
		// holder.
		held map[string]heldConn
	}
}

// heldConn is an export's connection as the holder is to hold it.
type heldConn struct {
	fds    []int // this process's descriptors (its fuseConn's): they outlive the entry
	params []byte
}

func newHolderLink(path string, log *slog.Logger) *holderLink {
	l := &holderLink{path: path, log: log.With("holder", path)}
	l.mu.held = map[string]heldConn{}
	return l
}

// put puts an export's connection into the holder, and keeps it there while this process lives
// (until drop). The export is this process's to put again even if the holder cannot be reached
// now: the error says that its connection is not held yet.
func (l *holderLink) put(key string, fds []int, params []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.held[key] = heldConn{fds: fds, params: params}
	if !l.mu.watching {
		l.mu.watching = true
		go l.watchLoop()
	}
	return l.callLocked(func(c *holder.Client) error { return c.Put(key, fds, params) })
}

// forget stops keeping key in the holder without dropping it there: the export is handed back
// as it was (a failed Adopt).
func (l *holderLink) forget(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetLocked(key)
}

func (l *holderLink) forgetLocked(key string) {
	delete(l.mu.held, key)
	if len(l.mu.held) == 0 && l.mu.watch != nil {
		l.mu.watch.Close() // the watch loop ends
		l.mu.watch = nil
	}
}

// drop has the holder close its copies of key's connection. Nothing held is not an error.
func (l *holderLink) drop(key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetLocked(key)
	err := l.callLocked(func(c *holder.Client) error { return c.Drop(key) })
	if errors.Is(err, holder.ErrNotFound) {
		return nil
	}
	return err
}

// get returns new descriptors of key's connection (the caller's to close) and its state.
func (l *holderLink) get(key string) (fds []int, params []byte, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	err = l.callLocked(func(c *holder.Client) error {
		fds, params, err = c.Get(key)
		return err
	})
	return fds, params, err
}

// keys returns the keys the holder holds.
func (l *holderLink) keys() ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var keys []string
	err := l.callLocked(func(c *holder.Client) (err error) {
		keys, err = c.List()
		return err
	})
	return keys, err
}

// callLocked runs fn on a connection to the holder, connecting first if needed. A connection
// that fails (the holder restarted since it was made) is replaced, once. A holder that is not
// running is ErrNoHolder. REQUIRES: l.mu.
func (l *holderLink) callLocked(fn func(*holder.Client) error) error {
	for try := 0; ; try++ {
		if l.mu.c == nil {
			c, err := holder.Dial(l.path)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrNoHolder, err)
			}
			l.mu.c = c
		}
		err := fn(l.mu.c)
		var re *holder.RemoteError
		if err == nil || errors.As(err, &re) || errors.Is(err, holder.ErrInvalid) {
			return err
		}
		l.mu.c.Close()
		l.mu.c = nil
		if try == 1 {
			return err
		}
	}
}

// watchLoop keeps a watch connection to the holder while this process has exports, and puts
// them all into the holder each time it connects: after the holder restarted, or after it could
// not be reached when they were made.
func (l *holderLink) watchLoop() {
	delay := watchRetryMin
	lost := false
	for {
		l.mu.Lock()
		if len(l.mu.held) == 0 {
			l.mu.watching = false
			l.mu.Unlock()
			return
		}
		w := l.mu.watch
		if w == nil {
			var err error
			if w, err = l.connectLocked(); err != nil {
				l.mu.Unlock()
				time.Sleep(delay)
				delay = min(2*delay, watchRetryMax)
				continue
			}
			if lost {
				l.log.Info("holder back: exports held again", "exports", len(l.mu.held))
			}
			delay = watchRetryMin
		}
		l.mu.Unlock()

		err := w.Wait()
		l.mu.Lock()
		if l.mu.watch == w { // not closed by forget: the holder went away
			w.Close()
			l.mu.watch = nil
			if l.mu.c != nil {
				l.mu.c.Close()
				l.mu.c = nil
			}
			lost = true
			l.log.Warn("holder gone: the exports of this process end with it until the holder is back",
				"exports", len(l.mu.held), "err", err)
		}
		l.mu.Unlock()
	}
}

// connectLocked makes the watch connection and puts every export of this process into the
// holder. REQUIRES: l.mu.
func (l *holderLink) connectLocked() (*holder.Client, error) {
	w, err := holder.Dial(l.path)
	if err != nil {
		return nil, err
	}
	for key, h := range l.mu.held {
		if err := l.callLocked(func(c *holder.Client) error { return c.Put(key, h.fds, h.params) }); err != nil {
			w.Close()
			return nil, err
		}
	}
	l.mu.watch = w
	return w, nil
}
