package driver

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxStringLen is the CSI size limit for string fields ("Size Limits": 128 bytes); names up
// to it must work (csi-sanity creates volumes and snapshots with 128-byte names).
const maxStringLen = 128

// Parameter keys accepted by CreateVolume and GetCapacity: the ones the external-provisioner
// adds with --extra-create-metadata. The StorageClass has no parameters of its own: the file
// system type reaches the driver as VolumeCapability.mount.fs_type (the provisioner turns
// csi.storage.k8s.io/fstype into it).
var volumeParameters = []string{
	"csi.storage.k8s.io/pv/name",
	"csi.storage.k8s.io/pvc/name",
	"csi.storage.k8s.io/pvc/namespace",
}

// fsTypeParameter is the StorageClass parameter that names the file system. The provisioner
// turns it into VolumeCapability.mount.fs_type for CreateVolume, but its capacity controller
// passes the StorageClass's parameters to GetCapacity as they are (external-provisioner v6.3.0
// pkg/capacity/capacity.go), so GetCapacity accepts it too.
const fsTypeParameter = "csi.storage.k8s.io/fstype"

// capacityParameters are the keys GetCapacity accepts.
var capacityParameters = append([]string{fsTypeParameter}, volumeParameters...)

// Parameter keys accepted by CreateSnapshot: the ones the external-snapshotter adds with
// --extra-create-metadata.
var snapshotParameters = []string{
	"csi.storage.k8s.io/volumesnapshot/name",
	"csi.storage.k8s.io/volumesnapshot/namespace",
	"csi.storage.k8s.io/volumesnapshotcontent/name",
}

// fsTypes are the file systems a mount volume may ask for ("" lets the node choose).
var fsTypes = []string{"", "ext4", "xfs"}

// validateName checks a CreateVolume or CreateSnapshot name: required, at most 128 bytes of
// UTF-8, none of the control characters the spec bans (CreateVolumeRequest.name).
func validateName(kind, name string) error {
	switch {
	case name == "":
		return invalidf("%s name is required", kind)
	case len(name) > maxStringLen:
		return invalidf("%s name: %d bytes, at most %d allowed", kind, len(name), maxStringLen)
	case !utf8.ValidString(name):
		return invalidf("%s name %q: not valid UTF-8", kind, name)
	}
	for _, r := range name {
		if r <= 0x08 || r == 0x0b || r == 0x0c || (r >= 0x0e && r <= 0x1f) || (r >= 0x7f && r <= 0x9f) {
			return invalidf("%s name %q: control character %U not allowed", kind, name, r)
		}
	}
	return nil
}

// validateParameters rejects keys not in allowed, naming the first (in sorted order).
func validateParameters(field string, params map[string]string, allowed []string) error {
	var unknown []string
	for k := range params {
		if !slices.Contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return invalidf("%s: unknown key %q (accepted: %s)", field, unknown[0], strings.Join(allowed, ", "))
	}
	return nil
}

// validateCapabilities checks that caps is present and every capability is well-formed
// (INVALID_ARGUMENT otherwise), then that this plugin supports each; unsupported reports why
// a supported one is not (an empty string when all are supported).
func validateCapabilities(caps []*csi.VolumeCapability) (unsupported string, err error) {
	if len(caps) == 0 {
		return "", invalidf("volume_capabilities are required")
	}
	for i, c := range caps {
		if err := wellFormedCapability(c); err != nil {
			return "", status.Errorf(codes.InvalidArgument, "volume_capabilities[%d]: %s", i, status.Convert(err).Message())
		}
	}
	for i, c := range caps {
		if why := unsupportedCapability(c); why != "" {
			return fmt.Sprintf("volume_capabilities[%d]: %s", i, why), nil
		}
	}
	return "", nil
}

// wellFormedCapability checks the fields a capability must have.
func wellFormedCapability(c *csi.VolumeCapability) error {
	switch {
	case c == nil:
		return invalidf("capability is empty")
	case c.GetAccessMode() == nil:
		return invalidf("access_mode is required")
	case c.GetBlock() == nil && c.GetMount() == nil:
		return invalidf("access_type (block or mount) is required")
	}
	return nil
}

// unsupportedCapability says why this plugin cannot serve a well-formed capability, or "".
// Volumes are node-local, so only single-node access modes work; a mount volume may ask for
// ext4, xfs or nothing.
func unsupportedCapability(c *csi.VolumeCapability) string {
	switch m := c.GetAccessMode().GetMode(); m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	default:
		return fmt.Sprintf("access mode %s not supported: volumes are node-local (single-node modes only)", m)
	}
	if mnt := c.GetMount(); mnt != nil && !slices.Contains(fsTypes, mnt.GetFsType()) {
		return fmt.Sprintf("fs_type %q not supported (ext4, xfs or empty)", mnt.GetFsType())
	}
	return ""
}

// requireSupported validates capabilities for CreateVolume: unsupported is INVALID_ARGUMENT
// too ("Invalid or unsupported field in the request").
func requireSupported(caps []*csi.VolumeCapability) error {
	why, err := validateCapabilities(caps)
	if err != nil {
		return err
	}
	if why != "" {
		return invalidf("%s", why)
	}
	return nil
}

// onThisNode reports whether a topology names this node: its only segment is
// TopologyKey = NodeID, the one segment this plugin reports. A topology with other keys
// constrains something this plugin cannot vouch for.
func (cfg *Config) onThisNode(t *csi.Topology) bool {
	seg := t.GetSegments()
	return len(seg) == 1 && seg[cfg.TopologyKey] == cfg.NodeID
}

// checkTopology checks accessibility requirements against this node: if requisite is given it
// must include this node, else RESOURCE_EXHAUSTED (the spec's "Unable to provision in
// accessible_topology"; likewise "Not enough resources to create snapshot" for snapshots).
// Preferred only orders the requisite ones; with no requisite, this node is the only choice.
func (cfg *Config) checkTopology(kind string, req *csi.TopologyRequirement) error {
	requisite := req.GetRequisite()
	if len(requisite) == 0 || slices.ContainsFunc(requisite, cfg.onThisNode) {
		return nil
	}
	return status.Errorf(codes.ResourceExhausted,
		"accessibility_requirements: requisite topologies exclude this node (%s=%s): a %s lives in the pool of the node that creates it",
		cfg.TopologyKey, cfg.NodeID, kind)
}

// topology is the accessible topology of every object of this node's pool.
func (cfg *Config) topology() []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{cfg.TopologyKey: cfg.NodeID}}}
}

// checkRange checks a capacity range's own rules: no negative bytes, limit not below required
// (INVALID_ARGUMENT).
func checkRange(r *csi.CapacityRange) error {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	switch {
	case req < 0:
		return invalidf("capacity_range.required_bytes %d: must not be negative", req)
	case lim < 0:
		return invalidf("capacity_range.limit_bytes %d: must not be negative", lim)
	case lim > 0 && lim < req:
		return invalidf("capacity_range: limit_bytes %d is less than required_bytes %d", lim, req)
	}
	return nil
}

// sizing holds what the capacity rules of a pool need.
type sizing struct {
	blockSize   int64
	maxSize     int64 // largest volume the pool can hold
	defaultSize int64 // size when neither the request nor a source gives one
}

func newSizing(cfg *Config, pool *blockstore.Pool) sizing {
	bs := int64(pool.BlockSize())
	return sizing{blockSize: bs, maxSize: bs << 40, defaultSize: cfg.DefaultVolumeSize}
}

// volumeSize picks the size of a new volume: required_bytes (or, when 0, the source's size, or
// the default size clamped to limit_bytes), at least the source's size, rounded up to the
// block size. OUT_OF_RANGE ("Unsupported capacity_range") when that exceeds limit_bytes — for
// instance a source larger than the limit — or the largest volume. A required_bytes below the
// source's size is satisfied by the source's size (required is a minimum).
// REQUIRES checkRange(r) == nil.
func (s sizing) volumeSize(r *csi.CapacityRange, srcSize int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	size := req
	if size == 0 {
		size = srcSize
		if size == 0 {
			size = s.defaultSize
			if lim > 0 && size > lim {
				size = lim / s.blockSize * s.blockSize // the largest whole-block size in range
			}
		}
	}
	size = max(size, srcSize)
	if size > s.maxSize {
		return 0, status.Errorf(codes.OutOfRange, "capacity_range: %d bytes exceeds the largest volume of this pool (%d bytes)", size, s.maxSize)
	}
	size = (size + s.blockSize - 1) / s.blockSize * s.blockSize
	switch {
	case size == 0:
		return 0, status.Errorf(codes.OutOfRange, "capacity_range: limit_bytes %d is less than one block (%d bytes)", lim, s.blockSize)
	case lim > 0 && srcSize > lim:
		return 0, status.Errorf(codes.OutOfRange, "capacity_range: limit_bytes %d is less than the source's %d bytes", lim, srcSize)
	case lim > 0 && size > lim:
		return 0, status.Errorf(codes.OutOfRange, "capacity_range: no multiple of the block size %d lies between %d and %d bytes", s.blockSize, req, lim)
	}
	return size, nil
}

// fits reports whether an existing size satisfies a capacity range.
func fits(size int64, r *csi.CapacityRange) bool {
	return size >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size <= r.GetLimitBytes())
}
