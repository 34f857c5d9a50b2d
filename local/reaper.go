package local

import (
	"context"
	"errors"
	"slices"
	"time"
)

// reap deletes what has expired by the daemon's clock: the expired clones, then the expired images that
// have no clones (an expired image with clones stays, and its status says so). Serve runs it
// every ReapInterval. It returns what it deleted, for logs and tests.
func (d *Daemon) reap(ctx context.Context) (images, clones []string) {
	now := d.now()
	expired := func(t time.Time) bool { return !t.IsZero() && !now.Before(t) }
	var cloneNames, imageNames []string
	d.mu.Lock()
	for _, r := range d.mu.cat.Clones {
		if !r.Deleting && expired(r.Expires) {
			cloneNames = append(cloneNames, r.Name)
		}
	}
	for _, r := range d.mu.cat.Images {
		if !r.Deleting && expired(r.Expires) {
			imageNames = append(imageNames, r.Name)
		}
	}
	d.mu.Unlock()
	slices.Sort(cloneNames)
	slices.Sort(imageNames)
	for _, name := range cloneNames {
		if err := d.DeleteClone(ctx, name); err != nil {
			if !errors.Is(err, ErrNotFound) {
				d.log.Error("reaper: delete an expired clone", "clone", name, "err", err)
			}
			continue
		}
		d.log.Info("reaper: expired clone deleted", "clone", name)
		clones = append(clones, name)
	}
	for _, name := range imageNames {
		err := d.DeleteImage(ctx, name)
		switch {
		case errors.Is(err, ErrHasClones):
			d.log.Debug("reaper: expired image kept while it has clones", "image", name)
		case errors.Is(err, ErrNotFound):
		case err != nil:
			d.log.Error("reaper: delete an expired image", "image", name, "err", err)
		default:
			d.log.Info("reaper: expired image deleted", "image", name)
			images = append(images, name)
		}
	}
	return images, clones
}

// runReaper reaps every interval until ctx ends.
func (d *Daemon) runReaper(ctx context.Context) {
	t := time.NewTicker(d.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.reap(ctx)
		}
	}
}
