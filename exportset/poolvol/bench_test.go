package poolvol_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/internal/exporttest"
)

// BenchmarkTransfer measures pushes and pulls of a 512 MiB image of page data against the S3
// server, each as a ratio to a baseline measured in the same run. The image is pushed from and
// pulled into pools as a node has them: served by a data plane (here in this process, the
// pool doing direct I/O) on its unix socket, the volumes' data read and written through its
// API (poolvol.WithStore, a dataplane.Client), as the CSI plugin and the local daemon do.
//
//   - push/raw and pull/raw: the image's throughput against minio-go moving its raw bytes as
//     one object (a multipart upload of 5 MiB parts, S3's smallest, 8 at a time; 8 ranged GETs
//     of 4 MiB at a time, into memory), the push and pull running 8 workers on 4 MiB chunks.
//     The pull is measured in transferRounds rounds, each a raw download then a pull into a
//     new node; pull/raw is the median of the rounds' ratios (pull/raw-min, -max their range);
//   - pull/rawfile: the pull against the same ranged GETs landing the bytes where a pull lands
//     them, in a file beside the pool, made durable (fdatasync) as a pull makes its image;
//   - pull/inprocess: the pull into a pool of this process (poolvol.InProcess), against the raw
//     download: what the data plane's socket costs;
//   - for a child with 1% and 10% of its blocks rewritten at random places: the bytes uploaded
//     and downloaded against the changed blocks compressed (zstd, fastest level), the pool's
//     growth on a node holding the parent against the changed bytes, and the push's time.
//
// It moves the image once whatever b.N: run it with -benchtime=1x.
//
//	go test -run '^$' -bench BenchmarkTransfer -benchtime=1x ./exportset/poolvol/
func BenchmarkTransfer(b *testing.B) {
	ctx := context.Background()
	const size = 512 << 20
	a := exporttest.NewServedNode(b)
	rng := rand.New(rand.NewPCG(1, 1))
	data := exporttest.PageData(rng, size)
	base := a.Image("base", 0, size, func(v *blockstore.Volume) { exporttest.Write(b, v, data, 0) })
	tg := exporttest.S3Target(b)
	c := tg.Client()

	start := time.Now()
	_, err := c.PutObject(ctx, tg.Bucket(), "raw/object", bytes.NewReader(data), size, minio.PutObjectOptions{PartSize: 5 << 20, NumThreads: 8})
	require.NoError(b, err)
	rawPut := time.Since(start)
	// rangedGets downloads the raw object in 4 MiB ranges, 8 at a time, handing each to land,
	// and returns how long that took.
	rangedGets := func(land func(buf []byte, off int64)) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for off := int64(0); off < size; off += 4 << 20 {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				o := minio.GetObjectOptions{}
				require.NoError(b, o.SetRange(off, off+(4<<20)-1))
				obj, err := c.GetObject(ctx, tg.Bucket(), "raw/object", o)
				require.NoError(b, err)
				defer obj.Close()
				buf, err := io.ReadAll(obj)
				require.NoError(b, err)
				land(buf, off)
			})
		}
		wg.Wait()
		return time.Since(start)
	}

	cnt := &exporttest.Counter{Target: tg}
	r := exportset.New(cnt, exportset.Options{Workers: 8})
	start = time.Now()
	res, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(base), Image: exporttest.Image("base")})
	require.NoError(b, err)
	push := time.Since(start)

	var node *exporttest.Node
	var ratios []float64
	var rawGets, pulls []time.Duration
	for range transferRounds {
		rawGets = append(rawGets, rangedGets(func([]byte, int64) {}))
		node = exporttest.NewServedNode(b)
		start = time.Now()
		_, _, err = node.Pull(ctx, r, string(res.Digest), "base")
		require.NoError(b, err)
		pulls = append(pulls, time.Since(start))
		ratios = append(ratios, rawGets[len(rawGets)-1].Seconds()/pulls[len(pulls)-1].Seconds())
	}
	slices.Sort(ratios)
	rawGet, pullLast := rawGets[len(rawGets)-1], pulls[len(pulls)-1]
	seconds := func(ds []time.Duration) string {
		var out []string
		for _, d := range ds {
			out = append(out, fmt.Sprintf("%.2fs", d.Seconds()))
		}
		return strings.Join(out, " ")
	}

	f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
	require.NoError(b, err)
	defer f.Close()
	rawGetFile := rangedGets(func(buf []byte, off int64) {
		_, err := f.WriteAt(buf, off)
		require.NoError(b, err)
	})
	start = time.Now()
	require.NoError(b, f.Sync())
	rawGetFile += time.Since(start)
	inproc := exporttest.NewDirectNode(b)
	start = time.Now()
	_, _, err = inproc.Pull(ctx, r, string(res.Digest), "base")
	require.NoError(b, err)
	pullInProcess := time.Since(start)

	b.ReportMetric(rawPut.Seconds()/push.Seconds(), "push/raw")
	b.ReportMetric(ratios[len(ratios)/2], "pull/raw")
	b.ReportMetric(ratios[0], "pull/raw-min")
	b.ReportMetric(ratios[len(ratios)-1], "pull/raw-max")
	b.ReportMetric(rawGetFile.Seconds()/pullLast.Seconds(), "pull/rawfile")
	b.ReportMetric(rawGet.Seconds()/pullInProcess.Seconds(), "pull/inprocess")
	b.Logf("raw put %.2fs, push %.2fs (%d MiB stored); rounds of raw get and pull: %s and %s; raw get into a synced file %.2fs; pull in process %.2fs",
		rawPut.Seconds(), push.Seconds(), res.UploadedBytes>>20, seconds(rawGets), seconds(pulls),
		rawGetFile.Seconds(), pullInProcess.Seconds())

	for _, pct := range []int{1, 10} {
		var changed [][]byte
		child := a.Image(fmt.Sprintf("child-%d", pct), base, size, func(v *blockstore.Volume) { changed = changeBlocks(b, rng, v, float64(pct)/100) })
		comp := float64(compressedSize(b, changed))
		cnt.Reset()
		start = time.Now()
		cr, err := r.Push(ctx, exportset.PushRequest{Source: a.Source(child), Image: exporttest.Image("child"),
			Parent: &exportset.Parent{Digest: res.Digest, Source: a.Source(base)}})
		require.NoError(b, err)
		elapsed := time.Since(start)
		up := float64(cnt.PutBytes.Load())
		cnt.Reset()
		before := node.Used()
		_, _, err = node.Pull(ctx, r, string(cr.Digest), fmt.Sprintf("child-%d", pct))
		require.NoError(b, err)
		b.ReportMetric(up/comp, fmt.Sprintf("up/changed-%d%%", pct))
		b.ReportMetric(float64(cnt.GetBytes.Load())/comp, fmt.Sprintf("down/changed-%d%%", pct))
		b.ReportMetric(float64(node.Used()-before)/float64(len(changed)*exporttest.BlockSize), fmt.Sprintf("growth/changed-%d%%", pct))
		b.ReportMetric(elapsed.Seconds(), fmt.Sprintf("push-s-%d%%", pct))
	}
}

// transferRounds is how many times BenchmarkTransfer measures the full pull and its baseline.
const transferRounds = 3
