package blockstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/blockio"
)

// alignedTestBuf returns n bytes of page-aligned memory outside the Go heap, as fusedev's
// buffers are.
func alignedTestBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, max(n, 4096), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b[:n]
}

func newBatchPool(t *testing.T, direct bool) *Pool {
	t.Helper()
	p, err := Create(filepath.Join(t.TempDir(), "pool"), Options{Size: 64 << 20, DirectIO: direct})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if rep, err := p.Check(false); err != nil || !rep.OK() {
			t.Errorf("check: %v: %v", err, rep)
		}
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// TestBatcherMatchesModel runs random batches of reads and writes, aligned and not, of mapped,
// unmapped and snapshot-shared blocks and past the end, and checks every op's outcome and the
// volume's contents against a byte model; and that the batched path served the ops it can.
func TestBatcherMatchesModel(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(map[bool]string{true: "direct", false: "buffered"}[direct], func(t *testing.T) {
			p := newBatchPool(t, direct)
			const size = 4 << 20
			info, err := p.CreateVolume("v", size)
			if err != nil {
				t.Fatal(err)
			}
			vol, err := p.Volume(info.ID)
			if err != nil {
				t.Fatal(err)
			}
			model := make([]byte, size)
			rng := rand.New(rand.NewSource(1))
			// Half the volume mapped, then a snapshot: its blocks are shared (writes allocate).
			for off := 0; off < size/2; off += 64 << 10 {
				rng.Read(model[off : off+64<<10])
				if _, err := vol.WriteAt(model[off:off+64<<10], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := p.CreateSnapshot(info.ID, "s"); err != nil {
				t.Fatal(err)
			}
			bt, err := vol.NewBatcher(16)
			if err != nil {
				t.Fatal(err)
			}
			defer bt.Close()
			bufs := make([][]byte, 16)
			for i := range bufs {
				bufs[i] = alignedTestBuf(t, 256<<10)
			}
			ops := make([]blockio.Op, 0, 16)
			for round := range 300 {
				ops = ops[:0]
				want := make([][]byte, 0, 16)
				used := map[int64]bool{} // blocks of the batch's ops: ops of one batch do not overlap
				for i := range 1 + rng.Intn(16) {
					var off, n int64
					switch rng.Intn(4) {
					case 0: // unaligned
						off, n = rng.Int63n(size), 1+rng.Int63n(20000)
					case 1: // past the end
						off, n = size-4096*rng.Int63n(3), 4096*(1+rng.Int63n(4))
					default:
						off, n = 4096*rng.Int63n(size/4096), 4096*(1+rng.Int63n(16))
					}
					if off+n > size+16384 {
						n = size + 16384 - off
					}
					free := true
					for b := off / 4096; b <= (off+n-1)/4096; b++ {
						free = free && !used[b]
					}
					if !free {
						continue
					}
					for b := off / 4096; b <= (off+n-1)/4096; b++ {
						used[b] = true
					}
					write := rng.Intn(2) == 0
					buf := bufs[i][:n]
					if write {
						rng.Read(buf)
					}
					ops = append(ops, blockio.Op{Write: write, Buf: buf, Off: off, N: -1, Err: errors.New("not done")})
					want = append(want, nil)
				}
				called := make([]int, len(ops))
				bt.Do(ops, func(i int) {
					called[i]++
					if ops[i].N < 0 {
						t.Errorf("round %d: op %d reported done before its outcome was set", round, i)
					}
				})
				for i, op := range ops {
					if called[i] != 1 {
						t.Fatalf("round %d: done called %d times for op %d, want once", round, called[i], i)
					}
					end := op.Off + int64(len(op.Buf))
					switch {
					case op.Write && end > size:
						if !errors.Is(op.Err, ErrOutOfRange) || op.N != 0 {
							t.Fatalf("round %d: write of %d at %d past the end: n=%d err=%v", round, len(op.Buf), op.Off, op.N, op.Err)
						}
					case op.Write:
						if op.Err != nil || op.N != len(op.Buf) {
							t.Fatalf("round %d: write of %d at %d: n=%d err=%v", round, len(op.Buf), op.Off, op.N, op.Err)
						}
						copy(model[op.Off:], op.Buf)
					default:
						n := int(min(end, size) - min(op.Off, size))
						wantErr := error(nil)
						if end > size {
							wantErr = io.EOF
						}
						if op.N != n || op.Err != wantErr {
							t.Fatalf("round %d: read of %d at %d: n=%d err=%v, want %d, %v", round, len(op.Buf), op.Off, op.N, op.Err, n, wantErr)
						}
						want[i] = model[op.Off : op.Off+int64(n)]
						if !bytes.Equal(op.Buf[:n], want[i]) {
							t.Fatalf("round %d: read of %d at %d: contents differ from the model", round, len(op.Buf), op.Off)
						}
					}
				}
			}
			got := make([]byte, size)
			if _, err := vol.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, model) {
				t.Fatal("volume contents differ from the model")
			}
			async := bt.(*batcher).async
			if direct && async < 1000 {
				t.Errorf("%d ops through AIO, want most of the aligned ones (over 1000)", async)
			}
			if !direct && async != 0 {
				t.Errorf("%d ops through AIO on a pool without DirectIO, want 0", async)
			}
		})
	}
}

// TestBatcherConcurrent runs batches from several goroutines, each on its own region, with
// flushes, snapshots (which make blocks shared) and checkpoints going on, under -race: each
// region then reads back what its goroutine wrote last, and the pool checks clean.
func TestBatcherConcurrent(t *testing.T) {
	p := newBatchPool(t, true)
	const (
		workers = 4
		region  = 1 << 20
	)
	info, err := p.CreateVolume("v", workers*region)
	if err != nil {
		t.Fatal(err)
	}
	vol, err := p.Volume(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vol.WriteAt(make([]byte, workers*region), 0); err != nil {
		t.Fatal(err)
	}
	models := make([][]byte, workers)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range workers {
		models[w] = make([]byte, region)
		wg.Add(1)
		go func() {
			defer wg.Done()
			bt, err := vol.NewBatcher(8)
			if err != nil {
				t.Error(err)
				return
			}
			defer bt.Close()
			rng := rand.New(rand.NewSource(int64(w)))
			buf := make([]byte, 8*4096+4096)
			base := int(uintptr(unsafe.Pointer(&buf[0])) & 4095)
			if base != 0 {
				base = 4096 - base
			}
			buf = buf[base : base+8*4096]
			for range 200 {
				ops := make([]blockio.Op, 8)
				perm := rng.Perm(region / 4096)
				for i := range ops {
					off := int64(perm[i]) * 4096
					ops[i] = blockio.Op{Write: rng.Intn(2) == 0, Buf: buf[i*4096 : (i+1)*4096], Off: int64(w*region) + off}
					if ops[i].Write {
						rng.Read(ops[i].Buf)
					}
				}
				bt.Do(ops, nil)
				for _, op := range ops {
					rel := op.Off - int64(w*region)
					if op.Err != nil || op.N != 4096 {
						t.Errorf("op at %d: n=%d err=%v", op.Off, op.N, op.Err)
						return
					}
					if op.Write {
						copy(models[w][rel:], op.Buf)
					} else if !bytes.Equal(op.Buf, models[w][rel:rel+4096]) {
						t.Errorf("read at %d differs from the last write", op.Off)
						return
					}
				}
			}
		}()
	}
	var flusher sync.WaitGroup
	flusher.Add(1)
	go func() {
		defer flusher.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := p.Flush(); err != nil {
				t.Error(err)
				return
			}
			if i%3 == 0 {
				if _, err := p.CreateSnapshot(info.ID, fmt.Sprintf("s%d", i)); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	flusher.Wait()
	if t.Failed() {
		return
	}
	got := make([]byte, workers*region)
	if _, err := vol.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for w := range workers {
		if !bytes.Equal(got[w*region:(w+1)*region], models[w]) {
			t.Fatalf("region %d differs from what its writer wrote", w)
		}
	}
}
