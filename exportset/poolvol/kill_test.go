package poolvol_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/internal/exporttest"
	"github.com/dataimage/dataimage/exportset/poolvol"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/internal/nodetest"
)

// The kill tests run a push or a pull in a child process (this test binary, re-executed),
// SIGKILL it while it moves chunks, and run it again in the test: the push resumes (the
// objects the child uploaded are not uploaded again), the pull starts over from what the child
// left, and both end with the whole image.

const (
	childEnv  = "EXPORTSET_KILL_CHILD" // push or pull
	childConf = "EXPORTSET_KILL_CONF"  // a childConfig in JSON
	killChunk = 256 << 10
	killSize  = 64 << 20
)

// childConfig is what the child does.
type childConfig struct {
	Pool   string
	Dir    string          // a directory target, or
	S3     remote.S3Config // an S3 target
	Digest exportset.Digest
}

func (c childConfig) target() (exportset.Target, error) {
	if c.Dir != "" {
		return remote.NewDir(c.Dir)
	}
	return remote.NewS3(c.S3)
}

// runChild pushes image/base of the pool, or pulls Digest into it, printing each progress
// report's chunk count.
func runChild() int {
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(childConf)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	err := func() error {
		tg, err := cfg.target()
		if err != nil {
			return err
		}
		p, err := blockstore.Open(cfg.Pool, blockstore.Options{})
		if err != nil {
			return err
		}
		defer p.Close()
		r := exportset.New(tg, exportset.Options{Workers: 2})
		progress := func(pr exportset.Progress) {
			if pr.Phase == exportset.PhaseTransfer {
				fmt.Printf("chunks %d\n", pr.Chunks)
			}
		}
		switch os.Getenv(childEnv) {
		case "push":
			snap, err := p.LookupSnapshot("image/base")
			if err != nil {
				return err
			}
			src, err := poolvol.InProcess(p, nil).NewSource(context.Background(), snap.ID, "src/base", "src-base")
			if err != nil {
				return err
			}
			_, err = r.Push(context.Background(), exportset.PushRequest{Source: src, Image: exporttest.Image("base"), ChunkSize: killChunk, Progress: progress})
			return err
		case "pull":
			sink := &poolvol.Sink{Node: poolvol.InProcess(p, nil), Volume: "pull/base", Snapshot: "image/pulled"}
			_, err := r.Pull(context.Background(), exportset.PullRequest{Ref: string(cfg.Digest), Sink: sink, Progress: progress})
			return err
		}
		return fmt.Errorf("unknown child %q", os.Getenv(childEnv))
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// killChild runs the child and SIGKILLs it once it reported atLeast chunks done. It fails the
// test if the child ended by itself.
func killChild(t *testing.T, what string, cfg childConfig, atLeast int) {
	conf, err := json.Marshal(cfg)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+what, childConf+"="+string(conf))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		n, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "chunks "))
		if err == nil && n >= atLeast && !killed {
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			killed = true
		}
	}
	err = cmd.Wait()
	require.True(t, killed, "the child %s ended before it was killed: %v", what, err)
}

// killPool makes a pool file with image/base: killSize bytes of page data.
func killPool(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "pool")
	p, err := blockstore.Create(path, blockstore.Options{Size: 1 << 30})
	require.NoError(t, err)
	info, err := p.CreateVolume("vol/base", killSize)
	require.NoError(t, err)
	v, err := p.Volume(info.ID)
	require.NoError(t, err)
	exporttest.Write(t, v, exporttest.PageData(rand.New(rand.NewPCG(9, 9)), killSize), 0)
	_, err = p.CreateSnapshot(info.ID, "image/base")
	require.NoError(t, err)
	require.NoError(t, p.Close())
	return path
}

func TestKillPushAndPull(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "registry")
		tg, err := remote.NewDir(dir)
		require.NoError(t, err)
		testKill(t, tg, childConfig{Dir: dir})
	})
	t.Run("s3", func(t *testing.T) {
		tg := exporttest.S3Target(t)
		testKill(t, tg, childConfig{S3: remote.S3Config{Bucket: tg.Bucket(), Prefix: "images/test", Endpoint: exporttest.S3.Endpoint, PathStyle: true,
			Credentials: remote.Credentials{AccessKeyID: exporttest.S3.AccessKey, SecretAccessKey: exporttest.S3.SecretKey}}})
	})
}

func testKill(t *testing.T, tg exportset.Target, cfg childConfig) {
	ctx := context.Background()
	cfg.Pool = killPool(t)
	const chunks = killSize / killChunk

	// A push killed a third of the way resumes.
	killChild(t, "push", cfg, chunks/3)
	p, err := blockstore.Open(cfg.Pool, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { nodetest.CloseChecked(t, p) })
	c := &exporttest.Counter{Target: tg}
	r := exportset.New(c, exportset.Options{})
	snap, err := p.LookupSnapshot("image/base")
	require.NoError(t, err)
	// The killed push left the clone its source read: its caller's to delete (the local daemon
	// deletes the volumes its catalog does not account for when it starts).
	left, err := p.LookupVolume("src/base")
	require.NoError(t, err)
	require.NoError(t, p.DeleteVolume(left.ID))
	src, err := poolvol.InProcess(p, nil).NewSource(ctx, snap.ID, "src/base", "src-base")
	require.NoError(t, err)
	res, err := r.Push(ctx, exportset.PushRequest{Source: src, Image: exporttest.Image("base"), ChunkSize: killChunk})
	require.NoError(t, src.Close(ctx))
	require.NoError(t, err)
	t.Logf("push resumed: %d objects were there, %d uploaded", res.Present, res.Uploaded)
	require.GreaterOrEqual(t, res.Present, chunks/3, "what the killed push uploaded is not uploaded again")
	require.Positive(t, res.Uploaded, "the killed push had not finished")
	require.Equal(t, chunks, res.Present+res.Uploaded)
	require.Equal(t, int64(res.Uploaded), c.Puts.Load())

	// A pull killed a third of the way leaves its volume (never an image); run again, it
	// starts over and makes the image.
	require.NoError(t, p.Close())
	cfg.Digest = res.Digest
	killChild(t, "pull", cfg, chunks/3)
	p, err = blockstore.Open(cfg.Pool, blockstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { nodetest.CloseChecked(t, p) })
	_, err = p.LookupVolume("pull/base")
	require.NoError(t, err, "the killed pull left its volume")
	_, err = p.LookupSnapshot("image/pulled")
	require.ErrorIs(t, err, blockstore.ErrNotFound, "a killed pull makes no image")
	sink := &poolvol.Sink{Node: poolvol.InProcess(p, nil), Volume: "pull/base", Snapshot: "image/pulled"}
	_, err = r.Pull(ctx, exportset.PullRequest{Ref: string(res.Digest), Sink: sink})
	require.NoError(t, err)
	pulled, ok := sink.Committed()
	require.True(t, ok)
	base, err := p.LookupSnapshot("image/base")
	require.NoError(t, err)
	exporttest.RequireSame(t, p, base.ID, p, pulled.ID)
	_, err = p.LookupVolume("pull/base")
	require.ErrorIs(t, err, blockstore.ErrNotFound)
}
