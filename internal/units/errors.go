package units

import "errors"

// ErrInvalidSize is wrapped by every error of ParseSize and SizeFlag.Set: the text is not a
// size of this grammar, or not one that can be used (zero, fractional bytes, too large).
var ErrInvalidSize = errors.New("invalid size")
