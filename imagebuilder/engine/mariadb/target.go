package mariadb

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// targetOf returns the recovery target of opts (engine.RestoreOptions.RecoveryTarget) as the
// replay plans with it, nil when there is none. MariaDB takes a GTID position, a binlog
// position (file:offset, the end of a transaction: inclusive or not makes no difference, and
// false is refused) or a time.
func targetOf(opts engine.RestoreOptions) (*replayTarget, error) {
	t := opts.RecoveryTarget
	if t == nil {
		return nil, nil
	}
	rt := &replayTarget{what: "recoveryTarget " + t.String(), exclusive: !t.IsInclusive()}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", engine.ErrFormat, rt.what, fmt.Sprintf(format, args...))
	}
	switch t.Kind() {
	case imagebuilder.TargetGTID:
		pos, err := parseGTIDPos(t.GTID)
		if err != nil {
			return nil, bad("%v", err)
		}
		if len(pos) == 0 || len(pos) != len(strings.Split(t.GTID, ",")) {
			return nil, bad("want one GTID per replication domain")
		}
		rt.gtids = pos
	case imagebuilder.TargetBinlogPosition:
		i := strings.LastIndexByte(t.BinlogPosition, ':')
		off, err := strconv.ParseInt(t.BinlogPosition[i+1:], 10, 64)
		if i <= 0 || err != nil || off < 4 {
			return nil, bad("want file:offset, the offset at least 4")
		}
		if rt.exclusive {
			return nil, bad("inclusive: false has no meaning for a binlog position, which lies between two transactions: name the position before the transaction to leave out")
		}
		rt.file, rt.pos = t.BinlogPosition[:i], off
	case imagebuilder.TargetTime:
		tm, err := t.ParsedTime()
		if err != nil {
			return nil, bad("%v", err)
		}
		rt.time = tm
	default:
		return nil, bad("MariaDB replays binary logs to a gtid, a binlogPosition or a time")
	}
	return rt, nil
}
