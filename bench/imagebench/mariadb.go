package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb"
	"github.com/dataimage/dataimage/internal/units"
	"github.com/dataimage/dataimage/local"
)

// mariaResult is the mariabackup section: image builds from a mariabackup stream against what
// a person does by hand with the same stream on ext4 over a raw loop file.
type mariaResult struct {
	version     string
	dataBytes   int64         // the source's data directory (allocated)
	backupBytes int64         // the stream
	backupTime  time.Duration // mariabackup --backup --stream=xbstream
	byHand      []time.Duration
	build       []time.Duration
	restore     []time.Duration // the build's restore step: extraction and --prepare
	steps       []string        // the last build's steps with their times
}

// mariaBackupPath is where the section puts its stream, under the daemon's backup root.
const mariaBackupPath = "mariadb/backup.xb"

// mariaBackupVsPrepare makes a MariaDB source of about -mariadb-size of InnoDB data, streams a
// mariabackup of it into the backup root, then alternates, for each round, the by-hand restore
// (mbstream -x onto ext4 on a raw loop file, mariabackup --prepare there, sync) with an image
// build of the same stream.
func (b *bench) mariaBackupVsPrepare(d *local.Daemon, backupRoot string) (*mariaResult, error) {
	// The first server the adapter finds (Debian's MariaDB; a MySQL server would fail the
	// backup, which is MariaDB's).
	engines, err := mariadb.Discover(mariadb.Options{})
	if len(engines) == 0 {
		return nil, fmt.Errorf("no MariaDB server (hack/install-deps.sh installs it): %w", errors.Join(engine.ErrNotFound, err))
	}
	e := engines[0]
	res := &mariaResult{version: e.Version()}
	stream := filepath.Join(backupRoot, mariaBackupPath)
	if err := b.mariaSource(e, stream, res); err != nil {
		return nil, err
	}
	u, err := e.User("")
	if err != nil {
		return nil, err
	}
	def := func(name string) []byte {
		return fmt.Appendf(nil, "name: %s\nengine: %s\nversion: %q\nsourceType: backup\nbackups:\n  - path: %s\nlifetime: \"0\"\n",
			name, e.Kind(), e.Version(), mariaBackupPath)
	}
	rounds := 3
	if b.cfg.quick {
		rounds = 1
	}
	for i := range rounds {
		if err := b.settle(); err != nil {
			return nil, err
		}
		mnt, err := b.mountRaw(fmt.Sprintf("maria-raw-%d", i))
		if err != nil {
			return nil, err
		}
		data := filepath.Join(mnt, "data")
		if err := u.MkdirAll(data, 0o750); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if _, err := execOut(b.ctx, "sh", "-c", `setpriv --reuid="$1" --regid="$1" --clear-groups mbstream -x -C "$2" < "$3" && `+
			`setpriv --reuid="$1" --regid="$1" --clear-groups mariabackup --no-defaults --prepare --target-dir="$2" && sync -f "$2"`,
			"sh", u.Name, data, stream); err != nil {
			return nil, err
		}
		dur := time.Since(t0)
		res.byHand = append(res.byHand, dur)
		b.logf("  mbstream -x + mariabackup --prepare + sync: %s", dur.Round(time.Millisecond))

		if err := b.settle(); err != nil {
			return nil, err
		}
		tb, err := b.timedBuild(d, def(fmt.Sprintf("maria-%d", i)))
		if err != nil {
			return nil, err
		}
		res.build = append(res.build, tb.dur)
		if tb.restore > 0 {
			res.restore = append(res.restore, tb.restore)
		}
		res.steps = tb.steps
		b.logf("  build: %s (%s)", tb.dur.Round(time.Millisecond), strings.Join(tb.steps, ", "))
		if err := d.DeleteImage(b.ctx, tb.img.Name); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// mariaSource starts a MariaDB instance, fills database bench with rows of about 1 KiB until its
// data takes -mariadb-size, and writes mariabackup --backup --stream=xbstream of it to stream.
func (b *bench) mariaSource(e engine.Engine, stream string, res *mariaResult) error {
	root := filepath.Join(b.dir, "maria-src")
	if err := os.MkdirAll(root, 0o711); err != nil {
		return err
	}
	if err := e.Init(b.ctx, root, engine.InitOptions{Database: "bench"}); err != nil {
		return err
	}
	u, err := e.User("")
	if err != nil {
		return err
	}
	run := filepath.Join(b.dir, "run-maria")
	if err := u.MkdirAll(run, 0o700); err != nil {
		return err
	}
	inst, err := e.Start(b.ctx, root, engine.StartOptions{RuntimeDir: run, Settings: map[string]string{"innodb_buffer_pool_size": "256M"}})
	if err != nil {
		return err
	}
	stop := b.undo.push("stop the MariaDB source", func() error { return inst.Stop(context.Background()) })
	b.logf("filling a MariaDB source to %s", units.FormatBytes(b.cfg.mariaSize))
	if err := inst.Exec(b.ctx, "bench", strings.NewReader(
		"CREATE TABLE rows_ (id BIGINT PRIMARY KEY, k INT NOT NULL, pad VARCHAR(1000) NOT NULL, KEY (k)) ENGINE=InnoDB;")); err != nil {
		return err
	}
	const batch = 50000
	dataDir := filepath.Join(engine.DataDir(root), "bench")
	for next := int64(1); ; next += batch {
		size, err := dirBytes(dataDir)
		if err != nil {
			return err
		}
		if size >= b.cfg.mariaSize {
			res.dataBytes, err = dirBytes(engine.DataDir(root))
			if err != nil {
				return err
			}
			break
		}
		sql := fmt.Sprintf("INSERT INTO rows_ SELECT seq, seq %% 10007, RPAD(SHA2(seq, 256), 900, MD5(seq)) FROM seq_%d_to_%d;", next, next+batch-1)
		if err := inst.Exec(b.ctx, "bench", strings.NewReader(sql)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(stream), 0o755); err != nil {
		return err
	}
	b.logf("mariabackup --backup --stream=xbstream")
	t0 := time.Now()
	if _, err := execOut(b.ctx, "sh", "-c", `mariabackup --no-defaults --backup --stream=xbstream --socket="$1" --user=root --target-dir="$2" > "$3"`,
		"sh", inst.Conn().Socket, filepath.Join(b.dir, "maria-tmp"), stream); err != nil {
		return err
	}
	res.backupTime = time.Since(t0)
	st, err := os.Stat(stream)
	if err != nil {
		return err
	}
	res.backupBytes = st.Size()
	b.logf("backup: %s in %.1f s", units.FormatBytes(res.backupBytes), res.backupTime.Seconds())
	return stop()
}

// dirBytes is the disk space the files under dir take.
func dirBytes(dir string) (int64, error) {
	out, err := execOut(context.Background(), "du", "-s", "-B1", dir)
	if err != nil {
		return 0, err
	}
	var n int64
	_, err = fmt.Sscan(out, &n)
	return n, err
}

// mariaMarkdown renders the mariabackup section.
func (r *report) mariaMarkdown(p func(string, ...any)) {
	m := r.maria
	if m == nil {
		return
	}
	ratio := medianDur(m.byHand).Seconds() / medianDur(m.build).Seconds()
	p("## 13. Image build from a mariabackup vs mariabackup --prepare + copy\n\n")
	p("MariaDB %s. The source: an InnoDB table of rows of about 1 KiB filled until its data takes %s (data\n", m.version, units.FormatBytes(r.cfg.mariaSize))
	p("directory %s), streamed with `mariabackup --backup --stream=xbstream > backup.xb` (%s, %.1f s).\n", units.FormatBytes(m.dataBytes), units.FormatBytes(m.backupBytes), m.backupTime.Seconds())
	p("Baseline, what a person does by hand with the stream: `mbstream -x -C data < backup.xb; mariabackup --prepare\n")
	p("--target-dir=data; sync -f data` as the server's user onto ext4 on a raw loop file (made before the timing, as\n")
	p("in section 9). Store: `image build` of a definition naming the stream, from the request to the frozen image:\n")
	p("thin volume, mkfs.ext4, the stream checked chunk by chunk and extracted by `mbstream -x`, `mariabackup\n")
	p("--prepare`, a server start, checkpoint and slow shutdown (innodb_fast_shutdown=0), syncfs of the volume,\n")
	p("unmount, snapshot. %d rounds alternate baseline and build, each side after a global sync, the page cache\n", len(m.build))
	p("dropped and a 1 s pause.\n\n")
	p("| | seconds per round | median |\n|---|---|---|\n")
	p("| mbstream -x + mariabackup --prepare onto ext4 on a raw loop file, then sync | %s | %.2f |\n", secs(m.byHand), medianDur(m.byHand).Seconds())
	p("| image build (whole) | %s | %.2f |\n", secs(m.build), medianDur(m.build).Seconds())
	if len(m.restore) > 0 {
		p("| image build: its restore step (extraction and --prepare) | %s | %.2f |\n", secs(m.restore), medianDur(m.restore).Seconds())
	}
	p("\nRatio (by-hand time / build time): **%.2f×**. The build does more than the baseline: it starts the\n", ratio)
	p("server on the prepared data and stops it after a slow shutdown, so that every clone starts without crash\n")
	p("recovery or purge work, and it freezes the result as an image that clones in O(1). Its restore step writes the\n")
	p("extracted files and --prepare's pages through the volume's export (loop → FUSE → pool), the write path of\n")
	p("section 9's image build (the baseline writes through a loop device over a file).\n")
	p("Steps of the last build: %s.\n\n", strings.Join(m.steps, ", "))
}
