// Package keylock serializes operations per key: an operation on one key waits for the one
// before it, operations on different keys run side by side, and a waiter gives up when its
// context ends. It replaces one lock around a whole service (every RPC, every request) with one
// lock per object that is being changed.
//
// Who uses it, with which keys: the CSI driver (by CSI name while creating, by ID while
// changing; and by volume ID in the node service), the local daemon (by image and clone name)
// and package nodevolume (by export id). The package knows nothing of what the keys name.
package keylock

import (
	"context"
	"fmt"
	"sync"
)

// Locks is a set of per-key locks. The zero value is ready to use; a Locks must not be copied
// after first use. Its methods are safe for concurrent use.
type Locks struct {
	mu   sync.Mutex      // guards keys
	keys map[string]*key // keys locked or waited for; an entry goes when nobody holds or waits
}

type key struct {
	sem  chan struct{} // holds one token while the key is locked
	refs int           // holders and waiters; REQUIRES Locks.mu
}

// Lock locks key and returns the function that unlocks it (calls after the first do nothing).
// A free key is locked at once, even when ctx has ended already; a held one is waited for until
// it is unlocked or ctx ends, and then Lock fails with an error that wraps ctx.Err() and names
// the key.
func (l *Locks) Lock(ctx context.Context, k string) (unlock func(), err error) {
	l.mu.Lock()
	if l.keys == nil {
		l.keys = make(map[string]*key)
	}
	e := l.keys[k]
	if e == nil {
		e = &key{sem: make(chan struct{}, 1)}
		l.keys[k] = e
	}
	e.refs++
	l.mu.Unlock()

	var once sync.Once
	unlock = func() {
		once.Do(func() {
			<-e.sem
			l.release(k, e)
		})
	}
	select { // a free key is never refused: select picks at random among ready cases
	case e.sem <- struct{}{}:
		return unlock, nil
	default:
	}
	select {
	case e.sem <- struct{}{}:
		return unlock, nil
	case <-ctx.Done():
		l.release(k, e)
		return nil, fmt.Errorf("keylock: wait for %s: %w", k, ctx.Err())
	}
}

func (l *Locks) release(k string, e *key) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(l.keys, k)
	}
}

// Held returns the number of keys locked or waited for. Tests check that no key leaks.
func (l *Locks) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
