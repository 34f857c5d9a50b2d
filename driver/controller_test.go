package driver

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCreateVolumeSizes(t *testing.T) {
	p := mustOpenPool(t)
	cfg := testConfig(testNode)
	cfg.DefaultVolumeSize = 8 * mib
	c := newControllerServer(cfg, storeOf(t, p, nil), p.BlockSize())
	ctx := context.Background()
	for i, tc := range []struct {
		req, lim, want int64
	}{
		{0, 0, 8 * mib},                // the default size
		{0, 3*mib + 100, 3 * mib},      // the default, clamped to the limit in whole blocks
		{mib + 1, 0, mib + 4096},       // rounded up to the block size
		{mib + 1, 2 * mib, mib + 4096}, // ... within the limit
		{2 * mib, 2 * mib, 2 * mib},    // exact
		{4096, 0, 4096},                // one block
	} {
		req := createReq(fmt.Sprintf("size-%d", i), 0)
		req.CapacityRange = &csi.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim}
		resp, err := c.CreateVolume(ctx, req)
		require.NoError(t, err, "case %d", i)
		require.Equal(t, tc.want, resp.GetVolume().GetCapacityBytes(), "case %d", i)
		id, err := c.ids.parseVolumeID(resp.GetVolume().GetVolumeId())
		require.NoError(t, err)
		info, err := p.VolumeInfo(id)
		require.NoError(t, err)
		require.Equal(t, tc.want, info.Size)
		require.Equal(t, req.Name, info.Name)
		require.Equal(t, cfg.topology(), resp.GetVolume().GetAccessibleTopology())
	}
	// No capacity range at all: the default.
	req := createReq("no-range", 0)
	req.CapacityRange = nil
	resp, err := c.CreateVolume(ctx, req)
	require.NoError(t, err)
	require.Equal(t, 8*mib, resp.GetVolume().GetCapacityBytes())
}

func TestCreateVolumeIdempotent(t *testing.T) {
	c, p := newTestController(t)
	ctx := context.Background()
	thisNode := &csi.Topology{Segments: map[string]string{DefaultTopologyKey: testNode}}
	req := createReq("pvc-1", 4*mib)
	req.Parameters = map[string]string{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "db", "csi.storage.k8s.io/pv/name": "pvc-1"}
	req.AccessibilityRequirements = &csi.TopologyRequirement{
		Requisite: []*csi.Topology{{Segments: map[string]string{DefaultTopologyKey: otherNode}}, thisNode},
		Preferred: []*csi.Topology{thisNode},
	}
	first, err := c.CreateVolume(ctx, req)
	require.NoError(t, err)
	again, err := c.CreateVolume(ctx, req)
	require.NoError(t, err)
	require.Equal(t, first.GetVolume().GetVolumeId(), again.GetVolume().GetVolumeId())

	// A compatible request (the existing size is in range; another capability) is the same volume.
	compat := createReq("pvc-1", 2*mib)
	compat.CapacityRange.LimitBytes = 8 * mib
	compat.VolumeCapabilities = []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)}
	resp, err := c.CreateVolume(ctx, compat)
	require.NoError(t, err)
	require.Equal(t, first.GetVolume().GetVolumeId(), resp.GetVolume().GetVolumeId())
	require.Equal(t, 4*mib, resp.GetVolume().GetCapacityBytes())
	require.Len(t, p.Volumes(), 1)

	// Clones are idempotent too, and echo their content source.
	snap := mustCreateSnapshot(t, c, "snap", first.GetVolume().GetVolumeId())
	fromSnap := createReq("clone-of-snap", 0)
	fromSnap.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}
	fromVol := createReq("clone-of-vol", 0)
	fromVol.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: first.GetVolume().GetVolumeId()}}}
	for _, r := range []*csi.CreateVolumeRequest{fromSnap, fromVol} {
		a, err := c.CreateVolume(ctx, r)
		require.NoError(t, err)
		b, err := c.CreateVolume(ctx, r)
		require.NoError(t, err)
		require.Equal(t, a.GetVolume().GetVolumeId(), b.GetVolume().GetVolumeId())
		require.Equal(t, 4*mib, a.GetVolume().GetCapacityBytes(), "a clone takes its source's size")
		require.Equal(t, r.VolumeContentSource, b.GetVolume().GetContentSource())
	}
	// The snapshot clone asked for again without a source is another volume: ALREADY_EXISTS.
	_, err = c.CreateVolume(ctx, createReq("clone-of-snap", 0))
	requireCode(t, codes.AlreadyExists, err)
	// The volume clone asked for again after its source is gone: the source cannot be compared.
	_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: first.GetVolume().GetVolumeId()})
	require.NoError(t, err)
	_, err = c.CreateVolume(ctx, fromVol)
	require.NoError(t, err)
	// ... and the snapshot clone after its snapshot is gone: the origin is still recorded.
	_, err = c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	require.NoError(t, err)
	_, err = c.CreateVolume(ctx, fromSnap)
	require.NoError(t, err)
}

// TestClones: clones from a snapshot and from a volume read what their source held when they
// were made, stay independent of later writes, and outlive their sources.
func TestClones(t *testing.T) {
	c, p := newTestController(t)
	ctx := context.Background()
	src := mustCreateVolume(t, c, "src", 2*mib)
	srcID, err := c.ids.parseVolumeID(src.GetVolumeId())
	require.NoError(t, err)
	h, err := p.Volume(srcID)
	require.NoError(t, err)
	data := bytes.Repeat([]byte("dataimage"), 300000)[:2*mib-4096]
	_, err = h.WriteAt(data, 4096)
	require.NoError(t, err)
	require.NoError(t, h.Flush())

	snap := mustCreateSnapshot(t, c, "snap", src.GetVolumeId())
	require.True(t, snap.GetReadyToUse())
	require.Equal(t, 2*mib, snap.GetSizeBytes())
	require.Equal(t, src.GetVolumeId(), snap.GetSourceVolumeId())
	require.NotNil(t, snap.GetCreationTime())
	require.Equal(t, c.cfg.topology(), snap.GetAccessibleTopology())

	cloneReq := func(name string, size int64, cs *csi.VolumeContentSource) *csi.CreateVolumeRequest {
		r := createReq(name, size)
		r.VolumeContentSource = cs
		return r
	}
	snapSrc := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}
	volSrc := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}}
	fromSnap, err := c.CreateVolume(ctx, cloneReq("from-snap", 0, snapSrc))
	require.NoError(t, err)
	fromVol, err := c.CreateVolume(ctx, cloneReq("from-vol", 3*mib, volSrc)) // larger than its source
	require.NoError(t, err)
	require.Equal(t, 3*mib, fromVol.GetVolume().GetCapacityBytes())
	small, err := c.CreateVolume(ctx, cloneReq("small", mib, snapSrc)) // required below the source: the source's size
	require.NoError(t, err)
	require.Equal(t, 2*mib, small.GetVolume().GetCapacityBytes())

	// The source changes after the clones were made; deleting it and the snapshot is allowed.
	_, err = h.WriteAt(bytes.Repeat([]byte{0xff}, 8192), 0)
	require.NoError(t, err)
	_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolumeId()})
	require.NoError(t, err)
	_, err = c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	require.NoError(t, err)

	want := append(make([]byte, 4096), data...)
	for _, v := range []*csi.Volume{fromSnap.GetVolume(), fromVol.GetVolume(), small.GetVolume()} {
		id, err := c.ids.parseVolumeID(v.GetVolumeId())
		require.NoError(t, err)
		vh, err := p.Volume(id)
		require.NoError(t, err)
		got := make([]byte, len(want))
		_, err = vh.ReadAt(got, 0)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "clone %s differs from its source", v.GetVolumeId())
	}
}

func TestDeleteIdempotent(t *testing.T) {
	c, p := newTestController(t)
	ctx := context.Background()
	v := mustCreateVolume(t, c, "v", mib)
	s := mustCreateSnapshot(t, c, "s", v.GetVolumeId())
	for range 2 {
		_, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId()})
		require.NoError(t, err)
		_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()})
		require.NoError(t, err)
	}
	// IDs that cannot name anything succeed (csi-sanity's "fake-vol-id", "reallyfakesnapshotid").
	_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "fake-vol-id"})
	require.NoError(t, err)
	_, err = c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "reallyfakesnapshotid"})
	require.NoError(t, err)
	require.Empty(t, p.Volumes())
	require.Empty(t, p.Snapshots())
}

func TestSnapshots(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	v1 := mustCreateVolume(t, c, "v1", mib)
	v2 := mustCreateVolume(t, c, "v2", mib)
	req := &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: v1.GetVolumeId(),
		Parameters: map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "s", "csi.storage.k8s.io/volumesnapshot/namespace": "db",
			"csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1"}}
	a, err := c.CreateSnapshot(ctx, req)
	require.NoError(t, err)
	b, err := c.CreateSnapshot(ctx, req)
	require.NoError(t, err)
	require.Equal(t, a.GetSnapshot().GetSnapshotId(), b.GetSnapshot().GetSnapshotId())
	require.Equal(t, a.GetSnapshot().GetCreationTime().AsTime(), b.GetSnapshot().GetCreationTime().AsTime())
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: v2.GetVolumeId()})
	requireCode(t, codes.AlreadyExists, err)

	s2 := mustCreateSnapshot(t, c, "snap2", v2.GetVolumeId())
	s3 := mustCreateSnapshot(t, c, "snap3", v1.GetVolumeId())

	got, err := c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: s2.GetSnapshotId()})
	require.NoError(t, err)
	require.Equal(t, s2.GetSnapshotId(), got.GetSnapshot().GetSnapshotId())
	require.Equal(t, v2.GetVolumeId(), got.GetSnapshot().GetSourceVolumeId())

	list := func(r *csi.ListSnapshotsRequest) []string {
		resp, err := c.ListSnapshots(ctx, r)
		require.NoError(t, err)
		var out []string
		for _, e := range resp.GetEntries() {
			out = append(out, e.GetSnapshot().GetSnapshotId())
		}
		return out
	}
	sid := a.GetSnapshot().GetSnapshotId()
	require.Equal(t, []string{sid, s2.GetSnapshotId(), s3.GetSnapshotId()}, list(&csi.ListSnapshotsRequest{}))
	require.Equal(t, []string{s2.GetSnapshotId()}, list(&csi.ListSnapshotsRequest{SnapshotId: s2.GetSnapshotId()}))
	require.Equal(t, []string{sid, s3.GetSnapshotId()}, list(&csi.ListSnapshotsRequest{SourceVolumeId: v1.GetVolumeId()}))
	require.Equal(t, []string{s3.GetSnapshotId()}, list(&csi.ListSnapshotsRequest{SourceVolumeId: v1.GetVolumeId(), SnapshotId: s3.GetSnapshotId()}))
	require.Empty(t, list(&csi.ListSnapshotsRequest{SourceVolumeId: v2.GetVolumeId(), SnapshotId: s3.GetSnapshotId()}))
	// Filters naming nothing of this pool: empty, no error.
	for _, r := range []*csi.ListSnapshotsRequest{
		{SnapshotId: "none-exist-id"}, {SnapshotId: c.ids.snapshotID(999)}, {SnapshotId: ids{tag: nodeTag(otherNode)}.snapshotID(1)},
		{SourceVolumeId: "fake-vol-id-0123456789"}, {SourceVolumeId: c.ids.volumeID(999)},
	} {
		require.Empty(t, list(r), "%v", r)
	}
	// A snapshot outlives its source volume and still names it.
	_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v2.GetVolumeId()})
	require.NoError(t, err)
	require.Equal(t, []string{s2.GetSnapshotId()}, list(&csi.ListSnapshotsRequest{SourceVolumeId: v2.GetVolumeId()}))
}

// TestPagination walks volumes and snapshots page by page, deleting the entry a token names
// and creating new ones between pages: every entry that lived throughout is listed exactly
// once, in order.
func TestPagination(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	var vols, snaps []string
	for i := range 7 {
		v := mustCreateVolume(t, c, fmt.Sprintf("v%d", i), 4096*int64(i+1))
		vols = append(vols, v.GetVolumeId())
		snaps = append(snaps, mustCreateSnapshot(t, c, fmt.Sprintf("s%d", i), v.GetVolumeId()).GetSnapshotId())
	}
	for _, maxEntries := range []int32{0, 1, 2, 3, 7, 8} {
		var got []string
		token := ""
		for {
			resp, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: maxEntries, StartingToken: token})
			require.NoError(t, err)
			if maxEntries > 0 {
				require.LessOrEqual(t, len(resp.GetEntries()), int(maxEntries))
			}
			for _, e := range resp.GetEntries() {
				got = append(got, e.GetVolume().GetVolumeId())
				require.Positive(t, e.GetVolume().GetCapacityBytes())
			}
			if token = resp.GetNextToken(); token == "" {
				break
			}
		}
		require.Equal(t, vols, got, "max_entries %d", maxEntries)

		got = nil
		for {
			resp, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: maxEntries, StartingToken: token})
			require.NoError(t, err)
			for _, e := range resp.GetEntries() {
				got = append(got, e.GetSnapshot().GetSnapshotId())
			}
			if token = resp.GetNextToken(); token == "" {
				break
			}
		}
		require.Equal(t, snaps, got, "max_entries %d", maxEntries)
	}

	// Changes between pages: the token's own entry is deleted, and a volume is created.
	resp, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 3})
	require.NoError(t, err)
	require.Equal(t, vols[3], resp.GetNextToken())
	_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vols[3]})
	require.NoError(t, err)
	extra := mustCreateVolume(t, c, "extra", 4096)
	rest, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: resp.GetNextToken()})
	require.NoError(t, err)
	var got []string
	for _, e := range rest.GetEntries() {
		got = append(got, e.GetVolume().GetVolumeId())
	}
	require.Equal(t, append(append([]string{}, vols[4:]...), extra.GetVolumeId()), got)
	require.Empty(t, rest.GetNextToken())
}

func TestGetCapacity(t *testing.T) {
	c, p := newTestController(t)
	ctx := context.Background()
	capacity := func(r *csi.GetCapacityRequest) *csi.GetCapacityResponse {
		resp, err := c.GetCapacity(ctx, r)
		require.NoError(t, err)
		return resp
	}
	st := p.Stats()
	full := capacity(&csi.GetCapacityRequest{})
	want := min(int64(float64(st.FreeBytes)*st.OverProvisionRatio), st.ProvisionLimit)
	require.Equal(t, want, full.GetAvailableCapacity())
	require.Equal(t, st.ProvisionLimit/4096*4096, full.GetMaximumVolumeSize().GetValue())
	require.Equal(t, int64(4096), full.GetMinimumVolumeSize().GetValue())

	here := &csi.Topology{Segments: map[string]string{DefaultTopologyKey: testNode}}
	require.Equal(t, want, capacity(&csi.GetCapacityRequest{AccessibleTopology: here,
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "xfs"), blockCap(rwo)},
		Parameters:         map[string]string{"csi.storage.k8s.io/pvc/name": "x"}}).GetAvailableCapacity())
	// The capacity controller of csi-provisioner passes the StorageClass's parameters as they are.
	require.Equal(t, want, capacity(&csi.GetCapacityRequest{AccessibleTopology: here,
		Parameters: map[string]string{"csi.storage.k8s.io/fstype": "ext4"}}).GetAvailableCapacity())
	_, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"fstype": "ext4"}})
	requireCode(t, codes.InvalidArgument, err)
	// Another node's segment, a segment with other keys, capabilities no volume here can have: 0.
	for _, r := range []*csi.GetCapacityRequest{
		{AccessibleTopology: &csi.Topology{Segments: map[string]string{DefaultTopologyKey: otherNode}}},
		{AccessibleTopology: &csi.Topology{Segments: map[string]string{DefaultTopologyKey: testNode, "zone": "a"}}},
		{AccessibleTopology: &csi.Topology{}},
		{VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")}},
		{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo, "btrfs")}},
		{Parameters: map[string]string{"csi.storage.k8s.io/fstype": "btrfs"}},
	} {
		require.Zero(t, capacity(r).GetAvailableCapacity(), "%v", r)
	}

	// Thin: provisioning takes from the limit left, not from free space, until the limit binds.
	big := st.ProvisionLimit - 8*mib
	mustCreateVolume(t, c, "big", big/4096*4096)
	after := capacity(&csi.GetCapacityRequest{})
	left := st.ProvisionLimit - p.Stats().ProvisionedBytes
	require.Equal(t, left, after.GetAvailableCapacity())
	require.Equal(t, left/4096*4096, after.GetMaximumVolumeSize().GetValue())
	// What GetCapacity reports as the largest volume can be created; one more block cannot.
	_, err = c.CreateVolume(ctx, createReq("too-big", after.GetMaximumVolumeSize().GetValue()+4096))
	requireCode(t, codes.ResourceExhausted, err)
	mustCreateVolume(t, c, "fits", after.GetMaximumVolumeSize().GetValue())
	require.Zero(t, capacity(&csi.GetCapacityRequest{}).GetAvailableCapacity())
}

// TestConcurrentCreate: parallel CreateVolume and CreateSnapshot calls with one name make one
// object and all return it; different names proceed in parallel.
func TestConcurrentCreate(t *testing.T) {
	c, p := newTestController(t)
	ctx := context.Background()
	const n = 16
	var wg sync.WaitGroup
	volIDs := make([]string, n)
	others := make([]string, n)
	errs := make([]error, 2*n)
	for i := range n {
		wg.Go(func() {
			resp, err := c.CreateVolume(ctx, createReq("same", mib))
			errs[i] = err
			volIDs[i] = resp.GetVolume().GetVolumeId()
		})
		wg.Go(func() {
			resp, err := c.CreateVolume(ctx, createReq(fmt.Sprintf("other-%d", i), mib))
			errs[n+i] = err
			others[i] = resp.GetVolume().GetVolumeId()
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	for _, id := range volIDs {
		require.Equal(t, volIDs[0], id)
	}
	require.Len(t, p.Volumes(), n+1)

	snapIDs := make([]string, n)
	for i := range n {
		wg.Go(func() {
			resp, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: volIDs[0]})
			errs[i] = err
			snapIDs[i] = resp.GetSnapshot().GetSnapshotId()
		})
		wg.Go(func() { // snapshots and deletes of other volumes meanwhile
			_, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("other-snap-%d", i), SourceVolumeId: others[i]})
			if err == nil {
				_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: others[i]})
			}
			errs[n+i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	for _, id := range snapIDs {
		require.Equal(t, snapIDs[0], id)
	}
	require.Len(t, p.Snapshots(), n+1)
	require.Len(t, p.Volumes(), 1)
	require.Zero(t, c.locks.Held())
}

// TestLockWaitEndsWithContext: a call that waits for the lock of its name gives up when its
// context ends, with the context's code, and leaves no lock behind; other names are free.
func TestLockWaitEndsWithContext(t *testing.T) {
	c, _ := newTestController(t)
	unlock, err := c.locks.Lock(context.Background(), "volume-name/busy")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.CreateVolume(ctx, createReq("busy", mib))
	requireCode(t, codes.DeadlineExceeded, err)
	mustCreateVolume(t, c, "other", mib)
	unlock()
	require.Zero(t, c.locks.Held())
}

// TestStoreErrors: a block store error keeps its chain under the gRPC code (every code:
// TestErrorCodes).
func TestStoreErrors(t *testing.T) {
	c, _ := newTestController(t)
	_, err := c.lookupVolume(context.Background(), c.ids.volumeID(77))
	requireCode(t, codes.NotFound, err)
	require.ErrorIs(t, err, blockstore.ErrNotFound)
	require.Contains(t, status.Convert(err).Message(), c.ids.volumeID(77))

}

// TestFailedPool: once the pool fails, Probe is FAILED_PRECONDITION, volumes report DEGRADED,
// changes are INTERNAL; a closed pool is UNAVAILABLE and INACCESSIBLE.
func TestFailedPool(t *testing.T) {
	p, f := mustOpenFailablePool(t)
	cfg := testConfig(testNode)
	store := storeOf(t, p, nil)
	c := newControllerServer(cfg, store, p.BlockSize())
	id := &identityServer{cfg: cfg, store: store}
	ctx := context.Background()
	v := mustCreateVolume(t, c, "v", mib)
	probe, err := id.Probe(ctx, &csi.ProbeRequest{})
	require.NoError(t, err)
	require.True(t, probe.GetReady().GetValue())
	h, err := c.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.GetVolumeId()})
	require.NoError(t, err)
	require.Empty(t, h.GetVolumeHealth().GetHealthStatuses())
	lh, err := c.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	require.NoError(t, err)
	require.Empty(t, lh.GetEntries())

	f.Fail.Store(true)
	_, err = c.CreateVolume(ctx, createReq("w", mib))
	requireCode(t, codes.Internal, err)
	_, err = id.Probe(ctx, &csi.ProbeRequest{})
	requireCode(t, codes.FailedPrecondition, err)
	require.ErrorIs(t, err, blockstore.ErrFailed)
	h, err = c.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.GetVolumeId()})
	require.NoError(t, err)
	require.Len(t, h.GetVolumeHealth().GetHealthStatuses(), 1)
	require.Equal(t, csi.VolumeHealthErrorType_DEGRADED, h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus())
	require.Equal(t, "PoolFailed", h.GetVolumeHealth().GetHealthStatuses()[0].GetReason())
	lh, err = c.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{MaxEntries: 1})
	require.NoError(t, err)
	require.Len(t, lh.GetEntries(), 1)
	require.Equal(t, v.GetVolumeId(), lh.GetEntries()[0].GetVolumeId())

	f.Fail.Store(false)
	_ = p.Close()
	_, err = c.CreateVolume(ctx, createReq("x", mib))
	requireCode(t, codes.Unavailable, err)
	_, err = id.Probe(ctx, &csi.ProbeRequest{})
	requireCode(t, codes.FailedPrecondition, err)
	h, err = c.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.GetVolumeId()})
	require.NoError(t, err)
	require.Equal(t, csi.VolumeHealthErrorType_INACCESSIBLE, h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus())
}

// TestDataPlaneUnavailable: while the data plane does not answer, changes and lookups are
// UNAVAILABLE (the CO retries), Probe is FAILED_PRECONDITION and volumes are INACCESSIBLE
// "DataPlaneUnavailable"; listing fails UNAVAILABLE rather than answering an empty list.
func TestDataPlaneUnavailable(t *testing.T) {
	cfg := testConfig(testNode)
	store := dataplane.NewClient(filepath.Join(dataplanetest.SocketDir(t), "gone.sock"))
	c := newControllerServer(cfg, store, 4096)
	id := &identityServer{cfg: cfg, store: store}
	ctx := context.Background()
	_, err := c.CreateVolume(ctx, createReq("v", mib))
	requireCode(t, codes.Unavailable, err)
	require.ErrorIs(t, err, dataplane.ErrUnavailable)
	_, err = c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	requireCode(t, codes.Unavailable, err)
	_, err = c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	requireCode(t, codes.Unavailable, err)
	_, err = c.GetCapacity(ctx, &csi.GetCapacityRequest{})
	requireCode(t, codes.Unavailable, err)
	_, err = id.Probe(ctx, &csi.ProbeRequest{})
	requireCode(t, codes.FailedPrecondition, err)
	require.ErrorIs(t, err, dataplane.ErrUnavailable)
	h := poolHealth(ctx, store, nil)
	require.Len(t, h, 1)
	require.Equal(t, csi.VolumeHealthErrorType_INACCESSIBLE, h[0].GetStatus())
	require.Equal(t, "DataPlaneUnavailable", h[0].GetReason())
}
