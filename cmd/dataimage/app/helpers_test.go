package app

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/local"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// testNow is the clock of the rendering tests.
var testNow = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// testImages are fixed images: one from a backup that never expires, one graduated from a clone
// that expires, one expired but kept.
func testImages() []local.Image {
	return []local.Image{
		{
			Name: "sales-2024", Engine: imagebuilder.EnginePostgres, Version: "15.18",
			SourceType: imagebuilder.SourceBackup, Tags: []string{"sales", "nightly"},
			Definition: &imagebuilder.Definition{
				Name: "sales-2024", Engine: "postgres", Version: "15", SourceType: "backup",
				Backups: []imagebuilder.Backup{{Path: "base.tar", Format: "basebackup-tar"}, {Path: "pg_wal.tar"}},
				Tags:    []string{"sales", "nightly"}, Lifetime: "0",
			},
			Size: 32 << 30, DataBytes: 1181116006,
			Created:   testNow.Add(-3*time.Hour - 12*time.Minute),
			DataState: time.Date(2026, 11, 21, 2, 30, 0, 0, time.UTC), LogPosition: "LSN 0/5000028",
			Lifetime: "0", BuildSeconds: 72.4, Clones: 3,
		},
		{
			Name: "sales-masked", Engine: imagebuilder.EnginePostgres, Version: "15.18",
			SourceType: imagebuilder.SourceBackup, FromClone: "sales-dev", FromRevision: "masked",
			Size: 32 << 30, DataBytes: 12 << 20,
			Created:  testNow.Add(-25 * time.Minute),
			Lifetime: "24h", Expires: testNow.Add(23*time.Hour + 35*time.Minute),
		},
		{
			Name: "scratch", Engine: imagebuilder.EngineMariaDB, Version: "10.11.19",
			SourceType: imagebuilder.SourceEmpty,
			Size:       32 << 30, DataBytes: 98 << 20,
			Created:  testNow.Add(-50 * time.Hour),
			Lifetime: "48h", Expires: testNow.Add(-2 * time.Hour), Clones: 1,
			Status: "expired; kept: 1 clone",
		},
	}
}

// testClones are fixed clones: running with revisions, stopped, failed.
func testClones() []local.Clone {
	return []local.Clone{
		{
			Name: "sales-dev", Image: "sales-2024", Engine: imagebuilder.EnginePostgres, State: local.CloneRunning,
			Connection: "postgresql://postgres:s3cret@127.0.0.1:55432/postgres",
			Host:       "127.0.0.1", Port: 55432, User: "postgres", Password: "s3cret", Database: "postgres",
			Size: 32 << 30, AddedBytes: 24 << 20,
			Created:  testNow.Add(-90 * time.Second),
			Lifetime: "2h", Expires: testNow.Add(2*time.Hour - 90*time.Second),
			CreateSeconds: 0.84,
			Revisions: []local.Revision{
				{Name: "rev-1", Created: testNow.Add(-60 * time.Second)},
				{Name: "masked", Created: testNow.Add(-30 * time.Second)},
			},
		},
		{
			Name: "sales-2024-x7k2", Image: "sales-2024", Engine: imagebuilder.EnginePostgres, State: local.CloneStopped,
			Size: 32 << 30, AddedBytes: 4096,
			Created:  testNow.Add(-4 * 24 * time.Hour),
			Lifetime: "0",
		},
		{
			Name: "scratch-1", Image: "scratch", Engine: imagebuilder.EngineMariaDB, State: local.CloneFailed,
			Size: 32 << 30, Created: testNow.Add(-2 * time.Hour), Lifetime: "0",
			Message: "server exited: port 3306 in use",
		},
	}
}

func testPool() *local.PoolStatus {
	return &local.PoolStatus{
		Path: "/var/lib/dataimage/pool.img", Capacity: 64 << 30, Used: 1300 << 20, Free: 64<<30 - 1300<<20,
		Provisioned: 5 * 32 << 30, OverProvisionRatio: 100, Images: 3, Clones: 3,
		ImageBytes: 1181116006 + 110<<20, CloneBytes: 24<<20 + 4096, Health: "ok",
	}
}

// call is one call a recorder received.
type call struct {
	method string
	args   []any
}

// recorder is a local.Service that records its calls and answers with the fixed values above
// (or err): it shows what a command line asks of the daemon, and how the answer is shown. What
// the daemon does with the requests is local's tests' business, and the end-to-end test's.
type recorder struct {
	// err, when set, is every call's error.
	err error
	// events are sent to BuildImage's progress function.
	events []wire.Event
	// check is CheckPool's report.
	check local.CheckReport

	mu     sync.Mutex
	calls  []call
	closed int // Close calls
}

func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed++
	return nil
}

func (r *recorder) record(method string, args ...any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{method, args})
	return r.err
}

func (r *recorder) BuildImage(_ context.Context, req local.BuildRequest, progress func(wire.Event)) (*local.Image, error) {
	if err := r.record("BuildImage", req); err != nil {
		return nil, err
	}
	for _, e := range r.events {
		progress(e)
	}
	im := testImages()[0]
	return &im, nil
}

func (r *recorder) Images(context.Context) ([]local.Image, error) {
	return testImages(), r.record("Images")
}

func (r *recorder) Image(_ context.Context, name string) (*local.Image, error) {
	im := testImages()[0]
	return &im, r.record("Image", name)
}

func (r *recorder) DeleteImage(_ context.Context, name string) error {
	return r.record("DeleteImage", name)
}

func (r *recorder) ImageFromClone(_ context.Context, req local.ImageFromCloneRequest) (*local.Image, error) {
	im := testImages()[1]
	return &im, r.record("ImageFromClone", req)
}

func (r *recorder) CreateClone(_ context.Context, req local.CloneRequest) (*local.Clone, error) {
	cl := testClones()[0]
	return &cl, r.record("CreateClone", req)
}

func (r *recorder) Clones(context.Context) ([]local.Clone, error) {
	return testClones(), r.record("Clones")
}

func (r *recorder) Clone(_ context.Context, name string) (*local.Clone, error) {
	cl := testClones()[0]
	return &cl, r.record("Clone", name)
}

func (r *recorder) DeleteClone(_ context.Context, name string) error {
	return r.record("DeleteClone", name)
}

func (r *recorder) StopClone(_ context.Context, name string) (*local.Clone, error) {
	cl := testClones()[1]
	return &cl, r.record("StopClone", name)
}

func (r *recorder) StartClone(_ context.Context, name string) (*local.Clone, error) {
	cl := testClones()[0]
	return &cl, r.record("StartClone", name)
}

func (r *recorder) ResetClone(_ context.Context, name, to string) (*local.Clone, error) {
	cl := testClones()[0]
	return &cl, r.record("ResetClone", name, to)
}

func (r *recorder) SaveClone(_ context.Context, name, revision string) (*local.Revision, error) {
	rev := testClones()[0].Revisions[1]
	return &rev, r.record("SaveClone", name, revision)
}

func (r *recorder) PoolStatus(context.Context) (*local.PoolStatus, error) {
	return testPool(), r.record("PoolStatus")
}

func (r *recorder) CheckPool(_ context.Context, repair bool) (*local.CheckReport, error) {
	rep := r.check
	return &rep, r.record("CheckPool", repair)
}

func (r *recorder) PushImage(_ context.Context, req local.PushRequest, progress func(wire.Event)) (*local.Image, error) {
	im := testImages()[0]
	im.Digest = "sha256:" + strings.Repeat("ab", 32)
	if progress != nil {
		progress(wire.Event{Step: "push", Message: "pushing"})
		progress(wire.Event{Step: "push", Done: 1 << 20, Total: 1 << 20})
	}
	return &im, r.record("PushImage", req)
}

func (r *recorder) PullImage(_ context.Context, req local.PullRequest, progress func(wire.Event)) (*local.Image, error) {
	im := testImages()[0]
	im.Digest = "sha256:" + strings.Repeat("ab", 32)
	return &im, r.record("PullImage", req)
}

func (r *recorder) RemoteImages(_ context.Context, rm local.Remote) ([]local.RemoteImage, error) {
	return []local.RemoteImage{
		{Digest: exportset.Digest("sha256:" + strings.Repeat("ab", 32)), Names: []string{"sales-2024", "latest"}, Name: "sales-2024",
			Engine: "postgres", Version: "16.4", Size: 32 << 30, StoredBytes: 700 << 20, Created: testNow.Add(-2 * time.Hour)},
		{Digest: exportset.Digest("sha256:" + strings.Repeat("cd", 32)), Error: "exportset: unsupported format version: manifest format 2"},
	}, r.record("RemoteImages", rm)
}

func (r *recorder) DeleteRemoteImage(_ context.Context, ref string, rm local.Remote) (*local.RemoteDeletion, error) {
	return &local.RemoteDeletion{Digest: exportset.Digest("sha256:" + strings.Repeat("ab", 32)), Deleted: true, Collected: 3, CollectedBytes: 5 << 20},
		r.record("DeleteRemoteImage", ref, rm)
}

var _ local.Service = (*recorder)(nil)

// harness runs the command against a recorder, with a fixed clock and no terminal.
type harness struct {
	t      *testing.T
	rec    *recorder
	env    *env
	stdout bytes.Buffer
	stderr bytes.Buffer
	// connects are the (home, daemon args) of each connection the command made.
	connects []connectCall
	// tty makes stderr a terminal of 80 columns.
	tty bool
}

type connectCall struct {
	home       string
	daemonArgs []string
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, rec: &recorder{}}
	h.env = &env{
		stdout: &h.stdout,
		stderr: &h.stderr,
		getenv: func(string) string { return "" },
		connect: func(_ context.Context, home string, daemonArgs []string) (client, error) {
			h.connects = append(h.connects, connectCall{home, daemonArgs})
			return h.rec, nil
		},
		now:      func() time.Time { return testNow },
		loc:      time.UTC,
		terminal: func(io.Writer) (bool, int) { return h.tty, 80 },
	}
	return h
}

// run runs the command line and returns its exit status; output is in h.stdout and h.stderr,
// reset first.
func (h *harness) run(args ...string) int {
	h.t.Helper()
	h.stdout.Reset()
	h.stderr.Reset()
	h.connects = nil
	h.rec.calls = nil
	h.rec.closed = 0
	code := execute(context.Background(), args, h.env)
	if h.rec.closed != len(h.connects) {
		h.t.Errorf("%v: %d connections, %d closed", args, len(h.connects), h.rec.closed)
	}
	return code
}

// golden compares got with testdata/name, or writes it there with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden file: %v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run go test -update if the change is intended):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
