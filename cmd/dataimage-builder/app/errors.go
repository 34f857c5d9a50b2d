package app

import "errors"

// Errors of a build that does not start, besides builder.Prepare's. They reach the termination
// message with the step "validate".
var (
	// ErrRootInUse: the root already holds an instance (its data directory exists).
	ErrRootInUse = errors.New("dataimage-builder: the root already holds an instance")
	// ErrUnreachable: the server's user could not reach the root or the runtime directory (a
	// parent directory is not traversable by others).
	ErrUnreachable = errors.New("dataimage-builder: the database server's user cannot reach a directory it needs")
)
