package mariadb

// This file replays binary logs onto a prepared mariabackup backup: it plans the replay from the
// transactions the files hold (binlog.go): from the backup's binlog position, through the files
// in sequence (a missing one is named), up to the recovery target (a GTID, a binlog position or
// a time; inclusive or not) or the last complete transaction; then it starts a server of its
// own on the instance (isolated and without TCP, as every server Start runs), pipes
// mariadb-binlog into the client, and stops the server cleanly.

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// replayTarget is where a replay stops (engine.RestoreOptions.RecoveryTarget, for MariaDB).
type replayTarget struct {
	what string // the target as messages name it: `recoveryTarget gtid "0-1-42"`
	// One of:
	gtids gtidPos // the transactions to reach, one per domain
	file  string  // with pos: a binlog position
	pos   int64
	time  time.Time
	// exclusive stops before the target transaction (GTID: the last of the target's GTIDs to
	// come) or before the transactions at the target time, rather than after them.
	exclusive bool
}

// replayStop is the end of the last transaction a replay applies.
type replayStop struct {
	file *binlogFile
	tx   *binlogTx
}

// replay replays binlogs onto the prepared instance under root, whose backup meta describes.
func (s *server) replay(ctx context.Context, root string, meta *backupMeta, binlogs []engine.BackupFile, target *replayTarget, opts engine.RestoreOptions, done int64) (engine.DataState, error) {
	if meta.binlogFile == "" {
		return engine.DataState{}, fmt.Errorf("%w: the backup records no binlog position (no xtrabackup_binlog_info: its server ran without log-bin): binary logs cannot be replayed onto it", engine.ErrFormat)
	}
	files, err := binlogSequence(meta, binlogs)
	if err != nil {
		return engine.DataState{}, err
	}
	stop, err := planReplay(meta, files, target)
	if err != nil {
		return engine.DataState{}, err
	}
	state := meta.state()
	if stop.tx == nil {
		return state, nil // nothing after the backup's position comes before the target
	}
	var replayed []*binlogFile
	for _, f := range files {
		replayed = append(replayed, f)
		if f == stop.file {
			break
		}
	}
	if err := s.applyBinlogs(ctx, root, meta, replayed, stop.tx.end, opts); err != nil {
		return engine.DataState{}, err
	}
	if opts.Progress != nil {
		for _, b := range binlogs {
			done += b.Size
		}
		opts.Progress(done)
	}
	pos, err := parseGTIDPos(meta.gtid)
	if err != nil {
		pos = gtidPos{}
	}
	for _, f := range replayed {
		for j := range f.txs {
			tx := &f.txs[j]
			if f == files[0] && tx.end <= meta.binlogPos {
				continue
			}
			pos[tx.gtid.domain] = tx.gtid
			if tx == stop.tx {
				break
			}
		}
	}
	return engine.DataState{
		Time:        stop.tx.time,
		Source:      fmt.Sprintf("binlog %s:%d, the last transaction replayed (GTID %s)", stop.file.name, stop.tx.end, stop.tx.gtid),
		LogPosition: formatPosition(pos.String(), stop.file.name, stop.tx.end),
	}, nil
}

// binlogSequence scans the binary logs and returns those from the backup's file on, in
// sequence, failing on a file of another server's naming, a duplicate or a gap.
func binlogSequence(meta *backupMeta, binlogs []engine.BackupFile) ([]*binlogFile, error) {
	base, first, ok := splitBinlogName(meta.binlogFile)
	if !ok {
		return nil, fmt.Errorf("%w: the backup's binlog file %q has no sequence number", engine.ErrFormat, meta.binlogFile)
	}
	bySeq := map[int]engine.BackupFile{}
	var seqs []int
	for _, b := range binlogs {
		name := b.Path[strings.LastIndexByte(b.Path, '/')+1:]
		fb, seq, ok := splitBinlogName(name)
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: %s: a binary log's name ends in its sequence number (%s.000042), got %q", engine.ErrFormat, b.Path, base, name)
		case fb != base:
			return nil, fmt.Errorf("%w: %s: not a binary log of the backup's server, whose logs are %s.*", engine.ErrFormat, b.Path, base)
		}
		if other, dup := bySeq[seq]; dup {
			return nil, fmt.Errorf("%w: %s and %s are both binary log %d", engine.ErrFormat, other.Path, b.Path, seq)
		}
		bySeq[seq] = b
		if seq >= first {
			seqs = append(seqs, seq)
		}
	}
	sort.Ints(seqs)
	if len(seqs) == 0 {
		return nil, fmt.Errorf("%w: binary log %s is missing: the backup stands at %s:%d, and every binary log given is older",
			engine.ErrFormat, meta.binlogFile, meta.binlogFile, meta.binlogPos)
	}
	var files []*binlogFile
	for i, seq := range seqs {
		want := first + i
		if seq != want {
			after := fmt.Sprintf("the backup stands at %s:%d", meta.binlogFile, meta.binlogPos)
			if i > 0 {
				after = "the binary logs given go from " + binlogName(meta.binlogFile, first) + " to " + binlogName(meta.binlogFile, seqs[i-1])
			}
			return nil, fmt.Errorf("%w: binary log %s is missing: %s, and the next one given is %s", engine.ErrFormat,
				binlogName(meta.binlogFile, want), after, bySeq[seq].Path)
		}
		f, err := scanBinlog(bySeq[seq].Path)
		if err != nil {
			return nil, err
		}
		f.name, f.base, f.seq = binlogName(meta.binlogFile, seq), base, seq
		files = append(files, f)
	}
	return files, nil
}

// planReplay returns the last transaction to apply, after the backup's position and up to the
// target (nil tx: none), failing when the binary logs do not reach the target.
func planReplay(meta *backupMeta, files []*binlogFile, target *replayTarget) (replayStop, error) {
	var last replayStop
	backupPos, _ := parseGTIDPos(meta.gtid)
	// missing are the target's GTIDs not reached yet.
	missing := gtidPos{}
	if target != nil && target.gtids != nil {
		for d, g := range target.gtids {
			if b, ok := backupPos[d]; !ok || b.seq < g.seq {
				missing[d] = g
			}
		}
		if len(missing) == 0 {
			return replayStop{}, fmt.Errorf("%w: %s is not after the backup, which already stands at GTID %s",
				engine.ErrFormat, target.what, meta.gtid)
		}
	}
	if target != nil && target.file != "" {
		if _, tseq, ok := splitBinlogName(target.file); !ok || tseq < files[0].seq || target.file == meta.binlogFile && target.pos < meta.binlogPos {
			return replayStop{}, fmt.Errorf("%w: %s is before the backup, which stands at %s:%d",
				engine.ErrFormat, target.what, meta.binlogFile, meta.binlogPos)
		}
		if target.file == meta.binlogFile && target.pos == meta.binlogPos {
			return replayStop{}, nil
		}
	}
	for i, f := range files {
		for j := range f.txs {
			tx := &f.txs[j]
			if i == 0 && tx.end <= meta.binlogPos {
				continue
			}
			switch {
			case target == nil:
			case target.gtids != nil:
				if g, ok := missing[tx.gtid.domain]; ok && g == tx.gtid {
					delete(missing, tx.gtid.domain)
					if len(missing) == 0 {
						if target.exclusive {
							return last, nil
						}
						return replayStop{f, tx}, nil
					}
				}
			case target.file != "":
				if f.name == target.file && tx.end == target.pos {
					return replayStop{f, tx}, nil
				}
				if f.name == target.file && tx.end > target.pos {
					return replayStop{}, fmt.Errorf("%w: %s is not the end of a transaction of %s: the transaction of GTID %s goes from %d to %d",
						engine.ErrFormat, target.what, f.name, tx.gtid, tx.start, tx.end)
				}
			case !target.time.IsZero():
				if tx.time.After(target.time) || target.exclusive && tx.time.Equal(target.time) {
					return last, nil
				}
			}
			last = replayStop{f, tx}
		}
		// Reaching a cut means going past it: the files must be whole up to the target.
		if f.cut != "" {
			return replayStop{}, fmt.Errorf("%w: %s: %s (binary log %s is cut short%s)", engine.ErrFormat, f.path, f.cut, f.name, reachedSoFar(files[:i+1], meta))
		}
	}
	if target == nil {
		return last, nil
	}
	return replayStop{}, fmt.Errorf("%w: %s not reached: the binary logs end at %s", engine.ErrFormat, target.what, endOf(files, meta))
}

// endOf says where the binary logs end: the last one, the end of its last transaction, and
// that transaction's GTID and time.
func endOf(files []*binlogFile, meta *backupMeta) string {
	for i := len(files) - 1; i >= 0; i-- {
		f := files[i]
		if n := len(f.txs); n > 0 && !(i == 0 && f.txs[n-1].end <= meta.binlogPos) {
			tx := f.txs[n-1]
			return fmt.Sprintf("%s:%d (the last transaction: GTID %s at %s)", f.name, tx.end, tx.gtid, tx.time.Format(time.RFC3339))
		}
	}
	last := files[len(files)-1]
	return fmt.Sprintf("%s:%d, with no transaction after the backup's position %s:%d", last.name, last.end, meta.binlogFile, meta.binlogPos)
}

// reachedSoFar says, for a message, how far the files before a cut one reach.
func reachedSoFar(files []*binlogFile, meta *backupMeta) string {
	return "; the binary logs up to it end at " + endOf(files, meta)
}

// applyBinlogs starts a server on the instance under root, replays files (from the backup's
// position in the first, to stopPos in the last) with mariadb-binlog through the client, and
// stops the server cleanly.
func (s *server) applyBinlogs(ctx context.Context, root string, meta *backupMeta, files []*binlogFile, stopPos int64, opts engine.RestoreOptions) (err error) {
	runtimeDir, err := os.MkdirTemp("", "dimb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runtimeDir)
	inst, err := s.Start(ctx, root, engine.StartOptions{RuntimeDir: runtimeDir, RunAs: opts.RunAs, Volatile: true})
	if err != nil {
		return fmt.Errorf("start a server to replay the binary logs: %w", err)
	}
	in := inst.(*instance)
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		if stopErr := in.Stop(sctx); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	args := []string{"--no-defaults", "--disable-log-bin",
		"--start-position=" + strconv.FormatInt(meta.binlogPos, 10),
		"--stop-position=" + strconv.FormatInt(stopPos, 10)}
	for _, f := range files {
		args = append(args, f.path)
	}
	reader := in.clientUser.Command(ctx, "", s.binlogTool, args)
	client := in.client(ctx, "")
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	readerOut := &tailWriter{max: 8 << 10}
	reader.Stdout, reader.Stderr = pw, readerOut
	client.Stdin = pr
	clientOut := &tailWriter{max: 8 << 10}
	client.Stdout, client.Stderr = clientOut, clientOut
	if err := reader.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("%s: %w", s.binlogTool, err)
	}
	pw.Close()
	clientErr := client.Start()
	pr.Close()
	if clientErr == nil {
		clientErr = client.Wait()
	}
	readerErr := reader.Wait()
	names := files[0].name
	if len(files) > 1 {
		names += " to " + files[len(files)-1].name
	}
	// A client that fails makes mariadb-binlog fail on its pipe: the client says why.
	switch {
	case clientErr != nil:
		return in.serverError("replay", fmt.Errorf("replaying %s: %w\n%s", names, clientErr, errorLines(string(clientOut.Bytes()), 10)))
	case readerErr != nil:
		return in.serverError("replay", fmt.Errorf("mariadb-binlog %s: %w\n%s", names, readerErr, errorLines(string(readerOut.Bytes()), 10)))
	}
	in.note(fmt.Sprintf("dataimage: replayed %s from %s:%d to %s:%d", names, meta.binlogFile, meta.binlogPos, files[len(files)-1].name, stopPos))
	return nil
}

// stopTimeout bounds the clean stop of the replay's server.
const stopTimeout = 10 * time.Minute
