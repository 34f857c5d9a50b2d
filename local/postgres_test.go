package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// pgBackups makes the backups the PostgreSQL images are built from, with the real tools against
// a throwaway source server: pg_dump custom and plain of database app, a pg_basebackup tar with
// its WAL, and the pre and post scripts. The source holds people: (1, ada), (2, grace).
func pgBackups(t *testing.T, eng engine.Engine) string {
	t.Helper()
	root := backupDir(t)
	_, run := sourceServer(t, eng, `CREATE TABLE people (id int PRIMARY KEY, name text);
		INSERT INTO people VALUES (1, 'ada'), (2, 'grace');`)
	pgDump := pgTool(t, eng, "pg_dump")
	dumpTo(t, imagebuilder.EnginePostgres, filepath.Join(root, "dump.custom"), pgDump, "-h", run, "-U", "postgres", "-Fc", "app")
	dumpTo(t, imagebuilder.EnginePostgres, filepath.Join(root, "dump.sql"), pgDump, "-h", run, "-U", "postgres", "app")
	u, err := engine.ResolveUser("", "postgres")
	require.NoError(t, err)
	base := filepath.Join(root, "base")
	require.NoError(t, u.MkdirAll(base, 0o755))
	serverUserCommand(t, imagebuilder.EnginePostgres, nil, pgTool(t, eng, "pg_basebackup"),
		"-h", run, "-U", "postgres", "-D", base, "-Ft", "-Xs", "--checkpoint=fast", "--no-sync")
	for _, f := range []string{"base.tar", "pg_wal.tar"} {
		require.FileExists(t, filepath.Join(base, f))
	}
	writeTestFile(t, filepath.Join(root, "scripts", "pre.sql"), "CREATE TABLE pre_marker (x int); INSERT INTO pre_marker VALUES (7);\n")
	writeTestFile(t, filepath.Join(root, "scripts", "post.sql"),
		"UPDATE people SET name = upper(name);\nCREATE TABLE post_marker AS SELECT count(*) AS n FROM pre_marker;\n")
	writeTestFile(t, filepath.Join(root, "scripts", "broken.sql"), "SELECT * FROM no_such_table;\n")
	return root
}

// pgDefinition returns an image definition of the PostgreSQL engine eng.
func pgDefinition(eng engine.Engine, name, rest string) string {
	major, _, _ := strings.Cut(eng.Version(), ".")
	return fmt.Sprintf("name: %s\nengine: postgres\nversion: %q\ninitialDatabaseName: app\n%s", name, major, rest)
}

// TestPostgres is the end-to-end proof with PostgreSQL: images from empty, from a pg_basebackup
// tar with its WAL, from pg_dump custom and plain, with pre and post scripts; clones that are
// isolated from each other and from their image; reset to the image and to revisions; images
// graduated from clones; deletion refused while an image has clones; lifetimes; a failed build;
// the same over the HTTP client. The images are built once (concurrently) and shared by the
// subtests, each of which deletes what it makes.
func TestPostgres(t *testing.T) {
	eng := needEngine(t, imagebuilder.EnginePostgres)
	d, cfg := newTestDaemon(t)
	root := pgBackups(t, eng)
	ctx := context.Background()

	defs := map[string]string{
		"pg-empty":  pgDefinition(eng, "pg-empty", "sourceType: empty\ntags: [empty, test]\n"),
		"pg-base":   pgDefinition(eng, "pg-base", "sourceType: backup\nbackups:\n  - path: base/base.tar\n  - path: base/pg_wal.tar\n"),
		"pg-custom": pgDefinition(eng, "pg-custom", "sourceType: backup\nbackups:\n  - path: dump.custom\npreScript: scripts/pre.sql\npostScript: scripts/post.sql\n"),
		"pg-plain":  pgDefinition(eng, "pg-plain", "sourceType: backup\nbackups:\n  - path: dump.sql\n    format: sql\n"),
	}
	images := map[string]*Image{}
	t.Run("build", func(t *testing.T) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, def := range defs {
			wg.Go(func() {
				img, steps, err := tryBuild(d, def, root)
				mu.Lock()
				defer mu.Unlock()
				if !assertNoError(t, err, "build %s", name) {
					return
				}
				images[name] = img
				assert.Equal(t, []string{"volume", "filesystem"}, steps[:2], "%s steps %v", name, steps)
				assert.Equal(t, "freeze", steps[len(steps)-1], "%s steps %v", name, steps)
				assert.Contains(t, steps, "stop", name)
			})
		}
		wg.Wait()
		require.Len(t, images, len(defs))
		for name, img := range images {
			require.Equal(t, name, img.Name)
			require.Equal(t, imagebuilder.EnginePostgres, img.Engine)
			require.Equal(t, eng.Version(), img.Version)
			require.Equal(t, cfg.VolumeSize, img.Size)
			require.Positive(t, img.DataBytes, name)
			require.Less(t, img.DataBytes, int64(256<<20), "%s: a small image", name)
			require.Equal(t, "0", img.Lifetime)
			require.True(t, img.Expires.IsZero())
			require.Positive(t, img.BuildSeconds)
			require.Equal(t, "app", img.Database)
			require.NotNil(t, img.Definition)
		}
		require.Equal(t, imagebuilder.SourceEmpty, images["pg-empty"].SourceType)
		require.Equal(t, []string{"empty", "test"}, images["pg-empty"].Tags)
		require.Equal(t, imagebuilder.SourceBackup, images["pg-base"].SourceType)
		require.False(t, images["pg-base"].DataState.IsZero(), "a base backup records its start")
		list, err := d.Images(ctx)
		require.NoError(t, err)
		var names []string
		for _, img := range list {
			names = append(names, img.Name)
		}
		require.Equal(t, []string{"pg-base", "pg-custom", "pg-empty", "pg-plain"}, names)
		_, _, err = tryBuild(d, defs["pg-empty"], root)
		require.ErrorIs(t, err, ErrAlreadyExists)
		require.EqualError(t, err, "image pg-empty already exists")
	})
	if len(images) != len(defs) {
		t.FailNow()
	}

	t.Run("contents", func(t *testing.T) {
		empty := createClone(t, d, CloneRequest{Image: "pg-empty"})
		require.Equal(t, "app", sql(t, empty, "SELECT current_database()"))
		require.Equal(t, "0", sql(t, empty, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
		require.True(t, strings.HasPrefix(empty.Name, "pg-empty-"), empty.Name)
		require.Equal(t, fmt.Sprintf("postgresql://postgres:%s@127.0.0.1:%d/app?sslmode=disable", empty.Password, empty.Port), empty.Connection)
		require.Less(t, empty.CreateSeconds, 30.0, "a clone starts in seconds")
		require.Equal(t, "pg-empty", empty.Image)
		require.Equal(t, imagebuilder.EnginePostgres, empty.Engine)

		base := createClone(t, d, CloneRequest{Image: "pg-base", Name: "base-1"})
		require.Equal(t, "ada,grace", sql(t, base, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		custom := createClone(t, d, CloneRequest{Image: "pg-custom", Name: "custom-1"})
		require.Equal(t, "ADA,GRACE", sql(t, custom, "SELECT string_agg(name, ',' ORDER BY id) FROM people"), "the post script ran after the restore")
		require.Equal(t, "7", sql(t, custom, "SELECT x FROM pre_marker"), "the pre script ran")
		require.Equal(t, "1", sql(t, custom, "SELECT n FROM post_marker"), "the post script saw the pre script's work")
		plain := createClone(t, d, CloneRequest{Image: "pg-plain", Name: "plain-1"})
		require.Equal(t, "ada,grace", sql(t, plain, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))

		// A clone's password is its own: the connection without it is refused.
		_, err := trySQL(&Clone{Engine: plain.Engine, Connection: strings.Replace(plain.Connection, plain.Password, "wrong", 1)}, "SELECT 1")
		require.ErrorContains(t, err, "password authentication failed")

		_, err = d.CreateClone(ctx, CloneRequest{Image: "pg-plain", Name: "plain-1"})
		require.ErrorIs(t, err, ErrAlreadyExists)
		_, err = d.CreateClone(ctx, CloneRequest{Image: "pg-plain", Name: "taken-port", Port: plain.Port})
		require.ErrorIs(t, err, ErrInvalid)
		require.ErrorContains(t, err, fmt.Sprintf("port %d", plain.Port))
		require.NotContains(t, poolNames(t, d), "volume clone/taken-port", "a failed create leaves no volume")
	})

	t.Run("isolation", func(t *testing.T) {
		a := createClone(t, d, CloneRequest{Image: "pg-plain", Name: "iso-a"})
		b := createClone(t, d, CloneRequest{Image: "pg-plain", Name: "iso-b"})
		sql(t, a, "INSERT INTO people VALUES (3, 'only-in-a')")
		sql(t, b, "DELETE FROM people WHERE id = 1")
		require.Equal(t, "ada,grace,only-in-a", sql(t, a, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		require.Equal(t, "grace", sql(t, b, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		c := createClone(t, d, CloneRequest{Image: "pg-plain", Name: "iso-c"})
		require.Equal(t, "ada,grace", sql(t, c, "SELECT string_agg(name, ',' ORDER BY id) FROM people"), "a new clone starts from the image")
		got, err := d.Clone(ctx, "iso-a")
		require.NoError(t, err)
		require.Positive(t, got.AddedBytes, "a's writes added blocks")
		require.NotEqual(t, a.Port, b.Port)
		img, err := d.Image(ctx, "pg-plain")
		require.NoError(t, err)
		require.Equal(t, 3, img.Clones)
	})

	t.Run("reset-save-stop", func(t *testing.T) {
		r := createClone(t, d, CloneRequest{Image: "pg-plain", Name: "reset-1"})
		sql(t, r, "INSERT INTO people VALUES (3, 'saved')")
		rev, err := d.SaveClone(ctx, r.Name, "")
		require.NoError(t, err)
		require.Equal(t, "rev-1", rev.Name)
		sql(t, r, "INSERT INTO people VALUES (4, 'unsaved')")
		_, err = d.SaveClone(ctx, r.Name, "rev-1")
		require.ErrorIs(t, err, ErrAlreadyExists)
		_, err = d.SaveClone(ctx, r.Name, ResetToImage)
		require.ErrorIs(t, err, ErrInvalid)

		got, err := d.ResetClone(ctx, r.Name, "")
		require.NoError(t, err)
		require.Equal(t, CloneRunning, got.State)
		require.Equal(t, "ada,grace,saved", sql(t, got, "SELECT string_agg(name, ',' ORDER BY id) FROM people"), "reset to the last revision")
		got, err = d.ResetClone(ctx, r.Name, ResetToImage)
		require.NoError(t, err)
		require.Equal(t, "ada,grace", sql(t, got, "SELECT string_agg(name, ',' ORDER BY id) FROM people"), "reset to the image")
		got, err = d.ResetClone(ctx, r.Name, "rev-1")
		require.NoError(t, err)
		require.Equal(t, "ada,grace,saved", sql(t, got, "SELECT string_agg(name, ',' ORDER BY id) FROM people"), "reset to a named revision")
		_, err = d.ResetClone(ctx, r.Name, "no-such-rev")
		require.ErrorIs(t, err, ErrNotFound)
		require.Len(t, got.Revisions, 1)

		stopped, err := d.StopClone(ctx, r.Name)
		require.NoError(t, err)
		require.Equal(t, CloneStopped, stopped.State)
		_, err = trySQL(stopped, "SELECT 1")
		require.Error(t, err, "a stopped clone's server does not answer")
		// A stopped clone saves and resets without a server.
		_, err = d.SaveClone(ctx, r.Name, "while-stopped")
		require.NoError(t, err)
		stopped, err = d.ResetClone(ctx, r.Name, ResetToImage)
		require.NoError(t, err)
		require.Equal(t, CloneStopped, stopped.State)
		started, err := d.StartClone(ctx, r.Name)
		require.NoError(t, err)
		require.Equal(t, CloneRunning, started.State)
		require.Equal(t, "ada,grace", sql(t, started, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		started, err = d.ResetClone(ctx, r.Name, "while-stopped")
		require.NoError(t, err)
		require.Equal(t, "ada,grace,saved", sql(t, started, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		again, err := d.StartClone(ctx, r.Name)
		require.NoError(t, err, "starting a running clone changes nothing")
		require.Equal(t, started.Port, again.Port)
	})

	t.Run("server-dies", func(t *testing.T) {
		c := createClone(t, d, CloneRequest{Image: "pg-plain", Name: "dies-1"})
		sql(t, c, "INSERT INTO people VALUES (3, 'committed')")
		d.mu.Lock()
		pid := d.mu.cat.Clones[c.Name].PID
		d.mu.Unlock()
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		require.Eventually(t, func() bool {
			got, err := d.Clone(ctx, c.Name)
			return err == nil && got.State == CloneFailed
		}, 30*time.Second, 20*time.Millisecond)
		got, err := d.Clone(ctx, c.Name)
		require.NoError(t, err)
		require.Contains(t, got.Message, "the server exited unexpectedly")
		got, err = d.StartClone(ctx, c.Name)
		require.NoError(t, err, "a failed clone starts again")
		require.Equal(t, CloneRunning, got.State)
		require.Equal(t, "ada,grace,committed", sql(t, got, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
	})

	t.Run("concurrent", func(t *testing.T) {
		// Operations on different clones run side by side; the image cannot go meanwhile.
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Go(func() {
				name := fmt.Sprintf("conc-%d", i)
				c, err := d.CreateClone(ctx, CloneRequest{Image: "pg-plain", Name: name})
				if !assert.NoError(t, err) {
					return
				}
				defer func() { assert.NoError(t, d.DeleteClone(ctx, name)) }()
				_, err = trySQL(c, fmt.Sprintf("INSERT INTO people VALUES (%d, '%s')", 10+i, name))
				assert.NoError(t, err)
				_, err = d.SaveClone(ctx, name, "")
				assert.NoError(t, err)
				assert.ErrorIs(t, d.DeleteImage(ctx, "pg-plain"), ErrHasClones)
				_, err = d.Clones(ctx)
				assert.NoError(t, err)
				c, err = d.ResetClone(ctx, name, ResetToImage)
				if assert.NoError(t, err) {
					out, err := trySQL(c, "SELECT count(*) FROM people")
					assert.NoError(t, err)
					assert.Equal(t, "2", out)
				}
			})
		}
		wg.Wait()
	})

	t.Run("image-from-clone", func(t *testing.T) {
		g, err := d.CreateClone(ctx, CloneRequest{Image: "pg-plain", Name: "grad-src"})
		require.NoError(t, err)
		sql(t, g, "INSERT INTO people VALUES (5, 'in-revision')")
		_, err = d.SaveClone(ctx, g.Name, "s1")
		require.NoError(t, err)
		sql(t, g, "INSERT INTO people VALUES (6, 'after-revision')")
		fromRev, err := d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "pg-grad", Clone: g.Name, Revision: "s1", Tags: []string{"graduated"}})
		require.NoError(t, err)
		require.Equal(t, "grad-src", fromRev.FromClone)
		require.Equal(t, "s1", fromRev.FromRevision)
		require.Equal(t, imagebuilder.EnginePostgres, fromRev.Engine)
		require.Equal(t, "app", fromRev.Database)
		fromNow, err := d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "pg-now", Clone: g.Name})
		require.NoError(t, err)
		require.Empty(t, fromNow.FromRevision)
		_, err = d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "pg-now", Clone: g.Name})
		require.ErrorIs(t, err, ErrAlreadyExists)
		_, err = d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "pg-x", Clone: g.Name, Revision: "nope"})
		require.ErrorIs(t, err, ErrNotFound)

		// The graduated images outlive the clone and its revisions.
		require.NoError(t, d.DeleteClone(ctx, g.Name))
		require.NotContains(t, strings.Join(poolNames(t, d), " "), "grad-src", "the clone's volume and revisions are gone")
		c1 := createClone(t, d, CloneRequest{Image: "pg-grad"})
		require.Equal(t, "ada,grace,in-revision", sql(t, c1, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		c2 := createClone(t, d, CloneRequest{Image: "pg-now"})
		require.Equal(t, "ada,grace,in-revision,after-revision", sql(t, c2, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		// Reset goes back to the graduated image.
		sql(t, c2, "DELETE FROM people")
		c2, err = d.ResetClone(ctx, c2.Name, ResetToImage)
		require.NoError(t, err)
		require.Equal(t, "4", sql(t, c2, "SELECT count(*) FROM people"))
		require.NoError(t, d.DeleteClone(ctx, c1.Name))
		require.NoError(t, d.DeleteClone(ctx, c2.Name))
		require.NoError(t, d.DeleteImage(ctx, "pg-grad"))
		require.NoError(t, d.DeleteImage(ctx, "pg-now"))
	})

	t.Run("delete-image-with-clones", func(t *testing.T) {
		createClone(t, d, CloneRequest{Image: "pg-empty", Name: "keep-b"})
		createClone(t, d, CloneRequest{Image: "pg-empty", Name: "keep-a"})
		err := d.DeleteImage(ctx, "pg-empty")
		require.ErrorIs(t, err, ErrHasClones)
		require.EqualError(t, err, "image pg-empty has 2 clones: keep-a, keep-b; delete them first")
		img, err := d.Image(ctx, "pg-empty")
		require.NoError(t, err, "the image stays")
		require.Equal(t, 2, img.Clones)
	})

	t.Run("lifetimes", func(t *testing.T) {
		src := createClone(t, d, CloneRequest{Image: "pg-plain", Name: "life-src"})
		short, err := d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "pg-short", Clone: src.Name, Lifetime: "1h"})
		require.NoError(t, err)
		require.Equal(t, "1h", short.Lifetime)
		require.WithinDuration(t, short.Created.Add(time.Hour), short.Expires, time.Second)
		k1, err := d.CreateClone(ctx, CloneRequest{Image: "pg-short", Name: "life-k1", Lifetime: "30m"})
		require.NoError(t, err)
		require.Equal(t, "30m", k1.Lifetime)
		k2 := createClone(t, d, CloneRequest{Image: "pg-short", Name: "life-k2"})
		require.Equal(t, "0", k2.Lifetime)
		_, err = d.CreateClone(ctx, CloneRequest{Image: "pg-short", Lifetime: "forever"})
		require.ErrorIs(t, err, ErrInvalid)

		defer d.skew.Store(0)
		imgs, clones := d.reap(ctx)
		require.Empty(t, imgs)
		require.Empty(t, clones, "nothing expired yet")
		d.skew.Store(int64(45 * time.Minute))
		imgs, clones = d.reap(ctx)
		require.Empty(t, imgs)
		require.Equal(t, []string{"life-k1"}, clones, "the 30m clone expired")
		_, err = d.Clone(ctx, "life-k1")
		require.ErrorIs(t, err, ErrNotFound)

		d.skew.Store(int64(2 * time.Hour))
		imgs, clones = d.reap(ctx)
		require.Empty(t, imgs, "an expired image with a clone stays")
		require.Empty(t, clones)
		img, err := d.Image(ctx, "pg-short")
		require.NoError(t, err)
		require.Equal(t, "expired; kept: 1 clone", img.Status)

		require.NoError(t, d.DeleteClone(ctx, k2.Name))
		imgs, _ = d.reap(ctx)
		require.Equal(t, []string{"pg-short"}, imgs, "without clones, the expired image goes")
		_, err = d.Image(ctx, "pg-short")
		require.ErrorIs(t, err, ErrNotFound)
	})

	t.Run("invalid-definition", func(t *testing.T) {
		def := pgDefinition(eng, "pg-missing", "sourceType: backup\nbackups:\n  - path: nowhere.dump\n")
		_, _, err := tryBuild(d, def, root)
		require.ErrorIs(t, err, ErrInvalid)
		require.ErrorContains(t, err, `imagebuilder: invalid image definition test.yaml: backups[0].path: "nowhere.dump" does not exist under the backup root`)
		_, _, err = tryBuild(d, "name: pg-old\nengine: postgres\nversion: \"9.1\"\nsourceType: empty\n", root)
		require.ErrorIs(t, err, ErrInvalid)
		require.ErrorContains(t, err, `version: postgres "9.1" is not available; available: `)
		require.NotContains(t, poolNames(t, d), "volume build/pg-old", "nothing is made for an invalid definition")
	})

	t.Run("failed-build", func(t *testing.T) {
		def := pgDefinition(eng, "pg-broken", "sourceType: backup\nbackups:\n  - path: dump.sql\npostScript: scripts/broken.sql\n")
		before := poolNames(t, d)
		_, steps, err := tryBuild(d, def, root)
		require.ErrorIs(t, err, ErrBuildFailed)
		require.ErrorContains(t, err, "failed at step postscript")
		require.ErrorContains(t, err, "no_such_table", "the message has the engine's log or error")
		require.Contains(t, steps, "postscript")
		require.NotContains(t, steps, "freeze")
		_, err = d.Image(ctx, "pg-broken")
		require.ErrorIs(t, err, ErrNotFound, "no partial image")
		require.Equal(t, before, poolNames(t, d), "the build volume is deleted")
		ents, err := os.ReadDir(filepath.Join(cfg.Home, "mnt"))
		require.NoError(t, err)
		for _, e := range ents {
			require.False(t, strings.HasPrefix(e.Name(), ".build-"), "build mount point %s left", e.Name())
		}
		// The name is free again.
		_, _, err = tryBuild(d, def, root)
		require.ErrorIs(t, err, ErrBuildFailed)
	})

	t.Run("http", func(t *testing.T) {
		sctx, cancel := context.WithCancel(ctx)
		served := make(chan error, 1)
		go func() { served <- d.Serve(sctx) }()
		defer func() {
			cancel()
			require.NoError(t, <-served)
		}()
		var c *Client
		require.Eventually(t, func() bool {
			var err error
			c, err = Connect(ctx, cfg.Home, ConnectOptions{})
			return err == nil
		}, 10*time.Second, 20*time.Millisecond)
		defer c.Close()

		var events []wire.Event
		img, err := c.BuildImage(ctx, BuildRequest{Definition: []byte(pgDefinition(eng, "pg-http", "sourceType: backup\nbackups:\n  - path: dump.sql\n")), BackupRoot: root},
			func(ev wire.Event) { events = append(events, ev) })
		require.NoError(t, err)
		require.Equal(t, "pg-http", img.Name)
		require.Equal(t, "volume", events[0].Step)
		require.Equal(t, "freeze", events[len(events)-1].Step)
		restored := false
		for _, ev := range events {
			if ev.Step == "restore" && ev.Total > 0 && ev.Done == ev.Total {
				restored = true
			}
		}
		require.True(t, restored, "restore progress reaches the total: %+v", events)

		cl := createClone(t, c, CloneRequest{Image: "pg-http", Name: "http-1"})
		require.Equal(t, "ada,grace", sql(t, cl, "SELECT string_agg(name, ',' ORDER BY id) FROM people"))
		err = c.DeleteImage(ctx, "pg-http")
		require.ErrorIs(t, err, ErrHasClones, "the error kind crosses the socket")
		require.EqualError(t, err, "image pg-http has 1 clone: http-1; delete it first")
		_, err = c.BuildImage(ctx, BuildRequest{Definition: []byte(pgDefinition(eng, "pg-http", "sourceType: empty\n"))}, nil)
		require.ErrorIs(t, err, ErrAlreadyExists)
		_, err = c.BuildImage(ctx, BuildRequest{Definition: []byte(pgDefinition(eng, "pg-http-broken", "sourceType: backup\nbackups:\n  - path: dump.sql\npostScript: scripts/broken.sql\n")), BackupRoot: root}, nil)
		require.ErrorIs(t, err, ErrBuildFailed, "a build's failure after its first event comes in the stream")

		rev, err := c.SaveClone(ctx, cl.Name, "r1")
		require.NoError(t, err)
		require.Equal(t, "r1", rev.Name)
		sql(t, cl, "DELETE FROM people")
		cl, err = c.ResetClone(ctx, cl.Name, "")
		require.NoError(t, err)
		require.Equal(t, "2", sql(t, cl, "SELECT count(*) FROM people"))
		cl, err = c.StopClone(ctx, cl.Name)
		require.NoError(t, err)
		require.Equal(t, CloneStopped, cl.State)
		cl, err = c.StartClone(ctx, cl.Name)
		require.NoError(t, err)
		require.Equal(t, CloneRunning, cl.State)
		got, err := c.Clone(ctx, cl.Name)
		require.NoError(t, err)
		require.Equal(t, cl.Connection, got.Connection)
		list, err := c.Clones(ctx)
		require.NoError(t, err)
		require.NotEmpty(t, list)
		g, err := c.ImageFromClone(ctx, ImageFromCloneRequest{Name: "pg-http-grad", Clone: cl.Name, Revision: "r1"})
		require.NoError(t, err)
		require.Equal(t, "r1", g.FromRevision)
		require.NoError(t, c.DeleteImage(ctx, g.Name))

		ps, err := c.PoolStatus(ctx)
		require.NoError(t, err)
		require.Positive(t, ps.ImageBytes)
		require.Positive(t, ps.Images)
		require.Positive(t, ps.Clones)
		rep, err := c.CheckPool(ctx, false)
		require.NoError(t, err)
		require.True(t, rep.OK, "%+v", rep)

		require.NoError(t, c.DeleteClone(ctx, cl.Name))
		require.NoError(t, c.DeleteImage(ctx, "pg-http"))
	})

	t.Run("pool", func(t *testing.T) {
		ps, err := d.PoolStatus(ctx)
		require.NoError(t, err)
		var want int64
		for _, img := range images {
			want += img.DataBytes
		}
		require.Equal(t, len(images), ps.Images)
		require.Equal(t, want, ps.ImageBytes)
		require.LessOrEqual(t, ps.Used, ps.Capacity)
		require.Equal(t, "ok", ps.Health)
	})
}

// assertNoError reports err as a test error (not stopping the goroutine's siblings).
func assertNoError(t *testing.T, err error, format string, args ...any) bool {
	t.Helper()
	if err != nil {
		t.Errorf(format+": %v", append(args, err)...)
		return false
	}
	return true
}
