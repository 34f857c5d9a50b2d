package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/internal/keylock"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// controllerServer is the CSI Controller service of one node's pool.
//
// Not implemented (and not advertised), so answered UNIMPLEMENTED by the embedded
// UnimplementedControllerServer: ControllerPublishVolume / ControllerUnpublishVolume (a
// node-local volume has no attach step), ControllerModifyVolume (the pool has no mutable
// volume attributes — no QoS, no tiers — so there is nothing a VolumeAttributesClass could
// change), ControllerExpandVolume (expansion is node-only: NodeExpandVolume grows the volume in
// the pool, then its file system. The external-resizer, which calls ControllerExpandVolume,
// talks to one CSI endpoint and cannot reach the pool of each node; in Kubernetes the DataImage
// controller's resizer updates the PV and the kubelet calls NodeExpandVolume on the volume's
// node).
type controllerServer struct {
	csi.UnimplementedControllerServer

	cfg   *Config
	store dataplane.Volumes
	ids   ids
	// locks serializes the operations on one key — a CSI name while it is being created, or an
	// object's ID while it is being changed — and lets operations on different keys run in
	// parallel: there is no lock around RPCs as a whole. A waiter gives up when its context
	// ends. Keys: "volume-name/<name>" for CreateVolume, "snapshot-name/<name>" for
	// CreateSnapshot, "volume/<id>" for DeleteVolume, "snapshot/<id>" for DeleteSnapshot. A lock
	// is held across the block store call that makes the change durable and nothing else slow
	// (no exec, mount or network). The Node service has its own, by CSI volume ID.
	locks   keylock.Locks
	size    sizing
	checker *poolChecker // the periodic pool check, for volume health; nil: none
	// images pulls the images of snapshot handles this pool lacks (images.go); nil: no
	// registry, or no Node service yet.
	images *images
}

func newControllerServer(cfg *Config, store dataplane.Volumes, blockSize int) *controllerServer {
	return &controllerServer{
		cfg:   cfg,
		store: store,
		ids:   ids{tag: nodeTag(cfg.NodeID)},
		size:  newSizing(cfg, blockSize),
	}
}

// controllerCapabilities is exactly what this service implements.
var controllerCapabilities = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
}

func (c *controllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	resp := &csi.ControllerGetCapabilitiesResponse{}
	for _, t := range controllerCapabilities {
		resp.Capabilities = append(resp.Capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}},
		})
	}
	return resp, nil
}

// volume is the CSI description of a volume of this pool, with the volume context vc.
func (c *controllerServer) volume(info blockstore.VolumeInfo, src *csi.VolumeContentSource, vc map[string]string) *csi.Volume {
	return &csi.Volume{
		VolumeId:           c.ids.volumeID(info.ID),
		CapacityBytes:      info.Size,
		VolumeContext:      vc,
		ContentSource:      src,
		AccessibleTopology: c.cfg.topology(),
	}
}

// lookupVolume finds a volume by CSI ID: NOT_FOUND for an ID that is malformed, another
// node's, or unknown.
func (c *controllerServer) lookupVolume(ctx context.Context, volumeID string) (blockstore.VolumeInfo, error) {
	id, err := c.ids.parseVolumeID(volumeID)
	if err != nil {
		return blockstore.VolumeInfo{}, idError(err)
	}
	info, err := c.store.VolumeInfo(ctx, id)
	return info, mapError(err, "volume %s", volumeID)
}

// CreateVolume creates an empty volume, a clone of a snapshot or a clone of a volume (both
// O(1)), idempotently by name. Parameters that name a file system (csi.storage.k8s.io/fstype)
// come back in the volume context, for NodeStageVolume; the pool does not store them, so a
// repeated call answers with its own.
func (c *controllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if err := validateName("volume", name); err != nil {
		return nil, err
	}
	if err := requireSupported(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if err := validateParameters("parameters", req.GetParameters(), volumeParameters, volumeParametersRule); err != nil {
		return nil, err
	}
	fsType, err := parameterFSType(req.GetParameters(), req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	vc := volumeContext(fsType)
	if err := validateParameters("mutable_parameters", req.GetMutableParameters(), nil, noMutableParameters); err != nil {
		return nil, err
	}
	if err := checkRange(req.GetCapacityRange()); err != nil {
		return nil, err
	}
	src := req.GetVolumeContentSource()
	if src != nil && src.GetSnapshot() == nil && src.GetVolume() == nil {
		return nil, invalidf("volume_content_source: neither a snapshot nor a volume")
	}
	if err := c.cfg.checkTopology("volume", req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}

	unlock, err := c.locks.Lock(ctx, "volume-name/"+name)
	if err != nil {
		return nil, ctxError(err)
	}
	defer unlock()

	existing, err := c.store.LookupVolume(ctx, name)
	if err == nil {
		if err := c.compatible(ctx, existing, req); err != nil {
			return nil, err
		}
		return &csi.CreateVolumeResponse{Volume: c.volume(existing, src, vc)}, nil
	}
	if !errors.Is(err, blockstore.ErrNotFound) {
		return nil, mapError(err, "volume name %q", name)
	}

	var info blockstore.VolumeInfo
	switch {
	case src.GetSnapshot() != nil:
		snapID := src.GetSnapshot().GetSnapshotId()
		snap, err := c.lookupSnapshot(ctx, snapID)
		if status.Code(err) == codes.NotFound && c.images != nil {
			// Another node's image, or one this pool lost: from the registry.
			snap, err = c.images.clonable(ctx, snapID)
		}
		if err != nil {
			return nil, err
		}
		size, err := c.size.volumeSize(req.GetCapacityRange(), snap.Size)
		if err != nil {
			return nil, err
		}
		info, err = c.store.Clone(ctx, snap.ID, name, size)
		if err != nil {
			return nil, mapError(err, "volume %q from snapshot %s", name, snapID)
		}
	case src.GetVolume() != nil:
		srcID := src.GetVolume().GetVolumeId()
		vol, err := c.lookupVolume(ctx, srcID)
		if err != nil {
			return nil, err
		}
		size, err := c.size.volumeSize(req.GetCapacityRange(), vol.Size)
		if err != nil {
			return nil, err
		}
		info, err = c.store.CloneVolume(ctx, vol.ID, name, size)
		if err != nil {
			return nil, mapError(err, "volume %q from volume %s", name, srcID)
		}
	default:
		size, err := c.size.volumeSize(req.GetCapacityRange(), 0)
		if err != nil {
			return nil, err
		}
		info, err = c.store.CreateVolume(ctx, name, size)
		if err != nil {
			return nil, mapError(err, "volume %q", name)
		}
	}
	return &csi.CreateVolumeResponse{Volume: c.volume(info, src, vc)}, nil
}

// origin returns the snapshot of this pool a clone of snapshot handle is made from: the
// handle's own, or the image it names in the registry once pulled here.
//
// A clone records its origin's number, which outlives the snapshot: a handle of this pool whose
// snapshot is gone still matches by number, unless its clone came from the registry.
func (c *controllerServer) origin(ctx context.Context, handle string) (blockstore.SnapshotID, error) {
	ref, perr := c.ids.parseSnapshotHandle(handle)
	if perr == nil {
		info, err := c.store.SnapshotInfo(ctx, ref.id)
		if c.images == nil || err == nil && ref.names(info) {
			return ref.id, nil
		}
	}
	if c.images != nil {
		if d, err := c.images.digest(ctx, handle); err == nil {
			if info, held, err := c.images.held(ctx, d); err == nil && held {
				return info.ID, nil
			}
		}
	}
	return ref.id, perr
}

// compatible checks a volume found by name against a repeated CreateVolume: ALREADY_EXISTS
// unless its size fits the capacity range and its content source matches. The pool stores the
// name, size and origin snapshot of a volume, so that is what can be compared: capabilities
// and parameters are validated but not stored (every volume supports every capability this
// plugin accepts). A clone of a volume records the source volume's own origin, so a volume
// source matches when the origins agree; a source volume deleted since cannot be compared and
// is taken as matching.
func (c *controllerServer) compatible(ctx context.Context, existing blockstore.VolumeInfo, req *csi.CreateVolumeRequest) error {
	id := c.ids.volumeID(existing.ID)
	if !fits(existing.Size, req.GetCapacityRange()) {
		return status.Errorf(codes.AlreadyExists, "volume %q exists (%s) with %d bytes, outside capacity_range [%d, %d]",
			req.GetName(), id, existing.Size, req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
	}
	src := req.GetVolumeContentSource()
	var want blockstore.SnapshotID // the origin the request implies
	switch {
	case src.GetSnapshot() != nil:
		snapID, err := c.origin(ctx, src.GetSnapshot().GetSnapshotId())
		if err != nil {
			return status.Errorf(codes.AlreadyExists, "volume %q exists (%s), not cloned from snapshot %q", req.GetName(), id, src.GetSnapshot().GetSnapshotId())
		}
		want = snapID
	case src.GetVolume() != nil:
		srcID, err := c.ids.parseVolumeID(src.GetVolume().GetVolumeId())
		if err != nil {
			return status.Errorf(codes.AlreadyExists, "volume %q exists (%s), not cloned from volume %q", req.GetName(), id, src.GetVolume().GetVolumeId())
		}
		srcInfo, err := c.store.VolumeInfo(ctx, srcID)
		if errors.Is(err, blockstore.ErrNotFound) {
			return nil
		}
		if err != nil {
			return mapError(err, "volume %s", src.GetVolume().GetVolumeId())
		}
		want = srcInfo.Origin
	}
	if existing.Origin != want {
		return status.Errorf(codes.AlreadyExists, "volume %q exists (%s) with another content source (origin snapshot %d, request implies %d)",
			req.GetName(), id, existing.Origin, want)
	}
	return nil
}

// DeleteVolume deletes a volume; its snapshots and clones keep their data. Deleting a volume
// that does not exist succeeds, and so does an ID that cannot name any volume of any node
// (csi-sanity: "should succeed when an invalid volume id is used"). A well-formed ID of
// another node's pool is NOT_FOUND: claiming to have deleted it would leak it.
func (c *controllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	volumeID := req.GetVolumeId()
	if volumeID == "" {
		return nil, invalidf("volume_id is required")
	}
	id, err := c.ids.parseVolumeID(volumeID)
	switch {
	case errors.Is(err, errMalformedID):
		return &csi.DeleteVolumeResponse{}, nil
	case err != nil:
		return nil, idError(err)
	}
	unlock, err := c.locks.Lock(ctx, "volume/"+strconv.FormatUint(uint64(id), 10))
	if err != nil {
		return nil, ctxError(err)
	}
	defer unlock()
	if err := c.store.DeleteVolume(ctx, id); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
		return nil, mapError(err, "delete volume %s", volumeID)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms capabilities, volume context and parameters a volume
// can serve; unsupported ones leave confirmed unset and say why in message.
func (c *controllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidf("volume_id is required")
	}
	why, err := validateCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	if _, err := c.lookupVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	if why == "" {
		why = c.whyNotConfirmed(req)
	}
	if why != "" {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: why}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// whyNotConfirmed checks ValidateVolumeCapabilities' parameters and volume context: what
// CreateVolume accepts and returns (the file system of csi.storage.k8s.io/fstype, in the
// context as csi.dataimage.io/fstype), agreeing with each other and the capabilities. It says
// why not, or "".
func (c *controllerServer) whyNotConfirmed(req *csi.ValidateVolumeCapabilitiesRequest) string {
	if err := validateParameters("parameters", req.GetParameters(), volumeParameters, volumeParametersRule); err != nil {
		return status.Convert(err).Message()
	}
	fsType, err := parameterFSType(req.GetParameters(), req.GetVolumeCapabilities())
	if err != nil {
		return status.Convert(err).Message()
	}
	if err := validateParameters("mutable_parameters", req.GetMutableParameters(), nil, noMutableParameters); err != nil {
		return status.Convert(err).Message()
	}
	vc := req.GetVolumeContext()
	if err := validateParameters("volume_context", vc, []string{volumeContextFSType}, "CreateVolume returns only "+volumeContextFSType); err != nil {
		return status.Convert(err).Message()
	}
	ctxFS, err := contextFSType(vc)
	if err != nil {
		return status.Convert(err).Message()
	}
	if ctxFS != "" && fsType != "" && ctxFS != fsType {
		return fmt.Sprintf("volume_context: %s %q contradicts parameters: %s %q", volumeContextFSType, ctxFS, fsTypeParameter, fsType)
	}
	for i, vcap := range req.GetVolumeCapabilities() {
		if want := vcap.GetMount().GetFsType(); ctxFS != "" && want != "" && want != ctxFS {
			return fmt.Sprintf("volume_context: %s %q contradicts volume_capabilities[%d].mount.fs_type %q", volumeContextFSType, ctxFS, i, want)
		}
	}
	return ""
}

// ControllerGetVolume describes a volume. Status carries no published nodes
// (LIST_VOLUMES_PUBLISHED_NODES is not advertised: there is no controller publish step), and
// CSI 1.13 removed the volume condition: health is ControllerGetVolumeHealth's.
func (c *controllerServer) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidf("volume_id is required")
	}
	info, err := c.lookupVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: c.volume(info, nil, nil),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
}
