package postgres

import "errors"

// ErrUnsupported matches backups the adapter recognizes but does not restore: tablespace
// archives of a base backup, base backups compressed with zstd, lz4, bzip2 or xz, and pg_dump
// directory-format archives. It comes wrapped together with engine.ErrFormat and a message that
// says what was found and what to do instead.
var ErrUnsupported = errors.New("postgres: unsupported backup")
