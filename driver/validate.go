package driver

import (
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxStringLen is the CSI size limit for string fields ("Size Limits": 128 bytes); names up
// to it must work (csi-sanity creates volumes and snapshots with 128-byte names).
const maxStringLen = 128

// The parameters of CreateVolume, ValidateVolumeCapabilities and GetCapacity are a
// StorageClass's, as the CO passes them. Kubernetes' external-provisioner strips the reserved
// csi.storage.k8s.io/ keys it understands (the file system type, which it turns into
// VolumeCapability.mount.fs_type, and the secret references) and adds the PV/PVC metadata
// keys (--extra-create-metadata); its capacity controller passes the StorageClass's parameters
// to GetCapacity as they are; other COs pass them as given. So the plugin accepts every
// reserved key a CO may pass — the keys external-provisioner's removePrefixedParameters
// accepts (kubernetes-csi/external-provisioner pkg/controller/controller.go) and the metadata
// keys — honours the file system type, ignores the others (the plugin takes no secrets and
// needs no names), and refuses every other key, naming it.
const (
	// fsTypeParameter names the file system made on a blank mount volume whose capability
	// names none: ext4 or xfs.
	fsTypeParameter = "csi.storage.k8s.io/fstype"
	// reservedPrefix starts the keys Kubernetes reserves for the CO's own parameters.
	reservedPrefix = "csi.storage.k8s.io/"
)

// volumeParameters are the keys CreateVolume, ValidateVolumeCapabilities and GetCapacity
// accept: the file system type, the PV/PVC metadata and the secret references.
var volumeParameters = append([]string{
	fsTypeParameter,
	reservedPrefix + "pv/name",
	reservedPrefix + "pvc/name",
	reservedPrefix + "pvc/namespace",
}, secretReferences(
	"", // the default secret: csi.storage.k8s.io/secret-name, -namespace
	"provisioner-",
	"controller-publish-",
	"node-stage-",
	"node-publish-",
	"controller-expand-",
	"node-expand-",
)...)

// volumeParametersRule describes volumeParameters in refusals.
const volumeParametersRule = "accepted: " + fsTypeParameter + " (ext4 or xfs), the metadata keys " +
	reservedPrefix + "pv/name, pvc/name, pvc/namespace, and the secret references " +
	reservedPrefix + "[provisioner-|controller-publish-|node-stage-|node-publish-|controller-expand-|node-expand-]secret-name and -namespace"

// snapshotParameters are the keys CreateSnapshot accepts: the ones the external-snapshotter
// adds with --extra-create-metadata, and the secret references it strips (which other COs may
// pass as given).
var snapshotParameters = append([]string{
	reservedPrefix + "volumesnapshot/name",
	reservedPrefix + "volumesnapshot/namespace",
	reservedPrefix + "volumesnapshotcontent/name",
}, secretReferences("snapshotter-", "snapshotter-list-")...)

// snapshotParametersRule describes snapshotParameters in refusals.
const snapshotParametersRule = "accepted: the metadata keys " + reservedPrefix +
	"volumesnapshot/name, volumesnapshot/namespace, volumesnapshotcontent/name, and the secret references " +
	reservedPrefix + "snapshotter-[list-]secret-name and -namespace"

// secretReferences returns the keys csi.storage.k8s.io/<kind>secret-name and -namespace.
func secretReferences(kinds ...string) []string {
	var keys []string
	for _, k := range kinds {
		keys = append(keys, reservedPrefix+k+"secret-name", reservedPrefix+k+"secret-namespace")
	}
	return keys
}

// noMutableParameters is the rule for mutable_parameters (ControllerModifyVolume is not
// offered: the pool has no mutable volume attributes).
const noMutableParameters = "this plugin has no mutable parameters"

// fsTypes are the file systems a mount volume may ask for ("" lets the node choose).
var fsTypes = []string{"", "ext4", "xfs"}

// volumeContextFSType is the key of the volume context CreateVolume returns when its parameters
// name a file system (fsTypeParameter): the CO passes the volume context to NodeStageVolume,
// which makes that file system on a blank volume whose capability names none.
const volumeContextFSType = "csi.dataimage.io/fstype"

// parameterFSType returns the file system that CreateVolume's parameters name ("" for none),
// checking it against the mount capabilities: INVALID_ARGUMENT for a file system other than
// ext4 or xfs, or one that a capability's fs_type contradicts.
func parameterFSType(params map[string]string, caps []*csi.VolumeCapability) (string, error) {
	fs := params[fsTypeParameter]
	if !slices.Contains(fsTypes, fs) {
		return "", invalidf("parameters: %s %q: want ext4 or xfs", fsTypeParameter, fs)
	}
	for i, c := range caps {
		if want := c.GetMount().GetFsType(); fs != "" && want != "" && want != fs {
			return "", invalidf("parameters: %s %q contradicts volume_capabilities[%d].mount.fs_type %q", fsTypeParameter, fs, i, want)
		}
	}
	return fs, nil
}

// volumeContext is the volume context of a volume created with a file system named in its
// parameters (nil without one).
func volumeContext(fsType string) map[string]string {
	if fsType == "" {
		return nil
	}
	return map[string]string{volumeContextFSType: fsType}
}

// contextFSType returns the file system a volume context names ("" for none): INVALID_ARGUMENT
// for one other than ext4 or xfs. Other keys are left alone: a CO may add its own.
func contextFSType(vc map[string]string) (string, error) {
	fs := vc[volumeContextFSType]
	if !slices.Contains(fsTypes, fs) {
		return "", invalidf("volume_context: %s %q: want ext4 or xfs", volumeContextFSType, fs)
	}
	return fs, nil
}

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

// validateParameters rejects keys not in allowed, naming the first (in sorted order) and the
// rule (what is accepted).
func validateParameters(field string, params map[string]string, allowed []string, rule string) error {
	var unknown []string
	for k := range params {
		if !slices.Contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return invalidf("%s: unknown key %q (%s)", field, unknown[0], rule)
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

func newSizing(cfg *Config, blockSize int) sizing {
	bs := int64(blockSize)
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
