package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/internal/units"
	"github.com/dataimage/dataimage/local"
)

// report is everything measured.
type report struct {
	cfg        config
	pgVersion  string
	backupSize int64 // bytes of base.tar + pg_wal.tar
	sourceTime time.Duration
	build      *buildResult
	tps        *tpsResult
	create     *createResult
	space      *spaceResult
	maria      *mariaResult
	transfer   *transferResult
	elapsed    time.Duration
}

type buildResult struct {
	tarX    []time.Duration // plain tar -x of both tars onto ext4 on a raw loop file, then sync
	build   []time.Duration // dataimage image build, request to frozen image
	restore []time.Duration // the build's restore step alone
	steps   []string        // the last build's steps with their times
}

type tpsResult struct {
	raw, clone         []float64 // pgbench TPS per round
	rawTxns, cloneTxns int64     // transactions of all rounds
	rawDev, cloneDev   devStat   // what each side's loop device served during its pgbench runs
}

type createResult struct {
	smallBytes, largeBytes int64 // image data bytes
	small, large           []time.Duration
}

type spaceResult struct {
	clones           int
	imageBytes       int64 // the image's data in the pool (what a full copy would cost per clone)
	poolBefore       int64 // pool used bytes before the clones ran pgbench (clones created)
	poolAfter        int64
	addedBytes       int64 // sum of the clones' AddedBytes (blocks that differ from the image)
	walBytes         int64 // sum of WAL bytes the clones' transactions wrote
	dataPagesWritten int64 // sum of data pages (8 KiB) the clones' servers wrote
	poolCreated      int64 // pool growth from creating the clones (before any transaction)
}

// source is the PostgreSQL instance the backups are taken of.
type source struct {
	root string
	inst engine.Instance
}

// all runs every section.
func (b *bench) all() (*report, error) {
	rep := &report{cfg: b.cfg, pgVersion: b.pg.Version()}
	backupRoot := filepath.Join(b.dir, "backups")
	if err := os.MkdirAll(backupRoot, 0o755); err != nil {
		return nil, err
	}
	var backupDir string
	if b.cfg.runs("build") || b.cfg.runs("tps") || b.cfg.runs("create") || b.cfg.runs("space") {
		t0 := time.Now()
		dir, size, err := b.makeBackup()
		if err != nil {
			return nil, fmt.Errorf("source backup: %w", err)
		}
		backupDir, rep.backupSize, rep.sourceTime = dir, size, time.Since(t0)
	}

	home := filepath.Join(b.dir, "home")
	// The daemon starts its home's FUSE holder and data plane as the dataimage command does,
	// each in a process of its own: this program again, with holderArg or dataPlaneArg (main).
	d, err := local.NewDaemon(local.Config{Home: home, Logger: b.log,
		BackupRoot: backupRoot, DataPlane: local.DataPlaneCommand{Args: []string{dataPlaneArg, home}, HolderArgs: []string{holderArg, home}}})
	if err != nil {
		return nil, err
	}
	b.undo.push("daemon", d.Close)

	var raw *rawSide
	if b.cfg.runs("build") || b.cfg.runs("tps") {
		b.logf("image build vs tar -x onto ext4 on a raw loop file")
		res, rs, err := b.buildVsTar(d, backupDir)
		if err != nil {
			return nil, fmt.Errorf("build: %w", err)
		}
		rep.build, raw = res, rs
	}
	if b.cfg.runs("tps") {
		b.logf("pgbench on a clone vs on ext4 on a raw loop file")
		res, err := b.tps(d, raw)
		if err != nil {
			return nil, fmt.Errorf("tps: %w", err)
		}
		rep.tps = res
	}
	if b.cfg.runs("create") {
		b.logf("clone create -> accepting connections, small vs large image")
		res, err := b.createTimes(d)
		if err != nil {
			return nil, fmt.Errorf("create: %w", err)
		}
		rep.create = res
	}
	if b.cfg.runs("space") {
		b.logf("space of %d clones running the same pgbench transactions", b.cfg.clones)
		res, err := b.space(d)
		if err != nil {
			return nil, fmt.Errorf("space: %w", err)
		}
		rep.space = res
	}
	if b.cfg.runs("mariabackup") {
		b.logf("image build from a mariabackup vs mbstream -x + mariabackup --prepare onto ext4 on a raw loop file")
		res, err := b.mariaBackupVsPrepare(d, backupRoot)
		if err != nil {
			return nil, fmt.Errorf("mariabackup: %w", err)
		}
		rep.maria = res
	}
	if b.cfg.runs("transfer") {
		b.logf("export sets: push and pull against a real S3 server (exportset/poolvol BenchmarkTransfer)")
		res, err := b.transfer()
		if err != nil {
			return nil, fmt.Errorf("transfer: %w", err)
		}
		rep.transfer = res
	}
	return rep, nil
}

// pgBin returns the path of a PostgreSQL client program of the engine's major version.
func (b *bench) pgBin(name string) string {
	major, _, _ := strings.Cut(b.pg.Version(), ".")
	p := filepath.Join("/usr/lib/postgresql", major, "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return name
}

// makeBackup starts a source instance, fills it with pgbench -i at the configured scale while
// nothing else runs, and takes pg_basebackup -Ft -X stream of it (through its Unix socket) into
// backups/large/.
func (b *bench) makeBackup() (string, int64, error) {
	src, err := b.startInstance("source", true)
	if err != nil {
		return "", 0, err
	}
	defer src.inst.Stop(context.Background())
	b.logf("pgbench -i -s %d (the large image's data)", b.cfg.scale)
	if _, err := b.psql(src.inst.Conn(), "postgres", "CREATE DATABASE bench"); err != nil {
		return "", 0, err
	}
	c := src.inst.Conn()
	if _, err := b.cmd(c, b.pgBin("pgbench"), "-i", "-q", "-s", strconv.Itoa(b.cfg.scale), "bench"); err != nil {
		return "", 0, err
	}
	dir := filepath.Join(b.dir, "backups", "large")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", 0, err
	}
	b.logf("pg_basebackup -Ft -X stream")
	// Through the server's socket: servers admit no replication connection over TCP.
	sock := engine.ConnInfo{Host: c.Socket, Port: c.Port, User: c.User}
	if _, err := b.cmd(sock, b.pgBin("pg_basebackup"), "-Ft", "-X", "stream", "-c", "fast", "-D", dir); err != nil {
		return "", 0, err
	}
	var size int64
	for _, f := range []string{"base.tar", "pg_wal.tar"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			return "", 0, err
		}
		size += st.Size()
	}
	b.logf("backup: %s", units.FormatBytes(size))
	return dir, size, nil
}

// startInstance makes (when init) and starts an instance rooted at dir/name with a TCP listener
// and a password.
func (b *bench) startInstance(name string, init bool) (*source, error) {
	root := filepath.Join(b.dir, name)
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	if init {
		if err := b.pg.Init(b.ctx, root, engine.InitOptions{}); err != nil {
			return nil, err
		}
	}
	return b.startInstanceAt(root, name)
}

// connInfo returns how to reach a clone.
func cloneConn(c *local.Clone) engine.ConnInfo {
	return engine.ConnInfo{Host: c.Host, Port: c.Port, User: c.User, Password: c.Password, Database: c.Database}
}

// cmd runs a PostgreSQL client program against c over TCP and returns its output.
func (b *bench) cmd(c engine.ConnInfo, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	password := c.Password
	if password == "" {
		password = "bench"
	}
	cmd.Env = append(os.Environ(), "PGHOST="+c.Host, "PGPORT="+strconv.Itoa(c.Port), "PGUSER="+c.User,
		"PGPASSWORD="+password, "PGSSLMODE=disable")
	if c.Host == "" {
		cmd.Env = append(cmd.Env, "PGHOST=127.0.0.1")
	}
	if c.User == "" {
		cmd.Env = append(cmd.Env, "PGUSER=postgres")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// psql runs one statement in db and returns its unaligned output.
func (b *bench) psql(c engine.ConnInfo, db, sql string) (string, error) {
	out, err := b.cmd(c, b.pgBin("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)
	return strings.TrimSpace(out), err
}

// rawSide is the baseline: ext4 on a loop device (direct I/O) over a raw sparse file, holding
// the extracted backup.
type rawSide struct {
	mnt string
}

// definition returns the image definition of a large image called name.
func (b *bench) definition(name string) []byte {
	return fmt.Appendf(nil, `name: %s
engine: %s
version: %q
sourceType: backup
backups:
  - path: large/base.tar
  - path: large/pg_wal.tar
lifetime: "0"
`, name, b.pg.Kind(), b.pg.Version())
}

// buildVsTar alternates plain tar -x onto ext4 on a raw loop file with image builds of the same
// tars, and leaves the last extraction mounted for the TPS comparison.
func (b *bench) buildVsTar(d *local.Daemon, backupDir string) (*buildResult, *rawSide, error) {
	res := &buildResult{}
	rounds := 3
	if b.cfg.quick {
		rounds = 1
	}
	var raw *rawSide
	for i := range rounds {
		if err := b.settle(); err != nil {
			return nil, nil, err
		}
		mnt, dur, err := b.tarX(backupDir, i)
		if err != nil {
			return nil, nil, err
		}
		res.tarX = append(res.tarX, dur)
		raw = &rawSide{mnt: mnt}
		b.logf("  tar -x: %s", dur.Round(time.Millisecond))

		name := fmt.Sprintf("large-%d", i)
		if err := b.settle(); err != nil {
			return nil, nil, err
		}
		tb, err := b.timedBuild(d, b.definition(name))
		if err != nil {
			return nil, nil, err
		}
		dur, steps := tb.dur, tb.steps
		res.build = append(res.build, dur)
		if tb.restore > 0 {
			res.restore = append(res.restore, tb.restore)
		}
		res.steps = steps
		b.logf("  build: %s (%s)", dur.Round(time.Millisecond), strings.Join(steps, ", "))
		if i < rounds-1 {
			if err := d.DeleteImage(b.ctx, tb.img.Name); err != nil {
				return nil, nil, err
			}
		}
	}
	return res, raw, nil
}

// timedBuild is one timed image build.
type timedBuild struct {
	img     *local.Image
	dur     time.Duration // request to frozen image
	restore time.Duration // the restore step (0 if not seen)
	steps   []string      // each step with its time
}

// timedBuild builds the image def defines through the daemon, timing it and its steps (from
// the build's events).
func (b *bench) timedBuild(d *local.Daemon, def []byte) (*timedBuild, error) {
	var restoreStart, restoreEnd time.Time
	tb := &timedBuild{}
	last, lastAt := "", time.Now()
	t0 := time.Now()
	img, err := d.BuildImage(b.ctx, local.BuildRequest{Definition: def}, func(ev wire.Event) {
		if ev.Step == last || ev.Log != "" {
			return
		}
		now := time.Now()
		if last != "" {
			tb.steps = append(tb.steps, fmt.Sprintf("%s %.2fs", last, now.Sub(lastAt).Seconds()))
		}
		if ev.Step == "restore" {
			restoreStart = now
		} else if last == "restore" {
			restoreEnd = now
		}
		last, lastAt = ev.Step, now
	})
	if err != nil {
		return nil, err
	}
	tb.img, tb.dur = img, time.Since(t0)
	tb.steps = append(tb.steps, fmt.Sprintf("%s %.2fs", last, time.Since(lastAt).Seconds()))
	if !restoreStart.IsZero() && !restoreEnd.IsZero() {
		tb.restore = restoreEnd.Sub(restoreStart)
	}
	return tb, nil
}

// settle starts a timed operation from the same state on both sides: a global sync, the page
// cache dropped (so both read the backup from the disk, as a real build does, and neither
// inherits the other's cached or dirty pages), then a pause for the writeback and journal
// commits the previous operation started. Measured: with only sync and a pause, the build's
// restore step took 0.3 s to 2.3 s from one round to the next, depending on what ran before.
func (b *bench) settle() error {
	if _, err := execOut(b.ctx, "sync"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop the page cache: %w", err)
	}
	select {
	case <-time.After(time.Second):
		return nil
	case <-b.ctx.Done():
		return b.ctx.Err()
	}
}

// tarX makes ext4 on a loop device over a raw sparse file of the daemon's volume size, mounts
// it, and times tar -x of base.tar into data/ and pg_wal.tar into data/pg_wal, then sync.
func (b *bench) tarX(backupDir string, i int) (string, time.Duration, error) {
	mnt, err := b.mountRaw(fmt.Sprintf("raw-%d", i))
	if err != nil {
		return "", 0, err
	}
	data := filepath.Join(mnt, "data")
	t0 := time.Now()
	if err := os.Mkdir(data, 0o700); err != nil {
		return "", 0, err
	}
	if _, err := execOut(b.ctx, "tar", "-xf", filepath.Join(backupDir, "base.tar"), "-C", data); err != nil {
		return "", 0, err
	}
	if _, err := execOut(b.ctx, "tar", "-xf", filepath.Join(backupDir, "pg_wal.tar"), "-C", filepath.Join(data, "pg_wal")); err != nil {
		return "", 0, err
	}
	if _, err := execOut(b.ctx, "sync", "-f", data); err != nil {
		return "", 0, err
	}
	dur := time.Since(t0)
	u, err := b.pg.User("")
	if err != nil {
		return "", 0, err
	}
	return mnt, dur, u.Chown(data)
}

// mountRaw makes ext4 on a loop device (direct I/O) over a raw sparse file of the daemon's
// volume size, dir/name.img, and mounts it on dir/name (mode 0711), undone at the end.
func (b *bench) mountRaw(name string) (string, error) {
	img := filepath.Join(b.dir, name+".img")
	f, err := os.Create(img)
	if err != nil {
		return "", err
	}
	err = f.Truncate(local.DefaultVolumeSize)
	f.Close()
	if err != nil {
		return "", err
	}
	b.undo.push("remove "+img, func() error { return os.Remove(img) })
	out, err := execOut(b.ctx, "losetup", "--direct-io=on", "--sector-size", "4096", "--find", "--show", img)
	if err != nil {
		return "", err
	}
	dev := strings.TrimSpace(out)
	b.undo.push("detach "+dev, func() error { _, err := execOut(context.Background(), "losetup", "-d", dev); return err })
	// The options k8s.io/mount-utils (and so the daemon) format with, but with the inode
	// tables and the journal initialized by mkfs (not timed) instead of by ext4's lazyinit
	// thread after the mount: left lazy, that thread writes in the background for minutes
	// and slows whatever else uses the disk, the store side included.
	if _, err := execOut(b.ctx, "mkfs.ext4", "-F", "-m0", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev); err != nil {
		return "", err
	}
	mnt := filepath.Join(b.dir, name)
	if err := os.MkdirAll(mnt, 0o711); err != nil {
		return "", err
	}
	if _, err := execOut(b.ctx, "mount", "-t", "ext4", dev, mnt); err != nil {
		return "", err
	}
	b.undo.push("unmount "+mnt, func() error { _, err := execOut(context.Background(), "umount", mnt); return err })
	return mnt, os.Chmod(mnt, 0o711)
}

func execOut(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

var (
	tpsRE  = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	txnsRE = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
)

// pgbenchTxns runs the TPS comparison's pgbench against c and returns its TPS and how many
// transactions it ran.
func (b *bench) pgbenchTxns(c engine.ConnInfo) (float64, int64, error) {
	out, err := b.cmd(c, b.pgBin("pgbench"), "-n", "-c", strconv.Itoa(b.cfg.clients), "-j", "2",
		"-T", strconv.Itoa(int(b.cfg.duration.Seconds())), "bench")
	if err != nil {
		return 0, 0, err
	}
	m, n := tpsRE.FindStringSubmatch(out), txnsRE.FindStringSubmatch(out)
	if m == nil || n == nil {
		return 0, 0, fmt.Errorf("pgbench printed no tps or transaction count: %s", out)
	}
	tps, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, 0, err
	}
	txns, err := strconv.ParseInt(n[1], 10, 64)
	return tps, txns, err
}

// pgbenchSide runs one side's pgbench of the TPS comparison from a cold page cache (settle:
// neither side reads from memory what the other reads from its device, nor inherits the other's
// dirty pages) and adds what its loop device served meanwhile to dev.
func (b *bench) pgbenchSide(c engine.ConnInfo, statFile string, txns *int64, dev *devStat) (float64, error) {
	if err := b.settle(); err != nil {
		return 0, err
	}
	before, err := readDevStat(statFile)
	if err != nil {
		return 0, err
	}
	tps, n, err := b.pgbenchTxns(c)
	if err != nil {
		return 0, err
	}
	after, err := readDevStat(statFile)
	if err != nil {
		return 0, err
	}
	*txns += n
	*dev = dev.add(after.sub(before))
	return tps, nil
}

// dataDevStat returns the stat file of the block device under the data directory of the
// PostgreSQL server c.
func (b *bench) dataDevStat(c engine.ConnInfo) (string, error) {
	dir, err := b.psql(c, "postgres", "SHOW data_directory")
	if err != nil {
		return "", err
	}
	return blockDevStat(dir)
}

// tps alternates pgbench on the raw side (the extracted backup, started with the same
// PostgreSQL and settings) and on a clone of the image built from the same backup.
func (b *bench) tps(d *local.Daemon, raw *rawSide) (*tpsResult, error) {
	if raw == nil {
		return nil, fmt.Errorf("needs the build section")
	}
	base, err := b.startInstanceAt(raw.mnt, "raw")
	if err != nil {
		return nil, err
	}
	images, err := d.Images(b.ctx)
	if err != nil || len(images) == 0 {
		return nil, fmt.Errorf("no image to clone: %v", err)
	}
	cl, err := d.CreateClone(b.ctx, local.CloneRequest{Image: images[len(images)-1].Name, Name: "tps"})
	if err != nil {
		return nil, err
	}
	defer d.DeleteClone(context.Background(), cl.Name)
	rawStat, err := b.dataDevStat(base.inst.Conn())
	if err != nil {
		return nil, err
	}
	cloneStat, err := b.dataDevStat(cloneConn(cl))
	if err != nil {
		return nil, err
	}
	res := &tpsResult{}
	for r := range b.cfg.rounds {
		t, err := b.pgbenchSide(base.inst.Conn(), rawStat, &res.rawTxns, &res.rawDev)
		if err != nil {
			return nil, err
		}
		res.raw = append(res.raw, t)
		c, err := b.pgbenchSide(cloneConn(cl), cloneStat, &res.cloneTxns, &res.cloneDev)
		if err != nil {
			return nil, err
		}
		res.clone = append(res.clone, c)
		b.logf("  round %d: raw %.0f tps, clone %.0f tps", r+1, t, c)
	}
	return res, base.inst.Stop(b.ctx)
}

// startInstanceAt starts PostgreSQL on an instance rooted at root (recovering the extracted
// base backup) with a TCP listener and the bench's password.
func (b *bench) startInstanceAt(root, name string) (*source, error) {
	run := filepath.Join(b.dir, "run-"+name)
	u, err := b.pg.User("")
	if err != nil {
		return nil, err
	}
	if err := u.MkdirAll(run, 0o700); err != nil {
		return nil, err
	}
	port, err := engine.FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	inst, err := b.pg.Start(b.ctx, root, engine.StartOptions{RuntimeDir: run, ListenAddress: "127.0.0.1", Port: port})
	if err != nil {
		return nil, err
	}
	b.undo.push("stop "+name, func() error { return inst.Stop(context.Background()) })
	if err := inst.SetPassword(b.ctx, "bench"); err != nil {
		return nil, err
	}
	return &source{root: root, inst: inst}, nil
}

// createTimes builds a small (empty) image and measures creating clones of it and of the large
// image: request to accepting connections.
func (b *bench) createTimes(d *local.Daemon) (*createResult, error) {
	small := fmt.Sprintf("name: small\nengine: %s\nversion: %q\nsourceType: empty\n", b.pg.Kind(), b.pg.Version())
	if _, err := d.BuildImage(b.ctx, local.BuildRequest{Definition: []byte(small)}, nil); err != nil {
		return nil, err
	}
	large, err := b.largeImage(d)
	if err != nil {
		return nil, err
	}
	res := &createResult{}
	for _, side := range []struct {
		image string
		into  *[]time.Duration
		bytes *int64
	}{{"small", &res.small, &res.smallBytes}, {large, &res.large, &res.largeBytes}} {
		img, err := d.Image(b.ctx, side.image)
		if err != nil {
			return nil, err
		}
		*side.bytes = img.DataBytes
		for i := range b.cfg.creates {
			t0 := time.Now()
			cl, err := d.CreateClone(b.ctx, local.CloneRequest{Image: side.image, Name: fmt.Sprintf("t-%s-%d", side.image, i)})
			if err != nil {
				return nil, err
			}
			dur := time.Since(t0)
			if _, err := b.psql(cloneConn(cl), cl.Database, "SELECT 1"); err != nil {
				return nil, fmt.Errorf("clone %s does not answer: %w", cl.Name, err)
			}
			*side.into = append(*side.into, dur)
			if err := d.DeleteClone(b.ctx, cl.Name); err != nil {
				return nil, err
			}
		}
		b.logf("  %s image (%s): p50 %s", side.image, units.FormatBytes(*side.bytes), percentile(*side.into, 50).Round(time.Millisecond))
	}
	return res, nil
}

// largeImage returns the name of the large image, building one if the build section did not.
func (b *bench) largeImage(d *local.Daemon) (string, error) {
	images, err := d.Images(b.ctx)
	if err != nil {
		return "", err
	}
	for _, im := range images {
		if strings.HasPrefix(im.Name, "large-") {
			return im.Name, nil
		}
	}
	img, err := d.BuildImage(b.ctx, local.BuildRequest{Definition: b.definition("large-0")}, nil)
	if err != nil {
		return "", err
	}
	return img.Name, nil
}

// space creates n clones of the large image, runs the same pgbench transactions in each
// (same seed, one client), checkpoints them and compares the pool's growth with the bytes the
// transactions rewrote.
func (b *bench) space(d *local.Daemon) (*spaceResult, error) {
	large, err := b.largeImage(d)
	if err != nil {
		return nil, err
	}
	img, err := d.Image(b.ctx, large)
	if err != nil {
		return nil, err
	}
	res := &spaceResult{clones: b.cfg.clones, imageBytes: img.DataBytes}
	st, err := d.PoolStatus(b.ctx)
	if err != nil {
		return nil, err
	}
	start := st.Used
	var clones []*local.Clone
	defer func() {
		for _, c := range clones {
			if err := d.DeleteClone(context.Background(), c.Name); err != nil {
				b.logf("delete clone %s: %v", c.Name, err)
			}
		}
	}()
	for i := range b.cfg.clones {
		c, err := d.CreateClone(b.ctx, local.CloneRequest{Image: large, Name: fmt.Sprintf("space-%02d", i)})
		if err != nil {
			return nil, err
		}
		clones = append(clones, c)
	}
	if st, err = d.PoolStatus(b.ctx); err != nil {
		return nil, err
	}
	res.poolCreated = st.Used - start
	res.poolBefore = st.Used
	const walSQL = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
	const pagesSQL = "SELECT buffers_checkpoint + buffers_clean + buffers_backend FROM pg_stat_bgwriter"
	for _, c := range clones {
		conn := cloneConn(c)
		w0, err := b.psqlInt(conn, walSQL)
		if err != nil {
			return nil, err
		}
		p0, err := b.psqlInt(conn, pagesSQL)
		if err != nil {
			return nil, err
		}
		if _, err := b.cmd(conn, b.pgBin("pgbench"), "-n", "-c", "1", "-t", strconv.Itoa(b.cfg.txns), "--random-seed=42", "bench"); err != nil {
			return nil, err
		}
		if _, err := b.psql(conn, "postgres", "CHECKPOINT"); err != nil {
			return nil, err
		}
		w1, err := b.psqlInt(conn, walSQL)
		if err != nil {
			return nil, err
		}
		p1, err := b.psqlInt(conn, pagesSQL)
		if err != nil {
			return nil, err
		}
		res.walBytes += w1 - w0
		res.dataPagesWritten += p1 - p0
	}
	list, err := d.Clones(b.ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range list {
		if strings.HasPrefix(c.Name, "space-") {
			res.addedBytes += c.AddedBytes
		}
	}
	if st, err = d.PoolStatus(b.ctx); err != nil {
		return nil, err
	}
	res.poolAfter = st.Used
	b.logf("  pool grew %s running the transactions (WAL %s, data pages %s, clones differ from the image by %s)",
		units.FormatBytes(res.poolAfter-res.poolBefore), units.FormatBytes(res.walBytes), units.FormatBytes(res.dataPagesWritten*8192), units.FormatBytes(res.addedBytes))
	return res, nil
}

func (b *bench) psqlInt(c engine.ConnInfo, sql string) (int64, error) {
	out, err := b.psql(c, "postgres", sql)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(out), 10, 64)
}

// percentile returns the p-th percentile of ds (nearest rank).
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}
