package driver

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/dataplane"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/nodevolume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrRegistrationRefused: the kubelet refused the plugin's registration
// (Server.ServeRegistration); the plugin should exit so that a new pod retries.
var ErrRegistrationRefused = errors.New("driver: the kubelet refused the plugin's registration")

// This file is the one place where errors become gRPC codes (codeOf), for the controller and
// the node alike:
//
//	blockstore.ErrClosed                              Unavailable (the data plane is shutting down)
//	dataplane.ErrUnavailable                          Unavailable (the data plane does not answer)
//	blockstore.ErrCorrupt, ErrFailed                  Internal
//	blockstore.ErrNotFound                            NotFound
//	blockstore.ErrExists                              AlreadyExists
//	blockstore.ErrNoSpace, ErrOverProvisioned         ResourceExhausted
//	  (ErrHostFull, the file system under the pool file is full, is a kind of ErrNoSpace)
//	blockstore.ErrInvalidArgument, ErrOutOfRange      InvalidArgument
//	export.ErrLeftovers (the export is gone)          FailedPrecondition: an earlier run's export,
//	                                                  whose server died with it, is in the way
//	                                                  until the volume is unpublished and unstaged
//	export.ErrBusy, EBUSY (the device is busy)        FailedPrecondition: something holds the
//	                                                  device or mount, or its node is still bound
//	                                                  at a target path; retry once it lets go
//	nodevolume.ErrNotAttached                         FailedPrecondition: the volume is not staged
//	dataplane.ErrNotExported                          FailedPrecondition: the data plane does not
//	                                                  export the volume (it restarted)
//	nodevolume.ErrConflict                            AlreadyExists: staged otherwise (another
//	                                                  staging path or capability)
//	nodevolume.ErrInvalid                             InvalidArgument
//	export.ErrUnsupported                             Unimplemented: this node lacks what the
//	                                                  export method needs
//	export.ErrExists                                  Aborted: another operation on the volume's
//	                                                  export is under way
//	context.Canceled, DeadlineExceeded                Canceled, DeadlineExceeded
//	anything else (export.ErrInvalid, mount and       Internal
//	file system errors)
//
// The severe conditions are tested first: a failed pool's error may wrap the I/O error that
// failed it. Every error keeps its chain (rpcError): tests and callers use errors.Is through
// the gRPC error, and status.Code for the code.

// rpcError is a gRPC status that keeps the error it was made from: status.Code and
// status.Convert see the code (GRPCStatus), errors.Is and errors.As see the chain (Unwrap).
type rpcError struct {
	code codes.Code
	msg  string // names the object and the operation
	err  error
}

func (e *rpcError) Error() string              { return e.msg + ": " + e.err.Error() }
func (e *rpcError) Unwrap() error              { return e.err }
func (e *rpcError) GRPCStatus() *status.Status { return status.New(e.code, e.Error()) }

// mapError turns an error of the block store, an export, a mount or the file system into a
// gRPC error with its code (codeOf); the message names the object and the operation (format
// and args) before the error's own message.
func mapError(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return &rpcError{code: codeOf(err), msg: fmt.Sprintf(format, args...), err: err}
}

// codeOf is the gRPC code of an error (the table above).
func codeOf(err error) codes.Code {
	switch {
	case errors.Is(err, blockstore.ErrClosed), errors.Is(err, dataplane.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, blockstore.ErrFailed), errors.Is(err, blockstore.ErrCorrupt):
		return codes.Internal
	case errors.Is(err, blockstore.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, blockstore.ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, blockstore.ErrNoSpace), errors.Is(err, blockstore.ErrOverProvisioned):
		return codes.ResourceExhausted
	case errors.Is(err, blockstore.ErrInvalidArgument), errors.Is(err, blockstore.ErrOutOfRange),
		errors.Is(err, nodevolume.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, export.ErrLeftovers), errors.Is(err, export.ErrBusy), errors.Is(err, syscall.EBUSY),
		errors.Is(err, nodevolume.ErrNotAttached), errors.Is(err, dataplane.ErrNotExported):
		return codes.FailedPrecondition
	case errors.Is(err, nodevolume.ErrConflict):
		return codes.AlreadyExists
	case errors.Is(err, export.ErrUnsupported):
		return codes.Unimplemented
	case errors.Is(err, export.ErrExists):
		return codes.Aborted
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	default:
		return codes.Internal
	}
}

// registryError turns an error of a registry (a resolve, a pull) into a gRPC error:
//
//	exportset.ErrCorrupt, ErrMalformed (a chunk or      DataLoss: the image in the registry is
//	  a manifest that does not verify)                 damaged; the message names the chunk
//	exportset.ErrNotFound (no such name or image, a    Unavailable: retried; the name appears when
//	  missing chunk is a ChunkError: DataLoss)         the image's node has pushed it
//	exportset.ErrInvalid                               InvalidArgument
//	the pool's errors                                  as codeOf
//	anything else (the network, the server)            Unavailable
//
// A missing name is Unavailable rather than NOT_FOUND: the snapshot exists on its node and is
// pushed shortly after it is made, and the provisioner treats NOT_FOUND as final.
func registryError(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	var chunk *exportset.ChunkError
	code := codes.Unavailable
	switch {
	case errors.As(err, &chunk), errors.Is(err, exportset.ErrCorrupt), errors.Is(err, exportset.ErrMalformed):
		code = codes.DataLoss
	case errors.Is(err, exportset.ErrNotFound):
		code = codes.Unavailable
	case errors.Is(err, exportset.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, blockstore.ErrClosed), errors.Is(err, dataplane.ErrUnavailable),
		errors.Is(err, blockstore.ErrNoSpace), errors.Is(err, blockstore.ErrOverProvisioned),
		errors.Is(err, blockstore.ErrFailed), errors.Is(err, blockstore.ErrCorrupt):
		code = codeOf(err)
	}
	return &rpcError{code: code, msg: fmt.Sprintf(format, args...), err: err}
}

// unhealthyError is Probe's answer for a pool that cannot serve: FAILED_PRECONDITION ("Plugin
// not healthy" in the spec's general error table), so that a liveness probe restarts the
// plugin and reopening the pool recovers it.
func unhealthyError(err error) error {
	return &rpcError{code: codes.FailedPrecondition, msg: "pool not healthy", err: err}
}

// idError answers a lookup of an ID that cannot name an object of this pool (malformed, or
// another node's): NOT_FOUND, as the spec's "Volume does not exist" / "Snapshot does not
// exist" rows and csi-sanity (which sends IDs like "fake-vol-id-…" and expects NotFound) want.
func idError(err error) error {
	return &rpcError{code: codes.NotFound, msg: "no such object in this node's pool", err: err}
}

// tokenError answers a starting_token this plugin never issued: ABORTED, as the spec's
// "Invalid starting_token" rows of ListVolumes, ListSnapshots and ControllerListVolumeHealth say.
func tokenError(token string, err error) error {
	return &rpcError{code: codes.Aborted, msg: fmt.Sprintf("starting_token %q", token), err: err}
}

// invalidf is a request validation error: INVALID_ARGUMENT.
func invalidf(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// ctxError turns the context's error into Canceled or DeadlineExceeded.
func ctxError(err error) error { return status.FromContextError(err).Err() }
