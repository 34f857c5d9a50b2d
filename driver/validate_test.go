package driver

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
)

// TestValidationCodes asserts the gRPC code of every request the controller refuses.
func TestValidationCodes(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	vol := mustCreateVolume(t, c, "existing", 4*mib)
	snap := mustCreateSnapshot(t, c, "existing-snap", vol.GetVolumeId())
	other := ids{tag: nodeTag(otherNode)}
	foreignVol := other.volumeID(1)
	foreignSnap := other.snapshotID(1)
	unknownVol := c.ids.volumeID(999)
	unknownSnap := c.ids.snapshotID(999)
	thisNode := &csi.Topology{Segments: map[string]string{DefaultTopologyKey: testNode}}
	elsewhere := &csi.Topology{Segments: map[string]string{DefaultTopologyKey: otherNode}}

	create := func(mut func(*csi.CreateVolumeRequest)) func() error {
		return func() error {
			req := createReq("new-volume", 4*mib)
			mut(req)
			_, err := c.CreateVolume(ctx, req)
			return err
		}
	}
	withCaps := func(caps ...*csi.VolumeCapability) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = caps }
	}
	withRange := func(req, lim int64) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}
		}
	}
	fromSnap := func(id string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
		}
	}
	fromVol := func(id string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
		}
	}
	snapshot := func(name, src string, params map[string]string, topo *csi.TopologyRequirement) func() error {
		return func() error {
			_, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src, Parameters: params, AccessibilityRequirements: topo})
			return err
		}
	}
	expand := func(id string, r *csi.CapacityRange, vc *csi.VolumeCapability) func() error {
		return func() error {
			_, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: r, VolumeCapability: vc})
			return err
		}
	}
	validate := func(id string, caps ...*csi.VolumeCapability) func() error {
		return func() error {
			_, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: caps})
			return err
		}
	}
	getVol := func(id string) func() error {
		return func() error {
			_, err := c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
			return err
		}
	}
	getSnap := func(id string) func() error {
		return func() error { _, err := c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: id}); return err }
	}
	health := func(id string) func() error {
		return func() error {
			_, err := c.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
			return err
		}
	}
	mode := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability { return mountCap(m, "") }

	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		// CreateVolume: request shape.
		{"create: missing name", create(func(r *csi.CreateVolumeRequest) { r.Name = "" }), codes.InvalidArgument},
		{"create: name too long", create(func(r *csi.CreateVolumeRequest) { r.Name = strings.Repeat("n", 129) }), codes.InvalidArgument},
		{"create: name with control character", create(func(r *csi.CreateVolumeRequest) { r.Name = "a\x01b" }), codes.InvalidArgument},
		{"create: name not UTF-8", create(func(r *csi.CreateVolumeRequest) { r.Name = "a\xffb" }), codes.InvalidArgument},
		{"create: missing capabilities", create(withCaps()), codes.InvalidArgument},
		{"create: nil capability", create(withCaps(nil)), codes.InvalidArgument},
		{"create: missing access mode", create(withCaps(&csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}})), codes.InvalidArgument},
		{"create: missing access type", create(withCaps(&csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo}})), codes.InvalidArgument},
		{"create: unknown access mode", create(withCaps(mode(csi.VolumeCapability_AccessMode_UNKNOWN))), codes.InvalidArgument},
		{"create: multi-node reader", create(withCaps(mode(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY))), codes.InvalidArgument},
		{"create: multi-node single writer", create(withCaps(mode(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER))), codes.InvalidArgument},
		{"create: multi-node multi writer", create(withCaps(blockCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER))), codes.InvalidArgument},
		{"create: one bad capability of two", create(withCaps(mountCap(rwo, "ext4"), mountCap(rwo, "btrfs"))), codes.InvalidArgument},
		{"create: bad fs type", create(withCaps(mountCap(rwo, "ntfs"))), codes.InvalidArgument},
		{"create: unknown parameter", create(func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"csi.storage.k8s.io/pvc/name": "x", "fsType": "ext4"}
		}), codes.InvalidArgument},
		{"create: mutable parameters", create(func(r *csi.CreateVolumeRequest) { r.MutableParameters = map[string]string{"iops": "10"} }), codes.InvalidArgument},
		{"create: empty content source", create(func(r *csi.CreateVolumeRequest) { r.VolumeContentSource = &csi.VolumeContentSource{} }), codes.InvalidArgument},
		// CreateVolume: capacity rules.
		{"create: negative required", create(withRange(-1, 0)), codes.InvalidArgument},
		{"create: negative limit", create(withRange(0, -1)), codes.InvalidArgument},
		{"create: limit below required", create(withRange(8*mib, 4*mib)), codes.InvalidArgument},
		{"create: no block between required and limit", create(withRange(4*mib+1, 4*mib+100)), codes.OutOfRange},
		{"create: limit below one block", create(withRange(0, 100)), codes.OutOfRange},
		{"create: larger than the largest volume", create(withRange(1<<62, 0)), codes.OutOfRange},
		{"create: past the over-provisioning limit", create(withRange(64<<30, 0)), codes.ResourceExhausted},
		{"create: snapshot source larger than limit", create(func(r *csi.CreateVolumeRequest) {
			fromSnap(snap.GetSnapshotId())(r)
			withRange(0, 2*mib)(r)
		}), codes.OutOfRange},
		{"create: volume source larger than limit", create(func(r *csi.CreateVolumeRequest) {
			fromVol(vol.GetVolumeId())(r)
			withRange(mib, 2*mib)(r)
		}), codes.OutOfRange},
		// CreateVolume: sources.
		{"create: malformed snapshot source", create(fromSnap("non-existing-snapshot-id")), codes.NotFound},
		{"create: unknown snapshot source", create(fromSnap(unknownSnap)), codes.NotFound},
		{"create: other node's snapshot source", create(fromSnap(foreignSnap)), codes.NotFound},
		{"create: malformed volume source", create(fromVol("fake-vol-id-0123456789")), codes.NotFound},
		{"create: unknown volume source", create(fromVol(unknownVol)), codes.NotFound},
		{"create: other node's volume source", create(fromVol(foreignVol)), codes.NotFound},
		// CreateVolume: topology.
		{"create: requisite excludes this node", create(func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{elsewhere}, Preferred: []*csi.Topology{elsewhere}}
		}), codes.ResourceExhausted},
		{"create: requisite with an unknown key", create(func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{"zone": "a"}}}}
		}), codes.ResourceExhausted},
		// CreateVolume: existing name, incompatible.
		{"create: existing name, larger size", create(func(r *csi.CreateVolumeRequest) { r.Name = "existing"; withRange(8*mib, 0)(r) }), codes.AlreadyExists},
		{"create: existing name, smaller limit", create(func(r *csi.CreateVolumeRequest) { r.Name = "existing"; withRange(mib, 2*mib)(r) }), codes.AlreadyExists},
		{"create: existing name, now from a snapshot", create(func(r *csi.CreateVolumeRequest) { r.Name = "existing"; fromSnap(snap.GetSnapshotId())(r) }), codes.AlreadyExists},

		// DeleteVolume.
		{"delete volume: missing ID", func() error { _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{}); return err }, codes.InvalidArgument},
		{"delete volume: other node's ID", func() error {
			_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: foreignVol})
			return err
		}, codes.NotFound},

		// ValidateVolumeCapabilities.
		{"validate: missing ID", validate("", mountCap(rwo, "")), codes.InvalidArgument},
		{"validate: missing capabilities", validate(vol.GetVolumeId()), codes.InvalidArgument},
		{"validate: capability without access mode", validate(vol.GetVolumeId(), &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}), codes.InvalidArgument},
		{"validate: malformed ID", validate("fake-vol-id", mountCap(rwo, "")), codes.NotFound},
		{"validate: other node's ID", validate(foreignVol, mountCap(rwo, "")), codes.NotFound},
		{"validate: unknown ID", validate(unknownVol, mountCap(rwo, "")), codes.NotFound},

		// ControllerExpandVolume: expansion is node-only (NodeExpandVolume), so it is not offered.
		{"expand: not offered", expand(vol.GetVolumeId(), &csi.CapacityRange{RequiredBytes: 8 * mib}, nil), codes.Unimplemented},

		// ControllerGetVolume and health.
		{"get volume: missing ID", getVol(""), codes.InvalidArgument},
		{"get volume: malformed ID", getVol("fake-vol-id"), codes.NotFound},
		{"get volume: snapshot ID", getVol(snap.GetSnapshotId()), codes.NotFound},
		{"get volume: other node's ID", getVol(foreignVol), codes.NotFound},
		{"get volume: unknown ID", getVol(unknownVol), codes.NotFound},
		{"volume health: missing ID", health(""), codes.InvalidArgument},
		{"volume health: malformed ID", health("fake-vol-id"), codes.NotFound},
		{"volume health: unknown ID", health(unknownVol), codes.NotFound},

		// CreateSnapshot.
		{"snapshot: missing name", snapshot("", vol.GetVolumeId(), nil, nil), codes.InvalidArgument},
		{"snapshot: name too long", snapshot(strings.Repeat("s", 129), vol.GetVolumeId(), nil, nil), codes.InvalidArgument},
		{"snapshot: missing source", snapshot("s", "", nil, nil), codes.InvalidArgument},
		{"snapshot: unknown parameter", snapshot("s", vol.GetVolumeId(), map[string]string{"retain": "yes"}, nil), codes.InvalidArgument},
		{"snapshot: volume parameter", snapshot("s", vol.GetVolumeId(), map[string]string{"csi.storage.k8s.io/pvc/name": "x"}, nil), codes.InvalidArgument},
		{"snapshot: malformed source", snapshot("s", "fake-vol-id", nil, nil), codes.NotFound},
		{"snapshot: other node's source", snapshot("s", foreignVol, nil, nil), codes.NotFound},
		{"snapshot: unknown source", snapshot("s", unknownVol, nil, nil), codes.NotFound},
		{"snapshot: requisite excludes this node", snapshot("s", vol.GetVolumeId(), nil, &csi.TopologyRequirement{Requisite: []*csi.Topology{elsewhere}}), codes.ResourceExhausted},
		{"snapshot: existing name, other source", snapshot("existing-snap", unknownVol, nil, &csi.TopologyRequirement{Requisite: []*csi.Topology{thisNode}}), codes.AlreadyExists},

		// DeleteSnapshot and GetSnapshot.
		{"delete snapshot: missing ID", func() error { _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{}); return err }, codes.InvalidArgument},
		{"delete snapshot: other node's ID", func() error {
			_, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: foreignSnap})
			return err
		}, codes.NotFound},
		{"get snapshot: missing ID", getSnap(""), codes.InvalidArgument},
		{"get snapshot: malformed ID", getSnap("none-exist-id"), codes.NotFound},
		{"get snapshot: volume ID", getSnap(vol.GetVolumeId()), codes.NotFound},
		{"get snapshot: other node's ID", getSnap(foreignSnap), codes.NotFound},
		{"get snapshot: unknown ID", getSnap(unknownSnap), codes.NotFound},

		// Pagination.
		{"list volumes: bad token", func() error {
			_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "invalid-token"})
			return err
		}, codes.Aborted},
		{"list volumes: snapshot token", func() error {
			_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: snap.GetSnapshotId()})
			return err
		}, codes.Aborted},
		{"list volumes: other node's token", func() error {
			_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: foreignVol})
			return err
		}, codes.Aborted},
		{"list volumes: token 0", func() error {
			_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: c.ids.volumeID(0)})
			return err
		}, codes.Aborted},
		{"list volumes: negative max entries", func() error {
			_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1})
			return err
		}, codes.InvalidArgument},
		{"list snapshots: bad token", func() error {
			_, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: vol.GetVolumeId()})
			return err
		}, codes.Aborted},
		{"list snapshots: negative max entries", func() error {
			_, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: -2})
			return err
		}, codes.InvalidArgument},
		{"list health: bad token", func() error {
			_, err := c.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{StartingToken: "x"})
			return err
		}, codes.Aborted},

		// GetCapacity.
		{"capacity: unknown parameter", func() error {
			_, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": "fast"}})
			return err
		}, codes.InvalidArgument},
		{"capacity: malformed capability", func() error {
			_, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{{}}})
			return err
		}, codes.InvalidArgument},

		// Not offered.
		{"publish: not implemented", func() error {
			_, err := c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId()})
			return err
		}, codes.Unimplemented},
		{"modify: not implemented", func() error {
			_, err := c.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: vol.GetVolumeId()})
			return err
		}, codes.Unimplemented},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			requireCode(t, tc.want, tc.call())
		})
	}
	// Nothing failed half-way: the pool holds what the test created, and no lock is left.
	list, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetEntries(), 1)
	require.Zero(t, c.locks.Held())
}

// TestValidateVolumeCapabilities: supported sets are confirmed, unsupported ones are not (and
// say why), without an error.
func TestValidateVolumeCapabilities(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	vol := mustCreateVolume(t, c, "v", mib)
	for _, tc := range []struct {
		name    string
		req     *csi.ValidateVolumeCapabilitiesRequest
		confirm bool
	}{
		{"mount rwo", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "xfs")}}, true},
		{"block, every single-node mode", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{
			blockCap(rwo), blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY),
			blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER), blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER),
		}}, true},
		{"with metadata parameters", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "")},
			Parameters: map[string]string{"csi.storage.k8s.io/pvc/name": "p"}}, true},
		{"multi-node", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{
			mountCap(rwo, ""), mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")}}, false},
		{"fs type", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "zfs")}}, false},
		{"unknown parameter", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "")},
			Parameters: map[string]string{"x": "y"}}, false},
		{"mutable parameter", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "")},
			MutableParameters: map[string]string{"x": "y"}}, false},
		{"volume context", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "")},
			VolumeContext: map[string]string{"x": "y"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.VolumeId = vol.GetVolumeId()
			resp, err := c.ValidateVolumeCapabilities(ctx, tc.req)
			require.NoError(t, err)
			if tc.confirm {
				require.NotNil(t, resp.GetConfirmed(), resp.GetMessage())
				require.Equal(t, len(tc.req.VolumeCapabilities), len(resp.GetConfirmed().GetVolumeCapabilities()))
			} else {
				require.Nil(t, resp.GetConfirmed())
				require.NotEmpty(t, resp.GetMessage())
			}
		})
	}
}
