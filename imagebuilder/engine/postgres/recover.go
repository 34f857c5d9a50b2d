package postgres

// This file runs a recovery to a target (point-in-time recovery) inside RestorePhysical: the one
// server the adapter runs that restores WAL (restore_command), and only from the staging
// directory RestorePhysical filled under the instance's root, never from anywhere outside it.
// The recovery settings are given on that server's command line only and recovery.signal is
// consumed by the promotion, so nothing of them stays in the data directory; every later Start
// is isolated as usual (isolate.go).

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// recoveryTarget is a recovery target in PostgreSQL's terms: the recovery_target_* setting and
// its value.
type recoveryTarget struct {
	setting   string // recovery_target_time, recovery_target_lsn or recovery_target_name
	value     string
	inclusive bool
	// what describes the target for messages: `time 2024-06-01T12:00:00Z`.
	what string
}

// Lines of the server's log that say how a recovery went.
var (
	restoredRE  = regexp.MustCompile(`restored log file "([0-9A-F]{24})" from archive`)
	redoDoneRE  = regexp.MustCompile(`redo done at ([0-9A-F]+/[0-9A-F]+)`)
	lastXactRE  = regexp.MustCompile(`last completed transaction was at log time (.+)$`)
	stoppingRE  = regexp.MustCompile(`(recovery stopping .*)$`)
	fatalLineRE = regexp.MustCompile(`(?:FATAL|PANIC):\s+(.*)$`)
)

// recoveryLog is what a recovery's server log says.
type recoveryLog struct {
	lastRestored string // the last segment restore_command restored
	redoDone     string // the LSN of the last record replayed
	lastXact     string // the time of the last transaction replayed, as the server prints it
	stopping     string // the server's "recovery stopping ..." line
	fatal        []string
}

func parseRecoveryLog(p string) (recoveryLog, error) {
	var l recoveryLog
	f, err := os.Open(p)
	if err != nil {
		return l, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := restoredRE.FindStringSubmatch(line); m != nil {
			l.lastRestored = m[1]
		}
		if m := redoDoneRE.FindStringSubmatch(line); m != nil {
			l.redoDone = m[1]
		}
		if m := lastXactRE.FindStringSubmatch(line); m != nil {
			l.lastXact = m[1]
		}
		if m := stoppingRE.FindStringSubmatch(line); m != nil {
			l.stopping = m[1]
		}
		if m := fatalLineRE.FindStringSubmatch(line); m != nil {
			l.fatal = append(l.fatal, m[1])
		}
	}
	return l, sc.Err()
}

// recoverTo runs the recovery of the restored instance under root to target (nil: to the end of
// the WAL), replaying the WAL in root/walStagingDir and pg_wal, promotes it and stops it
// cleanly, then removes the staging directory. It returns the data's state where the recovery
// ended (backup is the restored backup's).
func (e *pgEngine) recoverTo(ctx context.Context, root string, u *engine.User, t *recoveryTarget, backup engine.DataState) (engine.DataState, error) {
	target := recoveryTarget{what: "the end of the WAL"}
	if t != nil {
		target = *t
	}
	staging := filepath.Join(root, walStagingDir)
	segSize, err := segmentSize(staging, filepath.Join(engine.DataDir(root), "pg_wal"))
	if err != nil {
		return backup, err
	}
	rd, err := os.MkdirTemp("", "pgrec-")
	if err != nil {
		return backup, fmt.Errorf("postgres: recovery to %s: %w", target.what, err)
	}
	defer os.RemoveAll(rd)
	settings := map[string]string{
		// cp fails for a file that is not there: the server then looks in pg_wal.
		"restore_command":          "cp " + shellQuote(staging) + `/%f "%p"`,
		"recovery_target_timeline": "latest",
		"log_timezone":             "UTC",
		"lc_messages":              "C", // the log lines parseRecoveryLog reads, untranslated
		// No connection before the promotion: the server is ready only once recovery is over.
		"hot_standby": "off",
	}
	if t != nil {
		settings[target.setting] = target.value
		settings["recovery_target_inclusive"] = map[bool]string{true: "on", false: "off"}[target.inclusive]
		settings["recovery_target_action"] = "promote"
	}
	inst, err := e.start(ctx, root, engine.StartOptions{RuntimeDir: rd, RunAs: u.Name, Volatile: true}, settings)
	logPath := filepath.Join(rd, logFileName)
	if inst != nil {
		// Up (the role AdminUser may be missing: that is Start's to fix, later).
		if stopErr := inst.Stop(ctx); stopErr != nil {
			return backup, stopErr
		}
	}
	rl, logErr := parseRecoveryLog(logPath)
	if err != nil && !errors.Is(err, errNoAdminRole) {
		var se *engine.ServerError
		if logErr != nil || !errors.As(err, &se) {
			return backup, err
		}
		return backup, recoveryError(target, rl, segSize, se.LogTail)
	}
	if logErr != nil {
		return backup, fmt.Errorf("postgres: recovery to %s: read the server log: %w", target.what, logErr)
	}
	if (t != nil && rl.stopping == "") || rl.redoDone == "" {
		rl.fatal = append(rl.fatal, "the server ended recovery without saying it reached the target")
		return backup, recoveryError(target, rl, segSize, engine.TailFile(logPath, logTailLines))
	}
	if err := os.RemoveAll(staging); err != nil {
		return backup, fmt.Errorf("postgres: recovery to %s: remove the staging directory: %w", target.what, err)
	}
	how := target.what
	if rl.stopping != "" {
		how += ": " + rl.stopping
	}
	state := engine.DataState{
		Time:        backup.Time,
		Source:      fmt.Sprintf("%s (recovery to %s; no transaction replayed after the backup)", backup.Source, how),
		LogPosition: "LSN " + rl.redoDone,
	}
	if rl.lastXact != "" {
		if at, err := time.Parse("2006-01-02 15:04:05.999999-07", rl.lastXact); err == nil {
			state.Time = at.UTC()
			state.Source = fmt.Sprintf("recovery to %s: the last transaction replayed", how)
		}
	}
	return state, nil
}

// recoveryError describes a recovery that did not reach its target: a *engine.ServerError
// matching engine.ErrFormat too (the backups lack the WAL to reach it).
func recoveryError(target recoveryTarget, rl recoveryLog, segSize uint64, logTail string) error {
	var msg strings.Builder
	fmt.Fprintf(&msg, "recovery to %s failed", target.what)
	if len(rl.fatal) > 0 {
		fmt.Fprintf(&msg, ": %s", strings.Join(rl.fatal, "; "))
	}
	last := rl.lastRestored
	if rl.redoDone != "" {
		if lsn, perr := parseLSN(rl.redoDone); perr == nil {
			tli := uint32(1)
			if last != "" {
				fmt.Sscanf(last[:8], "%08X", &tli)
			}
			last = segmentName(tli, lsn, segSize)
		}
	}
	if last != "" {
		fmt.Fprintf(&msg, "; the last WAL segment replayed is %s", last)
		if rl.redoDone != "" {
			fmt.Fprintf(&msg, " (redo done at %s)", rl.redoDone)
		}
		if next := nextSegment(last, segSize); next != "" {
			fmt.Fprintf(&msg, "; the next segment, %s, is not among the backups", next)
		}
	} else {
		msg.WriteString("; no WAL segment was replayed from the backups")
	}
	return &engine.ServerError{Op: "postgres: recovery", Err: fmt.Errorf("%w: %s", engine.ErrFormat, msg.String()), LogTail: logTail}
}

// segmentSize returns the size of the WAL segments in the directories dirs (from the page
// header of the first segment found), or an error when there is none.
func segmentSize(dirs ...string) (uint64, error) {
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("postgres: recovery: %w", err)
		}
		for _, ent := range entries {
			if len(ent.Name()) != 24 || !walFileRE.MatchString(ent.Name()) {
				continue
			}
			p := filepath.Join(dir, ent.Name())
			head, err := engine.Sniff(p, walLongHeaderSize)
			if err != nil {
				return 0, fmt.Errorf("postgres: recovery: %w", err)
			}
			if !isWALSegment(head) {
				return 0, fmt.Errorf("%w: %s is named like a WAL segment but is not one (no WAL page header)", engine.ErrFormat, p)
			}
			return uint64(binary.LittleEndian.Uint32(head[32:36])), nil
		}
	}
	return 0, fmt.Errorf("%w: a recovery target is given but the backups hold no WAL segment to replay", engine.ErrFormat)
}

// shellQuote quotes s for sh, in single quotes.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// recoveryTargetOf returns the recovery target of opts in PostgreSQL's terms, or nil: a time
// (RFC 3339, given to the server in UTC), an LSN or a restore point's name.
func recoveryTargetOf(opts engine.RestoreOptions) (*recoveryTarget, error) {
	t := opts.RecoveryTarget
	if t == nil {
		return nil, nil
	}
	rt := &recoveryTarget{inclusive: t.IsInclusive(), what: t.String()}
	switch k := t.Kind(); k {
	case imagebuilder.TargetTime:
		at, err := t.ParsedTime()
		if err != nil {
			return nil, fmt.Errorf("postgres: recoveryTarget: %w", err)
		}
		rt.setting, rt.value = "recovery_target_time", at.UTC().Format("2006-01-02 15:04:05.999999")+"+00"
	case imagebuilder.TargetLSN:
		if _, err := parseLSN(t.LSN); err != nil {
			return nil, fmt.Errorf("postgres: recoveryTarget: %w", err)
		}
		rt.setting, rt.value = "recovery_target_lsn", t.LSN
	case imagebuilder.TargetName:
		rt.setting, rt.value = "recovery_target_name", t.Name
	default:
		return nil, fmt.Errorf("postgres: recoveryTarget %s: PostgreSQL recovers to a time, an LSN or a restore point's name", t)
	}
	return rt, nil
}
