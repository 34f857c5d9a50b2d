package local

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// mariadbDefinition returns an image definition of the MariaDB engine eng.
func mariadbDefinition(eng engine.Engine, name, rest string) string {
	parts := strings.SplitN(eng.Version(), ".", 3)
	version := strings.Join(parts[:min(2, len(parts))], ".")
	return fmt.Sprintf("name: %s\nengine: mariadb\nversion: %q\ninitialDatabaseName: app\n%s", name, version, rest)
}

// TestMariaDB is the end-to-end proof with MariaDB: an image from a mariadb-dump (mysqldump)
// with a post script and an empty one; clones isolated from each other, reset to a revision and
// to the image, an image graduated from a clone.
func TestMariaDB(t *testing.T) {
	eng := needEngine(t, imagebuilder.EngineMariaDB)
	d, _ := newTestDaemon(t)
	ctx := context.Background()
	root := backupDir(t)
	_, run := sourceServer(t, eng, `CREATE TABLE people (id int PRIMARY KEY, name varchar(50));
		INSERT INTO people VALUES (1, 'ada'), (2, 'grace');`)
	dump, err := exec.LookPath("mariadb-dump")
	if err != nil {
		dump, err = exec.LookPath("mysqldump")
	}
	require.NoError(t, err, "mariadb-dump or mysqldump")
	f, err := os.Create(filepath.Join(root, "app.sql"))
	require.NoError(t, err)
	// As root, the admin account logs in through the socket (unix_socket authentication).
	cmd := exec.Command(dump, "--socket="+filepath.Join(run, "mysqld.sock"), "-u", "root", "--single-transaction", "app")
	cmd.Stdout = f
	_, err = engine.Run(cmd)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Chmod(filepath.Join(root, "app.sql"), 0o644))
	writeTestFile(t, filepath.Join(root, "post.sql"), "UPDATE people SET name = UPPER(name);\n")

	defs := map[string]string{
		"my-dump":  mariadbDefinition(eng, "my-dump", "sourceType: backup\nbackups:\n  - path: app.sql\npostScript: post.sql\n"),
		"my-empty": mariadbDefinition(eng, "my-empty", "sourceType: empty\n"),
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	built := map[string]*Image{}
	for name, def := range defs {
		wg.Go(func() {
			img, _, err := tryBuild(d, def, root)
			if assert.NoError(t, err, name) {
				mu.Lock()
				built[name] = img
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Len(t, built, 2)
	require.Equal(t, imagebuilder.EngineMariaDB, built["my-dump"].Engine)
	require.Equal(t, eng.Version(), built["my-dump"].Version)

	empty := createClone(t, d, CloneRequest{Image: "my-empty", Name: "my-e1"})
	require.Equal(t, "app", sql(t, empty, "SELECT DATABASE()"))
	require.Equal(t, "0", sql(t, empty, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'app'"))

	a := createClone(t, d, CloneRequest{Image: "my-dump", Name: "my-a"})
	require.Equal(t, fmt.Sprintf("mysql://root:%s@127.0.0.1:%d/app", a.Password, a.Port), a.Connection)
	require.Equal(t, "ADA,GRACE", sql(t, a, "SELECT GROUP_CONCAT(name ORDER BY id) FROM people"), "restored, then the post script")
	sql(t, a, "INSERT INTO people VALUES (3, 'only-in-a')")
	b := createClone(t, d, CloneRequest{Image: "my-dump", Name: "my-b"})
	require.Equal(t, "ADA,GRACE", sql(t, b, "SELECT GROUP_CONCAT(name ORDER BY id) FROM people"), "clones are isolated")

	_, err = d.SaveClone(ctx, a.Name, "r1")
	require.NoError(t, err)
	sql(t, a, "DELETE FROM people")
	a, err = d.ResetClone(ctx, a.Name, "")
	require.NoError(t, err)
	require.Equal(t, "ADA,GRACE,only-in-a", sql(t, a, "SELECT GROUP_CONCAT(name ORDER BY id) FROM people"), "reset to the revision")
	g, err := d.ImageFromClone(ctx, ImageFromCloneRequest{Name: "my-grad", Clone: a.Name, Revision: "r1"})
	require.NoError(t, err)
	require.Equal(t, "app", g.Database)
	a, err = d.ResetClone(ctx, a.Name, ResetToImage)
	require.NoError(t, err)
	require.Equal(t, "ADA,GRACE", sql(t, a, "SELECT GROUP_CONCAT(name ORDER BY id) FROM people"), "reset to the image")

	require.NoError(t, d.DeleteClone(ctx, a.Name))
	c := createClone(t, d, CloneRequest{Image: "my-grad", Name: "my-c"})
	require.Equal(t, "ADA,GRACE,only-in-a", sql(t, c, "SELECT GROUP_CONCAT(name ORDER BY id) FROM people"), "the graduated image outlives its clone")
	require.NoError(t, d.DeleteClone(ctx, c.Name))
	require.NoError(t, d.DeleteImage(ctx, "my-grad"))
}
