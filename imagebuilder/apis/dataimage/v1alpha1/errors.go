package v1alpha1

import "errors"

// ErrInvalidConfig matches (errors.Is) every error about the controller's configuration file:
// bad YAML, an unknown field, a broken rule.
var ErrInvalidConfig = errors.New("v1alpha1: invalid controller configuration")
