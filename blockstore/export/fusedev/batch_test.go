package fusedev_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore/blockio"
	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// batchDisk is a memDisk that takes its reads and writes in batches, and counts them. Its first
// batch waits for release, so that requests queue up behind it.
type batchDisk struct {
	*memDisk
	first   chan struct{} // closed: the first batch goes on
	entered chan struct{} // closed when the first batch arrived
	once    sync.Once
	batches atomic.Int64
	ops     atomic.Int64
	largest atomic.Int64
	open    atomic.Int64 // batchers not closed
}

func (b *batchDisk) NewBatcher(ops int) (blockio.Batcher, error) {
	b.open.Add(1)
	return &memBatcher{b: b}, nil
}

type memBatcher struct{ b *batchDisk }

func (m *memBatcher) Do(ops []blockio.Op, done func(int)) {
	b := m.b
	b.once.Do(func() {
		close(b.entered)
		<-b.first
	})
	b.batches.Add(1)
	b.ops.Add(int64(len(ops)))
	for {
		l := b.largest.Load()
		if int64(len(ops)) <= l || b.largest.CompareAndSwap(l, int64(len(ops))) {
			break
		}
	}
	for i := range ops {
		op := &ops[i]
		if op.Write {
			op.N, op.Err = b.WriteAt(op.Buf, op.Off)
		} else {
			op.N, op.Err = b.ReadAt(op.Buf, op.Off)
		}
		done(i)
	}
}

func (m *memBatcher) Close() error { m.b.open.Add(-1); return nil }

// TestBatches: with a Disk that takes batches, a worker reads the requests waiting before it
// serves them, and hands their reads and writes to the Disk in one batch; every I/O goes
// through batches and reads back.
func TestBatches(t *testing.T) {
	nodetest.Need(t)
	d := &batchDisk{memDisk: newMemDisk(16 * mib), first: make(chan struct{}), entered: make(chan struct{})}
	m := mountDisk(t, d, fusedev.Config{MaxWorkers: 1, Batch: 8})
	f := openFile(t, m.file(), unix.O_RDWR|unix.O_DIRECT)

	const n = 12
	var wg sync.WaitGroup
	errs := make([]error, n)
	wg.Go(func() {
		_, errs[0] = f.WriteAt(pattern(1, 4096), 0)
	})
	<-d.entered // the first write is in the first batch, held: the others queue in the kernel
	for i := 1; i < n; i++ {
		wg.Go(func() {
			size := 4096 << (i % 3)
			_, errs[i] = f.WriteAt(pattern(byte(i), size), int64(i)*mib)
		})
	}
	// Let them reach the kernel's queue (FUSE direct I/O, from threads of their own).
	time.Sleep(500 * time.Millisecond)
	close(d.first)
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, int64(n), d.ops.Load(), "every write went through a batch")
	// One worker: the requests that waited behind the first batch are read before any is
	// served (the 11 of them in 8 slots, if they all made it to the queue meanwhile).
	assert.GreaterOrEqual(t, d.largest.Load(), int64(2), "a worker reads the requests waiting before serving them")
	assert.LessOrEqual(t, d.largest.Load(), int64(8), "no more than Config.Batch at once")
	for i := 1; i < n; i++ {
		size := 4096 << (i % 3)
		got := alignedBuf(size)
		_, err := f.ReadAt(got, int64(i)*mib)
		require.NoError(t, err)
		require.Equal(t, pattern(byte(i), size), got, "write %d", i)
	}
	assert.Equal(t, int64(2*n-1), d.ops.Load(), "reads went through batches")
	require.NoError(t, f.Close())
	require.NoError(t, m.srv.Stop())
	assert.Equal(t, int64(0), d.open.Load(), "workers closed their batchers")
}

// noBatcherDisk takes batches, but has no batcher to give (as when fs.aio-max-nr is reached).
type noBatcherDisk struct{ *memDisk }

func (noBatcherDisk) NewBatcher(int) (blockio.Batcher, error) {
	return nil, unix.EAGAIN
}

// TestNoBatcher: a worker that gets no batcher serves its requests one by one.
func TestNoBatcher(t *testing.T) {
	nodetest.Need(t)
	d := noBatcherDisk{newMemDisk(4 * mib)}
	m := mountDisk(t, d, fusedev.Config{})
	f := openFile(t, m.file(), unix.O_RDWR|unix.O_DIRECT)
	_, err := f.WriteAt(pattern(3, 8192), 4096)
	require.NoError(t, err)
	got := alignedBuf(8192)
	_, err = f.ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, pattern(3, 8192), got)
	require.Equal(t, pattern(3, 8192), d.at(4096, 4096+8192))
	require.NoError(t, f.Close())
}
