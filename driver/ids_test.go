package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/stretchr/testify/require"
)

func TestIDsRoundTrip(t *testing.T) {
	c := ids{tag: nodeTag(testNode)}
	for _, n := range []uint64{1, 2, 0xfffffffe, 1<<63 + 5, ^uint64(0)} {
		vid := c.volumeID(blockstore.VolumeID(n))
		require.Len(t, vid, idLen)
		got, err := c.parseVolumeID(vid)
		require.NoError(t, err)
		require.Equal(t, blockstore.VolumeID(n), got)

		sid := c.snapshotID(blockstore.SnapshotID(n))
		gotS, err := c.parseSnapshotID(sid)
		require.NoError(t, err)
		require.Equal(t, blockstore.SnapshotID(n), gotS)

		// A volume ID is not a snapshot ID and the other way round.
		_, err = c.parseSnapshotID(vid)
		require.ErrorIs(t, err, errMalformedID)
		_, err = c.parseVolumeID(sid)
		require.ErrorIs(t, err, errMalformedID)
	}
	require.Equal(t, "dv-00000000-0000000000000001", ids{}.volumeID(1))
}

func TestIDsStrict(t *testing.T) {
	c := ids{tag: nodeTag(testNode)}
	good := c.volumeID(42)
	for _, s := range []string{
		"", "dv-", "fake-vol-id", "fake-vol-id-0123456789",
		good + "0", good[:len(good)-1], " " + good, good + "\n",
		"DV" + good[2:],                   // prefix case
		good[:3] + "ABCDEF01" + good[11:], // upper-case hex
		good[:11] + "_" + good[12:],       // separator
		good[:3] + "+1234567" + good[11:], // sign
		good[:12] + "0x" + good[14:],      // 0x inside
		good[:3] + "0000000g" + good[11:], // not hex
	} {
		_, err := c.parseVolumeID(s)
		require.ErrorIs(t, err, errMalformedID, "%q", s)
	}
	foreign := ids{tag: nodeTag(otherNode)}.volumeID(42)
	_, err := c.parseVolumeID(foreign)
	require.ErrorIs(t, err, errForeignID)
	require.False(t, errors.Is(err, errMalformedID))
}

// FuzzParseID: parsing never panics, accepts only IDs that format back to the same string,
// and formatting always parses back.
func FuzzParseID(f *testing.F) {
	f.Add("dv-1a2b3c4d-0000000000000001", uint32(7), uint64(9))
	f.Add("ds-ffffffff-ffffffffffffffff", uint32(0), uint64(0))
	f.Add("fake-vol-id", uint32(1)<<31, uint64(1)<<63)
	f.Add("dv-1A2B3C4D-0000000000000001", uint32(1), uint64(1))
	f.Fuzz(func(t *testing.T, s string, tag uint32, n uint64) {
		for _, prefix := range []string{volumeIDPrefix, snapshotIDPrefix} {
			gotTag, gotN, err := parseID(prefix, s)
			if err == nil {
				if formatID(prefix, gotTag, gotN) != s {
					t.Fatalf("parse(%q) = %08x, %x: formats as %q", s, gotTag, gotN, formatID(prefix, gotTag, gotN))
				}
			} else if !errors.Is(err, errMalformedID) {
				t.Fatalf("parse(%q): %v does not wrap errMalformedID", s, err)
			}
			id := formatID(prefix, tag, n)
			gotTag, gotN, err = parseID(prefix, id)
			if err != nil || gotTag != tag || gotN != n {
				t.Fatalf("parse(format(%x, %x) = %q) = %x, %x, %v", tag, n, id, gotTag, gotN, err)
			}
		}
	})
}

// TestSnapshotHandleNameTag: a snapshot's ID carries the tag of its name; an ID whose number
// names a snapshot of another name (a pool made again on the node numbers from the start)
// names nothing: lookups say NOT_FOUND, a delete deletes nothing, while the old 28-byte IDs
// still name their snapshot.
func TestSnapshotHandleNameTag(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	vol := mustCreateVolume(t, c, "v", mib)
	snap := mustCreateSnapshot(t, c, "snapshot-1", vol.GetVolumeId())
	h := snap.GetSnapshotId()
	require.Len(t, h, taggedIDLen)
	ref, err := c.ids.parseSnapshotHandle(h)
	require.NoError(t, err)
	require.True(t, ref.tagged)
	old := h[:idLen] // the same snapshot, as IDs were before name tags
	_, err = c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: old})
	require.NoError(t, err)

	other := old + fmt.Sprintf("-%08x", nodeTag("snapshot-of-an-earlier-pool"))
	_, err = c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: other})
	requireCode(t, codes.NotFound, err)
	require.ErrorIs(t, err, errOtherSnapshot)
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: createReq("x", mib).VolumeCapabilities,
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: other}}}})
	requireCode(t, codes.NotFound, err)
	_, err = c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: other})
	require.NoError(t, err)
	_, err = c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: h})
	require.NoError(t, err, "deleting another pool's ID deleted this pool's snapshot")

	for _, bad := range []string{h + "0", h[:len(h)-1], old + "-ABCDEF01", old + "_01234567", old + "-0123456g"} {
		_, err := c.ids.parseSnapshotHandle(bad)
		require.ErrorIs(t, err, errMalformedID, "%q", bad)
	}
	_, err = c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: h})
	require.NoError(t, err)
	_, err = c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: h})
	requireCode(t, codes.NotFound, err)
}
