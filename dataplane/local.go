package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sort"
	"sync"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/keylock"
)

// Local is a data plane in this process: one pool and the exports of its volumes. It is what
// the data plane process serves on its socket (Server), and what a caller that owns the pool
// itself (tests, a single process) uses directly. The caller opens the pool before and closes
// it after (Drain first, when volumes are exported).
type Local struct {
	pool *blockstore.Pool
	exp  export.Exporter // nil: exports fail with export.ErrUnsupported
	log  *slog.Logger
	gate *ioGate // every export's I/O passes it; Drain closes it
	io   ioCounters
	// recs keeps a record of every export (records.go); Run sets its directory.
	recs records
	// locks serializes Export, Unexport, ResizeExport and CleanupLeftover per export id (no
	// lock is held across calls of different ids).
	locks keylock.Locks

	mu struct {
		sync.Mutex
		// exports holds the exports this Local serves, by id, from the export until the
		// teardown. Never held across I/O, exports or teardowns.
		exports map[string]*served
	}
}

// served is one export of a Local.
type served struct {
	Export
	dev export.Device
}

var _ Store = (*Local)(nil)

// NewLocal returns the data plane of pool, exporting through exp (nil: no exports; they fail
// with export.ErrUnsupported). A nil log discards.
func NewLocal(pool *blockstore.Pool, exp export.Exporter, log *slog.Logger) *Local {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Local{pool: pool, exp: exp, log: log, gate: newIOGate()}
	l.mu.exports = make(map[string]*served)
	return l
}

// Pool returns the pool the data plane serves.
func (l *Local) Pool() *blockstore.Pool { return l.pool }

func (l *Local) Health(context.Context) error { return l.pool.Health() }

func (l *Local) Stats(context.Context) (blockstore.Stats, error) { return l.pool.Stats(), nil }

func (l *Local) Check(_ context.Context, o blockstore.CheckOptions) (*blockstore.CheckReport, error) {
	return l.pool.CheckWith(o)
}

func (l *Local) CreateVolume(_ context.Context, name string, size int64) (blockstore.VolumeInfo, error) {
	return l.pool.CreateVolume(name, size)
}

func (l *Local) Clone(_ context.Context, snap blockstore.SnapshotID, name string, size int64) (blockstore.VolumeInfo, error) {
	return l.pool.Clone(snap, name, size)
}

func (l *Local) CloneVolume(_ context.Context, src blockstore.VolumeID, name string, size int64) (blockstore.VolumeInfo, error) {
	return l.pool.CloneVolume(src, name, size)
}

func (l *Local) GrowVolume(_ context.Context, id blockstore.VolumeID, size int64) error {
	return l.pool.GrowVolume(id, size)
}

func (l *Local) DeleteVolume(_ context.Context, id blockstore.VolumeID) error {
	return l.pool.DeleteVolume(id)
}

func (l *Local) DeleteVolumeSnapshots(_ context.Context, id blockstore.VolumeID) (int, error) {
	return l.pool.DeleteVolumeSnapshots(id)
}

func (l *Local) Revert(_ context.Context, vol blockstore.VolumeID, snap blockstore.SnapshotID) error {
	return l.pool.Revert(vol, snap)
}

func (l *Local) VolumeInfo(_ context.Context, id blockstore.VolumeID) (blockstore.VolumeInfo, error) {
	return l.pool.VolumeInfo(id)
}

func (l *Local) LookupVolume(_ context.Context, name string) (blockstore.VolumeInfo, error) {
	return l.pool.LookupVolume(name)
}

func (l *Local) ListVolumes(context.Context) ([]blockstore.VolumeInfo, error) {
	return l.pool.Volumes(), nil
}

func (l *Local) CreateSnapshot(_ context.Context, vol blockstore.VolumeID, name string) (blockstore.SnapshotInfo, error) {
	return l.pool.CreateSnapshot(vol, name)
}

func (l *Local) DeleteSnapshot(_ context.Context, id blockstore.SnapshotID) error {
	return l.pool.DeleteSnapshot(id)
}

func (l *Local) SnapshotInfo(_ context.Context, id blockstore.SnapshotID) (blockstore.SnapshotInfo, error) {
	return l.pool.SnapshotInfo(id)
}

func (l *Local) LookupSnapshot(_ context.Context, name string) (blockstore.SnapshotInfo, error) {
	return l.pool.LookupSnapshot(name)
}

func (l *Local) ListSnapshots(context.Context) ([]blockstore.SnapshotInfo, error) {
	return l.pool.Snapshots(), nil
}

func (l *Local) DiffVolume(_ context.Context, from blockstore.SnapshotID, vol blockstore.VolumeID) ([]blockstore.Extent, error) {
	return l.pool.DiffVolume(from, vol)
}

func (l *Local) AllocatedExtents(_ context.Context, snap blockstore.SnapshotID) ([]blockstore.Extent, error) {
	return l.pool.AllocatedExtents(snap)
}

// exporter returns the exporter, or an error wrapping export.ErrUnsupported for a Local without
// one.
func (l *Local) exporter(op, id string) (export.Exporter, error) {
	if l.exp == nil {
		return nil, &export.Error{Op: op, ID: id, Err: wrapf(export.ErrUnsupported, "this data plane exports nothing")}
	}
	return l.exp, nil
}

func (l *Local) Export(ctx context.Context, spec ExportSpec) (Export, error) {
	if err := spec.check(); err != nil {
		return Export{}, err
	}
	exp, err := l.exporter("export", spec.ID)
	if err != nil {
		return Export{}, err
	}
	unlock, err := l.locks.Lock(ctx, spec.ID)
	if err != nil {
		return Export{}, fmt.Errorf("dataplane: export %s: %w", spec.ID, err)
	}
	defer unlock()
	l.mu.Lock()
	if s, ok := l.mu.exports[spec.ID]; ok {
		if s.Volume != spec.Volume {
			defer l.mu.Unlock()
			return Export{}, &export.Error{Op: "export", ID: spec.ID, Device: s.Device,
				Err: wrapf(export.ErrExists, "exported already for volume %d, not %d", s.Volume, spec.Volume)}
		}
		l.mu.Unlock()
		// The id's lock keeps the export: its record and attrs change together.
		if err := l.recs.put(spec); err != nil {
			return Export{}, err
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		s.Attrs = maps.Clone(spec.Attrs)
		return s.copy(), nil
	}
	l.mu.Unlock()
	vol, err := l.pool.Volume(spec.Volume)
	if err != nil {
		return Export{}, fmt.Errorf("dataplane: export %s: volume %d: %w", spec.ID, spec.Volume, err)
	}
	// The record first: the kernel never has an export that is not recorded.
	if err := l.recs.put(spec); err != nil {
		return Export{}, err
	}
	dev, err := exp.Export(spec.ID, exportDisk{Volume: vol, c: &l.io, gate: l.gate})
	if err != nil {
		if rerr := l.recs.remove(spec.ID); rerr != nil {
			l.log.Warn("remove the record of an export that failed", "export", spec.ID, "err", rerr)
		}
		return Export{}, err
	}
	s := &served{Export: Export{ID: spec.ID, Volume: spec.Volume, Device: dev.Path(), Method: exp.Name(), Attrs: maps.Clone(spec.Attrs)}, dev: dev}
	l.mu.Lock()
	l.mu.exports[spec.ID] = s
	l.mu.Unlock()
	return s.copy(), nil
}

// adopt serves again, under its record, an export an earlier data plane left whose
// connection the holder kept (export.Exporter.Adopt): the record's volume behind the device the
// kernel still has, with the record's attrs. Run calls it before the socket serves.
func (l *Local) adopt(rec record) (Export, error) {
	exp, err := l.exporter("adopt", rec.ID)
	if err != nil {
		return Export{}, err
	}
	vol, err := l.pool.Volume(blockstore.VolumeID(rec.Volume))
	if err != nil {
		return Export{}, fmt.Errorf("dataplane: adopt export %s: volume %d: %w", rec.ID, rec.Volume, err)
	}
	dev, err := exp.Adopt(rec.ID, exportDisk{Volume: vol, c: &l.io, gate: l.gate})
	if err != nil {
		return Export{}, err
	}
	s := &served{Export: Export{ID: rec.ID, Volume: blockstore.VolumeID(rec.Volume), Device: dev.Path(), Method: exp.Name(),
		Attrs: maps.Clone(rec.Attrs)}, dev: dev}
	l.mu.Lock()
	l.mu.exports[rec.ID] = s
	l.mu.Unlock()
	return s.copy(), nil
}

// copy returns the export's description, its attrs copied. REQUIRES l.mu (or a served not
// shared yet).
func (s *served) copy() Export {
	e := s.Export
	e.Attrs = maps.Clone(s.Attrs)
	return e
}

func (l *Local) get(id string) (*served, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.mu.exports[id]
	return s, ok
}

func (l *Local) Unexport(ctx context.Context, id string) error {
	if !export.ValidID(id) {
		return wrapf(export.ErrInvalid, "export id %q", id)
	}
	unlock, err := l.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("dataplane: unexport %s: %w", id, err)
	}
	defer unlock()
	s, ok := l.get(id)
	if !ok {
		return nil
	}
	if err := s.dev.Close(); err != nil {
		return err
	}
	l.mu.Lock()
	delete(l.mu.exports, id)
	l.mu.Unlock()
	if err := l.recs.remove(id); err != nil {
		l.log.Warn("remove the record of an export torn down (the next start does)", "export", id, "err", err)
	}
	return nil
}

func (l *Local) ResizeExport(ctx context.Context, id string) error {
	unlock, err := l.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("dataplane: resize export %s: %w", id, err)
	}
	defer unlock()
	s, ok := l.get(id)
	if !ok {
		return wrapf(ErrNotExported, "resize export %s", id)
	}
	return s.dev.Resize()
}

func (l *Local) ListExports(context.Context) ([]Export, error) {
	l.mu.Lock()
	out := make([]Export, 0, len(l.mu.exports))
	for _, s := range l.mu.exports {
		out = append(out, s.copy())
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// served returns the exports, by id.
func (l *Local) served() []*served {
	l.mu.Lock()
	out := make([]*served, 0, len(l.mu.exports))
	for _, s := range l.mu.exports {
		out = append(out, s)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (l *Local) Leftovers(context.Context) ([]export.Leftover, error) {
	if l.exp == nil {
		return nil, nil
	}
	return l.exp.Leftovers()
}

func (l *Local) CleanupLeftover(ctx context.Context, id string) error {
	exp, err := l.exporter("clean up", id)
	if err != nil {
		return err
	}
	unlock, err := l.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("dataplane: clean up %s: %w", id, err)
	}
	defer unlock()
	if err := exp.Cleanup(id); err != nil {
		return err
	}
	if _, served := l.get(id); !served {
		if err := l.recs.remove(id); err != nil {
			l.log.Warn("remove the record of a leftover torn down (the next start does)", "export", id, "err", err)
		}
	}
	return nil
}

func (l *Local) IOStats(context.Context) (IOStats, error) {
	var st IOStats
	for op := range IOOps {
		st.Ops[op] = l.io.ops[op].Load()
		st.Errors[op] = l.io.errs[op].Load()
		st.Bytes[op] = l.io.bytes[op].Load()
	}
	l.mu.Lock()
	st.Exported = len(l.mu.exports)
	l.mu.Unlock()
	return st, nil
}

// volumeIO runs do on volume id for ReadVolume and the like, n bytes of data checked: its I/O
// passes the gate as the exports' does (a drain waits for it), uncounted by IOStats.
func (l *Local) volumeIO(id blockstore.VolumeID, n int, do func(v *blockstore.Volume) error) error {
	if n < 0 || n > MaxDataBytes {
		return wrapf(ErrInvalid, "data of %d bytes: want at most %d", n, MaxDataBytes)
	}
	v, err := l.pool.Volume(id)
	if err != nil {
		return err
	}
	l.gate.enter()
	defer l.gate.exit()
	return do(v)
}

func (l *Local) ReadVolume(_ context.Context, id blockstore.VolumeID, off int64, b []byte) error {
	return l.volumeIO(id, len(b), func(v *blockstore.Volume) error {
		n, err := v.ReadAt(b, off)
		if n < len(b) && (err == nil || errors.Is(err, io.EOF)) {
			return fmt.Errorf("%w: %d bytes at %d of a volume of %d", blockstore.ErrOutOfRange, len(b), off, v.Size())
		}
		return err
	})
}

func (l *Local) WriteVolume(_ context.Context, id blockstore.VolumeID, off int64, b []byte) error {
	return l.volumeIO(id, len(b), func(v *blockstore.Volume) error {
		_, err := v.WriteAt(b, off)
		return err
	})
}

func (l *Local) ZeroVolume(_ context.Context, id blockstore.VolumeID, off, length int64) error {
	return l.volumeIO(id, 0, func(v *blockstore.Volume) error { return v.WriteZeroes(off, length) })
}

func (l *Local) FlushVolume(_ context.Context, id blockstore.VolumeID) error {
	return l.volumeIO(id, 0, func(v *blockstore.Volume) error { return v.Flush() })
}
