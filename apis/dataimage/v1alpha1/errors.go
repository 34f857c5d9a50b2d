package v1alpha1

import "errors"

// ErrInvalidConfig matches (errors.Is) every error about the controller's configuration file:
// bad YAML, an unknown field, a broken rule.
var ErrInvalidConfig = errors.New("v1alpha1: invalid controller configuration")

// ErrNotAllowed matches every *NotAllowedError: a value of a DataImage (a host path, an image)
// that the controller's configuration does not allow.
var ErrNotAllowed = errors.New("v1alpha1: not allowed by the controller's configuration")
