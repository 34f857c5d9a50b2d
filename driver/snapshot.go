package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// snapshot is the CSI description of a snapshot of this pool. Taking a snapshot is O(1) and
// durable on return, so every snapshot is ready to use.
func (c *controllerServer) snapshot(info blockstore.SnapshotInfo) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:         c.ids.snapshotHandle(info),
		SourceVolumeId:     c.ids.volumeID(info.Volume),
		SizeBytes:          info.Size,
		CreationTime:       timestamppb.New(info.Created),
		ReadyToUse:         true,
		AccessibleTopology: c.cfg.topology(),
	}
}

// lookupSnapshot finds a snapshot by CSI ID: NOT_FOUND for an ID that is malformed, another
// node's, or unknown.
func (c *controllerServer) lookupSnapshot(ctx context.Context, snapshotID string) (blockstore.SnapshotInfo, error) {
	ref, err := c.ids.parseSnapshotHandle(snapshotID)
	if err != nil {
		return blockstore.SnapshotInfo{}, idError(err)
	}
	info, err := c.store.SnapshotInfo(ctx, ref.id)
	if err == nil && !ref.names(info) {
		return blockstore.SnapshotInfo{}, idError(fmt.Errorf("snapshot ID %q: %w", snapshotID, errOtherSnapshot))
	}
	return info, mapError(err, "snapshot %s", snapshotID)
}

// CreateSnapshot freezes a volume in O(1), idempotently by name: the same name and source
// volume return the same snapshot, the same name on another source is ALREADY_EXISTS.
func (c *controllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name, srcID := req.GetName(), req.GetSourceVolumeId()
	if err := validateName("snapshot", name); err != nil {
		return nil, err
	}
	if srcID == "" {
		return nil, invalidf("source_volume_id is required")
	}
	if err := validateParameters("parameters", req.GetParameters(), snapshotParameters, snapshotParametersRule); err != nil {
		return nil, err
	}
	if err := c.cfg.checkTopology("snapshot", req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}

	unlock, err := c.locks.Lock(ctx, "snapshot-name/"+name)
	if err != nil {
		return nil, ctxError(err)
	}
	defer unlock()

	existing, err := c.store.LookupSnapshot(ctx, name)
	if err == nil {
		if got := c.ids.volumeID(existing.Volume); got != srcID {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists (%s) of volume %s, not of %s",
				name, c.ids.snapshotHandle(existing), got, srcID)
		}
		return &csi.CreateSnapshotResponse{Snapshot: c.snapshot(existing)}, nil
	}
	if !errors.Is(err, blockstore.ErrNotFound) {
		return nil, mapError(err, "snapshot name %q", name)
	}
	vol, err := c.ids.parseVolumeID(srcID)
	if err != nil {
		return nil, idError(err)
	}
	info, err := c.store.CreateSnapshot(ctx, vol, name)
	if err != nil {
		return nil, mapError(err, "snapshot %q of volume %s", name, srcID)
	}
	return &csi.CreateSnapshotResponse{Snapshot: c.snapshot(info)}, nil
}

// DeleteSnapshot deletes a snapshot; volumes cloned from it keep their data. Like
// DeleteVolume: an unknown or malformed ID succeeds (csi-sanity: "should succeed when an
// invalid snapshot id is used"), another node's is NOT_FOUND.
func (c *controllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	snapshotID := req.GetSnapshotId()
	if snapshotID == "" {
		return nil, invalidf("snapshot_id is required")
	}
	ref, err := c.ids.parseSnapshotHandle(snapshotID)
	switch {
	case errors.Is(err, errMalformedID):
		return &csi.DeleteSnapshotResponse{}, nil
	case err != nil:
		return nil, idError(err)
	}
	id := ref.id
	unlock, err := c.locks.Lock(ctx, "snapshot/"+strconv.FormatUint(uint64(id), 10))
	if err != nil {
		return nil, ctxError(err)
	}
	defer unlock()
	if ref.tagged {
		// An ID of an earlier pool of this node names another snapshot of this one: its own is
		// gone, there is nothing to delete.
		info, err := c.store.SnapshotInfo(ctx, id)
		if errors.Is(err, blockstore.ErrNotFound) || err == nil && !ref.names(info) {
			return &csi.DeleteSnapshotResponse{}, nil
		}
		if err != nil {
			return nil, mapError(err, "snapshot %s", snapshotID)
		}
	}
	if err := c.store.DeleteSnapshot(ctx, id); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
		return nil, mapError(err, "delete snapshot %s", snapshotID)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// GetSnapshot describes one snapshot: NOT_FOUND for an ID that names none of this pool.
func (c *controllerServer) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalidf("snapshot_id is required")
	}
	info, err := c.lookupSnapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	return &csi.GetSnapshotResponse{Snapshot: c.snapshot(info)}, nil
}

// ListSnapshots lists snapshots by ID, optionally only the one named by snapshot_id and/or
// those of source_volume_id. A filter that names nothing of this pool (malformed, another
// node's, unknown) gives an empty list, not an error (csi-sanity: "should return empty when
// the specified snapshot id does not exist").
func (c *controllerServer) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	start, err := c.pageStart(req.GetMaxEntries(), req.GetStartingToken(), snapshotIDPrefix)
	if err != nil {
		return nil, err
	}
	var snaps []blockstore.SnapshotInfo
	if want := req.GetSnapshotId(); want != "" {
		if info, err := c.lookupSnapshot(ctx, want); err == nil {
			snaps = append(snaps, info)
		} else if status.Code(err) != codes.NotFound {
			return nil, err
		}
	} else if snaps, err = c.store.ListSnapshots(ctx); err != nil {
		return nil, mapError(err, "list snapshots")
	}
	if vol := req.GetSourceVolumeId(); vol != "" {
		kept := snaps[:0:0]
		for _, s := range snaps {
			if c.ids.volumeID(s.Volume) == vol {
				kept = append(kept, s)
			}
		}
		snaps = kept
	}
	items, next := page(snaps, func(s blockstore.SnapshotInfo) uint64 { return uint64(s.ID) }, start, req.GetMaxEntries())
	resp := &csi.ListSnapshotsResponse{}
	for _, s := range items {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: c.snapshot(s)})
	}
	if next != 0 {
		resp.NextToken = c.ids.snapshotID(blockstore.SnapshotID(next))
	}
	return resp, nil
}
