package dataplane_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/dataplane/dataplanetest"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// stores returns the two Stores of one pool: the Local itself, and a Client of it served on a
// socket. The tests run the same steps on both and expect the same outcomes.
func stores(t *testing.T, exp export.Exporter) (*dataplane.Local, map[string]dataplane.Store) {
	t.Helper()
	pool := nodetest.Pool(t, filepath.Join(t.TempDir(), "pool"), 256<<20)
	l := dataplane.NewLocal(pool, exp, nil)
	return l, map[string]dataplane.Store{"local": l, "client": dataplanetest.Serve(t, l)}
}

// TestVolumes runs the pool's operations through each Store: what they return and the errors
// they fail with are the pool's, across the socket too.
func TestVolumes(t *testing.T) {
	_, all := stores(t, nil)
	ctx := context.Background()
	for name, s := range all {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, s.Health(ctx))
			v, err := s.CreateVolume(ctx, name+"-v", 8<<20)
			require.NoError(t, err)
			require.Equal(t, int64(8<<20), v.Size)
			got, err := s.VolumeInfo(ctx, v.ID)
			require.NoError(t, err)
			require.Equal(t, v.ID, got.ID)
			require.Equal(t, v.Name, got.Name)
			require.True(t, v.Created.Equal(got.Created))
			_, err = s.CreateVolume(ctx, name+"-v", 8<<20)
			require.ErrorIs(t, err, blockstore.ErrExists)
			_, err = s.CreateVolume(ctx, name+"-odd", 4095)
			require.ErrorIs(t, err, blockstore.ErrInvalidArgument)
			_, err = s.CreateVolume(ctx, name+"-huge", 1<<50)
			require.ErrorIs(t, err, blockstore.ErrOverProvisioned)

			snap, err := s.CreateSnapshot(ctx, v.ID, name+"-s")
			require.NoError(t, err)
			require.Equal(t, v.ID, snap.Volume)
			byName, err := s.LookupSnapshot(ctx, name+"-s")
			require.NoError(t, err)
			require.Equal(t, snap.ID, byName.ID)
			require.Equal(t, snap.LSN, byName.LSN)
			clone, err := s.Clone(ctx, snap.ID, name+"-c", 16<<20)
			require.NoError(t, err)
			require.Equal(t, snap.ID, clone.Origin)
			require.Equal(t, int64(16<<20), clone.Size)
			cv, err := s.CloneVolume(ctx, v.ID, name+"-cv", 0)
			require.NoError(t, err)
			require.NoError(t, s.GrowVolume(ctx, cv.ID, 32<<20))
			cvi, err := s.LookupVolume(ctx, name+"-cv")
			require.NoError(t, err)
			require.Equal(t, int64(32<<20), cvi.Size)
			err = s.GrowVolume(ctx, cv.ID, 4<<20)
			require.ErrorIs(t, err, blockstore.ErrInvalidArgument, "volumes never shrink")

			ext, err := s.DiffVolume(ctx, snap.ID, v.ID)
			require.NoError(t, err)
			require.Empty(t, ext)
			ext, err = s.AllocatedExtents(ctx, snap.ID)
			require.NoError(t, err)
			require.Empty(t, ext)
			require.NoError(t, s.Revert(ctx, v.ID, snap.ID))

			vols, err := s.ListVolumes(ctx)
			require.NoError(t, err)
			require.True(t, containsVolume(vols, v.ID) && containsVolume(vols, clone.ID))
			snaps, err := s.ListSnapshots(ctx)
			require.NoError(t, err)
			require.NotEmpty(t, snaps)

			n, err := s.DeleteVolumeSnapshots(ctx, v.ID)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			_, err = s.SnapshotInfo(ctx, snap.ID)
			require.ErrorIs(t, err, blockstore.ErrNotFound)
			require.ErrorIs(t, s.DeleteSnapshot(ctx, snap.ID), blockstore.ErrNotFound)
			for _, id := range []blockstore.VolumeID{v.ID, clone.ID, cv.ID} {
				require.NoError(t, s.DeleteVolume(ctx, id))
			}
			_, err = s.VolumeInfo(ctx, v.ID)
			require.ErrorIs(t, err, blockstore.ErrNotFound)
			_, err = s.LookupVolume(ctx, "nothing")
			require.ErrorIs(t, err, blockstore.ErrNotFound)

			st, err := s.Stats(ctx)
			require.NoError(t, err)
			require.Equal(t, 4096, st.BlockSize)
			require.Positive(t, st.PhysicalBytes)
			rep, err := s.Check(ctx, blockstore.CheckOptions{ReadOnly: true})
			require.NoError(t, err)
			require.True(t, rep.OK(), "%v", rep)
			require.True(t, rep.ReadOnly)
			_, err = s.Check(ctx, blockstore.CheckOptions{ReadOnly: true, Repair: true})
			require.ErrorIs(t, err, blockstore.ErrInvalidArgument)
			io, err := s.IOStats(ctx)
			require.NoError(t, err)
			require.Zero(t, io.Exported)
			_, err = s.Export(ctx, dataplane.ExportSpec{ID: "x", Volume: cv.ID})
			require.ErrorIs(t, err, export.ErrUnsupported, "a data plane without an exporter")
			_, err = s.Export(ctx, dataplane.ExportSpec{ID: ".bad", Volume: cv.ID})
			require.ErrorIs(t, err, export.ErrInvalid)
		})
	}
}

func containsVolume(vols []blockstore.VolumeInfo, id blockstore.VolumeID) bool {
	for _, v := range vols {
		if v.ID == id {
			return true
		}
	}
	return false
}

// damagingFile is a pool file whose reads return damaged bytes once damage is set: metadata
// that fails verification when Check reads it.
type damagingFile struct {
	*nodetest.FailFile
	damage atomic.Bool
}

func (f *damagingFile) ReadAt(b []byte, off int64) (int, error) {
	n, err := f.FailFile.ReadAt(b, off)
	if f.damage.Load() && off >= 2*4096 {
		for i := range b[:n] {
			b[i] ^= 0x5a
		}
	}
	return n, err
}

// TestCheckFindsCorruption: a check that finds corrupt metadata returns its report and an error
// wrapping blockstore.ErrCorrupt, across the socket too, with the problems named as the pool
// names them.
func TestCheckFindsCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool")
	p, err := blockstore.Create(path, blockstore.Options{Size: 64 << 20})
	require.NoError(t, err)
	v, err := p.CreateVolume("v", 8<<20)
	require.NoError(t, err)
	vol, err := p.Volume(v.ID)
	require.NoError(t, err)
	_, err = vol.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 0)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	osf, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	f := &damagingFile{FailFile: &nodetest.FailFile{File: osf}}
	p, err = blockstore.OpenOn(f, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	c := dataplanetest.Serve(t, dataplane.NewLocal(p, nil, nil))
	f.damage.Store(true)
	want, werr := p.CheckWith(blockstore.CheckOptions{ReadOnly: true})
	require.ErrorIs(t, werr, blockstore.ErrCorrupt)
	require.NotNil(t, want)
	rep, err := c.Check(context.Background(), blockstore.CheckOptions{ReadOnly: true})
	require.ErrorIs(t, err, blockstore.ErrCorrupt)
	require.Equal(t, werr.Error(), err.Error())
	require.NotNil(t, rep)
	require.False(t, rep.OK())
	require.Equal(t, want.String(), rep.String())
	require.Equal(t, len(want.Corrupt), len(rep.Corrupt))
	for i := range want.Corrupt {
		require.Equal(t, want.Corrupt[i].Error(), rep.Corrupt[i].Error())
		require.ErrorIs(t, rep.Corrupt[i], blockstore.ErrCorrupt)
	}
	f.damage.Store(false)
}

// TestHealthOfFailedPool: a pool whose disk failed says so through the socket (ErrFailed).
func TestHealthOfFailedPool(t *testing.T) {
	p, f := nodetest.FailablePool(t, 64<<20)
	c := dataplanetest.Serve(t, dataplane.NewLocal(p, nil, nil))
	ctx := context.Background()
	require.NoError(t, c.Health(ctx))
	f.Fail.Store(true)
	_, err := c.CreateVolume(ctx, "v", 1<<20)
	require.Error(t, err)
	require.ErrorIs(t, c.Health(ctx), blockstore.ErrFailed)
}

// TestUnavailable: a client whose data plane does not run (or stopped) fails with
// ErrUnavailable, quickly, and a context that ends is the context's error.
func TestUnavailable(t *testing.T) {
	c := dataplane.NewClient(filepath.Join(dataplanetest.SocketDir(t), "none.sock"))
	ctx := context.Background()
	start := time.Now()
	require.ErrorIs(t, c.Health(ctx), dataplane.ErrUnavailable)
	_, err := c.ListVolumes(ctx)
	require.ErrorIs(t, err, dataplane.ErrUnavailable)
	require.Less(t, time.Since(start), 5*time.Second)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, c.Health(cctx), context.Canceled)
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer wcancel()
	err = c.WaitReady(wctx, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// TestWaitReady: a client waits for a data plane that starts later, and calls reach a data
// plane that restarted on the same socket.
func TestWaitReady(t *testing.T) {
	pool := nodetest.Pool(t, filepath.Join(t.TempDir(), "pool"), 64<<20)
	sock := filepath.Join(dataplanetest.SocketDir(t), "dp.sock")
	c := dataplane.NewClient(sock)
	ctx := context.Background()
	serve := func() (stop func()) {
		lis, err := dataplane.Listen(sock)
		require.NoError(t, err)
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- dataplane.NewServer(dataplane.NewLocal(pool, nil, nil), "v1.2.3", nil).Serve(sctx, lis)
		}()
		return func() { cancel(); require.NoError(t, <-done) }
	}
	ready := make(chan error, 1)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() { ready <- c.WaitReady(wctx, nil) }()
	time.Sleep(300 * time.Millisecond)
	stop := serve()
	require.NoError(t, <-ready)
	api, version, err := c.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, dataplane.APIVersion, api)
	require.Equal(t, "v1.2.3", version)
	require.NoError(t, c.Health(ctx))
	stop()
	_, err = os.Stat(sock)
	require.ErrorIs(t, err, os.ErrNotExist, "the socket goes with the server")
	require.ErrorIs(t, c.Health(ctx), dataplane.ErrUnavailable)
	stop = serve()
	defer stop()
	require.NoError(t, c.Health(ctx), "the client reaches the data plane that restarted")
}

// TestListen: the socket is 0600 from the moment it appears, a stale socket is replaced, and
// anything else at the path is refused.
func TestListen(t *testing.T) {
	dir := dataplanetest.SocketDir(t)
	sock := filepath.Join(dir, "sub", "dp.sock")
	lis, err := dataplane.Listen(sock)
	require.NoError(t, err)
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket|0o600, fi.Mode()&(os.ModeType|os.ModePerm))
	di, err := os.Stat(filepath.Dir(sock))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), di.Mode().Perm())
	// A stale socket: the listener's file left behind, as by a process that was killed.
	raw, err := net.Listen("unix", filepath.Join(dir, "stale.sock"))
	require.NoError(t, err)
	raw.(*net.UnixListener).SetUnlinkOnClose(false)
	raw.Close()
	lis2, err := dataplane.Listen(filepath.Join(dir, "stale.sock"))
	require.NoError(t, err, "a stale socket is replaced")
	lis2.Close()
	lis.Close()
	_, err = os.Stat(sock)
	require.ErrorIs(t, err, os.ErrNotExist, "Close removes the socket")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o600))
	_, err = dataplane.Listen(filepath.Join(dir, "file"))
	require.ErrorIs(t, err, dataplane.ErrInvalid)
	_, err = dataplane.Listen("relative.sock")
	require.ErrorIs(t, err, dataplane.ErrInvalid)
}

// TestWireTolerance speaks the wire by hand: a request with fields the server does not know is
// served; a method it does not have, another API version's path and a GET of a method are
// ErrProtocol, with the version named.
func TestWireTolerance(t *testing.T) {
	_, all := stores(t, nil)
	c := all["client"].(*dataplane.Client)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", c.Socket())
	}}}
	post := func(path, body string) (int, string) {
		resp, err := hc.Post("http://dataplane"+path, "application/json", strings.NewReader(body))
		require.NoError(t, err)
		defer resp.Body.Close()
		var b bytes.Buffer
		_, err = b.ReadFrom(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b.String()
	}
	code, body := post("/v1/CreateVolume", `{"name":"v","size":1048576,"placement":"fast","future":{"x":1}}`)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `"name":"v"`)
	code, body = post("/v1/LookupVolume", `{"name":"missing"}`)
	require.Equal(t, http.StatusNotFound, code, body)
	require.Contains(t, body, `"codes":["not_found"]`)
	code, body = post("/v1/Teleport", `{}`)
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, body, "unknown method")
	require.Contains(t, body, "API version 1")
	code, body = post("/v2/Health", `{}`)
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, body, `"protocol"`)
	code, body = post("/v1/Health", `{not json`)
	require.Equal(t, http.StatusBadRequest, code, body)

	// A server that answers with fields this client does not know (a newer data plane).
	sock := filepath.Join(dataplanetest.SocketDir(t), "newer.sock")
	lis, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"result":{"id":7,"name":"v","size":4096,"created":"2026-01-02T03:04:05Z","tier":"gold"},"trace":"abc"}`))
	})}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()
	nc := dataplane.NewClient(sock)
	defer nc.Close()
	v, err := nc.VolumeInfo(context.Background(), 7)
	require.NoError(t, err)
	require.Equal(t, blockstore.VolumeInfo{ID: 7, Name: "v", Size: 4096, Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, v)
}

// TestExports runs exports through each Store on the real kernel path: export, the attrs
// kept, an export again of the same id (the same export) and of another volume (ErrExists),
// the device reading the volume, growth, I/O counted, a busy device refused, unexport, and
// leftovers of an earlier data plane found and cleaned up.
func TestExports(t *testing.T) {
	nodetest.Need(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "export")
	exp, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	l, all := stores(t, exp)
	t.Cleanup(func() { nodetest.RequireNothingLeft(t, dir, stateDir) })
	ctx := context.Background()
	for name, s := range all {
		t.Run(name, func(t *testing.T) {
			v, err := s.CreateVolume(ctx, name, 8<<20)
			require.NoError(t, err)
			other, err := s.CreateVolume(ctx, name+"-other", 8<<20)
			require.NoError(t, err)
			id := "exp-" + name
			e, err := s.Export(ctx, dataplane.ExportSpec{ID: id, Volume: v.ID, Attrs: map[string]string{"mountPoint": "/m"}})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, s.Unexport(ctx, id)) })
			require.True(t, strings.HasPrefix(e.Device, "/dev/loop"), e.Device)
			require.Equal(t, export.MethodFUSELoop, e.Method)
			again, err := s.Export(ctx, dataplane.ExportSpec{ID: id, Volume: v.ID, Attrs: map[string]string{"mountPoint": "/n"}})
			require.NoError(t, err)
			require.Equal(t, e.Device, again.Device)
			_, err = s.Export(ctx, dataplane.ExportSpec{ID: id, Volume: other.ID})
			require.ErrorIs(t, err, export.ErrExists)
			list, err := s.ListExports(ctx)
			require.NoError(t, err)
			found := false
			for _, x := range list {
				if x.ID == id {
					found = true
					require.Equal(t, map[string]string{"mountPoint": "/n"}, x.Attrs)
					require.Equal(t, v.ID, x.Volume)
				}
			}
			require.True(t, found, "%v", list)

			// The device is the volume: a write through it reads back from the pool.
			f, err := os.OpenFile(e.Device, os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
			require.NoError(t, err)
			buf := nodetest.AlignedBuf(4096)
			copy(buf, "through the device")
			_, err = f.WriteAt(buf, 4096)
			require.NoError(t, err)
			require.NoError(t, f.Sync())
			before, err := s.IOStats(ctx)
			require.NoError(t, err)
			require.Positive(t, before.Ops[dataplane.IOWrite])
			vol, err := l.Pool().Volume(v.ID)
			require.NoError(t, err)
			got := make([]byte, 18)
			_, err = vol.ReadAt(got, 4096)
			require.NoError(t, err)
			require.Equal(t, "through the device", string(got))

			// Held open exclusively, the device cannot be torn down.
			holder, err := os.OpenFile(e.Device, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
			require.NoError(t, err)
			f.Close()
			err = s.Unexport(ctx, id)
			require.ErrorIs(t, err, export.ErrBusy)
			require.Contains(t, err.Error(), e.Device)
			holder.Close()

			require.NoError(t, s.GrowVolume(ctx, v.ID, 16<<20))
			require.NoError(t, s.ResizeExport(ctx, id))
			require.ErrorIs(t, s.ResizeExport(ctx, "nothing"), dataplane.ErrNotExported)
			require.NoError(t, s.Unexport(ctx, id))
			require.NoError(t, s.Unexport(ctx, id), "unexporting what is not exported")
		})
	}

	// Leftovers: what another exporter on the same state directory (an earlier process) left.
	v, err := l.Pool().CreateVolume("left", 8<<20)
	require.NoError(t, err)
	vol, err := l.Pool().Volume(v.ID)
	require.NoError(t, err)
	earlier, err := export.Detect(export.Options{StateDir: stateDir})
	require.NoError(t, err)
	dev, err := earlier.Export("left", vol) // its server runs on in this process until the cleanup unmounts it
	require.NoError(t, err)
	c := all["client"]
	left, err := c.Leftovers(ctx)
	require.NoError(t, err)
	require.Len(t, left, 1)
	require.Equal(t, "left", left[0].ID)
	require.Equal(t, []string{dev.Path()}, left[0].Devices)
	_, err = c.Export(ctx, dataplane.ExportSpec{ID: "left", Volume: v.ID})
	require.ErrorIs(t, err, export.ErrLeftovers, "leftovers are cleaned up before the id is exported again")
	require.NoError(t, c.CleanupLeftover(ctx, "left"))
	left, err = c.Leftovers(ctx)
	require.NoError(t, err)
	require.Empty(t, left)
}

// TestVolumeData reads and writes a volume's data through each Store (ReadVolume, WriteVolume,
// ZeroVolume, FlushVolume): what one writes the other reads, across the socket too, and bad
// ranges and sizes fail with the pool's errors, changing nothing.
func TestVolumeData(t *testing.T) {
	l, all := stores(t, nil)
	ctx := context.Background()
	const size = 8 << 20
	for name, s := range all {
		t.Run(name, func(t *testing.T) {
			v, err := s.CreateVolume(ctx, name+"-data", size)
			require.NoError(t, err)
			data := make([]byte, 3<<20)
			for i := range data {
				data[i] = byte(i*7 + i>>12)
			}
			require.NoError(t, s.WriteVolume(ctx, v.ID, 4096, data))
			require.NoError(t, s.ZeroVolume(ctx, v.ID, 1<<20, 8192))
			clear(data[(1<<20)-4096 : (1<<20)-4096+8192])
			require.NoError(t, s.FlushVolume(ctx, v.ID))
			got := make([]byte, len(data))
			require.NoError(t, s.ReadVolume(ctx, v.ID, 4096, got))
			require.Equal(t, data, got)
			// The other Store, and the pool itself, see the same bytes.
			vol, err := l.Pool().Volume(v.ID)
			require.NoError(t, err)
			direct := make([]byte, len(data))
			_, err = vol.ReadAt(direct, 4096)
			require.NoError(t, err)
			require.Equal(t, data, direct)

			// Bad calls fail, naming the rule, and change nothing.
			require.ErrorIs(t, s.WriteVolume(ctx, v.ID, size-4096, make([]byte, 8192)), blockstore.ErrOutOfRange)
			require.ErrorIs(t, s.ReadVolume(ctx, v.ID, size, make([]byte, 4096)), blockstore.ErrOutOfRange)
			require.ErrorIs(t, s.ReadVolume(ctx, v.ID+1000, 0, make([]byte, 4096)), blockstore.ErrNotFound)
			require.ErrorIs(t, s.ZeroVolume(ctx, v.ID, size, 4096), blockstore.ErrOutOfRange)
			err = s.WriteVolume(ctx, v.ID, 0, make([]byte, dataplane.MaxDataBytes+1))
			require.ErrorIs(t, err, dataplane.ErrInvalid)
			require.ErrorContains(t, err, "at most")
			require.NoError(t, s.ReadVolume(ctx, v.ID, 4096, got))
			require.Equal(t, data, got, "after the failed calls")
			require.NoError(t, s.DeleteVolume(ctx, v.ID))
		})
	}
}
