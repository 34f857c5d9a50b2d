package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/driver"
	"github.com/dataimage/dataimage/internal/units"
)

// Operations timed by the CSI suite, in the order of one repetition.
const (
	csiFdatasync = "bare fdatasync of the pool file"
	csiCaps      = "ControllerGetCapabilities (no pool work: the gRPC round trip)"
	csiSnapshot  = "CreateSnapshot"
	csiClone     = "CreateVolume, content source = that snapshot"
	csiDelVol    = "DeleteVolume (that clone)"
	csiDelSnap   = "DeleteSnapshot"
)

var csiOps = []string{csiFdatasync, csiCaps, csiSnapshot, csiClone, csiDelVol, csiDelSnap}

// csiGoalOps are the operations with a goal, with their names in the Goals table.
var csiGoalOps = map[string]string{csiSnapshot: "CreateSnapshot", csiClone: "CreateVolume from a snapshot"}

// csiCase is one source volume of the CSI suite, in its own pool and behind its own server.
type csiCase struct {
	lat     *latCase // the pool and volume, set up as section 3 does
	srcID   string   // the CSI ID of the source volume
	cc      csi.ControllerClient
	samples map[string][]time.Duration
}

type csiResult struct {
	reps  int
	cases []*csiCase
}

// csiRoundTrips measures CSI CreateSnapshot and CreateVolume-from-snapshot round trips through
// an in-process driver.Server on a unix socket, for a 1 GiB and a 1 TiB source volume each in
// its own pool (filled and reopened as the latency suite does), repetitions interleaved.
func (b *bench) csiRoundTrips() (*csiResult, error) {
	res := &csiResult{reps: b.reps}
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	for _, size := range []int64{gib, 1 << 40} {
		name := units.FormatBytes(size)
		c := &csiCase{lat: &latCase{name: name, size: size}, samples: map[string][]time.Duration{}}
		tag := strings.ReplaceAll(strings.ToLower(name), " ", "")
		c.lat.path = filepath.Join(b.dir, "csi-"+tag+".pool")
		defer removeFile(c.lat.path)
		if err := b.setupLatCase(c.lat, b.fillLeaf); err != nil {
			return nil, fmt.Errorf("%s volume: %w", name, err)
		}
		defer c.lat.p.Close()
		defer c.lat.sync.Close()

		// A JSON logger at Info level writing nowhere: the driver formats its per-call logs as
		// it would in production, and they are discarded.
		logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
		// The plugin reaches the pool over the data plane's socket, as in production.
		dpSock := filepath.Join(b.dir, "dp-"+tag+".sock")
		dpLis, err := dataplane.Listen(dpSock)
		if err != nil {
			return nil, err
		}
		dpServed := make(chan error, 1)
		go func() {
			dpServed <- dataplane.NewServer(dataplane.NewLocal(c.lat.p, nil, logger), "bench", logger).Serve(ctx, dpLis)
		}()
		defer func() {
			cancel()
			if err := <-dpServed; err != nil {
				fmt.Fprintln(b.log, "storebench: data plane server:", err)
			}
		}()
		store := dataplane.NewClient(dpSock)
		defer store.Close()
		srv, err := driver.NewServer(ctx, driver.Config{Version: "bench", NodeID: "bench-node", Logger: logger}, store)
		if err != nil {
			return nil, err
		}
		sock := filepath.Join(b.dir, "csi-"+tag+".sock")
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ctx, "unix://"+sock) }()
		defer func() {
			cancel()
			if err := <-served; err != nil {
				fmt.Fprintln(b.log, "storebench: CSI server:", err)
			}
		}()
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		c.cc = csi.NewControllerClient(conn)
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		list, err := c.cc.ListVolumes(cctx, &csi.ListVolumesRequest{}, grpc.WaitForReady(true))
		ccancel()
		if err != nil {
			return nil, fmt.Errorf("%s: ListVolumes: %w", name, err)
		}
		if n := len(list.GetEntries()); n != 1 {
			return nil, fmt.Errorf("%s: ListVolumes: %d volumes, want 1", name, n)
		}
		c.srcID = list.GetEntries()[0].GetVolume().GetVolumeId()
		res.cases = append(res.cases, c)
	}

	buf := alignedBuf(4 * kib)
	rng := rand.New(rand.NewPCG(21, 22))
	blockCap := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	const warmup = 3
	for rep := range b.reps + warmup {
		for _, c := range res.cases {
			if rep == warmup {
				clear(c.samples)
			}
			timed := func(op string, fn func(ctx context.Context) error) error {
				cctx, ccancel := context.WithTimeout(ctx, time.Minute)
				defer ccancel()
				t0 := time.Now()
				err := fn(cctx)
				d := time.Since(t0)
				if err != nil {
					return fmt.Errorf("%s volume: %s: %w", c.lat.name, op, err)
				}
				c.samples[op] = append(c.samples[op], d)
				return nil
			}
			if err := timed(csiFdatasync, func(context.Context) error { return syscall.Fdatasync(int(c.lat.sync.Fd())) }); err != nil {
				return nil, err
			}
			if err := timed(csiCaps, func(ctx context.Context) error {
				_, err := c.cc.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
				return err
			}); err != nil {
				return nil, err
			}
			// One 4 KiB write in the first GiB and a Flush, untimed, as in section 3.
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if _, err := c.lat.vol.WriteAt(buf, rng.Int64N(gib/(4*kib))*4*kib); err != nil {
				return nil, err
			}
			if err := c.lat.p.Flush(); err != nil {
				return nil, err
			}
			var snapID, volID string
			if err := timed(csiSnapshot, func(ctx context.Context) error {
				r, err := c.cc.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("bench-snap-%d", rep), SourceVolumeId: c.srcID})
				snapID = r.GetSnapshot().GetSnapshotId()
				return err
			}); err != nil {
				return nil, err
			}
			if err := timed(csiClone, func(ctx context.Context) error {
				r, err := c.cc.CreateVolume(ctx, &csi.CreateVolumeRequest{
					Name:               fmt.Sprintf("bench-clone-%d", rep),
					VolumeCapabilities: blockCap,
					VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
						Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}},
				})
				volID = r.GetVolume().GetVolumeId()
				if err == nil && r.GetVolume().GetCapacityBytes() != c.lat.size {
					err = fmt.Errorf("clone has %d bytes, want %d", r.GetVolume().GetCapacityBytes(), c.lat.size)
				}
				return err
			}); err != nil {
				return nil, err
			}
			if err := timed(csiDelVol, func(ctx context.Context) error {
				_, err := c.cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volID})
				return err
			}); err != nil {
				return nil, err
			}
			if err := timed(csiDelSnap, func(ctx context.Context) error {
				_, err := c.cc.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID})
				return err
			}); err != nil {
				return nil, err
			}
		}
	}
	for _, c := range res.cases {
		if n := len(c.lat.p.Volumes()); n != 1 {
			return nil, fmt.Errorf("%s pool: %d volumes left after the deletes, want 1", c.lat.name, n)
		}
		b.logf("  %s: CreateSnapshot p50 %v, CreateVolume from snapshot p50 %v, caps p50 %v, fdatasync p50 %v", c.lat.name,
			quantile(c.samples[csiSnapshot], 0.5), quantile(c.samples[csiClone], 0.5),
			quantile(c.samples[csiCaps], 0.5), quantile(c.samples[csiFdatasync], 0.5))
	}
	return res, nil
}

// ---- 6. CSI round trips ----

func (r *report) csiSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	res := r.csi
	if res == nil || len(res.cases) != 2 {
		return
	}
	small, big := res.cases[0], res.cases[1]
	w("## 6. CSI round trips: CreateSnapshot and CreateVolume from a snapshot, 1 GiB vs 1 TiB source\n\n")
	w("How: each source volume lives in its own pool, set up exactly as in section 3 (8 GiB sparse file, 4 KiB blocks, `DirectIO: true`, over-provisioning 400; the same fill; closed and reopened: bench/storebench/latency.go). ")
	w("Each pool is served, as on a node, by its own in-process data plane (`dataplane.NewLocal` served by `dataplane.NewServer` on a unix socket) and an in-process `driver.NewServer` (Identity and Controller; a JSON `slog` logger at Info level writing to `io.Discard`, so the per-call logs are formatted and dropped) that reaches the pool through `dataplane.NewClient` on that socket, served on a unix socket of its own (`Server.Serve`), and called through `csi.NewControllerClient` over a `grpc.NewClient(\"unix://…\")` connection with insecure credentials, one call at a time. ")
	w("One repetition, on each pool in turn: a bare `fdatasync` of the pool file (timed, for scale); `ControllerGetCapabilities` (timed: the gRPC round trip with no pool work); one 4 KiB write in the first GiB and `Pool.Flush` (untimed, as in section 3); `CreateSnapshot` of the source volume (timed); `CreateVolume` named anew with that snapshot as content source, block access, no capacity range (timed: a clone at the snapshot's size, so a 1 TiB clone of the 1 TiB source); `DeleteVolume` of that clone and `DeleteSnapshot` (each timed). **Everything a repetition creates it deletes**, so every repetition starts from the same pool. %d timed repetitions after 3 untimed; p99 is %s. Times are client-side, from the call to its return.\n\n", res.reps, rankName(res.reps))
	w("| Operation | 1 GiB p50 | 1 GiB p99 | 1 TiB p50 | 1 TiB p99 | 1 TiB / 1 GiB (p50) | Goal | Met |\n|---|---|---|---|---|---|---|---|\n")
	for _, op := range csiOps {
		s50, s99 := quantile(small.samples[op], 0.5), quantile(small.samples[op], 0.99)
		b50, b99 := quantile(big.samples[op], 0.5), quantile(big.samples[op], 0.99)
		ratio := float64(b50) / float64(s50)
		goalS, met := "—", "—"
		if gname, ok := csiGoalOps[op]; ok {
			worst := max(s50, b50)
			okP50, okRatio := worst <= 5*time.Millisecond, ratio <= 1.5
			goalS = "p50 ≤ 5 ms; ratio ≤ 1.5"
			met = fmt.Sprintf("p50 %s, ratio %s", metStr(okP50), metStr(okRatio))
			r.addGoal(goal{id: "csi", what: "CSI " + gname + " round trip, p50 (worse of 1 GiB and 1 TiB source)", measured: fmtLat(worst), target: "≤ 5 ms", met: okP50})
			r.addGoal(goal{id: "csiratio", what: "CSI " + gname + " round trip: 1 TiB / 1 GiB source (p50)", measured: fmt.Sprintf("%.2f", ratio), target: "≤ 1.5", met: okRatio})
		}
		w("| %s | %s | %s | %s | %s | %.2f | %s | %s |\n", op, fmtLat(s50), fmtLat(s99), fmtLat(b50), fmtLat(b99), ratio, goalS, met)
	}
	w("\n")
	if l := r.lat; l != nil && len(l.cases) == 2 {
		w("For scale, the same operations called in process in section 3 (p50, earlier in this run): ")
		var parts []string
		for i, c := range l.cases {
			cc := res.cases[i]
			parts = append(parts, fmt.Sprintf("%s: `Pool.CreateSnapshot` %s vs CSI %s; `Pool.Clone` %s vs CSI %s", c.name,
				fmtLat(quantile(c.samples[opSnapshot], 0.5)), fmtLat(quantile(cc.samples[csiSnapshot], 0.5)),
				fmtLat(quantile(c.samples[opClone], 0.5)), fmtLat(quantile(cc.samples[csiClone], 0.5))))
		}
		w("%s. The CSI calls add the gRPC round trip (the `ControllerGetCapabilities` row), request validation, a per-name lock and a lookup by name (`CreateSnapshot` in driver/snapshot.go, `CreateVolume` in driver/controller.go) to the store's call.\n\n", strings.Join(parts, "; "))
	}
}

// explainCSI analyses a missed CSI goal from this run's samples.
func (r *report) explainCSI() string {
	res := r.csi
	if res == nil || len(res.cases) != 2 {
		return ""
	}
	var b strings.Builder
	for _, c := range res.cases {
		q := func(op string) time.Duration { return quantile(c.samples[op], 0.5) }
		fmt.Fprintf(&b, "%s source, p50: bare fdatasync %s, gRPC round trip %s, CreateSnapshot %s, CreateVolume from snapshot %s. ", c.lat.name,
			fmtLat(q(csiFdatasync)), fmtLat(q(csiCaps)), fmtLat(q(csiSnapshot)), fmtLat(q(csiClone)))
	}
	b.WriteString("Both calls end in one durable commit of the store (blockstore/journal.go: a journal block write and an fdatasync), so their floor is the bare fdatasync above plus the gRPC round trip; a p50 above 5 ms with an fdatasync near it is the disk's flush latency, not the driver. ")
	b.WriteString("The 1 TiB and 1 GiB pools differ only in tree size; neither call walks the tree (a snapshot and a clone share the root), so a size ratio far from 1 points at a checkpoint inside a call (the policy in blockstore/journal.go) or at the disk's drift between the two pools' flushes — compare the fdatasync row.")
	return b.String()
}
