package exportset

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Garbage collection, safe against concurrent pushes (docs/export-sets.md).
//
// A push may rely on objects it did not upload: those it found present (Stat) and those of the
// parent's manifest. A collection must not delete them between the push's look and its
// manifest. The two exclude each other like Dekker's algorithm, through the target:
//
//   - a push writes its lease (leases/<id>), then lists the collection markers (gc/); if one
//     is live it deletes its lease, waits and starts over; else it proceeds, and deletes its
//     lease once its manifest (and name) are written;
//   - a collection writes its marker (gc/<id>), then lists the leases; if one is live it
//     deletes its marker and gives up (ErrBusy); else it reads every manifest and deletes the
//     objects none names, then its marker.
//
// Because a target's writes are visible to every list that starts after them, at least one of
// two that overlap sees the other's object. Leases and markers are renewed every quarter of the
// TTL; one is live while its last write is less than the TTL older than the other's, both by
// the target's clock (ObjectInfo.Modified): no two machines' clocks are compared. A holder that
// could not renew for half the TTL stops before its next unsafe step (ErrLeaseLost), so a
// process that stalled is never taken for live by itself while it is dead to the others.

// unprotected turns the protocol off: pushes take no lease and collections look for none.
// Only tests set it (export_test.go), to show the race that the protocol prevents.
var unprotected atomic.Bool

// lease is a push's lease or a collection's marker: an object renewed until released.
type lease struct {
	r    *Registry
	key  string // "" for the lease of an unprotected push
	body []byte

	mu struct {
		sync.Mutex
		renewed time.Time // when the last successful write started, by the local clock
	}
	stop chan struct{} // closed by release
	done chan struct{} // closed when the renewal goroutine ends
}

// newLease writes a lease object under dir and returns it (not renewed yet: start) with the
// target's view of it.
func (r *Registry) newLease(ctx context.Context, dir, what string) (*lease, ObjectInfo, error) {
	host, _ := os.Hostname()
	body, err := json.Marshal(struct {
		What    string    `json:"what"`
		Host    string    `json:"host"`
		PID     int       `json:"pid"`
		Started time.Time `json:"started"`
	}{what, host, os.Getpid(), time.Now().UTC()})
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	l := &lease{r: r, key: dir + randomID(), body: body}
	start := time.Now()
	if err := r.t.Put(ctx, l.key, body); err != nil {
		return nil, ObjectInfo{}, fmt.Errorf("exportset: write %s: %w", l.key, err)
	}
	l.mu.renewed = start
	info, err := r.t.Stat(ctx, l.key)
	if err != nil {
		l.delete()
		return nil, ObjectInfo{}, fmt.Errorf("exportset: stat %s: %w", l.key, err)
	}
	return l, info, nil
}

// start renews the lease every quarter of the TTL until release.
func (l *lease) start() {
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(l.done)
		t := time.NewTicker(l.r.ttl / 4)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
			}
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), l.r.ttl/4)
			err := l.r.t.Put(ctx, l.key, l.body)
			cancel()
			if err != nil {
				l.r.log.Warn("renewing a lease failed", "lease", l.key, "err", err)
				continue
			}
			l.mu.Lock()
			l.mu.renewed = start
			l.mu.Unlock()
		}
	}()
}

// fresh returns ErrLeaseLost once the lease went half its TTL without a renewal: the others
// may soon take it for dead.
func (l *lease) fresh() error {
	if l.key == "" {
		return nil
	}
	l.mu.Lock()
	age := time.Since(l.mu.renewed)
	l.mu.Unlock()
	if age >= l.r.ttl/2 {
		return fmt.Errorf("%w: %s was last renewed %s ago (TTL %s)", ErrLeaseLost, l.key, age.Round(time.Millisecond), l.r.ttl)
	}
	return nil
}

// release stops renewing and deletes the lease.
func (l *lease) release() {
	if l.stop != nil {
		close(l.stop)
		<-l.done
	}
	l.delete()
}

func (l *lease) delete() {
	if l.key == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.r.t.Delete(ctx, l.key); err != nil {
		l.r.log.Warn("deleting a lease failed (it expires)", "lease", l.key, "err", err)
	}
}

// live reports whether an object written at modified is live for one written at now (both by
// the target's clock).
func (r *Registry) live(modified, now time.Time) bool { return now.Sub(modified) < r.ttl }

// acquirePushLease takes a push's lease, waiting while a collection runs.
func (r *Registry) acquirePushLease(ctx context.Context, waiting func(marker string)) (*lease, error) {
	poll := min(max(r.ttl/20, 50*time.Millisecond), 5*time.Second)
	if unprotected.Load() {
		return &lease{r: r}, nil
	}
	for {
		l, info, err := r.newLease(ctx, leasesDir, "push")
		if err != nil {
			return nil, err
		}
		var marker string
		err = r.t.List(ctx, gcDir, func(o ObjectInfo) error {
			if r.live(o.Modified, info.Modified) {
				marker = o.Key
			}
			return nil
		})
		if err == nil && marker == "" {
			l.start()
			return l, nil
		}
		l.delete()
		if err != nil {
			return nil, fmt.Errorf("exportset: list %s: %w", gcDir, err)
		}
		r.log.Info("a garbage collection runs; the push waits", "marker", marker, "target", r.t.String())
		if waiting != nil {
			waiting(marker)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("exportset: waiting for the garbage collection %s to end: %w", marker, context.Cause(ctx))
		case <-time.After(poll):
		}
	}
}

// GCResult is what a collection did.
type GCResult struct {
	Manifests    int   // manifests read
	Objects      int   // objects found
	Deleted      int   // objects deleted: no manifest names them
	DeletedBytes int64 // their stored bytes
	StaleLeases  int   // leases and markers of dead processes deleted
}

// GC deletes the objects no manifest names: those of deleted images, and those uploaded by
// pushes that died before their manifest. It gives up with ErrBusy while a push holds a live
// lease, and makes pushes that start meanwhile wait. A manifest it cannot read or decode stops
// it before it deletes anything.
func (r *Registry) GC(ctx context.Context) (*GCResult, error) {
	res := &GCResult{}
	m, info, err := r.newLease(ctx, gcDir, "collection")
	if err != nil {
		return nil, err
	}
	var live []string
	if !unprotected.Load() {
		err = r.t.List(ctx, leasesDir, func(o ObjectInfo) error {
			if r.live(o.Modified, info.Modified) {
				live = append(live, o.Key)
			} else if err := r.t.Delete(ctx, o.Key); err == nil {
				res.StaleLeases++
			}
			return nil
		})
	}
	if err != nil || len(live) > 0 {
		m.delete()
		if err != nil {
			return nil, fmt.Errorf("exportset: list %s: %w", leasesDir, err)
		}
		return nil, fmt.Errorf("%w: %d push(es) in progress (%s); collect later", ErrBusy, len(live), strings.Join(live, ", "))
	}
	m.start()
	defer m.release()
	_ = r.t.List(ctx, gcDir, func(o ObjectInfo) error {
		if o.Key != m.key && !r.live(o.Modified, info.Modified) && r.t.Delete(ctx, o.Key) == nil {
			res.StaleLeases++
		}
		return nil
	})

	// Mark: every object some manifest names.
	var manifests []Digest
	if err := r.t.List(ctx, manifestsDir, func(o ObjectInfo) error {
		if d, ok := digestOfKey(manifestsDir, o.Key); ok {
			manifests = append(manifests, d)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("exportset: list %s: %w", manifestsDir, err)
	}
	var mu sync.Mutex
	named := map[Digest]bool{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.workers)
	for _, d := range manifests {
		g.Go(func() error {
			man, _, err := r.Manifest(gctx, d)
			if errors.Is(err, ErrNotFound) {
				return nil // deleted meanwhile: its objects go next time
			}
			if err != nil {
				return fmt.Errorf("exportset: collection stopped, nothing deleted: %w", err)
			}
			mu.Lock()
			defer mu.Unlock()
			res.Manifests++
			for _, c := range man.Chunks {
				for _, o := range c.Objects {
					named[o.Digest] = true
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// Sweep.
	var garbage []ObjectInfo
	if err := r.t.List(ctx, chunksDir, func(o ObjectInfo) error {
		d, ok := digestOfKey(chunksDir, o.Key)
		if !ok {
			return nil // not an object this package writes
		}
		res.Objects++
		if !named[d] {
			garbage = append(garbage, o)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("exportset: list %s: %w", chunksDir, err)
	}
	var deleted, deletedBytes atomic.Int64
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(r.workers)
	for _, o := range garbage {
		g.Go(func() error {
			if err := m.fresh(); err != nil {
				return err
			}
			if err := r.t.Delete(gctx, o.Key); err != nil {
				return fmt.Errorf("exportset: delete %s: %w", o.Key, err)
			}
			deleted.Add(1)
			deletedBytes.Add(o.Size)
			return nil
		})
	}
	err = g.Wait()
	res.Deleted, res.DeletedBytes = int(deleted.Load()), deletedBytes.Load()
	if err != nil {
		return res, err
	}
	r.log.Info("garbage collected", "target", r.t.String(), "manifests", res.Manifests, "objects", res.Objects, "deleted", res.Deleted, "deletedBytes", res.DeletedBytes)
	return res, nil
}

// randomID returns 16 random bytes in hex.
func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
