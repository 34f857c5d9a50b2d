// Package conncount is a TCP listener for tests that counts the connections made to it: a test
// points a server that must never connect anywhere (a clone's subscription, a replica's
// primary) at it and checks the count. Each connection is forwarded to a target, so that the
// same address serves a real source while the test sets things up.
//
// It must not know what connects to it: it counts.
package conncount

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Listener counts and forwards the connections to 127.0.0.1:Port().
type Listener struct {
	l       net.Listener
	network string
	target  string
	n       atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]bool // open connections, both sides; nil once closed
	wg    sync.WaitGroup
}

// New listens on a free port of 127.0.0.1 and forwards each connection to target on network
// ("unix" and a socket path, or "tcp" and host:port). It closes when the test ends.
func New(t testing.TB, network, target string) *Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &Listener{l: l, network: network, target: target, conns: map[net.Conn]bool{}}
	c.wg.Add(1)
	go c.serve()
	t.Cleanup(c.close)
	return c
}

// Port is the listening port.
func (c *Listener) Port() int { return c.l.Addr().(*net.TCPAddr).Port }

// Count is the number of connections accepted so far.
func (c *Listener) Count() int64 { return c.n.Load() }

func (c *Listener) serve() {
	defer c.wg.Done()
	for {
		in, err := c.l.Accept()
		if err != nil {
			return
		}
		c.n.Add(1)
		out, err := net.Dial(c.network, c.target)
		if err != nil {
			in.Close()
			continue
		}
		if !c.track(in, out) {
			return
		}
		c.wg.Add(2)
		go c.pipe(out, in)
		go c.pipe(in, out)
	}
}

// track records an open pair; false once the listener is closed (the pair is closed then).
func (c *Listener) track(a, b net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns == nil {
		a.Close()
		b.Close()
		return false
	}
	c.conns[a], c.conns[b] = true, true
	return true
}

// pipe copies src to dst until either ends, then closes both.
func (c *Listener) pipe(dst, src net.Conn) {
	defer c.wg.Done()
	_, _ = io.Copy(dst, src)
	c.mu.Lock()
	defer c.mu.Unlock()
	dst.Close()
	src.Close()
	if c.conns != nil {
		delete(c.conns, dst)
		delete(c.conns, src)
	}
}

func (c *Listener) close() {
	c.l.Close()
	c.mu.Lock()
	for conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
	c.mu.Unlock()
	c.wg.Wait()
}
