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

// recoverTo runs the recovery of the restored instance under root to target, replaying the WAL
// in root/walStagingDir, promotes it and stops it cleanly, then removes the staging directory.
// It returns the data's state where the recovery ended (backup is the restored backup's).
func (e *pgEngine) recoverTo(ctx context.Context, root string, u *engine.User, target recoveryTarget, backup engine.DataState) (engine.DataState, error) {
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
		"restore_command":           "cp " + shellQuote(staging) + `/%f "%p"`,
		target.setting:              target.value,
		"recovery_target_inclusive": map[bool]string{true: "on", false: "off"}[target.inclusive],
		"recovery_target_action":    "promote",
		"recovery_target_timeline":  "latest",
		"log_timezone":              "UTC",
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
		if logErr != nil {
			return backup, err
		}
		return backup, recoveryError(target, rl, segSize, err)
	}
	if logErr != nil {
		return backup, fmt.Errorf("postgres: recovery to %s: read the server log: %w", target.what, logErr)
	}
	if rl.stopping == "" || rl.redoDone == "" {
		return backup, recoveryError(target, rl, segSize, errors.New("the server ended recovery without reaching the target"))
	}
	if err := os.RemoveAll(staging); err != nil {
		return backup, fmt.Errorf("postgres: recovery to %s: remove the staging directory: %w", target.what, err)
	}
	state := engine.DataState{
		Time:        backup.Time,
		Source:      fmt.Sprintf("%s (recovery to %s: %s; no transaction replayed after the backup)", backup.Source, target.what, rl.stopping),
		LogPosition: "LSN " + rl.redoDone,
	}
	if rl.lastXact != "" {
		if t, err := time.Parse("2006-01-02 15:04:05.999999-07", rl.lastXact); err == nil {
			state.Time = t.UTC()
			state.Source = fmt.Sprintf("recovery to %s: the last transaction replayed (%s)", target.what, rl.stopping)
		}
	}
	return state, nil
}

// recoveryError describes a recovery that did not reach its target.
func recoveryError(target recoveryTarget, rl recoveryLog, segSize uint64, err error) error {
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
	return fmt.Errorf("postgres: %s: %w", msg.String(), err)
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

// recoveryTargetOf returns the recovery target of opts in PostgreSQL's terms, or nil.
func recoveryTargetOf(opts engine.RestoreOptions) (*recoveryTarget, error) {
	return nil, nil
}
