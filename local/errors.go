package local

import (
	"context"
	"errors"
	"net/http"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/dataplane"
)

// The sentinel errors (ErrNotFound, ...) and Error are declared in api.go, with the Service they
// belong to. This file maps them to and from the names and HTTP statuses the API sends.

// errorKinds names each kind on the wire, with its HTTP status. Errors of no kind are sent as
// "internal" (500) and come back as an *Error with a nil Kind.
var errorKinds = []struct {
	kind   error
	name   string
	status int
}{
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrAlreadyExists, "already_exists", http.StatusConflict},
	{ErrHasClones, "has_clones", http.StatusConflict},
	{ErrInvalid, "invalid", http.StatusBadRequest},
	{ErrNoSpace, "no_space", http.StatusInsufficientStorage},
	{ErrBuildFailed, "build_failed", http.StatusUnprocessableEntity},
	{ErrRemote, "remote_failed", http.StatusBadGateway},
	{ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
}

const kindInternal = "internal"

// kindOf returns the wire name and HTTP status of err's kind.
func kindOf(err error) (string, int) {
	for _, k := range errorKinds {
		if errors.Is(err, k.kind) {
			return k.name, k.status
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return kindInternal, http.StatusGatewayTimeout
	}
	return kindInternal, http.StatusInternalServerError
}

// kindNamed returns the sentinel error a wire name stands for (nil for "internal" or an unknown
// name).
func kindNamed(name string) error {
	for _, k := range errorKinds {
		if k.name == name {
			return k.kind
		}
	}
	return nil
}

// wireError is an error as the API sends it.
type wireError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

func toWire(err error) (wireError, int) {
	name, status := kindOf(err)
	return wireError{Kind: name, Message: err.Error()}, status
}

func (w wireError) err() error { return &Error{Kind: kindNamed(w.Kind), Message: w.Message} }

// storeError gives a block store failure the kind the API reports it with, keeping the chain.
func storeError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, blockstore.ErrNoSpace), errors.Is(err, blockstore.ErrOverProvisioned):
		return &kindError{kind: ErrNoSpace, err: err}
	case errors.Is(err, dataplane.ErrUnavailable):
		return &kindError{kind: ErrUnavailable, err: err}
	}
	return err
}

// kindError is an error chain that also matches kind (errors.Is), for failures of the layers
// below that have a kind of the API: the message is the chain's.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }
