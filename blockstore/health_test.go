package blockstore_test

import (
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/internal/faultfs"
)

// stallFile is a pool file whose next Sync, once armed, blocks until released (or fails with
// the error given to release): a checkpoint or a commit stuck in fdatasync.
type stallFile struct {
	*faultfs.File
	mu      sync.Mutex
	armed   bool
	entered chan struct{} // closed when the armed Sync is entered
	release chan error    // the armed Sync returns what is sent here
}

func newStallFile(size int64) *stallFile { return &stallFile{File: faultfs.New(size)} }

// arm makes the next Sync block; it returns a channel closed once that Sync has begun.
func (f *stallFile) arm() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed = true
	f.entered = make(chan struct{})
	f.release = make(chan error, 1)
	return f.entered
}

// unstall releases a stalled Sync, if any (a test that failed while one was stalled).
func (f *stallFile) unstall() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.release != nil {
		select {
		case f.release <- nil:
		default:
		}
	}
}

func (f *stallFile) Sync() error {
	f.mu.Lock()
	armed, entered, release := f.armed, f.entered, f.release
	f.armed = false
	f.mu.Unlock()
	if armed {
		close(entered)
		if err := <-release; err != nil {
			return err
		}
	}
	return f.File.Sync()
}

// healthWithin calls Health and fails the test unless it returns within d.
func healthWithin(t *testing.T, p *blockstore.Pool, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Health() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("Health did not answer within %v while a sync was stalled", d)
		return nil
	}
}

// TestHealthDoesNotWait: Health answers at once while a commit (Flush), a checkpoint (Check)
// or Close is stuck in fdatasync, and reports the failure once the stalled sync failed.
func TestHealthDoesNotWait(t *testing.T) {
	const bound = 2 * time.Second // the stall lasts until the test releases it: forever otherwise
	for _, tc := range []struct {
		name string
		run  func(p *blockstore.Pool) error
	}{
		{"flush", func(p *blockstore.Pool) error { return p.Flush() }},
		{"checkpoint", func(p *blockstore.Pool) error { _, err := p.Check(false); return err }},
		{"close", func(p *blockstore.Pool) error { return p.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newStallFile(32 << 20)
			p, err := blockstore.CreateOn(f, blockstore.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = p.Close() })
			t.Cleanup(f.unstall) // first: Close waits for the stalled sync
			info, err := p.CreateVolume("v", 1<<20)
			require.NoError(t, err)
			vol, err := p.Volume(info.ID)
			require.NoError(t, err)
			_, err = vol.WriteAt(pattern(1, p.BlockSize()), 0)
			require.NoError(t, err)

			entered := f.arm()
			done := make(chan error, 1)
			go func() { done <- tc.run(p) }()
			<-entered
			require.NoError(t, healthWithin(t, p, bound), "healthy while the sync is stalled")
			f.release <- nil
			require.NoError(t, <-done)
			if tc.name == "close" {
				require.ErrorIs(t, healthWithin(t, p, bound), blockstore.ErrClosed)
				return
			}
			require.NoError(t, healthWithin(t, p, bound))

			// A stalled sync that fails: healthy while it is stalled, failed once it returned.
			_, err = vol.WriteAt(pattern(2, p.BlockSize()), 0)
			require.NoError(t, err)
			entered = f.arm()
			go func() { done <- tc.run(p) }()
			<-entered
			require.NoError(t, healthWithin(t, p, bound))
			f.release <- syscall.EIO
			require.True(t, errors.Is(<-done, syscall.EIO))
			err = healthWithin(t, p, bound)
			require.ErrorIs(t, err, blockstore.ErrFailed)
			require.ErrorIs(t, err, syscall.EIO)
		})
	}
}
