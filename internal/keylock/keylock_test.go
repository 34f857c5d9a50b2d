package keylock

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSerializesOneKey: holders of one key never overlap; other keys are not held up.
func TestSerializesOneKey(t *testing.T) {
	var l Locks
	ctx := context.Background()
	var inside [4]atomic.Int32 // holders per key
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			k := i % len(inside)
			for range 20 {
				unlock, err := l.Lock(ctx, "k"+strconv.Itoa(k))
				if err != nil {
					t.Error(err)
					return
				}
				if n := inside[k].Add(1); n != 1 {
					t.Errorf("key %d held by %d at once", k, n)
				}
				time.Sleep(10 * time.Microsecond)
				inside[k].Add(-1)
				unlock()
			}
		})
	}
	wg.Wait()
	require.Zero(t, l.Held(), "no key left behind")
}

// TestOtherKeysFree: a held key does not hold up another.
func TestOtherKeysFree(t *testing.T) {
	var l Locks
	unlock, err := l.Lock(context.Background(), "a")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	other, err := l.Lock(ctx, "b")
	require.NoError(t, err)
	require.Equal(t, 2, l.Held())
	other()
	unlock()
	require.Zero(t, l.Held())
}

// TestWaitEndsWithContext: a waiter gives up when its context ends, with an error that wraps
// the context's and names the key, and leaves the lock as it was: the holder still holds it,
// and once it unlocks the key is free (and forgotten).
func TestWaitEndsWithContext(t *testing.T) {
	var l Locks
	unlock, err := l.Lock(context.Background(), "volume/7")
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error, 1)
	go func() {
		_, err := l.Lock(ctx, "volume/7")
		waited <- err
	}()
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.keys["volume/7"].refs == 2
	}, 10*time.Second, time.Millisecond, "the second Lock waits")
	select {
	case err := <-waited:
		t.Fatalf("Lock of a held key returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	err = <-waited
	require.ErrorIs(t, err, context.Canceled)
	require.Contains(t, err.Error(), "volume/7")

	deadline, stop := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer stop()
	_, err = l.Lock(deadline, "volume/7")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 1, l.Held(), "the holder still holds the key")

	unlock()
	unlock() // a second call does nothing
	require.Zero(t, l.Held())
	again, err := l.Lock(context.Background(), "volume/7")
	require.NoError(t, err, "free again")
	again()
}

// TestFreeKeyWithEndedContext: a free key is locked even when the caller's context has ended
// (cleanup paths lock with the context of a request that was cancelled), every time.
func TestFreeKeyWithEndedContext(t *testing.T) {
	var l Locks
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 1000 {
		unlock, err := l.Lock(ctx, "k")
		require.NoError(t, err)
		unlock()
	}
	require.Zero(t, l.Held())
}

// TestUnlockWakesWaiter: unlocking hands the key to a waiter.
func TestUnlockWakesWaiter(t *testing.T) {
	var l Locks
	unlock, err := l.Lock(context.Background(), "k")
	require.NoError(t, err)
	got := make(chan func(), 1)
	go func() {
		u, err := l.Lock(context.Background(), "k")
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	select {
	case <-got:
		t.Fatal("the waiter got a held key")
	case <-time.After(20 * time.Millisecond):
	}
	unlock()
	select {
	case u := <-got:
		u()
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not woken")
	}
	require.Zero(t, l.Held())
}
