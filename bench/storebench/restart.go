package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dataimage/dataimage/blockstore/export/holder"
	"github.com/dataimage/dataimage/dataplane"
)

// ---- Restarts: I/O across restarts of the data plane and the CSI plugin ----

// restartScenario is one row of the restarts section: what happens to the node's processes while fio runs.
type restartScenario struct {
	name   string
	what   string // "" (none: the baseline), "dataplane" or "plugin"
	sig    syscall.Signal
	target time.Duration // longest stall allowed; 0: none
	// overBaseline: target is the stall allowed beyond the baseline row's longest request (the
	// machine's own noise, which is not the event's doing).
	overBaseline bool
}

var restartScenarios = []restartScenario{
	{name: "no restart (baseline)"},
	{name: "data plane SIGKILL + restart", what: "dataplane", sig: syscall.SIGKILL, target: 2 * time.Second},
	{name: "data plane SIGTERM (upgrade: hand over) + restart", what: "dataplane", sig: syscall.SIGTERM, target: 2 * time.Second},
	{name: "CSI plugin SIGKILL + restart", what: "plugin", sig: syscall.SIGKILL, target: 100 * time.Millisecond, overBaseline: true},
}

// restartEvents is how many restarts each scenario makes while fio runs.
const restartEvents = 3

type restartRow struct {
	s        restartScenario
	events   int
	exitErr  string        // fio's exit error, "" if it exited 0
	ioErrors int           // fio's error count (total_err of the job)
	ios      int64         // I/Os completed
	longest  time.Duration // fio's longest request (lat_ns max, reads and writes)
	restart  time.Duration // longest time from a signal to the new process answering
}

type restartResult struct {
	cmd  string
	rows []restartRow
}

// nodeProcs is the node's processes as the chart runs them: the FUSE holder, the data plane
// (pool and exports; --holder) and the CSI plugin (--dataplane-socket), from binaries built
// from this tree.
type nodeProcs struct {
	b                                  *bench
	dir, bin                           string
	holderSock, dpSock, csiSock, paths string
	holder, dp, plugin                 *exec.Cmd
}

func (n *nodeProcs) start(name string, args ...string) (*exec.Cmd, error) {
	log, err := os.OpenFile(filepath.Join(n.dir, name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(n.bin, name), args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

func (n *nodeProcs) startHolder() (err error) {
	if n.holder, err = n.start("dataimage-fuse-holder", "--socket", n.holderSock); err != nil {
		return err
	}
	return waitFor(time.Minute, func() error {
		c, err := holder.Dial(n.holderSock)
		if err == nil {
			c.Close()
		}
		return err
	})
}

func (n *nodeProcs) startDataPlane() (err error) {
	n.dp, err = n.start("dataimage-dataplane", "--socket", n.dpSock, "--pool", filepath.Join(n.dir, "pool"), "--pool-size", "2Gi",
		"--export-state-dir", filepath.Join(n.dir, "export"), "--holder", n.holderSock)
	if err != nil {
		return err
	}
	c := dataplane.NewClient(n.dpSock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(n.b.ctx, time.Minute)
	defer cancel()
	return c.WaitReady(ctx, nil)
}

// startPlugin starts the plugin and returns a connection once it answers Probe.
func (n *nodeProcs) startPlugin() (*grpc.ClientConn, error) {
	var err error
	if n.plugin, err = n.start("dataimage-csi", "--endpoint", "unix://"+n.csiSock, "--node-id", "bench", "--dataplane-socket", n.dpSock); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+n.csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(n.b.ctx, time.Minute)
	defer cancel()
	if _, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// stop signals cmd and waits for it.
func stop(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	_ = cmd.Wait()
}

func waitFor(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restarts measures the restarts section: a block volume of the node's processes, staged and published
// through the plugin, runs fio (4 KiB random writes, each block verified) while the data plane or
// the plugin is stopped and started again restartEvents times.
func (b *bench) restarts() (*restartResult, error) {
	n := &nodeProcs{b: b, dir: filepath.Join(b.dir, "restart")}
	if err := os.MkdirAll(filepath.Join(n.dir, "bin"), 0o755); err != nil {
		return nil, err
	}
	n.bin = filepath.Join(n.dir, "bin")
	n.holderSock, n.dpSock, n.csiSock = filepath.Join(n.dir, "holder.sock"), filepath.Join(n.dir, "dp", "dataplane.sock"), filepath.Join(n.dir, "csi.sock")
	n.paths = filepath.Join(n.dir, "paths")
	// Undone at the end of the section, last first (and by the bench's undo stack on a signal).
	var undos []func() error
	defer func() {
		for i := len(undos) - 1; i >= 0; i-- {
			if err := undos[i](); err != nil {
				b.logf("  clean up: %v", err)
			}
		}
	}()
	b.logf("  building the node's binaries")
	build := exec.Command("go", "build", "-o", n.bin+"/", "./cmd/dataimage-fuse-holder", "./cmd/dataimage-dataplane", "./cmd/dataimage-csi")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %w: %s", err, out)
	}
	if err := n.startHolder(); err != nil {
		return nil, fmt.Errorf("the FUSE holder: %w", err)
	}
	undos = append(undos, b.undo.push("stop the FUSE holder", func() error { stop(n.holder, syscall.SIGKILL); return nil }))
	if err := n.startDataPlane(); err != nil {
		return nil, fmt.Errorf("the data plane: %w", err)
	}
	undos = append(undos, b.undo.push("stop the data plane", func() error { stop(n.dp, syscall.SIGTERM); return nil }))
	conn, err := n.startPlugin()
	if err != nil {
		return nil, fmt.Errorf("the plugin: %w", err)
	}
	undos = append(undos, b.undo.push("stop the plugin", func() error { stop(n.plugin, syscall.SIGTERM); return nil }))

	// A block volume, staged and published as the kubelet does.
	blockCap := &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
	ctx := b.ctx
	vol, err := csi.NewControllerClient(conn).CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "restart", VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 256 * mib}})
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("CreateVolume: %w", err)
	}
	id := vol.GetVolume().GetVolumeId()
	staging, target := filepath.Join(n.paths, "staging"), filepath.Join(n.paths, "target")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, err
	}
	node := func() (csi.NodeClient, func(), error) {
		c, err := grpc.NewClient("unix://"+n.csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, err
		}
		return csi.NewNodeClient(c), func() { c.Close() }, nil
	}
	nc, closeNC, err := node()
	if err != nil {
		return nil, err
	}
	if _, err := nc.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCap}); err != nil {
		closeNC()
		return nil, fmt.Errorf("NodeStageVolume: %w", err)
	}
	if _, err := nc.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: blockCap}); err != nil {
		closeNC()
		return nil, fmt.Errorf("NodePublishVolume: %w", err)
	}
	closeNC()
	undos = append(undos, b.undo.push("unpublish and unstage the volume", func() error {
		nc, closeNC, err := node()
		if err != nil {
			return err
		}
		defer closeNC()
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = nc.NodeUnpublishVolume(cctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		_, err = nc.NodeUnstageVolume(cctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		return err
	}))

	runtime := 20 * time.Second
	if b.quick {
		runtime = 8 * time.Second
	}
	res := &restartResult{}
	for _, s := range restartScenarios {
		b.logf("  fio for %s while: %s", roundDur(runtime), s.name)
		args := []string{"--name=restart", "--filename=DEV", "--size=128M", "--rw=randwrite", "--bs=4k", "--ioengine=psync", "--direct=1",
			"--verify=crc32c", "--verify_fatal=1", "--verify_backlog=64", "--verify_state_save=0", "--continue_on_error=none",
			"--time_based", fmt.Sprintf("--runtime=%ds", int(runtime.Seconds())), "--output-format=json"}
		res.cmd = "fio " + strings.Join(args, " ")
		args[1] = "--filename=" + target
		fio := exec.CommandContext(ctx, "fio", args...)
		var out, errOut strings.Builder
		fio.Stdout, fio.Stderr = &out, &errOut
		if err := fio.Start(); err != nil {
			return nil, err
		}
		row := restartRow{s: s}
		var evErr error
		if s.what != "" {
			step := runtime / (restartEvents + 1)
			for range restartEvents {
				time.Sleep(step)
				t0 := time.Now()
				switch s.what {
				case "dataplane":
					stop(n.dp, s.sig)
					evErr = n.startDataPlane()
				case "plugin":
					stop(n.plugin, s.sig)
					var c *grpc.ClientConn
					if c, evErr = n.startPlugin(); evErr == nil {
						c.Close()
					}
				}
				if evErr != nil {
					break
				}
				row.restart = max(row.restart, time.Since(t0))
				row.events++
			}
		}
		werr := fio.Wait()
		if evErr != nil {
			return nil, fmt.Errorf("%s: %w", s.name, evErr)
		}
		if werr != nil {
			row.exitErr = strings.TrimSpace(werr.Error() + " " + lastLine(errOut.String()))
		}
		if err := parseRestartFIO(out.String(), &row); err != nil && row.exitErr == "" {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		res.rows = append(res.rows, row)
	}
	return res, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// parseRestartFIO reads a verify job's errors, I/Os and longest request from fio's JSON output.
func parseRestartFIO(out string, row *restartRow) error {
	o, err := decodeFIO(out)
	if err != nil {
		return err
	}
	j := o.Jobs[0]
	row.ioErrors = j.TotalErr
	row.ios = j.Read.TotalIOs + j.Write.TotalIOs
	row.longest = time.Duration(max(j.Read.LatNS.Max, j.Write.LatNS.Max))
	return nil
}

func (r *report) restartSection(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	res := r.restart
	if res == nil {
		return
	}
	w("## Restarts: the longest I/O stall across restarts of the data plane and the CSI plugin\n\n")
	w("How: the node's three processes run as the chart runs them, from binaries built from this tree (`go build ./cmd/dataimage-fuse-holder ./cmd/dataimage-dataplane ./cmd/dataimage-csi`): the FUSE holder, the data plane with `--holder` (a 2 GiB pool in the scratch directory) and the plugin with `--dataplane-socket`. A 256 MiB block volume is created, staged and published through the plugin's CSI API (as the kubelet does), and fio writes 4 KiB blocks at random on the published device and verifies each (command below). In each row but the baseline, the process named is stopped with the signal named and started again %d times, evenly spread over fio's run; a new data plane adopts the exports the holder kept and the kernel resends what the dead one had read (`FUSE_NOTIFY_RESEND`). **Longest request** is fio's maximum total latency (`lat_ns` max, reads and writes): the longest stall an application saw. **Restart** is the longest time from the signal to the new process answering (the data plane's readiness, the plugin's Probe). The baseline row shows the longest request with no restart, for scale.\n\n", restartEvents)
	w("The plugin is not on the I/O path, so its target (no stall beyond 100 ms) is read against the baseline: its longest request may exceed the baseline's longest request by at most 100 ms. The data plane's target (2 s) is absolute.\n\n")
	w("| Event | Restarts | fio exit | I/O errors | I/Os | Longest request | Restart | Target | Met |\n|---|---|---|---|---|---|---|---|---|\n")
	var baseline time.Duration
	for _, row := range res.rows {
		if row.s.what == "" {
			baseline = row.longest
		}
	}
	for _, row := range res.rows {
		exit := "0"
		if row.exitErr != "" {
			exit = row.exitErr
		}
		target, met := "—", "—"
		if row.s.target > 0 {
			limit := row.s.target
			target = fmt.Sprintf("≤ %s, no error", roundDur(row.s.target))
			if row.s.overBaseline {
				limit += baseline
				target = fmt.Sprintf("≤ baseline + %s (%s), no error", roundDur(row.s.target), fmtLat(limit))
			}
			ok := row.exitErr == "" && row.ioErrors == 0 && row.events == restartEvents && row.longest <= limit
			met = metStr(ok)
			r.addGoal(goal{id: "restart", what: "longest I/O stall across a " + row.s.name + ", fio on a published block volume",
				measured: fmt.Sprintf("%s, %d errors, fio exit %s", fmtLat(row.longest), row.ioErrors, exit), target: target, met: ok})
		}
		w("| %s | %d | %s | %d | %d | %s | %s | %s | %s |\n", row.s.name, row.events, exit, row.ioErrors, row.ios, fmtLat(row.longest), fmtLat(row.restart), target, met)
	}
	w("\nCommand (`DEV` is the published device): `%s`\n\n", res.cmd)
}
