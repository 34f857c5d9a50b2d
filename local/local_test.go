package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/imagebuilder"
)

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // "" = valid
	}{
		{"sales-2024", ""},
		{"a", ""},
		{"A.b_c-d", ""},
		{"1a", ""},
		{strings.Repeat("x", 63), ""},
		{"", `clone name: a name is required`},
		{strings.Repeat("x", 64), `at most 63 characters`},
		{"-a", `must start with an ASCII letter or a digit`},
		{".a", `must start with an ASCII letter or a digit`},
		{"a/b", `may contain only ASCII letters, digits, '-', '_' and '.'`},
		{"a b", `may contain only`},
		{"é", `must start with`},
		{"123", `must not be purely numeric`},
	} {
		err := checkName("clone name", tc.name)
		if tc.want == "" {
			require.NoError(t, err, tc.name)
			continue
		}
		require.ErrorIs(t, err, ErrInvalid, tc.name)
		require.ErrorContains(t, err, tc.want, tc.name)
	}
}

func TestGeneratedCloneName(t *testing.T) {
	n := generatedCloneName("sales")
	require.Regexp(t, `^sales-[0-9a-f]{6}$`, n)
	require.NotEqual(t, n, generatedCloneName("sales"))
	long := generatedCloneName(strings.Repeat("a", 60) + "---")
	require.NoError(t, checkName("clone", long))
	require.LessOrEqual(t, len(long), maxNameLen)
}

// TestErrorKinds: every kind survives the trip through the wire, so that errors.Is works on
// the client's side; an error of no kind comes back without one.
func TestErrorKinds(t *testing.T) {
	for _, k := range errorKinds {
		err := fmt.Errorf("wrapped: %w", errorf(k.kind, "something about %s", k.name))
		we, status := toWire(err)
		require.Equal(t, k.status, status)
		b, err2 := json.Marshal(we)
		require.NoError(t, err2)
		var back wireError
		require.NoError(t, json.Unmarshal(b, &back))
		got := back.err()
		require.ErrorIs(t, got, k.kind)
		require.Equal(t, err.Error(), got.Error())
		for _, other := range errorKinds {
			if other.kind != k.kind {
				require.NotErrorIs(t, got, other.kind)
			}
		}
	}
	we, status := toWire(errors.New("disk on fire"))
	require.Equal(t, 500, status)
	require.Equal(t, kindInternal, we.Kind)
	got := we.err()
	for _, k := range errorKinds {
		require.NotErrorIs(t, got, k.kind)
	}
	// Block store errors keep their chain and gain the API's kind.
	err := storeError(fmt.Errorf("create: %w", blockstore.ErrNoSpace))
	require.ErrorIs(t, err, ErrNoSpace)
	require.ErrorIs(t, err, blockstore.ErrNoSpace)
}

func TestConnection(t *testing.T) {
	require.Equal(t, "postgresql://postgres:pw@127.0.0.1:5433/app?sslmode=disable",
		connection(imagebuilder.EnginePostgres, "postgres", "pw", "127.0.0.1", 5433, "app"))
	require.Equal(t, "mysql://root:p%40ss@[::1]:3307/shop",
		connection(imagebuilder.EngineMariaDB, "root", "p@ss", "::1", 3307, "shop"))
	require.Equal(t, "127.0.0.1", connectHost("0.0.0.0"))
	require.Equal(t, "::1", connectHost("::"))
	require.Equal(t, "10.1.2.3", connectHost("10.1.2.3"))
}

func TestConfig(t *testing.T) {
	s, err := Config{}.settings()
	require.NoError(t, err)
	require.Equal(t, DefaultHome, s.Home)
	require.Equal(t, int64(DefaultPoolSize), s.PoolSize)
	require.Equal(t, int64(DefaultVolumeSize), s.VolumeSize)
	require.Equal(t, DefaultListenAddress, s.ListenAddress)
	require.Equal(t, DefaultReapInterval, s.ReapInterval)
	require.True(t, s.imageLifetime.Never)
	require.True(t, s.cloneLifetime.Never)

	s, err = Config{DefaultCloneLifetime: "2h", DefaultImageLifetime: "0"}.settings()
	require.NoError(t, err)
	require.Equal(t, 2*time.Hour, s.cloneLifetime.Duration)
	require.True(t, s.imageLifetime.Never)

	for _, c := range []Config{
		{DefaultCloneLifetime: "2 hours"},
		{VolumeSize: 1000},
		{ListenAddress: "localhost"},
		{ReapInterval: -time.Second},
	} {
		_, err := c.settings()
		require.ErrorIs(t, err, ErrInvalid, "%+v", c)
	}
}

// TestCatalogFile: the catalog is written atomically (no temporary file left) and reads back as
// written; a catalog of another format version, or whose entries disagree with their keys, is
// refused.
func TestCatalogFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.json")
	c, err := loadCatalog(path)
	require.NoError(t, err)
	require.Empty(t, c.Images)

	c.Images["a"] = &imageRecord{Image: Image{Name: "a", Engine: imagebuilder.EnginePostgres, Version: "15.1", Tags: []string{"x"}}}
	c.Clones["c"] = &cloneRecord{Name: "c", Image: "a", Running: true, Port: 5555, Revisions: []Revision{{Name: "rev-1"}}}
	data, err := json.Marshal(c)
	require.NoError(t, err)
	require.NoError(t, writeCatalog(path, data))
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the catalog holds passwords")
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, ents, 1, "temporary files left")

	back, err := loadCatalog(path)
	require.NoError(t, err)
	require.Equal(t, c, back)
	cp := back.clone()
	cp.Clones["c"].Revisions[0].Name = "changed"
	require.Equal(t, "rev-1", back.Clones["c"].Revisions[0].Name, "clone is deep")

	require.NoError(t, os.WriteFile(path, []byte(`{"version": 7}`), 0o600))
	_, err = loadCatalog(path)
	require.ErrorContains(t, err, "format version 7")
	require.NoError(t, os.WriteFile(path, []byte(`{"version": 1, "images": {"a": {"name": "b"}}}`), 0o600))
	_, err = loadCatalog(path)
	require.ErrorContains(t, err, `image entry "a" does not hold image "a"`)
}

// TestConnectNoDaemon: without a daemon, Connect fails with ErrUnavailable; with Start, a
// daemon that exits at once is reported with its log.
func TestConnectNoDaemon(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	_, err := Connect(context.Background(), home, ConnectOptions{})
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, "no dataimage daemon answers at "+SocketPath(home))

	_, err = Connect(context.Background(), home, ConnectOptions{Start: true, Executable: "/bin/sh",
		DaemonArgs: []string{"-c", "echo cannot open the pool >&2; exit 3"}, Timeout: 10 * time.Second})
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, "exited (exit status 3)")
	require.ErrorContains(t, err, "cannot open the pool")
}

// TestDaemonReconcile: at start, the daemon deletes the pool objects its catalog does not
// account for (an interrupted build, a temporary volume, a snapshot of an image whose record
// was never written), drops the entries whose object is gone, finishes deletions, and unmounts
// what a previous daemon left mounted.
func TestDaemonReconcile(t *testing.T) {
	needKernel(t)
	dir := testDir(t)
	cfg := testConfig(filepath.Join(dir, "home"), testLog(t, dir))
	d, err := NewDaemon(cfg)
	require.NoError(t, err)
	require.NoError(t, d.Close())

	// What interrupted operations leave in the pool.
	p, err := blockstore.Open(filepath.Join(cfg.Home, "pool.img"), blockstore.Options{})
	require.NoError(t, err)
	b, err := p.CreateVolume("build/half", 1<<20)
	require.NoError(t, err)
	_, err = p.CreateSnapshot(b.ID, "image/never-recorded")
	require.NoError(t, err)
	kept, err := p.CreateSnapshot(b.ID, "image/kept")
	require.NoError(t, err)
	_, err = p.CreateSnapshot(b.ID, "image/deleting")
	require.NoError(t, err)
	_, err = p.CreateVolume("tmp/x", 1<<20)
	require.NoError(t, err)
	_, err = p.Clone(kept.ID, "clone/c1", 0)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	cat, err := loadCatalog(filepath.Join(cfg.Home, "catalog.json"))
	require.NoError(t, err)
	cat.Images["kept"] = &imageRecord{Image: Image{Name: "kept", Engine: imagebuilder.EnginePostgres, Version: "9.1.24"}}
	cat.Images["lost"] = &imageRecord{Image: Image{Name: "lost"}}
	cat.Images["deleting"] = &imageRecord{Image: Image{Name: "deleting"}, Deleting: true}
	cat.Clones["c1"] = &cloneRecord{Name: "c1", Image: "kept", Revisions: []Revision{{Name: "gone"}}}
	cat.Clones["c2"] = &cloneRecord{Name: "c2", Image: "kept"}
	data, err := json.Marshal(cat)
	require.NoError(t, err)
	require.NoError(t, writeCatalog(filepath.Join(cfg.Home, "catalog.json"), data))
	// A mount a previous daemon left.
	stale := filepath.Join(cfg.Home, "mnt", "stale")
	require.NoError(t, os.MkdirAll(stale, 0o755))
	require.NoError(t, unix.Mount("tmpfs", stale, "tmpfs", 0, ""))
	t.Cleanup(func() { _ = unix.Unmount(stale, unix.MNT_DETACH) })

	d, err = NewDaemon(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAndCheck(t, d, cfg) })
	require.Equal(t, []string{"snapshot image/kept", "volume clone/c1"}, poolNames(t, d))
	imgs, err := d.Images(context.Background())
	require.NoError(t, err)
	require.Len(t, imgs, 1)
	require.Equal(t, "kept", imgs[0].Name)
	require.Equal(t, 1, imgs[0].Clones)
	clones, err := d.Clones(context.Background())
	require.NoError(t, err)
	require.Len(t, clones, 1)
	require.Equal(t, "c1", clones[0].Name)
	require.Empty(t, clones[0].Revisions, "a revision whose snapshot is gone is dropped")
	require.Equal(t, CloneStopped, clones[0].State)
	_, err = os.Stat(stale)
	require.ErrorIs(t, err, os.ErrNotExist, "the stale mount point is unmounted and removed")

	// The catalog as written agrees.
	cat, err = loadCatalog(filepath.Join(cfg.Home, "catalog.json"))
	require.NoError(t, err)
	require.Len(t, cat.Images, 1)
	require.Len(t, cat.Clones, 1)

	// A clone of an image whose engine version is not installed fails clearly, leaving nothing.
	_, err = d.CreateClone(context.Background(), CloneRequest{Image: "kept", Name: "c9"})
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, "clone c9: image kept was built with postgres 9.1.24, which this machine cannot run")
	require.Equal(t, []string{"snapshot image/kept", "volume clone/c1"}, poolNames(t, d))

	// Deleting the image is refused while its clone exists; the clone goes, then the image.
	err = d.DeleteImage(context.Background(), "kept")
	require.ErrorIs(t, err, ErrHasClones)
	require.EqualError(t, err, "image kept has 1 clone: c1; delete it first")
	require.NoError(t, d.DeleteClone(context.Background(), "c1"))
	require.NoError(t, d.DeleteImage(context.Background(), "kept"))
	require.Empty(t, poolNames(t, d))
}

// TestDaemonMissingCatalog: a pool with objects whose catalog is gone is not wiped.
func TestDaemonMissingCatalog(t *testing.T) {
	needKernel(t)
	dir := testDir(t)
	cfg := testConfig(filepath.Join(dir, "home"), testLog(t, dir))
	d, err := NewDaemon(cfg)
	require.NoError(t, err)
	require.NoError(t, d.Close())
	p, err := blockstore.Open(filepath.Join(cfg.Home, "pool.img"), blockstore.Options{})
	require.NoError(t, err)
	_, err = p.CreateVolume("clone/x", 1<<20)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	require.NoError(t, os.Remove(filepath.Join(cfg.Home, "catalog.json")))
	_, err = NewDaemon(cfg)
	require.ErrorContains(t, err, "holds 1 volumes and snapshots but the catalog")
	requireNothingLeft(t, cfg.Home)
}

// TestDaemonKeepsForeignPoolFile: a home whose pool.img is not a pool (junk, or a pool whose
// superblocks are both damaged) is refused at start, naming the file and what it holds, and the
// file is left as it was: the daemon makes a pool only where no file is.
func TestDaemonKeepsForeignPoolFile(t *testing.T) {
	needKernel(t)
	for name, setup := range map[string]func(t *testing.T, path string){
		"junk": func(t *testing.T, path string) {
			require.NoError(t, os.WriteFile(path, []byte(strings.Repeat("precious data\n", 1000)), 0o600))
		},
		"damaged pool": func(t *testing.T, path string) {
			p, err := blockstore.Create(path, blockstore.Options{Size: 64 << 20})
			require.NoError(t, err)
			require.NoError(t, p.Close())
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			for _, off := range []int64{20, 4096 + 20} {
				_, err = f.WriteAt([]byte{0xff}, off)
				require.NoError(t, err)
			}
			require.NoError(t, f.Close())
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := testDir(t)
			cfg := testConfig(filepath.Join(dir, "home"), testLog(t, dir))
			require.NoError(t, os.Mkdir(cfg.Home, 0o711))
			path := filepath.Join(cfg.Home, "pool.img")
			setup(t, path)
			before, err := os.ReadFile(path)
			require.NoError(t, err)
			_, err = NewDaemon(cfg)
			require.Error(t, err)
			require.ErrorContains(t, err, path)
			t.Log(err)
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, before, after, "the file is left as it was")
			require.False(t, holderRunning(HolderSocketPath(cfg.Home)), "the FUSE holder started for the data plane stopped with it")
		})
	}
}

// TestDaemonHomeNotTraversable: a home the servers' users cannot reach is refused at start.
func TestDaemonHomeNotTraversable(t *testing.T) {
	needKernel(t)
	home := filepath.Join(t.TempDir(), "home") // t.TempDir is 0700
	_, err := NewDaemon(Config{Home: home})
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, "must traverse it")
}

// TestRunDaemonHTTP: RunDaemon serves the API on the socket, one daemon per home; the client
// gets the daemon's errors with their kinds; the daemon stops when its context ends, leaving
// nothing behind.
func TestRunDaemonHTTP(t *testing.T) {
	needKernel(t)
	dir := testDir(t)
	cfg := testConfig(filepath.Join(dir, "home"), testLog(t, dir))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunDaemon(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	var c *Client
	require.Eventually(t, func() bool {
		var err error
		c, err = Connect(context.Background(), cfg.Home, ConnectOptions{})
		return err == nil
	}, 30*time.Second, 50*time.Millisecond)
	defer c.Close()

	err := RunDaemon(context.Background(), cfg)
	require.ErrorIs(t, err, ErrAlreadyExists, "a second daemon for the home")
	require.ErrorContains(t, err, fmt.Sprintf("pid %d", os.Getpid()))

	imgs, err := c.Images(ctx)
	require.NoError(t, err)
	require.Empty(t, imgs)
	_, err = c.Image(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)
	require.EqualError(t, err, "image nope does not exist")
	require.ErrorIs(t, c.DeleteImage(ctx, "nope"), ErrNotFound)
	require.ErrorIs(t, c.DeleteClone(ctx, "nope"), ErrNotFound)
	_, err = c.StartClone(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = c.CreateClone(ctx, CloneRequest{Image: "nope"})
	require.ErrorIs(t, err, ErrNotFound)
	_, err = c.CreateClone(ctx, CloneRequest{Image: "x", Name: "bad/name"})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = c.ImageFromClone(ctx, ImageFromCloneRequest{Name: "img", Clone: "nope"})
	require.ErrorIs(t, err, ErrNotFound)

	// An invalid definition: every problem, in one message, with the definition's path.
	_, err = c.BuildImage(ctx, BuildRequest{Definition: []byte("name: 42\nengine: oracle\n"), DefinitionPath: "def.yaml"}, nil)
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, "imagebuilder: invalid image definition def.yaml: name: must not be purely numeric")
	require.ErrorContains(t, err, "engine: must be one of postgres")
	_, err = c.BuildImage(ctx, BuildRequest{Definition: []byte("name: x\nengine: postgres\nversion: '15'\nsourceType: backup\nbackups: [{path: a.tar}]\n")}, nil)
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, "no backup root")

	ps, err := c.PoolStatus(ctx)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(cfg.Home, "pool.img"), ps.Path)
	require.Equal(t, "ok", ps.Health)
	require.Positive(t, ps.Capacity)
	require.Equal(t, float64(DefaultOverProvisionRatio), ps.OverProvisionRatio)
	rep, err := c.CheckPool(ctx, false)
	require.NoError(t, err)
	require.True(t, rep.OK, "%+v", rep)

	cancel()
	require.NoError(t, <-done)
	done <- nil // for the cleanup
	_, err = c.Images(context.Background())
	require.ErrorIs(t, err, ErrUnavailable, "the daemon is gone")
	requireNothingLeft(t, cfg.Home)
}
