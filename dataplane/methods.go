package dataplane

import (
	"context"
	"errors"
	"maps"
	"slices"

	"github.com/dataimage/dataimage/blockstore"
)

// handler serves one method of the API: it reads what it needs of the request and returns the
// result to encode, or an error.
type handler func(ctx context.Context, s Store, r request) (any, error)

// methods are the API's methods, by name: the server's dispatch table. The client's methods
// (client.go) send the same names and fields.
var methods = map[string]handler{
	"Health": func(ctx context.Context, s Store, _ request) (any, error) { return struct{}{}, s.Health(ctx) },
	"Stats": func(ctx context.Context, s Store, _ request) (any, error) {
		st, err := s.Stats(ctx)
		return toWireStats(st), err
	},
	"Check": func(ctx context.Context, s Store, r request) (any, error) {
		var o blockstore.CheckOptions
		if r.Check != nil {
			o = blockstore.CheckOptions{ReadOnly: r.Check.ReadOnly, Repair: r.Check.Repair, MemoryBytes: r.Check.MemoryBytes}
		}
		rep, err := s.Check(ctx, o)
		out := wireCheck{Report: toWireCheckReport(rep)}
		if err != nil {
			if rep == nil {
				return nil, err // the check could not run
			}
			out.Error = encodeError(err)
		}
		return out, nil
	},
	"CreateVolume": func(ctx context.Context, s Store, r request) (any, error) {
		return volume(s.CreateVolume(ctx, r.Name, r.Size))
	},
	"Clone": func(ctx context.Context, s Store, r request) (any, error) {
		return volume(s.Clone(ctx, blockstore.SnapshotID(r.Snapshot), r.Name, r.Size))
	},
	"CloneVolume": func(ctx context.Context, s Store, r request) (any, error) {
		return volume(s.CloneVolume(ctx, blockstore.VolumeID(r.Volume), r.Name, r.Size))
	},
	"GrowVolume": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.GrowVolume(ctx, blockstore.VolumeID(r.Volume), r.Size)
	},
	"DeleteVolume": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.DeleteVolume(ctx, blockstore.VolumeID(r.Volume))
	},
	"DeleteVolumeSnapshots": func(ctx context.Context, s Store, r request) (any, error) {
		return s.DeleteVolumeSnapshots(ctx, blockstore.VolumeID(r.Volume))
	},
	"Revert": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.Revert(ctx, blockstore.VolumeID(r.Volume), blockstore.SnapshotID(r.Snapshot))
	},
	"VolumeInfo": func(ctx context.Context, s Store, r request) (any, error) {
		return volume(s.VolumeInfo(ctx, blockstore.VolumeID(r.Volume)))
	},
	"LookupVolume": func(ctx context.Context, s Store, r request) (any, error) {
		return volume(s.LookupVolume(ctx, r.Name))
	},
	"ListVolumes": func(ctx context.Context, s Store, _ request) (any, error) {
		vols, err := s.ListVolumes(ctx)
		return convert(vols, toWireVolume), err
	},
	"CreateSnapshot": func(ctx context.Context, s Store, r request) (any, error) {
		return snapshot(s.CreateSnapshot(ctx, blockstore.VolumeID(r.Volume), r.Name))
	},
	"DeleteSnapshot": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.DeleteSnapshot(ctx, blockstore.SnapshotID(r.Snapshot))
	},
	"SnapshotInfo": func(ctx context.Context, s Store, r request) (any, error) {
		return snapshot(s.SnapshotInfo(ctx, blockstore.SnapshotID(r.Snapshot)))
	},
	"LookupSnapshot": func(ctx context.Context, s Store, r request) (any, error) {
		return snapshot(s.LookupSnapshot(ctx, r.Name))
	},
	"ListSnapshots": func(ctx context.Context, s Store, _ request) (any, error) {
		snaps, err := s.ListSnapshots(ctx)
		return convert(snaps, toWireSnapshot), err
	},
	"DiffVolume": func(ctx context.Context, s Store, r request) (any, error) {
		ext, err := s.DiffVolume(ctx, blockstore.SnapshotID(r.Snapshot), blockstore.VolumeID(r.Volume))
		return toWireExtents(ext), err
	},
	"AllocatedExtents": func(ctx context.Context, s Store, r request) (any, error) {
		ext, err := s.AllocatedExtents(ctx, blockstore.SnapshotID(r.Snapshot))
		return toWireExtents(ext), err
	},
	"Export": func(ctx context.Context, s Store, r request) (any, error) {
		e, err := s.Export(ctx, ExportSpec{ID: r.ID, Volume: blockstore.VolumeID(r.Volume), Attrs: r.Attrs})
		return toWireExport(e), err
	},
	"Unexport": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.Unexport(ctx, r.ID)
	},
	"ResizeExport": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.ResizeExport(ctx, r.ID)
	},
	"ListExports": func(ctx context.Context, s Store, _ request) (any, error) {
		exps, err := s.ListExports(ctx)
		return convert(exps, toWireExport), err
	},
	"Leftovers": func(ctx context.Context, s Store, _ request) (any, error) {
		left, err := s.Leftovers(ctx)
		return convert(left, toWireLeftover), err
	},
	"CleanupLeftover": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.CleanupLeftover(ctx, r.ID)
	},
	"ZeroVolume": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.ZeroVolume(ctx, blockstore.VolumeID(r.Volume), r.Offset, r.Size)
	},
	"FlushVolume": func(ctx context.Context, s Store, r request) (any, error) {
		return struct{}{}, s.FlushVolume(ctx, blockstore.VolumeID(r.Volume))
	},
	"IOStats": func(ctx context.Context, s Store, _ request) (any, error) {
		st, err := s.IOStats(ctx)
		return toWireIOStats(st), err
	},
}

// dataMethods are the methods whose data travel as raw bytes (wire.go), served by
// Server.serveData.
var dataMethods = []string{"ReadVolume", "WriteVolume"}

// methodNames are the names of every method, sorted (GET /v1/version lists them).
var methodNames = slices.Sorted(slices.Values(append(slices.Collect(maps.Keys(methods)), dataMethods...)))

func volume(v blockstore.VolumeInfo, err error) (any, error)     { return toWireVolume(v), err }
func snapshot(s blockstore.SnapshotInfo, err error) (any, error) { return toWireSnapshot(s), err }

// convert maps f over in; an empty or nil in gives an empty slice (a JSON [] rather than null).
func convert[T, W any](in []T, f func(T) W) []W {
	out := make([]W, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

// errUnknownMethod answers a call of a method the server does not have (a newer client).
var errUnknownMethod = errors.New("unknown method")
