package imagebuilder

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Lifetime is how long an image lives after it is built.
type Lifetime struct {
	// Never is true for an image that never expires (lifetime "0").
	Never bool
	// Duration is the lifetime when Never is false. ParseLifetime always returns either Never or
	// a positive Duration; a Lifetime with neither (the zero value) is taken as Never.
	Duration time.Duration
}

// Expires reports whether an image with this lifetime expires at all.
func (l Lifetime) Expires() bool { return !l.Never && l.Duration > 0 }

// String returns the lifetime in the definition's syntax: "0" for never, else the duration in
// the largest of h, m, s that divides it (time.Duration's own form for sub-second durations,
// which only a configured default can have).
func (l Lifetime) String() string {
	if !l.Expires() {
		return "0"
	}
	for _, u := range lifetimeUnits {
		if l.Duration%u.d == 0 {
			return strconv.FormatInt(int64(l.Duration/u.d), 10) + u.suffix
		}
	}
	return l.Duration.String()
}

// lifetimeUnits are the units a lifetime may use, largest first.
var lifetimeUnits = []struct {
	suffix string
	d      time.Duration
}{{"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}}

// ParseLifetime parses a lifetime: "0" for never, or <n>s, <n>m or <n>h, n a whole number
// written with ASCII digits only (no sign, no fraction, no spaces). "0s", "0m" and "0h" are
// refused as ambiguous (an image that expires at once is not useful), and so is a lifetime past
// the range of time.Duration (about 292 years). Errors wrap ErrInvalidDefinition.
func ParseLifetime(s string) (Lifetime, error) {
	l, rule := parseLifetime(s)
	if rule != "" {
		return Lifetime{}, &FieldError{Field: "lifetime", Rule: rule}
	}
	return l, nil
}

// parseLifetime returns the lifetime, or the rule s breaks.
func parseLifetime(s string) (Lifetime, string) {
	if s == "0" {
		return Lifetime{Never: true}, ""
	}
	bad := fmt.Sprintf("must be 0 (never expires) or <n>s, <n>m or <n>h with n a whole number, got %q", s)
	if len(s) < 2 {
		return Lifetime{}, bad
	}
	digits, suffix := s[:len(s)-1], s[len(s)-1:]
	var unit time.Duration
	for _, u := range lifetimeUnits {
		if u.suffix == suffix {
			unit = u.d
		}
	}
	if unit == 0 {
		return Lifetime{}, bad
	}
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return Lifetime{}, bad
		}
	}
	max := uint64(math.MaxInt64 / int64(unit))
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n > max {
		return Lifetime{}, fmt.Sprintf("%q is too long: at most %d%s", s, max, suffix)
	}
	if n == 0 {
		return Lifetime{}, fmt.Sprintf("%q is ambiguous: write 0 for a lifetime that never expires", s)
	}
	return Lifetime{Duration: time.Duration(n) * unit}, ""
}
