package dataplane

import (
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

// The wire format of the data plane's API (version APIVersion), JSON over HTTP on a unix socket:
//
//	POST /v1/<Method>    body: request (JSON object)   answer: {"result": ...} or {"error": wireError}
//	GET  /v1/version     answer: versionInfo
//
// and for the volume data methods, whose data travel as raw bytes (application/octet-stream),
// their arguments in the query:
//
//	POST /v1/ReadVolume?volume=ID&offset=N&size=N   answer: the size bytes, or {"error": ...}
//	POST /v1/WriteVolume?volume=ID&offset=N         body: the bytes   answer: as a method's
//
// Methods are the Store's (methods.go lists them with their requests and results). The types
// here are the wire's own, with their JSON names, converted to and from the Go types of
// packages blockstore and export, so that a change of those types does not change the wire
// silently. Both ends ignore fields they do not know (encoding/json's default): a newer peer
// may add fields, never change the meaning of one; a change that must be understood gets a new
// method or a new API version (/v2/). An answer's HTTP status says only ok (200) or not
// (errorStatus); the error's codes carry its meaning.

// APIVersion is the version of the API this package speaks: the path prefix /v<APIVersion>/.
const APIVersion = 1

// versionInfo answers GET /v1/version.
type versionInfo struct {
	API     int      `json:"api"`
	Version string   `json:"version"` // the data plane's build
	Methods []string `json:"methods"`
}

// request is the body of every method's call: the fields the method reads (methods.go).
type request struct {
	Name     string            `json:"name,omitempty"`
	Size     int64             `json:"size,omitempty"`
	Volume   uint64            `json:"volume,omitempty"`
	Snapshot uint64            `json:"snapshot,omitempty"`
	ID       string            `json:"id,omitempty"` // an export id
	Attrs    map[string]string `json:"attrs,omitempty"`
	Check    *wireCheckOptions `json:"check,omitempty"`
	Offset   int64             `json:"offset,omitempty"` // ZeroVolume's (Size its length)
}

// answer is the body of every answer: a result or an error.
type answer[T any] struct {
	Result T          `json:"result"`
	Error  *wireError `json:"error,omitempty"`
}

type wireVolume struct {
	ID      uint64    `json:"id"`
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Origin  uint64    `json:"origin,omitempty"`
}

func toWireVolume(v blockstore.VolumeInfo) wireVolume {
	return wireVolume{ID: uint64(v.ID), Name: v.Name, Size: v.Size, Created: v.Created, Origin: uint64(v.Origin)}
}

func (w wireVolume) info() blockstore.VolumeInfo {
	return blockstore.VolumeInfo{ID: blockstore.VolumeID(w.ID), Name: w.Name, Size: w.Size, Created: w.Created, Origin: blockstore.SnapshotID(w.Origin)}
}

type wireSnapshot struct {
	ID      uint64    `json:"id"`
	Name    string    `json:"name"`
	Volume  uint64    `json:"volume"`
	LSN     uint64    `json:"lsn"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size"`
}

func toWireSnapshot(s blockstore.SnapshotInfo) wireSnapshot {
	return wireSnapshot{ID: uint64(s.ID), Name: s.Name, Volume: uint64(s.Volume), LSN: s.LSN, Created: s.Created, Size: s.Size}
}

func (w wireSnapshot) info() blockstore.SnapshotInfo {
	return blockstore.SnapshotInfo{ID: blockstore.SnapshotID(w.ID), Name: w.Name, Volume: blockstore.VolumeID(w.Volume), LSN: w.LSN, Created: w.Created, Size: w.Size}
}

type wireStats struct {
	BlockSize          int     `json:"blockSize"`
	PhysicalBytes      int64   `json:"physicalBytes"`
	UsedBytes          int64   `json:"usedBytes"`
	FreeBytes          int64   `json:"freeBytes"`
	ProvisionedBytes   int64   `json:"provisionedBytes"`
	ProvisionLimit     int64   `json:"provisionLimit"`
	MetadataBytes      int64   `json:"metadataBytes"`
	OverProvisionRatio float64 `json:"overProvisionRatio"`
	Volumes            int     `json:"volumes"`
	Snapshots          int     `json:"snapshots"`
	LSN                uint64  `json:"lsn"`
	CheckpointLSN      uint64  `json:"checkpointLsn"`
}

func toWireStats(s blockstore.Stats) wireStats {
	return wireStats(s)
}

func (w wireStats) stats() blockstore.Stats { return blockstore.Stats(w) }

type wireExtent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

func toWireExtents(ext []blockstore.Extent) []wireExtent {
	out := make([]wireExtent, len(ext))
	for i, e := range ext {
		out[i] = wireExtent(e)
	}
	return out
}

func extents(w []wireExtent) []blockstore.Extent {
	out := make([]blockstore.Extent, len(w))
	for i, e := range w {
		out[i] = blockstore.Extent(e)
	}
	return out
}

type wireCheckOptions struct {
	ReadOnly    bool  `json:"readOnly,omitempty"`
	Repair      bool  `json:"repair,omitempty"`
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
}

// wireCheck is Check's result: the report (if the check ran) and the error (the check could not
// run, or found corrupt metadata).
type wireCheck struct {
	Report *wireCheckReport `json:"report,omitempty"`
	Error  *wireError       `json:"error,omitempty"`
}

type wireCheckReport struct {
	ReadOnly       bool         `json:"readOnly"`
	Generation     uint64       `json:"generation"`
	Volumes        int          `json:"volumes"`
	Snapshots      int          `json:"snapshots"`
	Nodes          uint64       `json:"nodes"`
	DataBlocks     uint64       `json:"dataBlocks"`
	UsedBlocks     uint64       `json:"usedBlocks"`
	FreeBlocks     uint64       `json:"freeBlocks"`
	Passes         int          `json:"passes"`
	MemoryBytes    int64        `json:"memoryBytes"`
	Corrupt        []*wireError `json:"corrupt,omitempty"`
	RefcountErrors []string     `json:"refcountErrors,omitempty"`
	Leaked         []uint64     `json:"leaked,omitempty"`
	LeakedBlocks   int          `json:"leakedBlocks"`
	Repaired       int          `json:"repaired"`
}

func toWireCheckReport(r *blockstore.CheckReport) *wireCheckReport {
	if r == nil {
		return nil
	}
	w := &wireCheckReport{ReadOnly: r.ReadOnly, Generation: r.Generation, Volumes: r.Volumes, Snapshots: r.Snapshots,
		Nodes: r.Nodes, DataBlocks: r.DataBlocks, UsedBlocks: r.UsedBlocks, FreeBlocks: r.FreeBlocks, Passes: r.Passes,
		MemoryBytes: r.MemoryBytes, RefcountErrors: r.RefcountErrors, Leaked: r.Leaked, LeakedBlocks: r.LeakedBlocks, Repaired: r.Repaired}
	for _, e := range r.Corrupt {
		w.Corrupt = append(w.Corrupt, encodeError(e))
	}
	return w
}

func (w *wireCheckReport) report() *blockstore.CheckReport {
	if w == nil {
		return nil
	}
	r := &blockstore.CheckReport{ReadOnly: w.ReadOnly, Generation: w.Generation, Volumes: w.Volumes, Snapshots: w.Snapshots,
		Nodes: w.Nodes, DataBlocks: w.DataBlocks, UsedBlocks: w.UsedBlocks, FreeBlocks: w.FreeBlocks, Passes: w.Passes,
		MemoryBytes: w.MemoryBytes, RefcountErrors: w.RefcountErrors, Leaked: w.Leaked, LeakedBlocks: w.LeakedBlocks, Repaired: w.Repaired}
	for _, e := range w.Corrupt {
		if e != nil {
			r.Corrupt = append(r.Corrupt, e.decode())
		}
	}
	return r
}

type wireExport struct {
	ID     string            `json:"id"`
	Volume uint64            `json:"volume"`
	Device string            `json:"device"`
	Method string            `json:"method"`
	Attrs  map[string]string `json:"attrs,omitempty"`
}

func toWireExport(e Export) wireExport {
	return wireExport{ID: e.ID, Volume: uint64(e.Volume), Device: e.Device, Method: e.Method, Attrs: e.Attrs}
}

func (w wireExport) export() Export {
	return Export{ID: w.ID, Volume: blockstore.VolumeID(w.Volume), Device: w.Device, Method: w.Method, Attrs: w.Attrs}
}

type wireLeftover struct {
	ID      string   `json:"id"`
	Devices []string `json:"devices,omitempty"`
	Mounted bool     `json:"mounted,omitempty"`
	Dir     string   `json:"dir,omitempty"`
	Held    bool     `json:"held,omitempty"`
}

func toWireLeftover(l export.Leftover) wireLeftover { return wireLeftover(l) }

func (w wireLeftover) leftover() export.Leftover { return export.Leftover(w) }

// wireIOStats names the operations (IOOpNames), so that a peer with other operations reads the
// ones it knows.
type wireIOStats struct {
	Ops      map[string]uint64 `json:"ops"`
	Errors   map[string]uint64 `json:"errors"`
	Bytes    map[string]uint64 `json:"bytes"`
	Exported int               `json:"exported"`
}

func toWireIOStats(s IOStats) wireIOStats {
	w := wireIOStats{Ops: map[string]uint64{}, Errors: map[string]uint64{}, Bytes: map[string]uint64{}, Exported: s.Exported}
	for op, name := range IOOpNames {
		w.Ops[name], w.Errors[name], w.Bytes[name] = s.Ops[op], s.Errors[op], s.Bytes[op]
	}
	return w
}

func (w wireIOStats) stats() IOStats {
	s := IOStats{Exported: w.Exported}
	for op, name := range IOOpNames {
		s.Ops[op], s.Errors[op], s.Bytes[op] = w.Ops[name], w.Errors[name], w.Bytes[name]
	}
	return s
}
