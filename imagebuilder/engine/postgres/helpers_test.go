package postgres_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/postgres"
	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

// pgEngine returns the engine of the PostgreSQL installation pgtest uses.
func pgEngine(t *testing.T) engine.Engine {
	t.Helper()
	bin := pgtest.Require(t)
	engines, err := postgres.Discover(postgres.Options{BinDirs: []string{bin}})
	require.NoError(t, err)
	require.NotEmpty(t, engines)
	return engines[0]
}

// testCtx is a context bounded for one test's server operations.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is a bytes.Buffer safe for the log follower and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startInstance starts a server on the instance under root and stops it at the end of the test
// (unless the test did).
func startInstance(t *testing.T, e engine.Engine, root string, opts engine.StartOptions) engine.Instance {
	t.Helper()
	if opts.RuntimeDir == "" {
		opts.RuntimeDir = pgtest.RunDir(t)
	}
	inst, err := e.Start(testCtx(t), root, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		select {
		case <-inst.Done():
		default:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = inst.Stop(ctx)
		}
	})
	return inst
}

// newInstance makes an empty instance (Init) and starts it.
func newInstance(t *testing.T, e engine.Engine, opts engine.StartOptions) engine.Instance {
	t.Helper()
	root := filepath.Join(pgtest.Dir(t), "vol")
	require.NoError(t, e.Init(testCtx(t), root, engine.InitOptions{}))
	return startInstance(t, e, root, opts)
}

// query runs sql and fails the test on error.
func query(t *testing.T, inst engine.Instance, db, sql string) string {
	t.Helper()
	out, err := inst.Query(testCtx(t), db, sql)
	require.NoError(t, err, sql)
	return out
}

// exec runs a script and fails the test on error.
func exec(t *testing.T, inst engine.Instance, db, script string) {
	t.Helper()
	require.NoError(t, inst.Exec(testCtx(t), db, strings.NewReader(script)))
}

// checkItems checks the known rows of the source's items table in database db.
func checkItems(t *testing.T, inst engine.Instance, db string) {
	t.Helper()
	require.Equal(t, "1000|500500|item 1000", query(t, inst, db, "SELECT count(*), sum(id), max(name) FILTER (WHERE id = 1000) FROM items"))
}
