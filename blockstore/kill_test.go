package blockstore_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// The kill test runs a workload in a child process (this test binary, re-executed), kills it
// with SIGKILL at a random moment, then recovers the pool and checks it against a model built
// by replaying the same seeded workload: everything acknowledged by a Flush or a snapshot is
// there, everything else holds old or new contents, and Check is clean.

const (
	killEnvPool = "DATAIMAGE_KILL_POOL"
	killEnvSeed = "DATAIMAGE_KILL_SEED"
	killVolumes = 2
	killVolSize = 256 * modelBS
)

func TestMain(m *testing.M) {
	if path := os.Getenv(killEnvPool); path != "" {
		seed, _ := strconv.ParseUint(os.Getenv(killEnvSeed), 10, 64)
		if err := killChild(path, seed); err != nil {
			fmt.Fprintln(os.Stderr, "kill child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// killOp is one step of the child's workload.
type killOp struct {
	kind string // write, discard, flush, snapshot
	vol  int    // index into the volumes
	off  int64
	data []byte // write
	n    int64  // discard
}

func nextKillOp(rng *rand.Rand) killOp {
	op := killOp{vol: rng.IntN(killVolumes)}
	switch k := rng.IntN(100); {
	case k < 70:
		op.kind = "write"
		var n int64
		if rng.IntN(2) == 0 {
			op.off = rng.Int64N(killVolSize/modelBS) * modelBS
			n = min(killVolSize-op.off, (1+rng.Int64N(16))*modelBS)
		} else {
			op.off = rng.Int64N(killVolSize)
			n = 1 + rng.Int64N(min(killVolSize-op.off, 3*modelBS))
		}
		op.data = make([]byte, n)
		for i := range op.data {
			op.data[i] = byte(rng.Uint32())
		}
	case k < 80:
		op.kind = "discard"
		op.off = rng.Int64N(killVolSize)
		op.n = 1 + rng.Int64N(min(killVolSize-op.off, 8*modelBS))
	case k < 97:
		op.kind = "flush"
	default:
		op.kind = "snapshot"
	}
	return op
}

// killChild runs the workload until it is killed, reporting on stdout "start i" before op i
// and "ack i" once op i (a flush or snapshot) made everything before it durable.
func killChild(path string, seed uint64) error {
	p, err := blockstore.Open(path, blockstore.Options{})
	if err != nil {
		return err
	}
	vols := p.Volumes()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	out := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		op := nextKillOp(rng)
		fmt.Fprintf(out, "start %d\n", i)
		out.Flush()
		v, err := p.Volume(vols[op.vol].ID)
		if err != nil {
			return err
		}
		switch op.kind {
		case "write":
			_, err = v.WriteAt(op.data, op.off)
		case "discard":
			err = v.Discard(op.off, op.n)
		case "flush":
			err = p.Flush()
		case "snapshot":
			_, err = p.CreateSnapshot(vols[op.vol].ID, fmt.Sprintf("s%d", i))
		}
		if err != nil {
			return fmt.Errorf("op %d (%s): %w", i, op.kind, err)
		}
		if op.kind == "flush" || op.kind == "snapshot" {
			fmt.Fprintf(out, "ack %d\n", i)
			out.Flush()
		}
	}
}

func TestCrashKill(t *testing.T) {
	base := *crashSeed
	if base == 0 {
		base = rand.Uint64()
	}
	n := *crashKills
	if testing.Short() {
		n = max(n/4, 1)
	}
	dir := t.TempDir()
	var replayed int
	for k := 0; k < n; k++ {
		seed := base + uint64(k)
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			if killOnce(t, filepath.Join(dir, fmt.Sprintf("pool%d", k)), seed).Records > 0 {
				replayed++
			}
		}) {
			t.Fatalf("kill %d failed: rerun with go test ./blockstore -run 'TestCrashKill/seed=%d$' -args -crash.seed=%d -crash.kills=%d", k, seed, base, k+1)
		}
	}
	t.Logf("%d processes killed (base seed %d), %d recoveries replayed journal records", n, base, replayed)
	fmt.Printf("crash kills: %d SIGKILLed writers recovered and verified (%d with journal replay)\n", n, replayed)
}

func killOnce(t *testing.T, path string, seed uint64) blockstore.Recovery {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	opts.Size = 32 << 20
	opts.JournalSize = 16 * modelBS // small: checkpoints happen while the child runs
	p, err := blockstore.Create(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range killVolumes {
		if _, err := p.CreateVolume(fmt.Sprintf("v%d", i), killVolSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killEnvPool+"="+path, killEnvSeed+"="+strconv.FormatUint(seed, 10))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Let it run a while after its first operation, then kill it.
	lastStart, lastAck := -1, -1
	first := <-lines
	if !strings.HasPrefix(first, "start ") {
		t.Fatalf("child said %q", first)
	}
	delay := time.Duration(5+rand.New(rand.NewPCG(seed, seed+2)).IntN(300)) * time.Millisecond
	timer := time.After(delay)
	parse := func(l string) {
		f := strings.Fields(l)
		if len(f) != 2 {
			return
		}
		i, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "start":
			lastStart = i
		case "ack":
			lastAck = i
		}
	}
	parse(first)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("child exited before it was killed")
			}
			parse(l)
		case <-timer:
			break wait
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		parse(l)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}

	// The model: every op up to the last ack is durable; later ones may or may not be there.
	rng := rand.New(rand.NewPCG(seed, seed+1))
	imgs := make([]*image, killVolumes)
	allow := make([]*allowed, killVolumes)
	for i := range imgs {
		imgs[i] = &image{size: killVolSize, blocks: map[int64][]byte{}}
		allow[i] = newAllowed(imgs[i])
	}
	snaps := map[string]*image{}
	maybeSnaps := map[string]*image{}
	for i := 0; i <= lastStart; i++ {
		op := nextKillOp(rng)
		img := imgs[op.vol]
		switch op.kind {
		case "write":
			img.write(op.off, op.data)
			allow[op.vol].add(img, op.off, int64(len(op.data)))
		case "discard":
			img.zero(op.off, op.n)
			allow[op.vol].add(img, op.off, op.n)
		case "snapshot":
			name := fmt.Sprintf("s%d", i)
			if i <= lastAck {
				snaps[name] = img.clone(img.size)
			} else {
				maybeSnaps[name] = img.clone(img.size)
			}
		}
		if i <= lastAck && (op.kind == "flush" || op.kind == "snapshot") {
			for v := range imgs {
				allow[v].reset(imgs[v])
			}
		}
	}

	p, err = blockstore.Open(path, blockstore.Options{})
	if err != nil {
		t.Fatalf("recovery after kill at op %d (last ack %d): %v", lastStart, lastAck, err)
	}
	defer p.Close()
	rec := p.Recovery()
	t.Logf("killed after %v at op %d, last ack %d; recovery %+v", delay, lastStart, lastAck, rec)
	if rep, err := p.Check(false); err != nil || !rep.OK() {
		t.Fatalf("check after recovery: %v: %v %v", err, rep, rep.RefcountErrors)
	}
	for i, v := range p.Volumes() {
		vol, _ := p.Volume(v.ID)
		allow[i].verify(t, vol, v.Name)
	}
	found := map[string]bool{}
	for _, s := range p.Snapshots() {
		found[s.Name] = true
		img := snaps[s.Name]
		if img == nil {
			img = maybeSnaps[s.Name]
		}
		if img == nil {
			t.Fatalf("snapshot %q appeared from nowhere", s.Name)
		}
		sv, _ := p.SnapshotView(s.ID)
		newAllowed(img).verify(t, sv, "snapshot "+s.Name)
	}
	for name := range snaps {
		if !found[name] {
			t.Fatalf("acknowledged snapshot %q lost", name)
		}
	}
	return rec
}
