package blockstore_test

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// The kill test runs a workload in a child process (this test binary, re-executed) that
// reports every operation it completed, kills the child with SIGKILL at a random moment, then
// recovers the pool and checks it against a model built by replaying the same seeded workload:
// every operation the child reported, flushed or not, is there; the one operation of each
// worker that may have been in flight holds old or new contents, nothing else; Check is clean.
// Each pool goes through killPerPool such rounds, each one starting from what the last
// recovery found.
//
// Old or new byte by byte, not block by block: a write(2) that SIGKILL interrupts may stop
// within a page, where its source buffer crosses one that was not yet mapped in (a partial
// block that Discard zeroes in place, from a buffer just allocated, has been seen torn so).

const (
	killEnvPool   = "DATAIMAGE_KILL_POOL"
	killEnvSeed   = "DATAIMAGE_KILL_SEED"
	killEnvRound  = "DATAIMAGE_KILL_ROUND"
	killEnvDirect = "DATAIMAGE_KILL_DIRECT"
	killWorkers   = 3 // goroutines of the child, each on its own volume
	killVolSize   = 256 * modelBS
	killPerPool   = 10 // rounds (kills) per pool
	killHot       = 24 // blocks at the start of each volume that writes favour (overwrites)
)

func TestMain(m *testing.M) {
	if path := os.Getenv(killEnvPool); path != "" {
		seed, _ := strconv.ParseUint(os.Getenv(killEnvSeed), 10, 64)
		round, _ := strconv.Atoi(os.Getenv(killEnvRound))
		if err := killChild(path, seed, round, os.Getenv(killEnvDirect) != ""); err != nil {
			fmt.Fprintln(os.Stderr, "kill child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// killOp is one step of a worker's workload.
type killOp struct {
	kind string // write, discard, flush, snapshot, delsnap
	off  int64
	data []byte // write
	n    int64  // discard
}

// killRand returns the random stream of worker w in a round of the pool seeded with seed.
func killRand(seed uint64, round, w int) *rand.Rand {
	return rand.New(rand.NewPCG(seed, uint64(round)<<8|uint64(w)))
}

func nextKillOp(rng *rand.Rand) killOp {
	var op killOp
	switch k := rng.IntN(100); {
	case k < 81:
		op.kind = "write"
		var n int64
		switch rng.IntN(3) {
		case 0: // whole blocks, anywhere
			op.off = rng.Int64N(killVolSize/modelBS) * modelBS
			n = min(killVolSize-op.off, (1+rng.Int64N(16))*modelBS)
		case 1: // whole blocks among the hot ones: mostly overwrites in place
			op.off = rng.Int64N(killHot) * modelBS
			n = (1 + rng.Int64N(4)) * modelBS
		default: // a few bytes to a few blocks, unaligned
			op.off = rng.Int64N(killVolSize)
			n = 1 + rng.Int64N(min(killVolSize-op.off, 3*modelBS))
		}
		op.data = make([]byte, n)
		for i := range op.data {
			op.data[i] = byte(rng.Uint32())
		}
	case k < 92:
		op.kind = "discard"
		op.off = rng.Int64N(killVolSize)
		op.n = 1 + rng.Int64N(min(killVolSize-op.off, 8*modelBS))
	case k < 96:
		op.kind = "flush"
	case k < 98:
		op.kind = "snapshot"
	default:
		op.kind = "delsnap" // the worker's oldest snapshot of the round, if any
	}
	return op
}

func killSnapName(round, w, i int) string { return fmt.Sprintf("r%d-w%d-%d", round, w, i) }

// killChild runs the workers until the process is killed. Each writes "ack w i" on stdout
// (one write) once its op i has returned.
func killChild(path string, seed uint64, round int, direct bool) error {
	p, err := blockstore.Open(path, blockstore.Options{DirectIO: direct})
	if err != nil {
		return err
	}
	vols := p.Volumes()
	if len(vols) != killWorkers {
		return fmt.Errorf("%d volumes, want %d", len(vols), killWorkers)
	}
	var outMu sync.Mutex
	errc := make(chan error, killWorkers)
	for w := range killWorkers {
		go func() {
			errc <- func() error {
				rng := killRand(seed, round, w)
				v, err := p.Volume(vols[w].ID)
				if err != nil {
					return err
				}
				var snaps []blockstore.SnapshotID
				for i := 0; ; i++ {
					op := nextKillOp(rng)
					switch op.kind {
					case "write":
						_, err = v.WriteAt(op.data, op.off)
					case "discard":
						err = v.Discard(op.off, op.n)
					case "flush":
						err = p.Flush()
					case "snapshot":
						var s blockstore.SnapshotInfo
						if s, err = p.CreateSnapshot(vols[w].ID, killSnapName(round, w, i)); err == nil {
							snaps = append(snaps, s.ID)
						}
					case "delsnap":
						if len(snaps) > 0 {
							err = p.DeleteSnapshot(snaps[0])
							snaps = snaps[1:]
						}
					}
					if err != nil {
						return fmt.Errorf("worker %d op %d (%s): %w", w, i, op.kind, err)
					}
					outMu.Lock()
					_, err = fmt.Fprintf(os.Stdout, "ack %d %d\n", w, i)
					outMu.Unlock()
					if err != nil {
						return err
					}
				}
			}()
		}()
	}
	return <-errc
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
	var mu sync.Mutex
	var st killStats
	// Pools in parallel: a round mostly waits, for its child or for fdatasyncs.
	t.Run("pools", func(t *testing.T) {
		for k := 0; k*killPerPool < n; k++ {
			seed := base + uint64(k)
			rounds := min(killPerPool, n-k*killPerPool)
			t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
				t.Parallel()
				defer func() {
					if t.Failed() {
						t.Logf("rerun with go test ./blockstore -run 'TestCrashKill/pools/seed=%d$' -args -crash.seed=%d -crash.kills=%d", seed, base, (k+1)*killPerPool)
					}
				}()
				path := filepath.Join(dir, fmt.Sprintf("pool%d", k))
				if k%4 == 2 && os.Geteuid() == 0 {
					path = attachLoop(t, 32<<20) // a block device: its page cache holds the journal
				}
				var pst killStats
				killPool(t, path, seed, rounds, k%2 == 1, &pst)
				mu.Lock()
				st.add(pst)
				mu.Unlock()
			})
		}
	})
	t.Logf("%d processes killed (base seed %d): %d operations acknowledged, %d writes and discards of them after the last flush or snapshot change; %d snapshot changes in flight; %d recoveries replayed journal records",
		st.kills, base, st.acked, st.unflushed, st.inFlightSnapshots, st.replayed)
	fmt.Printf("crash kills: %d SIGKILLed writers recovered; all %d acknowledged operations found (%d not flushed)\n", st.kills, st.acked, st.unflushed)
}

// killStats counts what the kill rounds covered.
type killStats struct {
	kills, replayed   int
	acked, unflushed  int
	inFlightSnapshots int
}

func (s *killStats) add(o killStats) {
	s.kills += o.kills
	s.replayed += o.replayed
	s.acked += o.acked
	s.unflushed += o.unflushed
	s.inFlightSnapshots += o.inFlightSnapshots
}

// killPool creates a pool and runs rounds kill rounds on it.
func killPool(t *testing.T, path string, seed uint64, rounds int, direct bool, st *killStats) {
	var opts blockstore.Options
	blockstore.SetTestFanout(&opts, 4)
	opts.Size = 32 << 20
	opts.JournalSize = 16 * modelBS // small: checkpoints happen while the child runs
	opts.DirectIO = direct
	p, err := blockstore.Create(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	imgs := make([]*image, killWorkers)
	for i := range killWorkers {
		if _, err := p.CreateVolume(fmt.Sprintf("v%d", i), killVolSize); err != nil {
			t.Fatal(err)
		}
		imgs[i] = &image{size: killVolSize, blocks: map[int64][]byte{}}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for round := range rounds {
		killRound(t, path, seed, round, direct, imgs, st)
	}
}

// killRound runs one child on the pool at path, kills it, recovers the pool and checks it
// against imgs (the volumes' contents when the round starts), which it then sets to what the
// recovered volumes hold. It leaves the pool closed, without snapshots.
func killRound(t *testing.T, path string, seed uint64, round int, direct bool, imgs []*image, st *killStats) {
	acks, order, delay := runKillChild(t, path, seed, round, direct)
	st.kills++
	kinds := make([][]string, killWorkers) // of each worker's ops

	// The model: each worker's ops up to its last ack happened; the next one may have.
	allow := make([]*allowed, killWorkers)
	snaps := map[string]*image{}      // acknowledged, not deleted
	maybeSnaps := map[string]*image{} // created or deleted by an op in flight
	gone := map[string]bool{}         // acknowledged deletions
	for w := range killWorkers {
		img := imgs[w].clone(killVolSize)
		allow[w] = newAllowed(img)
		rng := killRand(seed, round, w)
		var mine []string // the worker's snapshots, oldest first
		for i := 0; i <= acks[w]+1; i++ {
			op := nextKillOp(rng)
			kinds[w] = append(kinds[w], op.kind)
			done := i <= acks[w]
			switch op.kind {
			case "write":
				img.write(op.off, op.data)
			case "discard":
				img.zero(op.off, op.n)
			case "snapshot":
				name := killSnapName(round, w, i)
				mine = append(mine, name)
				if done {
					snaps[name] = img.clone(img.size)
				} else {
					maybeSnaps[name] = img.clone(img.size)
				}
			case "delsnap":
				if len(mine) > 0 {
					name := mine[0]
					mine = mine[1:]
					if done {
						delete(snaps, name)
						gone[name] = true
					} else {
						maybeSnaps[name] = snaps[name]
						delete(snaps, name)
					}
				}
			}
			if !done {
				if op.kind == "write" {
					allow[w].add(img, op.off, int64(len(op.data)))
				} else if op.kind == "discard" {
					allow[w].add(img, op.off, op.n)
				} else if op.kind == "snapshot" || op.kind == "delsnap" {
					st.inFlightSnapshots++
				}
				continue
			}
			allow[w].reset(img)
		}
	}
	// Writes and discards acknowledged after the last acknowledged flush or snapshot change
	// (which commits every completed write of the pool): no flush covers them.
	next, unflushed := make([]int, killWorkers), 0
	for _, w := range order {
		k := kinds[w][next[w]]
		next[w]++
		if k == "write" || k == "discard" {
			unflushed++
		} else {
			unflushed = 0
		}
	}
	st.acked += len(order)
	st.unflushed += unflushed

	p, err := blockstore.Open(path, blockstore.Options{DirectIO: direct})
	if err != nil {
		t.Fatalf("round %d: recovery after kill (acks %v): %v", round, acks, err)
	}
	defer func() {
		if p != nil {
			p.Close()
		}
	}()
	rec := p.Recovery()
	if rec.Records > 0 {
		st.replayed++
	}
	t.Logf("killed after %v (round %d), acknowledged ops per worker %v; recovery %+v", delay, round, acks, rec)
	if rep, err := p.Check(false); err != nil || !rep.OK() {
		t.Fatalf("round %d: check after recovery: %v: %v %v", round, err, rep, rep.RefcountErrors)
	}
	vols := p.Volumes()
	if len(vols) != killWorkers {
		t.Fatalf("round %d: %d volumes after recovery, want %d", round, len(vols), killWorkers)
	}
	for w, v := range vols {
		vol, err := p.Volume(v.ID)
		if err != nil {
			t.Fatal(err)
		}
		allow[w].verifyUnits(t, vol, fmt.Sprintf("round %d: volume %s (last ack %d)", round, v.Name, acks[w]), 1)
	}
	found := map[string]bool{}
	for _, s := range p.Snapshots() {
		found[s.Name] = true
		img := snaps[s.Name]
		if img == nil {
			img = maybeSnaps[s.Name]
		}
		if img == nil {
			if gone[s.Name] {
				t.Fatalf("round %d: snapshot %q is back after its deletion was acknowledged", round, s.Name)
			}
			t.Fatalf("round %d: snapshot %q appeared from nowhere", round, s.Name)
		}
		sv, err := p.SnapshotView(s.ID)
		if err != nil {
			t.Fatal(err)
		}
		newAllowed(img).verify(t, sv, fmt.Sprintf("round %d: snapshot %s", round, s.Name))
	}
	for name := range snaps {
		if !found[name] {
			t.Fatalf("round %d: acknowledged snapshot %q lost", round, name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The next round starts from what is there now.
	for _, s := range p.Snapshots() {
		if err := p.DeleteSnapshot(s.ID); err != nil {
			t.Fatal(err)
		}
	}
	for w, v := range vols {
		vol, _ := p.Volume(v.ID)
		img := &image{size: killVolSize, blocks: map[int64][]byte{}}
		buf := make([]byte, modelBS)
		for lbn := int64(0); lbn < killVolSize/modelBS; lbn++ {
			if _, err := vol.ReadAt(buf, lbn*modelBS); err != nil {
				t.Fatal(err)
			}
			if !allZero(buf) {
				img.blocks[lbn] = append([]byte(nil), buf...)
			}
		}
		imgs[w] = img
	}
	err = p.Close()
	p = nil
	if err != nil {
		t.Fatal(err)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// runKillChild starts a child on the pool, kills it with SIGKILL at a random moment (mostly
// while it runs its workload, sometimes while it is still opening the pool) and returns the
// last op each worker acknowledged (-1: none), the workers of all acks in the order the child
// reported them, and how long after its start it was killed.
func runKillChild(t *testing.T, path string, seed uint64, round int, direct bool) (acks, order []int, killed time.Duration) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killEnvPool+"="+path,
		killEnvSeed+"="+strconv.FormatUint(seed, 10), killEnvRound+"="+strconv.Itoa(round))
	if direct {
		cmd.Env = append(cmd.Env, killEnvDirect+"=1")
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	start := time.Now()
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
	acks = make([]int, killWorkers)
	for w := range acks {
		acks[w] = -1
	}
	parse := func(l string) {
		f := strings.Fields(l)
		if len(f) != 3 || f[0] != "ack" {
			t.Fatalf("child said %q", l)
		}
		w, err1 := strconv.Atoi(f[1])
		i, err2 := strconv.Atoi(f[2])
		if errors.Join(err1, err2) != nil || w < 0 || w >= killWorkers || i != acks[w]+1 {
			t.Fatalf("child said %q after acks %v", l, acks)
		}
		acks[w] = i
		order = append(order, w)
	}
	rng := rand.New(rand.NewPCG(seed, uint64(round)<<8|0xff))
	var timer <-chan time.Time
	if rng.IntN(10) == 0 {
		timer = time.After(time.Duration(rng.IntN(40)) * time.Millisecond) // while it opens the pool
	}
	delay := time.Duration(1+rng.IntN(80)) * time.Millisecond
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatal("child exited before it was killed")
			}
			parse(l)
			if timer == nil {
				timer = time.After(delay) // after its first op
			}
		case <-timer:
			break wait
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = time.Since(start)
	for l := range lines {
		parse(l)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
	return acks, order, killed
}
