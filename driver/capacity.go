package driver

import (
	"context"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// GetCapacity reports what this node's thin pool can still provision.
//
//   - available_capacity: free physical bytes × the over-provisioning ratio, bounded by the
//     provisioning limit left (limit − sum of volume sizes); never negative.
//   - maximum_volume_size: the provisioning limit left, bounded by the largest volume the pool
//     can hold, in whole blocks (a new volume is checked against the limit, not free space).
//   - minimum_volume_size: one block.
//
// accessible_topology other than this node's segment gets 0 (the segment is another node's,
// served by that node's plugin). Parameters are validated like CreateVolume's (unknown keys
// are INVALID_ARGUMENT; the provisioner's capacity controller passes the StorageClass's on as
// they are), except that a csi.storage.k8s.io/fstype other than ext4 or xfs gets 0, and so do
// capabilities this plugin cannot serve (multi-node access modes, other file systems): no
// volume with them can be provisioned anywhere here.
func (c *controllerServer) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if err := validateParameters("parameters", req.GetParameters(), volumeParameters, volumeParametersRule); err != nil {
		return nil, err
	}
	if fs, ok := req.GetParameters()[fsTypeParameter]; ok && !slices.Contains(fsTypes, fs) {
		return &csi.GetCapacityResponse{}, nil // no volume with that file system can be made here
	}
	if len(req.GetVolumeCapabilities()) > 0 {
		why, err := validateCapabilities(req.GetVolumeCapabilities())
		if err != nil {
			return nil, err
		}
		if why != "" {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	if t := req.GetAccessibleTopology(); t != nil && !c.cfg.onThisNode(t) {
		return &csi.GetCapacityResponse{}, nil
	}

	st, err := c.store.Stats(ctx)
	if err != nil {
		return nil, mapError(err, "the pool's space")
	}
	left := max(st.ProvisionLimit-st.ProvisionedBytes, 0)
	avail := min(int64(float64(st.FreeBytes)*st.OverProvisionRatio), left)
	maxVol := min(left, c.size.maxSize) / c.size.blockSize * c.size.blockSize
	return &csi.GetCapacityResponse{
		AvailableCapacity: max(avail, 0),
		MaximumVolumeSize: wrapperspb.Int64(maxVol),
		MinimumVolumeSize: wrapperspb.Int64(c.size.blockSize),
	}, nil
}
