package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/internal/keylock"
	"github.com/dataimage/dataimage/nodevolume"
)

// NodeConfig configures the Node service.
type NodeConfig struct {
	// DefaultFSType is the file system made on a blank mount volume whose capability names
	// none: "ext4" (default) or "xfs".
	DefaultFSType string
}

// nodeServer is the CSI Node service. NodeStageVolume attaches the volume (package nodevolume:
// exported as a block device by the data plane and, for mount access, formatted if blank and
// mounted at the staging path); NodePublishVolume bind-mounts the staging path (or, for block
// access, the device) at the target path. The CSI rules (which path, which capability, access
// modes, error codes) are this file's; the mounts and exports are nodevolume's.
type nodeServer struct {
	csi.UnimplementedNodeServer
	cfg    *Config
	store  dataplane.Store
	ids    ids
	fsType string
	size   sizing
	// vols attaches the volumes, by CSI volume ID (the export id). It adopted at start what the
	// data plane exports (an earlier run of the plugin staged it: its I/O never stopped), and
	// holds the leftovers of an earlier data plane: their devices have no server, so their I/O
	// fails (or, served from caches, seems to work and is lost); they stay, reported
	// INACCESSIBLE, until the kubelet unpublishes and unstages them (nodevolume's doc says why).
	vols *nodevolume.Attacher
	// locks serializes stage, unstage, publish, unpublish and expand per CSI volume ID, across
	// their mounts and file system tools.
	locks keylock.Locks

	checker *poolChecker // the periodic pool check, for volume health; nil: none

	mu        sync.Mutex
	published map[string]map[string]bool // target paths by CSI volume ID; guarded by mu
}

// RegisterNode registers the Node service on s. It adopts the volumes the data plane exports
// (staged by an earlier run of the plugin) and finds what an earlier data plane left
// (nodevolume.New).
func (s *Server) RegisterNode(ctx context.Context, nc NodeConfig) error {
	st, err := s.store.Stats(ctx)
	if err != nil {
		return fmt.Errorf("driver: node: the pool's block size: %w", err)
	}
	n, err := newNodeServer(ctx, &s.cfg, s.store, st.BlockSize, nc)
	if err != nil {
		return err
	}
	n.checker = s.checker
	csi.RegisterNodeServer(s.grpc, n)
	s.node = n
	if s.cfg.Registry != nil {
		s.images = newImages(&s.cfg, s.store, n.vols, st.BlockSize)
		s.controller.images = s.images
	}
	return nil
}

func newNodeServer(ctx context.Context, cfg *Config, store dataplane.Store, blockSize int, nc NodeConfig) (*nodeServer, error) {
	switch nc.DefaultFSType {
	case "":
		nc.DefaultFSType = "ext4"
	case "ext4", "xfs":
	default:
		return nil, fmt.Errorf("driver: node: default fs type %q: want ext4 or xfs", nc.DefaultFSType)
	}
	// The volumes an earlier run of the plugin staged are the data plane's exports still:
	// adopted. Exports an earlier data plane left (it was killed while volumes were staged):
	// their FUSE servers are gone, so they only wait to be unpublished and unstaged.
	vols, err := nodevolume.New(ctx, store, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("driver: node: %w", err)
	}
	for _, at := range vols.All() {
		cfg.Logger.Info("volume staged by an earlier run of the plugin", "volume", at.ID(), "device", at.DevicePath(), "stagedAt", at.MountPoint())
	}
	for _, l := range vols.Leftovers() {
		cfg.Logger.Warn("export left by an earlier data plane; it serves no I/O until unstaged and staged again",
			"volume", l.ID, "devices", l.Devices, "mountedAt", l.MountPoints)
	}
	n := &nodeServer{
		cfg:       cfg,
		store:     store,
		ids:       ids{tag: nodeTag(cfg.NodeID)},
		vols:      vols,
		fsType:    nc.DefaultFSType,
		size:      newSizing(cfg, blockSize),
		published: make(map[string]map[string]bool),
	}
	return n, nil
}

func (n *nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             n.cfg.NodeID,
		MaxVolumesPerNode:  int64(n.cfg.MaxVolumes),
		AccessibleTopology: n.cfg.topology()[0],
	}, nil
}

func (n *nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// volume resolves a CSI volume ID of this node's pool: NOT_FOUND for a malformed, foreign or
// unknown one.
func (n *nodeServer) volume(ctx context.Context, volumeID string) (blockstore.VolumeInfo, error) {
	if volumeID == "" {
		return blockstore.VolumeInfo{}, invalidf("volume_id is required")
	}
	id, err := n.ids.parseVolumeID(volumeID)
	if err != nil {
		return blockstore.VolumeInfo{}, idError(err)
	}
	vol, err := n.store.VolumeInfo(ctx, id)
	if err != nil {
		return blockstore.VolumeInfo{}, mapError(err, "volume %s", volumeID)
	}
	return vol, nil
}

// nodeCapability checks one capability for a node call.
func nodeCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return invalidf("volume_capability is required")
	}
	if err := wellFormedCapability(c); err != nil {
		return status.Errorf(codes.InvalidArgument, "volume_capability: %s", status.Convert(err).Message())
	}
	if why := unsupportedCapability(c); why != "" {
		return invalidf("volume_capability: %s", why)
	}
	return nil
}

func (n *nodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	staging, c := req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case req.GetVolumeId() == "":
		return nil, invalidf("volume_id is required")
	case staging == "":
		return nil, invalidf("staging_target_path is required")
	}
	if err := nodeCapability(c); err != nil {
		return nil, err
	}
	fsType, err := n.stageFSType(c, req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	vol, err := n.volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	unlock, err := n.locks.Lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, ctxError(err)
	}
	defer unlock()
	// Block access: the device alone (NodePublishVolume binds it at the target path).
	spec := nodevolume.Spec{ID: req.GetVolumeId(), Volume: vol.ID}
	if mnt := c.GetMount(); mnt != nil {
		spec.MountPoint, spec.FSType, spec.Format, spec.MountOptions = staging, fsType, true, mnt.GetMountFlags()
	}
	if _, err := n.vols.Attach(ctx, spec); err != nil {
		if errors.Is(err, export.ErrLeftovers) {
			return nil, mapError(err, "volume %s: clear the export an earlier run left (unpublish and unstage the volume first)", req.GetVolumeId())
		}
		return nil, mapError(err, "stage volume %s at %s", req.GetVolumeId(), staging)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// stageFSType picks the file system made on a blank mount volume: the capability's fs_type,
// else the one CreateVolume's parameters named (csi.storage.k8s.io/fstype, passed on in the
// volume context), else the node's default. INVALID_ARGUMENT for a volume context that names
// another file system than ext4 or xfs, or one that the capability contradicts.
func (n *nodeServer) stageFSType(c *csi.VolumeCapability, vc map[string]string) (string, error) {
	ctxFS, err := contextFSType(vc)
	if err != nil {
		return "", err
	}
	fsType := c.GetMount().GetFsType()
	switch {
	case c.GetMount() == nil:
		return "", nil // block access: no file system
	case fsType != "" && ctxFS != "" && fsType != ctxFS:
		return "", invalidf("volume_context: %s %q contradicts volume_capability.mount.fs_type %q", volumeContextFSType, ctxFS, fsType)
	case fsType != "":
		return fsType, nil
	case ctxFS != "":
		return ctxFS, nil
	}
	return n.fsType, nil
}

// lockVolumeID takes the lock of a volume ID of this node's pool (NOT_FOUND for a malformed or
// foreign one), for calls that must work also when the volume is gone from the pool.
func (n *nodeServer) lockVolumeID(ctx context.Context, volumeID string) (unlock func(), err error) {
	if _, err := n.ids.parseVolumeID(volumeID); err != nil {
		return nil, idError(err)
	}
	unlock, err = n.locks.Lock(ctx, volumeID)
	if err != nil {
		return nil, ctxError(err)
	}
	return unlock, nil
}

func (n *nodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	volumeID := req.GetVolumeId()
	if volumeID == "" {
		return nil, invalidf("volume_id is required")
	}
	staging := req.GetStagingTargetPath()
	if staging == "" {
		return nil, invalidf("staging_target_path is required")
	}
	unlock, err := n.lockVolumeID(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.vols.Detach(ctx, volumeID, staging); err != nil {
		return nil, mapError(err, "unstage volume %s from %s", volumeID, staging)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (n *nodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, staging, c := req.GetTargetPath(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case req.GetVolumeId() == "":
		return nil, invalidf("volume_id is required")
	case target == "":
		return nil, invalidf("target_path is required")
	case staging == "":
		return nil, invalidf("staging_target_path is required (the plugin stages volumes)")
	}
	if err := nodeCapability(c); err != nil {
		return nil, err
	}
	if _, err := n.volume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	unlock, err := n.locks.Lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, ctxError(err)
	}
	defer unlock()
	if mounted, err := n.vols.IsMountPoint(target); err != nil {
		return nil, mapError(err, "target_path %s", target)
	} else if mounted {
		return &csi.NodePublishVolumeResponse{}, nil // published already
	}
	if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		if other := n.publishedAt(req.GetVolumeId(), target); other != "" {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s has access mode SINGLE_NODE_SINGLE_WRITER and is published at %s already", req.GetVolumeId(), other)
		}
	}
	readOnly := req.GetReadonly() || c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	var source string
	if c.GetBlock() != nil {
		at, ok := n.vols.Get(req.GetVolumeId())
		if !ok {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", req.GetVolumeId())
		}
		source = at.DevicePath()
	} else {
		if mounted, err := n.vols.IsMountPoint(staging); err != nil || !mounted {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", req.GetVolumeId(), staging)
		}
		source = staging
	}
	if err := n.vols.BindMount(source, target, readOnly); err != nil {
		return nil, mapError(err, "publish volume %s at target_path %s", req.GetVolumeId(), target)
	}
	n.mu.Lock()
	if n.published[req.GetVolumeId()] == nil {
		n.published[req.GetVolumeId()] = make(map[string]bool)
	}
	n.published[req.GetVolumeId()][target] = true
	n.mu.Unlock()
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishedAt returns a target path other than target at which the volume is published, or "".
func (n *nodeServer) publishedAt(volumeID, target string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	for t := range n.published[volumeID] {
		if t != target {
			if mounted, _ := n.vols.IsMountPoint(t); mounted {
				return t
			}
		}
	}
	return ""
}

func (n *nodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	volumeID, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case volumeID == "":
		return nil, invalidf("volume_id is required")
	case target == "":
		return nil, invalidf("target_path is required")
	}
	unlock, err := n.lockVolumeID(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.vols.Unmount(target); err != nil {
		return nil, mapError(err, "unpublish volume %s from target_path %s", volumeID, target)
	}
	n.mu.Lock()
	delete(n.published[volumeID], target)
	if len(n.published[volumeID]) == 0 {
		delete(n.published, volumeID)
	}
	n.mu.Unlock()
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (n *nodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	path := req.GetVolumePath()
	switch {
	case req.GetVolumeId() == "":
		return nil, invalidf("volume_id is required")
	case path == "":
		return nil, invalidf("volume_path is required")
	}
	vol, err := n.volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume_path %s does not exist", path)
	}
	if err != nil {
		return nil, mapError(err, "volume_path %s", path)
	}
	if !fi.IsDir() { // a published block volume
		return &csi.NodeGetVolumeStatsResponse{
			Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: vol.Size}},
		}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, mapError(err, "statfs volume_path %s", path)
	}
	bs := int64(st.Bsize)
	return &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
			{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
		},
	}, nil
}

// NodeGetVolumeHealth reports a volume's health on this node: the pool's (poolHealth), and
// INACCESSIBLE while the volume's export is one an earlier data plane left (its server is
// gone; the file system on it may still answer from caches, but nothing reaches the pool).
func (n *nodeServer) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if _, err := n.volume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	health := poolHealth(ctx, n.store, n.checker)
	_, dead, err := n.vols.Leftover(ctx, req.GetVolumeId())
	if err != nil {
		return nil, mapError(err, "volume %s: its export", req.GetVolumeId())
	}
	if dead {
		health = append(health, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "ExportGone",
			Message: "the volume's block device lost its server when the data plane restarted: unpublish and unstage it, then stage it again",
		})
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{VolumeId: req.GetVolumeId(), HealthStatuses: health}}, nil
}

// NodeExpandVolume grows a staged volume: in the pool first (GrowVolume: O(1), thin) when
// capacity_range.required_bytes is above its size, then its block device, then — for a mount
// volume (its capability says so; without one, a volume_path that is a directory) — its file
// system (resize2fs, xfs_growfs), online.
// Expansion is node-only (the controller service does not offer it), so this is where the
// volume grows. A pool whose over-provisioning bound refuses the new size answers
// RESOURCE_EXHAUSTED; sizes are rounded up to whole blocks; volumes never shrink (a limit_bytes
// below the size is OUT_OF_RANGE). Repeating a call, or calling it after a failure half-way,
// finishes what is left: a volume at the size already is not grown again, and growing a device
// or a file system that has its size is a no-op.
func (n *nodeServer) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	path, volumeID := req.GetVolumePath(), req.GetVolumeId()
	switch {
	case volumeID == "":
		return nil, invalidf("volume_id is required")
	case path == "":
		return nil, invalidf("volume_path is required")
	}
	if _, err := n.volume(ctx, volumeID); err != nil {
		return nil, err
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := nodeCapability(c); err != nil {
			return nil, err
		}
	}
	r := req.GetCapacityRange()
	if err := checkRange(r); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume_path %s does not exist", path)
	} else if err != nil {
		return nil, mapError(err, "volume_path %s", path)
	}
	// The file system grows for a mount volume: the capability says which (the kubelet sends
	// it), else the path does (a mount volume's is a directory, a block volume's the device).
	growFS := fi.IsDir()
	if c := req.GetVolumeCapability(); c != nil {
		growFS = c.GetMount() != nil
	}
	if growFS && !fi.IsDir() {
		return nil, status.Errorf(codes.InvalidArgument, "volume_path %s of mount volume %s is not a directory", path, volumeID)
	}
	unlock, err := n.locks.Lock(ctx, volumeID)
	if err != nil {
		return nil, ctxError(err)
	}
	defer unlock()
	if _, ok := n.vols.Get(volumeID); !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", volumeID)
	}
	vol, err := n.volume(ctx, volumeID) // its size may have changed while we waited
	if err != nil {
		return nil, err
	}
	old := vol.Size
	size := old
	switch {
	case r.GetRequiredBytes() > size:
		if size, err = n.size.volumeSize(r, 0); err != nil {
			return nil, err
		}
		if err := n.store.GrowVolume(ctx, vol.ID, size); err != nil {
			return nil, mapError(err, "grow volume %s from %d to %d bytes", volumeID, old, size)
		}
		n.cfg.Logger.Info("volume grown in the pool", "volume", volumeID, "from", old, "to", size)
	case r.GetLimitBytes() > 0 && size > r.GetLimitBytes():
		return nil, status.Errorf(codes.OutOfRange, "volume %s has %d bytes, more than limit_bytes %d, and cannot shrink", volumeID, size, r.GetLimitBytes())
	}
	fsPath := "" // a block volume: the device only
	if growFS {
		fsPath = path
	}
	if err := n.vols.Resize(ctx, volumeID, fsPath); err != nil {
		return nil, mapError(err, "expand volume %s to %d bytes", volumeID, size)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}
