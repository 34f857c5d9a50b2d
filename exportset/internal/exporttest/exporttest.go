// Package exporttest holds what the tests of export sets share: the S3 server (internal/s3test)
// and the directory each test pushes to, a target that counts the objects moved through it,
// and nodes (a pool with the images it holds by digest) to push from and pull into.
//
// For tests only.
package exporttest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/poolvol"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/internal/nodetest"
	"github.com/dataimage/dataimage/internal/s3test"
)

// S3 is the test binary's S3 server: its TestMain runs os.Exit(s3test.Main(m, &exporttest.S3)).
var S3 *s3test.Server

// BlockSize is the block size of the nodes' pools.
const BlockSize = 4096

// ForEachTarget runs f against a directory target and against a bucket of the S3 server.
func ForEachTarget(t *testing.T, f func(t *testing.T, tg exportset.Target)) {
	t.Run("file", func(t *testing.T) { f(t, DirTarget(t)) })
	t.Run("s3", func(t *testing.T) { f(t, S3Target(t)) })
}

// DirTarget returns a target in a new directory.
func DirTarget(t testing.TB) *remote.Dir {
	d, err := remote.NewDir(filepath.Join(t.TempDir(), "registry"))
	require.NoError(t, err)
	return d
}

// S3Config returns the configuration of a new bucket of the S3 server (skipping t when there
// is no server), with a prefix.
func S3Config(t testing.TB) remote.S3Config {
	bucket := S3.Bucket(t)
	return remote.S3Config{Bucket: bucket, Prefix: "images/test", Endpoint: S3.Endpoint, PathStyle: true,
		Credentials: remote.Credentials{AccessKeyID: S3.AccessKey, SecretAccessKey: S3.SecretKey}}
}

// S3Target returns a target in a new bucket of the S3 server.
func S3Target(t testing.TB) *remote.S3 {
	s, err := remote.NewS3(S3Config(t))
	require.NoError(t, err)
	return s
}

// Counter is a target that counts the objects (chunks/...) moved through it.
type Counter struct {
	exportset.Target
	Puts, PutBytes, Gets, GetBytes atomic.Int64
}

func (c *Counter) Put(ctx context.Context, key string, data []byte) error {
	if IsObject(key) {
		c.Puts.Add(1)
		c.PutBytes.Add(int64(len(data)))
	}
	return c.Target.Put(ctx, key, data)
}

func (c *Counter) Get(ctx context.Context, key string, limit int64) ([]byte, error) {
	b, err := c.Target.Get(ctx, key, limit)
	if IsObject(key) {
		c.Gets.Add(1)
		c.GetBytes.Add(int64(len(b)))
	}
	return b, err
}

// Reset sets the counts to zero.
func (c *Counter) Reset() {
	c.Puts.Store(0)
	c.PutBytes.Store(0)
	c.Gets.Store(0)
	c.GetBytes.Store(0)
}

// IsObject reports whether key names an object (a chunk's or a patch).
func IsObject(key string) bool { return strings.HasPrefix(key, "chunks/") }

// Volume is a pool's volume, which Node.Image's callers write.
type Volume = blockstore.Volume

// Node is a pool with the images it holds by digest, as a node's records would.
type Node struct {
	t    testing.TB
	Pool *blockstore.Pool
	// PV is the pool as pushes read it and pulls write it.
	PV      *poolvol.Node
	mu      sync.Mutex
	images  map[exportset.Digest]blockstore.SnapshotID
	sources int
}

// NewNode makes a node with a sparse pool of 2 GiB, checked (fsck) and closed at cleanup.
func NewNode(t testing.TB) *Node {
	return newNode(t, blockstore.Options{})
}

// NewDirectNode is NewNode with the pool doing direct I/O, as a data plane opens it.
func NewDirectNode(t testing.TB) *Node {
	return newNode(t, blockstore.Options{DirectIO: true})
}

// NewServedNode is NewDirectNode whose volumes are read and written as on a node
// (poolvol.WithStore): through the API of a data plane that serves the pool, here in this
// process (dataplane.Local, dataplane.Server) on a unix socket, called by a dataplane.Client.
func NewServedNode(t testing.TB) *Node {
	n := NewDirectNode(t)
	c := dataplanetest.Serve(t, dataplane.NewLocal(n.Pool, nil, nil))
	n.PV = poolvol.WithStore(c, BlockSize, nil)
	return n
}

func newNode(t testing.TB, opts blockstore.Options) *Node {
	opts.Size = 2 << 30
	p := nodetest.PoolWith(t, filepath.Join(t.TempDir(), "pool"), opts)
	return &Node{t: t, Pool: p, PV: poolvol.InProcess(p, nil), images: map[exportset.Digest]blockstore.SnapshotID{}}
}

// Lookup is a poolvol.Sink's Lookup: the snapshot that holds image d here.
func (n *Node) Lookup(d exportset.Digest) (blockstore.SnapshotID, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s, ok := n.images[d]
	return s, ok
}

// Record notes that snapshot s holds image d.
func (n *Node) Record(d exportset.Digest, s blockstore.SnapshotID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.images[d] = s
}

// Image makes a snapshot named image/<name>: an empty volume of size bytes (or a clone of
// from, grown to size), written by write.
func (n *Node) Image(name string, from blockstore.SnapshotID, size int64, write func(v *blockstore.Volume)) blockstore.SnapshotID {
	t := n.t
	var info blockstore.VolumeInfo
	var err error
	if from != 0 {
		info, err = n.Pool.Clone(from, "vol/"+name, size)
	} else {
		info, err = n.Pool.CreateVolume("vol/"+name, size)
	}
	require.NoError(t, err)
	v, err := n.Pool.Volume(info.ID)
	require.NoError(t, err)
	write(v)
	snap, err := n.Pool.CreateSnapshot(info.ID, "image/"+name)
	require.NoError(t, err)
	require.NoError(t, n.Pool.DeleteVolume(info.ID))
	return snap.ID
}

// Source returns snapshot snap as a push's source, closed at cleanup.
func (n *Node) Source(snap blockstore.SnapshotID) *poolvol.Source {
	n.mu.Lock()
	n.sources++
	id := fmt.Sprintf("src-%d", n.sources)
	n.mu.Unlock()
	s, err := n.PV.NewSource(context.Background(), snap, "src/"+id, id)
	require.NoError(n.t, err)
	n.t.Cleanup(func() { require.NoError(n.t, s.Close(context.Background())) })
	return s
}

// Pull pulls ref into the pool as snapshot image/<name>, and records it.
func (n *Node) Pull(ctx context.Context, r *exportset.Registry, ref, name string) (*exportset.PullResult, blockstore.SnapshotID, error) {
	sink := &poolvol.Sink{Node: n.PV, Lookup: n.Lookup, Volume: "pull/" + name, ID: "pull-" + name, Snapshot: "image/" + name}
	res, err := r.Pull(ctx, exportset.PullRequest{Ref: ref, Sink: sink})
	if err != nil {
		return nil, 0, err
	}
	snap, ok := sink.Committed()
	require.True(n.t, ok)
	n.Record(res.Digest, snap.ID)
	return res, snap.ID, nil
}

// Used returns the pool's used bytes.
func (n *Node) Used() int64 { return n.Pool.Stats().UsedBytes }

// RequireSame checks that two snapshots (of any pools) read the same.
func RequireSame(t testing.TB, a *blockstore.Pool, as blockstore.SnapshotID, b *blockstore.Pool, bsn blockstore.SnapshotID) {
	t.Helper()
	va, err := a.SnapshotView(as)
	require.NoError(t, err)
	vb, err := b.SnapshotView(bsn)
	require.NoError(t, err)
	require.Equal(t, va.Size(), vb.Size())
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < va.Size(); off += int64(len(ba)) {
		n := min(int64(len(ba)), va.Size()-off)
		_, err := va.ReadAt(ba[:n], off)
		require.NoError(t, err)
		_, err = vb.ReadAt(bb[:n], off)
		require.NoError(t, err)
		if !bytes.Equal(ba[:n], bb[:n]) {
			for i := range n {
				if ba[i] != bb[i] {
					t.Fatalf("snapshots differ at byte %d", off+i)
				}
			}
		}
	}
}

// PageData returns n bytes like a database's pages: in each block, half random bytes and half
// text that compresses.
func PageData(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += BlockSize {
		page := b[i:min(i+BlockSize, n)]
		for j := range page[:len(page)/2] {
			page[j] = byte(rng.Uint32())
		}
		copy(page[len(page)/2:], bytes.Repeat([]byte("row-"), len(page)))
	}
	return b
}

// Write writes b at off of v.
func Write(t testing.TB, v *blockstore.Volume, b []byte, off int64) {
	t.Helper()
	_, err := v.WriteAt(b, off)
	require.NoError(t, err)
}

// Created is the creation time of the images tests push.
var Created = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// Image returns the metadata of a test image.
func Image(name string) exportset.Image {
	// The engine is opaque to export sets: a name no adapter has, so that nothing here
	// depends on one (engine/registry/kinds_test.go).
	return exportset.Image{Name: name, Engine: "example-engine", Version: "1", Created: Created}
}
