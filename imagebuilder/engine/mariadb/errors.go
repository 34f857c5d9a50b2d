package mariadb

import "errors"

// Errors of this package. Failures of the server and its tools are *engine.ServerError, and
// backups in the wrong format wrap engine.ErrFormat; these are the adapter's own.
var (
	// ErrNoDatabase: a dump that selects no database (no USE or CREATE DATABASE before its first
	// table) was to be restored, but no database was given to restore it into.
	ErrNoDatabase = errors.New("mariadb: the dump selects no database and none was given")
	// ErrSetting: a server setting given to Start is malformed, or names an option the adapter
	// sets itself (datadir, socket, port, ...).
	ErrSetting = errors.New("mariadb: invalid server setting")
	// ErrTool: a server binary was found without the client tools it needs, or its version
	// could not be read.
	ErrTool = errors.New("mariadb: server tools missing or unusable")
)
