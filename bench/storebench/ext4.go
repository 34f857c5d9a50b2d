package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/units"
)

var ext4Tests = []kdevTest{
	{name: "4K random read of the file", rw: "randread", bs: 4 * kib, qd: 32},
	{name: "4K random write into the file", rw: "randwrite", bs: 4 * kib, qd: 32},
}

type ext4Result struct {
	fsSize, fileSize int64
	mkfs             string
	prefill          string
	rows             []kdevRow
	ready            []time.Duration // per store slice: Clone + Export + mount
	clones           int
}

// mkfsArgs are the mkfs.ext4 options of both sides: no discard pass and no lazy initialization,
// so that neither side has background work during the measurements.
var mkfsArgs = []string{"-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"}

// ext4Clone compares fio on a file in ext4 on the exported device of a fresh clone (of a
// snapshot of a volume on which ext4 and the file were written) with fio on the same file in
// ext4 on a loop device over a raw file.
func (b *bench) ext4Clone() (*ext4Result, error) {
	res := &ext4Result{fsSize: 2 * gib, fileSize: gib}
	if b.quick {
		res.fsSize, res.fileSize = 512*mib, 256*mib
	}
	res.mkfs = "mkfs.ext4 " + strings.Join(mkfsArgs, " ")
	prefill := fioJob{file: "FILE", rw: "write", bs: mib, qd: 8, size: res.fileSize}
	res.prefill = prefill.cmdline("MNT/fio.dat")
	exp, err := export.Detect(export.Options{StateDir: filepath.Join(b.dir, "export")})
	if err != nil {
		return nil, err
	}
	// mkfsAndFill makes ext4 on dev, mounts it at dir and writes the fio file; it returns the
	// unmount.
	mkfsAndFill := func(dev, dir string) (func() error, error) {
		if _, err := b.run("mkfs.ext4", append(mkfsArgs, dev)...); err != nil {
			return nil, err
		}
		umount, err := b.mount(dev, dir)
		if err != nil {
			return nil, err
		}
		j := prefill
		j.file = filepath.Join(dir, "fio.dat")
		if _, err := b.fio(j); err != nil {
			keep(umount())
			return nil, fmt.Errorf("prefill: %w", err)
		}
		return umount, nil
	}

	// The store: a thick pool, a source volume with ext4 and the file, and its snapshot.
	poolPath := filepath.Join(b.dir, "ext4.pool")
	defer removeFile(poolPath)
	p, err := blockstore.Create(poolPath, blockstore.Options{Size: 2*res.fsSize + gib, DirectIO: true, Preallocate: true})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	srcVol, err := newVolume(p, "ext4-src", res.fsSize)
	if err != nil {
		return nil, err
	}
	err = func() error {
		dev, err := exp.Export("bench-ext4-src", srcVol)
		if err != nil {
			return err
		}
		closeDev := b.undo.push("close export "+dev.Path(), dev.Close)
		defer func() { keep(closeDev()) }()
		umount, err := mkfsAndFill(dev.Path(), filepath.Join(b.dir, "mnt-src"))
		if err != nil {
			return err
		}
		if err := umount(); err != nil {
			return err
		}
		return closeDev()
	}()
	if err != nil {
		return nil, fmt.Errorf("source volume: %w", err)
	}
	if err := p.Flush(); err != nil {
		return nil, err
	}
	snap, err := p.CreateSnapshot(srcVol.ID(), "ext4-base")
	if err != nil {
		return nil, err
	}
	b.logf("  source volume: ext4 with a %d MiB file, snapshot taken", res.fileSize/mib)

	// The baseline: a fallocated raw file, a loop device, ext4 and the file, mounted throughout.
	rawPath := filepath.Join(b.dir, "ext4.raw")
	defer removeFile(rawPath)
	if err := fallocFile(rawPath, res.fsSize); err != nil {
		return nil, err
	}
	rawDev, undoLoop, err := b.rawLoop(rawPath)
	if err != nil {
		return nil, err
	}
	defer func() { keep(undoLoop()) }()
	rawMnt := filepath.Join(b.dir, "mnt-raw")
	umountRaw, err := mkfsAndFill(rawDev, rawMnt)
	if err != nil {
		return nil, fmt.Errorf("raw file: %w", err)
	}
	defer func() { keep(umountRaw()) }()
	rawFile := func() (string, func() error, error) { return filepath.Join(rawMnt, "fio.dat"), nil, nil }

	// Each store slice gets a fresh clone: exported, mounted, measured, then torn down and
	// deleted, so that every write of a slice lands on a block the clone shares.
	cloneMnt := filepath.Join(b.dir, "mnt-clone")
	storeFile := func() (string, func() error, error) {
		t0 := time.Now()
		res.clones++
		ci, err := p.Clone(snap.ID, fmt.Sprintf("ext4-clone-%d", res.clones), 0)
		if err != nil {
			return "", nil, err
		}
		cv, err := p.Volume(ci.ID)
		if err != nil {
			return "", nil, err
		}
		dev, err := exp.Export(fmt.Sprintf("bench-ext4-clone-%d", res.clones), cv)
		if err != nil {
			return "", nil, err
		}
		closeDev := b.undo.push("close export "+dev.Path(), dev.Close)
		umount, err := b.mount(dev.Path(), cloneMnt)
		if err != nil {
			keep(closeDev())
			return "", nil, err
		}
		res.ready = append(res.ready, time.Since(t0))
		done := func() error {
			if err := umount(); err != nil {
				keep(closeDev())
				return err
			}
			if err := closeDev(); err != nil {
				return err
			}
			return p.DeleteVolume(ci.ID)
		}
		return filepath.Join(cloneMnt, "fio.dat"), done, nil
	}
	for _, t := range ext4Tests {
		row, err := b.fioCompare(thickPool, t, res.fileSize, rawFile, storeFile)
		if err != nil {
			return res, err
		}
		res.rows = append(res.rows, row)
	}
	return res, nil
}

// fallocFile creates a file of size bytes with every block allocated (unwritten).
func fallocFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ---- 8. ext4 in a clone ----

func (r *report) ext4Section(w0 *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(w0, format, args...) }
	res := r.ext4
	if res == nil {
		return
	}
	w("## 8. fio on ext4 in a clone vs ext4 on a loop device on a raw file\n\n")
	w("How: in a thick pool (`Options{Preallocate: true, DirectIO: true}`), a %s volume is exported (section 7's exporter), formatted with `%s`, mounted, and a %s file is written in it with `%s` (the whole file, 1 MiB direct writes); then it is unmounted, the export closed, the pool flushed and the volume snapshotted. ", units.FormatBytes(res.fsSize), res.mkfs, units.FormatBytes(res.fileSize), res.prefill)
	w("The baseline is a %s raw file made with `fallocate` in the same directory, on a loop device (`losetup --direct-io=on --sector-size 4096 --find --show`), formatted, mounted and filled the same way, and kept mounted. ", units.FormatBytes(res.fsSize))
	w("**Every store slice runs on a fresh clone** of the snapshot: `Pool.Clone`, `Exporter.Export`, `mount -t ext4` (no mkfs: the clone holds the source's file system), fio, then unmount, close the export and `DeleteVolume`; so the random writes are copy-on-write first writes (of blocks the clone shares with the snapshot, plus ext4's own writes at mount), while on the raw side they overwrite the file's blocks in place. ")
	w("fio runs on the file inside with `--direct=1` (below); alternating rounds and ratios as in section 7. No goal: this prices a clone's file system against a plain one.\n\n")
	w("| Test | QD | ext4 on raw loop | ext4 in a clone | Ratio | rounds | p50 raw / store | p99 raw / store | CPU / I/O, this process, raw / store |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range res.rows {
		t := row.t
		w("| %s | %d | %s | %s | %.2f× | %s | %s / %s | %s / %s | %s / %s |\n", t.name, t.qd,
			fmtFIORate(row.p.raw, t.mbps), fmtFIORate(row.p.store, t.mbps), row.p.ratio(), fmtSpread(row.p.ratios),
			fmtLat(medianLat(row.p.raw, false)), fmtLat(medianLat(row.p.store, false)), fmtLat(medianLat(row.p.raw, true)), fmtLat(medianLat(row.p.store, true)),
			fmtLat(perIO(row.selfCPU[0], row.p.raw)), fmtLat(perIO(row.selfCPU[1], row.p.store)))
	}
	w("\nCommand (`FILE` is `fio.dat` in either mount): `%s`.\n\n", firstCmd(res.rows))
	if len(res.ready) > 0 {
		w("Time from `Pool.Clone` to a mounted file system (clone, export, mount) over the %d clones: p50 %s, max %s.\n\n", len(res.ready), fmtLat(quantile(res.ready, 0.5)), fmtLat(quantile(res.ready, 1)))
	}
}

func firstCmd(rows []kdevRow) string {
	var cmds []string
	for _, r := range rows {
		cmds = append(cmds, strings.Replace(r.cmd, "--filename=DEV", "--filename=FILE", 1))
	}
	return strings.Join(cmds, "`; `")
}
