package local

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// PoolStatus reports the pool's capacity and use: the block store's accounting, what the images
// hold and what the clones added on top of them.
func (d *Daemon) PoolStatus(ctx context.Context) (*PoolStatus, error) {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	st, err := d.store.Stats(ctx)
	if err != nil {
		return nil, fmt.Errorf("local: pool status: %w", storeError(err))
	}
	ps := &PoolStatus{
		Path:               d.cfg.poolPath(),
		Capacity:           st.PhysicalBytes,
		Used:               st.UsedBytes,
		Free:               st.FreeBytes,
		Provisioned:        st.ProvisionedBytes,
		OverProvisionRatio: st.OverProvisionRatio,
		Health:             "ok",
	}
	var clones []string
	d.mu.Lock()
	for _, r := range d.mu.cat.Images {
		if !r.Deleting {
			ps.Images++
			ps.ImageBytes += r.DataBytes
		}
	}
	for _, r := range d.mu.cat.Clones {
		if !r.Deleting {
			clones = append(clones, r.Name)
		}
	}
	d.mu.Unlock()
	ps.Clones = len(clones)
	for _, name := range clones {
		ps.CloneBytes += d.addedBytes(name)
	}
	if err := d.store.Health(ctx); err != nil {
		ps.Health = err.Error()
	}
	return ps, nil
}

// CheckPool runs the block store's consistency check, and checks that every image, clone and
// revision of the catalog has its object in the pool. Without repair the check is read-only: it
// verifies the pool's last checkpoint while the clones' I/O goes on, and writes nothing. With
// repair it holds the pool exclusively (the clones' I/O waits), checkpoints, verifies that
// checkpoint and frees leaked blocks.
func (d *Daemon) CheckPool(ctx context.Context, repair bool) (*CheckReport, error) {
	ctx, end, err := d.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	start := time.Now()
	rep, err := d.store.Check(ctx, blockstore.CheckOptions{ReadOnly: !repair, Repair: repair})
	if err != nil && (rep == nil || !errors.Is(err, blockstore.ErrCorrupt)) {
		return nil, fmt.Errorf("local: check pool: %w", err)
	}
	mode := "read-only check"
	if repair {
		mode = "check and repair"
	}
	out := &CheckReport{Summary: fmt.Sprintf("%s of checkpoint %d: %s", mode, rep.Generation, rep.String())}
	for _, e := range rep.Corrupt {
		out.Problems = append(out.Problems, e.Error())
	}
	out.Problems = append(out.Problems, rep.RefcountErrors...)
	if rep.LeakedBlocks > 0 {
		msg := fmt.Sprintf("%d leaked blocks (first: %v)", rep.LeakedBlocks, rep.Leaked)
		if repair {
			out.Repaired = append(out.Repaired, msg)
		} else {
			out.Problems = append(out.Problems, msg+"; run the check with repair to reclaim them")
		}
	}
	if rep.Repaired > 0 {
		out.Repaired = append(out.Repaired, fmt.Sprintf("%d refcounts corrected", rep.Repaired))
	}
	out.Problems = append(out.Problems, d.checkCatalog()...)
	out.OK = len(out.Problems) == 0 // repaired leaks are not problems any more
	d.log.Info("pool checked", "ok", out.OK, "summary", out.Summary, "problems", len(out.Problems), "took", time.Since(start))
	return out, nil
}

// checkCatalog lists the catalog entries whose pool object is missing.
func (d *Daemon) checkCatalog() []string {
	type want struct{ name, what string }
	var snaps, vols []want
	d.mu.Lock()
	for _, r := range d.mu.cat.Images {
		if !r.Deleting {
			snaps = append(snaps, want{imageObject(r.Name), "image " + r.Name})
		}
	}
	for _, r := range d.mu.cat.Clones {
		if r.Deleting {
			continue
		}
		vols = append(vols, want{cloneObject(r.Name), "clone " + r.Name})
		for _, rv := range r.Revisions {
			snaps = append(snaps, want{revObject(r.Name, rv.Name), "clone " + r.Name + " revision " + rv.Name})
		}
	}
	d.mu.Unlock()
	var problems []string
	for _, w := range snaps {
		if _, err := d.store.LookupSnapshot(storeCtx, w.name); errors.Is(err, blockstore.ErrNotFound) {
			problems = append(problems, fmt.Sprintf("catalog: %s has no snapshot %s in the pool", w.what, w.name))
		}
	}
	for _, w := range vols {
		if _, err := d.store.LookupVolume(storeCtx, w.name); errors.Is(err, blockstore.ErrNotFound) {
			problems = append(problems, fmt.Sprintf("catalog: %s has no volume %s in the pool", w.what, w.name))
		}
	}
	slices.Sort(problems)
	return problems
}
