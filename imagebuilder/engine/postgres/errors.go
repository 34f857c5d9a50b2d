package postgres

import "errors"

// ErrUnsupported matches backups the adapter recognizes but does not restore: backups compressed
// with bzip2 or xz, which pg_basebackup and pg_dump do not write. It comes wrapped together with
// engine.ErrFormat and a message that says what was found and what to do instead.
var ErrUnsupported = errors.New("postgres: unsupported backup")
