package fusedev_test

// The restart tests run the FUSE server in a child process (this test binary, re-executed: TestMain
// runs serveChild), so that it can be killed. The child serves a plain file (filedisk), whose
// acknowledged writes are in the page cache and survive the child's death; the connection's
// descriptors are held by a holder in the test process.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore/export/filedisk"
	"github.com/dataimage/dataimage/blockstore/export/fusedev"
	"github.com/dataimage/dataimage/blockstore/export/holder"
)

const (
	childEnv = "FUSEDEV_TEST_CHILD" // JSON childConfig
	readyMsg = "READY"
)

type childConfig struct {
	Holder string `json:"holder"` // holder socket
	Key    string `json:"key"`
	Dir    string `json:"dir"`  // mount point (used when the holder has nothing under Key)
	Disk   string `json:"disk"` // file served
}

func TestMain(m *testing.M) {
	if arg := os.Getenv(childEnv); arg != "" {
		if err := serveChild(arg); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveChild serves the file cfg.Disk: on the connection the holder holds under cfg.Key (adopted),
// or on a new one mounted at cfg.Dir and put in the holder. It prints readyMsg and the way it
// started once it serves, stops gracefully on SIGTERM (Server.Stop) and exits.
func serveChild(arg string) error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(arg), &cfg); err != nil {
		return err
	}
	if err := fusedev.SetIOFlusher(); err != nil && !errors.Is(err, fusedev.ErrUnsupported) {
		return err
	}
	c, err := holder.Dial(cfg.Holder)
	if err != nil {
		return err
	}
	defer c.Close()
	disk, err := filedisk.Open(cfg.Disk, 0)
	if err != nil {
		return err
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)

	var srv *fusedev.Server
	how := "adopted"
	fds, pb, err := c.Get(cfg.Key)
	switch {
	case errors.Is(err, holder.ErrNotFound):
		how = "mounted"
		fd, err := fusedev.Mount(cfg.Dir, "fusedev-test", fusedev.DefaultMaxWrite)
		if err != nil {
			return err
		}
		p, err := fusedev.Init(fd, fusedev.InitOptions{})
		if err != nil {
			return err
		}
		if err := c.Put(cfg.Key, []int{fd}, p.Marshal()); err != nil {
			return err
		}
		if srv, err = fusedev.Serve([]int{fd}, p, disk, fusedev.Config{}); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		p, err := fusedev.UnmarshalParams(pb)
		if err != nil {
			return err
		}
		if srv, err = fusedev.Adopt(fds, p, disk, fusedev.Config{}); err != nil {
			return err
		}
	}
	fmt.Println(readyMsg, how)
	select {
	case <-term:
		return srv.Stop()
	case <-srv.Done():
		return srv.Wait()
	}
}

// child is a running serveChild.
type child struct {
	cmd  *exec.Cmd
	how  string // "mounted" or "adopted"
	took time.Duration
}

// startChild starts a server child and waits until it serves.
func startChild(t testing.TB, cfg childConfig) *child {
	t.Helper()
	b, err := json.Marshal(cfg)
	require.NoError(t, err)
	start := time.Now()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd}
	ready := false
	t.Cleanup(func() {
		// A child that serves is its caller's to stop (after the loop device is detached).
		if !ready {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "child did not start serving")
	f := strings.Fields(line)
	require.True(t, len(f) == 2 && f[0] == readyMsg, "child said %q", line)
	ready = true
	c.how, c.took = f[1], time.Since(start)
	return c
}

// stop SIGTERMs the child (Server.Stop) and checks it exited cleanly.
func (c *child) stop(t testing.TB) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, c.cmd.Wait(), "graceful stop")
}
