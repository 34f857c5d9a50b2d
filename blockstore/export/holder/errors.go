package holder

import "errors"

var (
	// ErrNotFound: the holder holds nothing under the key.
	ErrNotFound = errors.New("holder: not found")
	// ErrInvalid: a bad key, too many descriptors, a message too large.
	ErrInvalid = errors.New("holder: invalid request")
	// ErrProtocol: a malformed message, or one of a version the other side does not speak.
	ErrProtocol = errors.New("holder: protocol error")
)

// RemoteError is an error the holder answered with.
type RemoteError struct {
	Op   string // the request: put, get, drop, list
	Key  string
	Code string // a protocol code: notfound, invalid, protocol, internal
	Msg  string
}

func (e *RemoteError) Error() string {
	s := "holder: " + e.Op
	if e.Key != "" {
		s += " " + e.Key
	}
	return s + ": " + e.Msg
}

// Unwrap maps the code to this package's sentinel errors.
func (e *RemoteError) Unwrap() error {
	switch e.Code {
	case codeNotFound:
		return ErrNotFound
	case codeInvalid:
		return ErrInvalid
	case codeProtocol:
		return ErrProtocol
	}
	return nil
}
