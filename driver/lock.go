package driver

import (
	"context"
	"sync"
)

// keyLocks serializes the operations on one key — a CSI name while it is being created, or an
// object's ID while it is being changed — and lets operations on different keys run in
// parallel: there is no lock around RPCs as a whole. A waiter gives up when its context ends.
//
// Keys used (see the lock* helpers): "volume-name/<name>" for CreateVolume, "snapshot-name/<name>"
// for CreateSnapshot, "volume/<id>" for DeleteVolume, "snapshot/<id>" for DeleteSnapshot. A lock
// is held across the block store call that makes the change durable and nothing else slow (no
// exec, mount or network). The Node service has its own keyLocks, by CSI volume ID: staging,
// publishing and expanding one volume are serialized across their mounts and file system tools.
type keyLocks struct {
	mu   sync.Mutex          // guards keys
	keys map[string]*keyLock // keys locked or waited for
}

type keyLock struct {
	sem  chan struct{} // holds one token while the key is locked
	refs int           // holders and waiters; REQUIRES keyLocks.mu
}

func newKeyLocks() *keyLocks { return &keyLocks{keys: make(map[string]*keyLock)} }

// lock waits until key is free or ctx ends, and returns the function that unlocks it.
func (l *keyLocks) lock(ctx context.Context, key string) (unlock func(), err error) {
	l.mu.Lock()
	k := l.keys[key]
	if k == nil {
		k = &keyLock{sem: make(chan struct{}, 1)}
		l.keys[key] = k
	}
	k.refs++
	l.mu.Unlock()

	select {
	case k.sem <- struct{}{}:
		return func() {
			<-k.sem
			l.release(key, k)
		}, nil
	case <-ctx.Done():
		l.release(key, k)
		return nil, ctxError(ctx.Err())
	}
}

func (l *keyLocks) release(key string, k *keyLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k.refs--
	if k.refs == 0 {
		delete(l.keys, key)
	}
}

// held returns the number of keys locked or waited for (for tests: no key leaks).
func (l *keyLocks) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
