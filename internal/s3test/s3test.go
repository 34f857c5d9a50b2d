// Package s3test runs tests against a real S3 server: SeaweedFS (`weed server -s3`, built from
// its Go module by hack/install-deps.sh into /usr/local/lib/dataimage/seaweedfs), started on
// loopback with free ports and a data directory of its own, with one access key. Each test
// gets a bucket of its own. Why SeaweedFS: it is open source, a single static binary built
// from Go sources the project's scripts can fetch through the Go module proxy, starts in
// seconds, and speaks the S3 API with signatures, path-style addressing and list-after-write
// consistency, as the servers the product targets do.
//
// For tests only.
//
// It must not know the product: tests bring their own clients.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Weed is where hack/install-deps.sh installs the weed binary; WEED overrides it.
const Weed = "/usr/local/lib/dataimage/seaweedfs/weed"

// Server is a running S3 server.
type Server struct {
	// Skip says why the server is not running (Need skips); empty when it runs.
	Skip string
	// Endpoint is http://127.0.0.1:PORT; AccessKey and SecretKey its only identity's (admin).
	Endpoint             string
	AccessKey, SecretKey string
	// Log is the server's log file.
	Log string

	cmd     *exec.Cmd
	dir     string
	sockets []string // the unix sockets weed makes in /tmp for its gRPC ports, removed by stop
}

// Main starts the server, runs the tests, stops the server and returns the exit code, for
// TestMain: os.Exit(s3test.Main(m, &srv)). When the server cannot start, srv.Skip says why,
// and the run fails under CI=true (where hack/install-deps.sh must have installed it). While
// fuzzing nothing is started.
func Main(m *testing.M, srv **Server) int {
	flag.Parse()
	s := &Server{}
	*srv = s
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		s.Skip = "not started while fuzzing"
		return m.Run()
	}
	if err := s.start(); err != nil {
		s.stop()
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "s3test: %v (CI=true: hack/install-deps.sh must install SeaweedFS)\n", err)
			return 1
		}
		s.Skip = err.Error()
	}
	code := m.Run()
	s.stop()
	return code
}

// Need skips t when the server is not running.
func (s *Server) Need(t testing.TB) {
	t.Helper()
	if s == nil || s.Skip != "" {
		why := "s3test.Main was not called"
		if s != nil {
			why = s.Skip
		}
		t.Skipf("s3test: %s (make deps installs SeaweedFS)", why)
	}
}

// Client returns a minio-go client of the server's admin.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := s.client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (s *Server) client() (*minio.Client, error) {
	return minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), BucketLookup: minio.BucketLookupPath, Region: "us-east-1",
	})
}

// Bucket makes a new, empty bucket for t (skipping t when the server is not running). It is
// emptied and removed at cleanup.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	s.Need(t)
	c := s.Client(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "test-" + hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("s3test: make bucket %s: %v (server log %s)", name, err, s.Log)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for o := range c.ListObjects(ctx, name, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err == nil {
				_ = c.RemoveObject(ctx, name, o.Key, minio.RemoveObjectOptions{})
			}
		}
		_ = c.RemoveBucket(ctx, name)
	})
	return name
}

func (s *Server) start() error {
	weed := os.Getenv("WEED")
	if weed == "" {
		weed = Weed
	}
	if _, err := os.Stat(weed); err != nil {
		return fmt.Errorf("no SeaweedFS at %s: %w", weed, err)
	}
	dir, err := os.MkdirTemp("", "s3test-")
	if err != nil {
		return err
	}
	s.dir = dir
	key := make([]byte, 20)
	_, _ = rand.Read(key)
	s.AccessKey, s.SecretKey = "test"+hex.EncodeToString(key[:8]), hex.EncodeToString(key)
	cfg, err := json.Marshal(map[string]any{"identities": []any{map[string]any{
		"name":        "admin",
		"credentials": []any{map[string]string{"accessKey": s.AccessKey, "secretKey": s.SecretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "s3.json"), cfg, 0o600); err != nil {
		return err
	}
	// weed reads master.toml from its working directory: one volume per new collection (a
	// bucket) instead of seven, so that a test's first write does not wait for seven.
	if err := os.WriteFile(filepath.Join(dir, "master.toml"), []byte("[master.volume_growth]\ncopy_1 = 1\n"), 0o600); err != nil {
		return err
	}
	ports, err := freePorts(8)
	if err != nil {
		return err
	}
	for i, svc := range map[int]string{1: "master", 3: "volume", 5: "filer", 7: "s3"} {
		s.sockets = append(s.sockets, fmt.Sprintf("/tmp/seaweedfs-%s-grpc-%d.sock", svc, ports[i]))
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return err
	}
	p := func(i int) string { return strconv.Itoa(ports[i]) }
	args := []string{"-logdir=" + dir, "server",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=" + data, "-volume.max=100",
		"-master.port=" + p(0), "-master.port.grpc=" + p(1), "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
		"-volume.port=" + p(2), "-volume.port.grpc=" + p(3), "-volume.preStopSeconds=0",
		"-filer.port=" + p(4), "-filer.port.grpc=" + p(5), "-filer.localSocket=" + filepath.Join(dir, "filer.sock"),
		"-s3", "-s3.port=" + p(6), "-s3.port.grpc=" + p(7), "-s3.port.iceberg=0", "-s3.port.lance=0",
		"-s3.config=" + filepath.Join(dir, "s3.json"),
	}
	s.Log = filepath.Join(dir, "weed.log")
	logf, err := os.Create(s.Log)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.cmd = exec.Command(weed, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Dir = dir
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", weed, err)
	}
	s.Endpoint = "http://127.0.0.1:" + p(6)
	return s.waitReady(2 * time.Minute)
}

// waitReady waits until the server makes and lists a bucket.
func (s *Server) waitReady(timeout time.Duration) error {
	c, err := s.client()
	if err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait() }()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			s.cmd = nil
			return fmt.Errorf("weed exited: %v; log:\n%s", err, tail(s.Log))
		case <-time.After(200 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = c.MakeBucket(ctx, "ready", minio.MakeBucketOptions{Region: "us-east-1"})
		if last == nil || minio.ToErrorResponse(last).Code == "BucketAlreadyOwnedByYou" {
			_, err := c.PutObject(ctx, "ready", "probe", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
			last = err
		}
		cancel()
		if last == nil {
			go func() { <-exited }()
			return nil
		}
	}
	return fmt.Errorf("weed did not serve S3 at %s within %s: %v; log:\n%s", s.Endpoint, timeout, last, tail(s.Log))
}

func (s *Server) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		// A test server's data goes with it: a short grace, then SIGKILL.
		pid := s.cmd.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		for i := 0; i < 20 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, sock := range s.sockets {
		_ = os.Remove(sock)
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// freePorts returns n distinct free TCP ports of 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
