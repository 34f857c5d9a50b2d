package driver

import (
	"context"
	"errors"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
)

// Pagination. Lists are ordered by block store ID, and IDs are never reused, so a page ends
// at an ID and next_token is the CSI ID of the first entry of the next page: the next call
// starts at the first entry whose ID is at least that one. Objects created or deleted between
// calls cannot shift the pages (a deleted token entry is simply skipped; new objects have
// higher IDs and appear at the end). A token this plugin could not have issued — malformed, of
// another kind or another node — is ABORTED.

// pageStart validates max_entries and decodes starting_token into the first ID to list (0
// when no token is given).
func (c *controllerServer) pageStart(maxEntries int32, token, prefix string) (uint64, error) {
	if maxEntries < 0 {
		return 0, invalidf("max_entries %d: must not be negative", maxEntries)
	}
	if token == "" {
		return 0, nil
	}
	var id uint64
	var err error
	if prefix == snapshotIDPrefix {
		var s blockstore.SnapshotID
		s, err = c.ids.parseSnapshotID(token)
		id = uint64(s)
	} else {
		var v blockstore.VolumeID
		v, err = c.ids.parseVolumeID(token)
		id = uint64(v)
	}
	if err == nil && id == 0 {
		err = errors.New("ID 0 is never issued")
	}
	if err != nil {
		return 0, tokenError(token, err)
	}
	return id, nil
}

// page returns the items (sorted by id) from the first with id >= start, at most maxEntries of
// them (0: all), and the id of the first item left over (0: none).
func page[T any](items []T, id func(T) uint64, start uint64, maxEntries int32) (out []T, next uint64) {
	i := sort.Search(len(items), func(i int) bool { return id(items[i]) >= start })
	items = items[i:]
	if maxEntries > 0 && len(items) > int(maxEntries) {
		return items[:maxEntries], id(items[maxEntries])
	}
	return items, 0
}

// ListVolumes lists the pool's volumes by ID.
func (c *controllerServer) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	start, err := c.pageStart(req.GetMaxEntries(), req.GetStartingToken(), volumeIDPrefix)
	if err != nil {
		return nil, err
	}
	vols, err := c.store.ListVolumes(ctx)
	if err != nil {
		return nil, mapError(err, "list volumes")
	}
	items, next := page(vols, volumeKey, start, req.GetMaxEntries())
	resp := &csi.ListVolumesResponse{}
	for _, v := range items {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: c.volume(v, nil, nil)})
	}
	if next != 0 {
		resp.NextToken = c.ids.volumeID(blockstore.VolumeID(next))
	}
	return resp, nil
}

func volumeKey(v blockstore.VolumeInfo) uint64 { return uint64(v.ID) }

// poolHealth is the health every volume of the pool shares, as the controller sees it: none
// reported when the pool works; DEGRADED "PoolFailed" when an earlier write or sync failed
// (the pool refuses changes and writes until the data plane restarts and reopens it, which
// recovers the last durable state); INACCESSIBLE "PoolClosed" once the pool is closed;
// INACCESSIBLE "DataPlaneUnavailable" while the data plane does not answer; DEGRADED
// "PoolCheckFailed" when the last periodic check of the pool found problems (chk, nil if none
// runs). It asks the pool's Health and the last check's outcome, and does no I/O.
func poolHealth(ctx context.Context, store dataplane.Volumes, chk *poolChecker) []*csi.VolumeHealth_VolumeHealthEntry {
	err := store.Health(ctx)
	switch {
	case err == nil:
		if h := chk.health(); h != nil {
			return []*csi.VolumeHealth_VolumeHealthEntry{h}
		}
		return nil
	case errors.Is(err, blockstore.ErrClosed):
		return []*csi.VolumeHealth_VolumeHealthEntry{{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "PoolClosed",
			Message: "the node's pool is closed: " + err.Error(),
		}}
	case errors.Is(err, dataplane.ErrUnavailable):
		return []*csi.VolumeHealth_VolumeHealthEntry{{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "DataPlaneUnavailable",
			Message: "the node's data plane does not answer: " + err.Error(),
		}}
	default:
		return []*csi.VolumeHealth_VolumeHealthEntry{{
			Status: csi.VolumeHealthErrorType_DEGRADED, Reason: "PoolFailed",
			Message: "the node's pool refuses writes until the data plane restarts and recovers it: " + err.Error(),
		}}
	}
}

// ControllerGetVolumeHealth reports a volume's health (poolHealth).
func (c *controllerServer) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidf("volume_id is required")
	}
	if _, err := c.lookupVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{
		VolumeId:       req.GetVolumeId(),
		HealthStatuses: poolHealth(ctx, c.store, c.checker),
	}}, nil
}

// ControllerListVolumeHealth lists the volumes with an adverse health condition (the spec
// lists abnormal entries only): none while the pool works, all of them otherwise, paginated
// like ListVolumes.
func (c *controllerServer) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	start, err := c.pageStart(req.GetMaxEntries(), req.GetStartingToken(), volumeIDPrefix)
	if err != nil {
		return nil, err
	}
	health := poolHealth(ctx, c.store, c.checker)
	resp := &csi.ControllerListVolumeHealthResponse{}
	if health == nil {
		return resp, nil
	}
	vols, err := c.store.ListVolumes(ctx)
	if err != nil {
		return nil, mapError(err, "list volumes")
	}
	items, next := page(vols, volumeKey, start, req.GetMaxEntries())
	for _, v := range items {
		resp.Entries = append(resp.Entries, &csi.VolumeHealth{VolumeId: c.ids.volumeID(v.ID), HealthStatuses: health})
	}
	if next != 0 {
		resp.NextToken = c.ids.volumeID(blockstore.VolumeID(next))
	}
	return resp, nil
}
