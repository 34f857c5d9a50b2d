package fusedev_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/blockstore/export/holder"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// TestGracefulHandover: fio writes and verifies (crc32c) at queue depth 32 through a loop device
// on the file of a server child, while the child stops (Server.Stop: it reads no more requests,
// answers those it has, flushes) and a new child adopts the connection from the holder, as an
// upgrade does. fio exits 0 (every block it wrote reads back as written) and the kernel logs no
// I/O error for the device; the longest stall is logged. (The SIGKILL of a server is tested
// through the export: blockstore/export TestAdoptAfterSIGKILL.)
func TestGracefulHandover(t *testing.T) {
	nodetest.Need(t, "fio", "losetup")
	rig := newRestartRig(t, 256*mib)
	const handovers = 5
	f := nodetest.StartFIOVerify(t, rig.loop, 64*mib, 6*time.Second+handovers*time.Second)
	var took []time.Duration
	for range handovers {
		time.Sleep(time.Second)
		start := time.Now()
		rig.cur.stop(t)
		rig.cur = startChild(t, rig.cfg)
		require.Equal(t, "adopted", rig.cur.how)
		took = append(took, time.Since(start))
	}
	res := f.Wait(t)
	t.Logf("%d handovers took %v; fio: %d writes, %d verifying reads, longest stall %v (write %v, read %v)",
		handovers, took, res.Writes, res.Reads, res.MaxStall(), res.MaxWrite, res.MaxRead)
	rig.kmsg.RequireNoErrorsAbout(t, rig.loop)
	require.Positive(t, res.Reads, "fio verified")
}

// restartRig is a holder in this process, a server child, and a loop device on its file.
type restartRig struct {
	cfg  childConfig
	cur  *child
	loop string
	kmsg *nodetest.Kmsg
}

func newRestartRig(t *testing.T, size int64) *restartRig {
	t.Helper()
	tmp := t.TempDir()
	sock := filepath.Join(tmp, "holder.sock")
	l, err := holder.Listen(sock)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan error, 1)
	go func() { held <- holder.Run(ctx, l, nil) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-held)
	})
	disk := filepath.Join(tmp, "disk.img")
	require.NoError(t, os.WriteFile(disk, nil, 0o600))
	require.NoError(t, os.Truncate(disk, size))
	mnt := filepath.Join(tmp, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o700))

	rig := &restartRig{cfg: childConfig{Holder: sock, Key: "test", Dir: mnt, Disk: disk}}
	rig.kmsg = nodetest.OpenKmsg(t)
	rig.cur = startChild(t, rig.cfg)
	require.Equal(t, "mounted", rig.cur.how)
	t.Cleanup(func() {
		unmount(t, mnt)
		c, err := holder.Dial(sock)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.Drop("test"))
	})
	out, err := exec.Command("losetup", "--direct-io=on", "--sector-size", "4096", "--find", "--show", filepath.Join(mnt, fusedev.FileName)).Output()
	require.NoError(t, err)
	rig.loop = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		// With the server of the moment still serving (the detach closes the file), then stop it.
		out, err := exec.Command("losetup", "-d", rig.loop).CombinedOutput()
		require.NoError(t, err, "%s", out)
		rig.cur.stop(t)
	})
	return rig
}
