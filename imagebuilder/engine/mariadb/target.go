package mariadb

import "github.com/dataimage/dataimage/imagebuilder/engine"

// targetOf returns the recovery target of opts, nil when there is none.
func targetOf(opts engine.RestoreOptions) (*replayTarget, error) { return nil, nil }
