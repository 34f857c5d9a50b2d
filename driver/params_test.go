package driver

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// coParameters are StorageClass-like parameters as a CO other than Kubernetes passes them:
// the file system type, the PV/PVC metadata and every secret reference external-provisioner
// knows, none stripped.
func coParameters(fsType string) map[string]string {
	p := map[string]string{
		"csi.storage.k8s.io/pv/name":       "pvc-0f3c",
		"csi.storage.k8s.io/pvc/name":      "data",
		"csi.storage.k8s.io/pvc/namespace": "db",
	}
	for _, kind := range []string{"", "provisioner-", "controller-publish-", "node-stage-", "node-publish-", "controller-expand-", "node-expand-"} {
		p["csi.storage.k8s.io/"+kind+"secret-name"] = "s"
		p["csi.storage.k8s.io/"+kind+"secret-namespace"] = "ns"
	}
	if fsType != "" {
		p["csi.storage.k8s.io/fstype"] = fsType
	}
	return p
}

// TestReservedParameters: CreateVolume accepts every reserved csi.storage.k8s.io/ key a CO may
// pass, returns the file system of csi.storage.k8s.io/fstype in the volume context, and stays
// strict: any other key, a file system other than ext4 or xfs, or one that a capability
// contradicts, is INVALID_ARGUMENT naming the key. GetCapacity and ValidateVolumeCapabilities
// accept the same keys; CreateSnapshot accepts the snapshotter's.
func TestReservedParameters(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	create := func(name string, params map[string]string, caps ...*csi.VolumeCapability) (*csi.Volume, error) {
		req := createReq(name, mib)
		req.Parameters = params
		if len(caps) > 0 {
			req.VolumeCapabilities = caps
		}
		resp, err := c.CreateVolume(ctx, req)
		return resp.GetVolume(), err
	}

	// Accepted: fstype is honoured (the volume context carries it), the rest ignored.
	for _, tc := range []struct {
		name   string
		params map[string]string
		caps   []*csi.VolumeCapability
		want   map[string]string // volume context
	}{
		{"xfs, no fs_type in the capability", coParameters("xfs"), []*csi.VolumeCapability{mountCap(rwo, "")}, map[string]string{volumeContextFSType: "xfs"}},
		{"ext4, the capability agrees", coParameters("ext4"), []*csi.VolumeCapability{mountCap(rwo, "ext4"), mountCap(rwo, "")}, map[string]string{volumeContextFSType: "ext4"}},
		{"xfs, block access", coParameters("xfs"), []*csi.VolumeCapability{blockCap(rwo)}, map[string]string{volumeContextFSType: "xfs"}},
		{"empty fstype", coParameters("") /* plus the key with "" below */, nil, nil},
		{"metadata and secrets only", coParameters(""), nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "empty fstype" {
				tc.params["csi.storage.k8s.io/fstype"] = ""
			}
			vol, err := create(strings.ReplaceAll(tc.name, " ", "-"), tc.params, tc.caps...)
			require.NoError(t, err)
			require.Equal(t, tc.want, vol.GetVolumeContext())
			again, err := create(strings.ReplaceAll(tc.name, " ", "-"), tc.params, tc.caps...)
			require.NoError(t, err, "idempotent")
			require.Equal(t, vol.GetVolumeId(), again.GetVolumeId())
			require.Equal(t, tc.want, again.GetVolumeContext())

			// ValidateVolumeCapabilities confirms the parameters and the context it returned.
			caps := tc.caps
			if caps == nil {
				caps = []*csi.VolumeCapability{mountCap(rwo, "")}
			}
			vr, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: vol.GetVolumeId(), VolumeCapabilities: caps, Parameters: tc.params, VolumeContext: vol.GetVolumeContext()})
			require.NoError(t, err)
			require.NotNil(t, vr.GetConfirmed(), vr.GetMessage())
			require.Equal(t, vol.GetVolumeContext(), vr.GetConfirmed().GetVolumeContext())

			// GetCapacity: the capacity controller passes the StorageClass's parameters as they are.
			cr, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: tc.params})
			require.NoError(t, err)
			require.Positive(t, cr.GetAvailableCapacity())
		})
	}

	// Refused, naming the key and the rule.
	for _, tc := range []struct {
		name   string
		params map[string]string
		caps   []*csi.VolumeCapability
		want   []string // in the message
	}{
		{"unknown reserved key", map[string]string{"csi.storage.k8s.io/pvc/name": "x", "csi.storage.k8s.io/pvc/labels": "a=b"}, nil,
			[]string{`parameters: unknown key "csi.storage.k8s.io/pvc/labels"`, "accepted: csi.storage.k8s.io/fstype"}},
		{"unknown key", map[string]string{"csi.storage.k8s.io/fstype": "xfs", "fsType": "xfs"}, nil, []string{`unknown key "fsType"`}},
		{"snapshotter secret", map[string]string{"csi.storage.k8s.io/snapshotter-secret-name": "s"}, nil,
			[]string{`unknown key "csi.storage.k8s.io/snapshotter-secret-name"`}},
		{"btrfs", map[string]string{"csi.storage.k8s.io/fstype": "btrfs"}, nil, []string{`csi.storage.k8s.io/fstype "btrfs": want ext4 or xfs`}},
		{"capability contradicts", coParameters("xfs"), []*csi.VolumeCapability{mountCap(rwo, ""), mountCap(rwo, "ext4")},
			[]string{`csi.storage.k8s.io/fstype "xfs" contradicts volume_capabilities[1].mount.fs_type "ext4"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := create("refused", tc.params, tc.caps...)
			requireCode(t, codes.InvalidArgument, err)
			for _, w := range tc.want {
				require.Contains(t, status.Convert(err).Message(), w)
			}
			caps := tc.caps
			if caps == nil {
				caps = []*csi.VolumeCapability{mountCap(rwo, "")}
			}
			vr, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: mustCreateVolume(t, c, "for-"+strings.ReplaceAll(tc.name, " ", "-"), mib).GetVolumeId(), VolumeCapabilities: caps, Parameters: tc.params})
			require.NoError(t, err)
			require.Nil(t, vr.GetConfirmed())
			require.Contains(t, vr.GetMessage(), tc.want[0])
		})
	}
	_, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"csi.storage.k8s.io/pvc/labels": "a=b"}})
	requireCode(t, codes.InvalidArgument, err)
	_, err = c.store.LookupVolume(ctx, "refused")
	require.Error(t, err, "a refused request creates nothing")

	// ValidateVolumeCapabilities: a volume context this plugin never returns is not confirmed.
	vol := mustCreateVolume(t, c, "ctx", mib)
	for name, tc := range map[string]struct {
		vc     map[string]string
		caps   []*csi.VolumeCapability
		params map[string]string
	}{
		"unknown key":           {map[string]string{"fsType": "xfs"}, nil, nil},
		"btrfs":                 {map[string]string{volumeContextFSType: "btrfs"}, nil, nil},
		"capability disagrees":  {map[string]string{volumeContextFSType: "xfs"}, []*csi.VolumeCapability{mountCap(rwo, "ext4")}, nil},
		"parameters disagree":   {map[string]string{volumeContextFSType: "xfs"}, nil, coParameters("ext4")},
		"empty key, other keys": {map[string]string{volumeContextFSType: "", "x": "y"}, nil, nil},
	} {
		caps := tc.caps
		if caps == nil {
			caps = []*csi.VolumeCapability{mountCap(rwo, "")}
		}
		vr, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
			VolumeId: vol.GetVolumeId(), VolumeCapabilities: caps, VolumeContext: tc.vc, Parameters: tc.params})
		require.NoError(t, err, name)
		require.Nil(t, vr.GetConfirmed(), name)
		require.Contains(t, vr.GetMessage(), "volume_context", name)
	}

	// CreateSnapshot: the snapshotter's secret references and metadata, nothing of a volume's.
	snapParams := map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "s", "csi.storage.k8s.io/volumesnapshot/namespace": "db",
		"csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1"}
	for _, kind := range []string{"snapshotter-", "snapshotter-list-"} {
		snapParams["csi.storage.k8s.io/"+kind+"secret-name"] = "s"
		snapParams["csi.storage.k8s.io/"+kind+"secret-namespace"] = "ns"
	}
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: vol.GetVolumeId(), Parameters: snapParams})
	require.NoError(t, err)
	bad := maps.Clone(snapParams)
	bad["csi.storage.k8s.io/fstype"] = "xfs"
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s2", SourceVolumeId: vol.GetVolumeId(), Parameters: bad})
	requireCode(t, codes.InvalidArgument, err)
	require.Contains(t, status.Convert(err).Message(), `unknown key "csi.storage.k8s.io/fstype"`)
}

// TestStageFSTypeFromContext: NodeStageVolume makes the file system that CreateVolume's
// parameters named (passed on in the volume context) on a blank volume whose capability names
// none, over the node's default; a capability's fs_type that contradicts it, or a context
// naming another file system, is INVALID_ARGUMENT and stages nothing.
func TestStageFSTypeFromContext(t *testing.T) {
	e := newNodeEnv(t) // the node's default is ext4
	ctx := context.Background()
	req := createReq("xfs-by-parameter", 320*mib) // xfs wants 300 MiB at least
	req.Parameters = coParameters("xfs")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(rwo, "")}
	resp, err := e.c.CreateVolume(ctx, req)
	require.NoError(t, err)
	vol := resp.GetVolume()

	staging := filepath.Join(e.dir, "staging")
	for name, tc := range map[string]struct {
		cap *csi.VolumeCapability
		vc  map[string]string
	}{
		"capability contradicts": {mountCap(rwo, "ext4"), vol.GetVolumeContext()},
		"btrfs in the context":   {mountCap(rwo, ""), map[string]string{volumeContextFSType: "btrfs"}},
	} {
		_, err := e.n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: tc.cap, VolumeContext: tc.vc})
		requireCode(t, codes.InvalidArgument, err)
		require.Contains(t, status.Convert(err).Message(), volumeContextFSType, name)
	}
	require.Zero(t, e.n.vols.Len(), "nothing exported")

	require.NoError(t, os.MkdirAll(staging, 0o750))
	_, err = e.n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: mountCap(rwo, ""), VolumeContext: vol.GetVolumeContext()})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging})
		require.NoError(t, err)
	})
	require.Equal(t, "xfs", mountFSType(t, staging))
}

// mountFSType returns the file system type of the mount at path (from /proc/self/mountinfo).
func mountFSType(t *testing.T, path string) string {
	t.Helper()
	for _, line := range strings.Split(mountinfo(t), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[4] != path {
			continue
		}
		if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("%s is not mounted", path)
	return ""
}

// FuzzVolumeParameters: CreateVolume's parameter checks accept exactly the documented keys
// and file systems, and whatever they accept comes back as the volume context it should.
func FuzzVolumeParameters(f *testing.F) {
	f.Add("csi.storage.k8s.io/fstype", "xfs", "")
	f.Add("csi.storage.k8s.io/pvc/name", "data", "ext4")
	f.Add("csi.storage.k8s.io/fstype", "btrfs", "")
	f.Add("csi.storage.k8s.io/fstype", "xfs", "ext4")
	f.Add("fsType", "xfs", "")
	f.Add("csi.storage.k8s.io/node-expand-secret-namespace", "ns", "xfs")
	f.Fuzz(func(t *testing.T, key, value, capFS string) {
		params := map[string]string{key: value}
		caps := []*csi.VolumeCapability{mountCap(rwo, capFS)}
		perr := validateParameters("parameters", params, volumeParameters, volumeParametersRule)
		if slices.Contains(volumeParameters, key) != (perr == nil) {
			t.Fatalf("key %q: accepted %v, listed %v", key, perr == nil, slices.Contains(volumeParameters, key))
		}
		if perr != nil {
			require.Equal(t, codes.InvalidArgument, status.Code(perr))
			require.Contains(t, status.Convert(perr).Message(), fmt.Sprintf("unknown key %q", key))
			return
		}
		fs, err := parameterFSType(params, caps)
		if key != fsTypeParameter {
			require.NoError(t, err)
			require.Empty(t, fs)
			require.Nil(t, volumeContext(fs))
			return
		}
		ok := (value == "ext4" || value == "xfs" || value == "") && (capFS == "" || value == "" || capFS == value)
		require.Equal(t, ok, err == nil, "value %q, capability %q: %v", value, capFS, err)
		if err != nil {
			require.Equal(t, codes.InvalidArgument, status.Code(err))
			return
		}
		require.Equal(t, value, fs)
		if value != "" {
			cfs, err := contextFSType(volumeContext(fs))
			require.NoError(t, err)
			require.Equal(t, value, cfs)
		}
	})
}
