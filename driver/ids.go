package driver

import (
	"errors"
	"fmt"
	"hash/crc32"
	"regexp"
	"strconv"

	"github.com/dataimage/dataimage/blockstore"
)

// CSI IDs name the node whose pool holds the object and the object's block store ID:
//
//	volume_id   = "dv-" + 8 hex digits (CRC-32/IEEE of the node ID) + "-" + 16 hex digits (VolumeID)
//	snapshot_id = "ds-" + 8 hex digits (CRC-32/IEEE of the node ID) + "-" + 16 hex digits (SnapshotID)
//
// Snapshot IDs given out since images moved between nodes through a registry carry a third
// part, the tag of the snapshot's name (CRC-32/IEEE of the CSI snapshot name, which is unique:
// "snapshot-" + the VolumeSnapshot's UID):
//
//	snapshot_id = "ds-" + node tag + "-" + SnapshotID + "-" + 8 hex digits (CRC-32/IEEE of the name)
//
// A pool made again on a node (its disk lost) numbers its snapshots from the start: the name
// tag keeps an earlier pool's ID from naming the new pool's snapshot of that number (the ID then
// names nothing here, and a clone of it comes from the registry). IDs without it (28 bytes) are
// still accepted, unchecked.
//
// Lower-case hex only, exactly 28 bytes (37 with the name tag). Block store IDs are never reused, so an ID never names
// a later object. The node tag lets a node tell its own IDs from another node's (a CRC
// collision between two node IDs would make a foreign ID look local; it then names an unknown
// or unrelated object of this pool, which is why the tag is a check, not a guarantee).
const (
	volumeIDPrefix   = "dv-"
	snapshotIDPrefix = "ds-"
	idLen            = 3 + 8 + 1 + 16
	taggedIDLen      = idLen + 1 + 8
)

var (
	volumeIDPattern   = regexp.MustCompile(`^dv-[0-9a-f]{8}-[0-9a-f]{16}$`)
	snapshotIDPattern = regexp.MustCompile(`^ds-[0-9a-f]{8}-[0-9a-f]{16}$`)
	nameTagPattern    = regexp.MustCompile(`^-[0-9a-f]{8}$`)
)

var (
	// errMalformedID: the string is not a Dataimage ID of the expected kind.
	errMalformedID = errors.New("malformed ID")
	// errForeignID: a well-formed ID of another node's pool.
	errForeignID = errors.New("ID of another node")
	// errOtherSnapshot: a snapshot ID whose number names a snapshot of another name (the ID
	// is of an earlier pool of this node).
	errOtherSnapshot = errors.New("ID of a snapshot of an earlier pool of this node")
)

// nodeTag is the 8-hex-digit tag of a node ID in CSI IDs.
func nodeTag(nodeID string) uint32 { return crc32.ChecksumIEEE([]byte(nodeID)) }

// ids formats and parses the CSI IDs of one node.
type ids struct {
	tag uint32 // nodeTag(Config.NodeID)
}

func (c ids) volumeID(id blockstore.VolumeID) string {
	return formatID(volumeIDPrefix, c.tag, uint64(id))
}

func (c ids) snapshotID(id blockstore.SnapshotID) string {
	return formatID(snapshotIDPrefix, c.tag, uint64(id))
}

// parseVolumeID returns the block store ID of a volume ID of this node; errors wrap
// errMalformedID or errForeignID.
func (c ids) parseVolumeID(s string) (blockstore.VolumeID, error) {
	tag, n, err := parseID(volumeIDPrefix, s)
	if err == nil && tag != c.tag {
		err = fmt.Errorf("volume ID %q: %w", s, errForeignID)
	}
	return blockstore.VolumeID(n), err
}

// parseSnapshotID is parseVolumeID for snapshot IDs.
func (c ids) parseSnapshotID(s string) (blockstore.SnapshotID, error) {
	tag, n, err := parseID(snapshotIDPrefix, s)
	if err == nil && tag != c.tag {
		err = fmt.Errorf("snapshot ID %q: %w", s, errForeignID)
	}
	return blockstore.SnapshotID(n), err
}

// snapshotHandle is the CSI ID of a snapshot, with the tag of its name.
func (c ids) snapshotHandle(info blockstore.SnapshotInfo) string {
	return fmt.Sprintf("%s-%08x", c.snapshotID(info.ID), nodeTag(info.Name))
}

// snapshotRef is a parsed snapshot ID.
type snapshotRef struct {
	id      blockstore.SnapshotID
	nameTag uint32
	tagged  bool // the ID has a name tag (snapshotHandle)
}

// names says whether the snapshot info describes is the one the ID names: same number, and
// the same name when the ID has a name tag.
func (r snapshotRef) names(info blockstore.SnapshotInfo) bool {
	return info.ID == r.id && (!r.tagged || nodeTag(info.Name) == r.nameTag)
}

// parseSnapshotHandle parses a snapshot ID with or without its name tag; errors wrap
// errMalformedID or errForeignID.
func (c ids) parseSnapshotHandle(s string) (snapshotRef, error) {
	var r snapshotRef
	if len(s) == taggedIDLen && nameTagPattern.MatchString(s[idLen:]) {
		t, err := strconv.ParseUint(s[idLen+1:], 16, 32)
		if err != nil {
			return r, fmt.Errorf("%q: %w: %w", s, errMalformedID, err)
		}
		r.nameTag, r.tagged = uint32(t), true
		s = s[:idLen]
	}
	id, err := c.parseSnapshotID(s)
	r.id = id
	return r, err
}

func formatID(prefix string, tag uint32, n uint64) string {
	return fmt.Sprintf("%s%08x-%016x", prefix, tag, n)
}

// parseID parses prefix + tag + "-" + n strictly: the exact length, then the pattern.
func parseID(prefix, s string) (tag uint32, n uint64, err error) {
	pattern := volumeIDPattern
	if prefix == snapshotIDPrefix {
		pattern = snapshotIDPattern
	}
	if len(s) != idLen || !pattern.MatchString(s) {
		return 0, 0, fmt.Errorf("%q: %w: want %sXXXXXXXX-XXXXXXXXXXXXXXXX (lower-case hex)", s, errMalformedID, prefix)
	}
	t, err := strconv.ParseUint(s[3:11], 16, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: %w: %w", s, errMalformedID, err)
	}
	n, err = strconv.ParseUint(s[12:], 16, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: %w: %w", s, errMalformedID, err)
	}
	return uint32(t), n, nil
}
