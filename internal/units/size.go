// Package units owns the one grammar of sizes in bytes that every Dataimage command and flag
// reads (ParseSize, SizeFlag), its shortest exact form (FormatSize), and the one way byte counts
// are printed for people (FormatBytes). It knows nothing of what the sizes are for.
//
// # The size grammar
//
//	size   = number [ unit ]
//	number = digits [ "." digits ]       ASCII digits; no sign, exponent or space
//	unit   = "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"     powers of 1024
//	       | "k"  | "M"  | "G"  | "T"  | "P"  | "E"      powers of 1000
//
// The size is number × unit bytes, and it must be a whole number of bytes from 1 to
// math.MaxInt64 (8Ei less one byte). So 1.5Gi is 1610612736 bytes, 1.5G is 1500000000 bytes
// (the same as 1500M), 0.5Ki is 512, and 1.5 or 0.1Ki (102.4 bytes) are refused. Units are
// case-sensitive: K, m, GB and GiB are refused, with the unit to write instead.
//
// Every size this grammar accepts is a Kubernetes resource.Quantity of the same value, so a size
// can be copied between a PVC, a DataImage, a Helm value and a command line. The Quantity forms
// that are not sizes (milli "m", exponents such as 1e9, signs) are refused.
package units

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// unit is a suffix of the grammar and the number of bytes it stands for.
type unit struct {
	suffix string
	bytes  int64
}

// sizeUnits are the grammar's units, largest first in each family.
var sizeUnits = []unit{
	{"Ei", 1 << 60}, {"Pi", 1 << 50}, {"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10},
	{"E", 1e18}, {"P", 1e15}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3},
}

// maxSizeLen bounds the text of a size, so that parsing costs nothing whatever it is given.
// Nothing shorter than 64 characters is lost: the largest size is 19 digits.
const maxSizeLen = 64

const grammarHint = "want a number with an optional unit, e.g. 64Gi, 512Mi, 1.5G"

// ParseSize reads a size in bytes written in the package's grammar. Its errors wrap
// ErrInvalidSize, quote s and say which rule it breaks.
func ParseSize(s string) (int64, error) {
	n, rule := parseSize(s)
	if rule != "" {
		return 0, fmt.Errorf("%w %q: %s", ErrInvalidSize, s, rule)
	}
	return n, nil
}

// parseSize returns the size s writes, or the rule it breaks.
func parseSize(s string) (int64, string) {
	switch {
	case s == "":
		return 0, "empty; " + grammarHint
	case len(s) > maxSizeLen:
		return 0, fmt.Sprintf("longer than %d characters", maxSizeLen)
	case s[0] == '-':
		if _, rule := parseSize(s[1:]); rule == "" {
			return 0, "must be positive"
		}
		return 0, grammarHint
	}
	num := strings.TrimRightFunc(s, func(r rune) bool { return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' })
	mult, rule := unitBytes(s[len(num):])
	if rule != "" {
		return 0, rule
	}
	whole, frac, dot := strings.Cut(num, ".")
	if !digits(whole) || dot && !digits(frac) {
		return 0, grammarHint
	}
	// whole + frac/10^len(frac), times mult, exactly.
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, grammarHint // unreachable: num is digits with at most one inner dot
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	switch {
	case !r.IsInt():
		return 0, "not a whole number of bytes"
	case r.Sign() == 0:
		return 0, "must be positive"
	case !r.Num().IsInt64():
		return 0, fmt.Sprintf("too large: the most is %d bytes (8Ei less one byte)", int64(math.MaxInt64))
	}
	return r.Num().Int64(), ""
}

// unitBytes returns the bytes of a unit suffix ("" is 1), or the rule it breaks, with the unit
// meant when the suffix differs from one only in case or by a trailing B.
func unitBytes(suffix string) (int64, string) {
	if suffix == "" {
		return 1, ""
	}
	for _, u := range sizeUnits {
		if u.suffix == suffix {
			return u.bytes, ""
		}
	}
	const want = "want Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000)"
	switch suffix {
	case "K", "KB", "kB":
		return 0, fmt.Sprintf("unknown unit %q: write k (1000 bytes) or Ki (1024 bytes)", suffix)
	case "m":
		return 0, `unknown unit "m" (milli): write M (10^6 bytes) or Mi (2^20 bytes)`
	case "B":
		return 0, `unknown unit "B": write the number of bytes alone`
	}
	bare := strings.TrimSuffix(strings.TrimSuffix(suffix, "B"), "b")
	for _, u := range sizeUnits {
		if strings.EqualFold(bare, u.suffix) {
			return 0, fmt.Sprintf("unknown unit %q: write %s; %s", suffix, u.suffix, want)
		}
	}
	return 0, fmt.Sprintf("unknown unit %q: %s", suffix, want)
}

// digits reports whether s is one or more ASCII digits.
func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// FormatSize writes n in the shortest form of the grammar that reads back to n exactly: 64Gi,
// 1536Mi, 1T, 4Ki, 1001 (of two forms as short, the one that sorts first). It is the form for
// flags' defaults and for flags forwarded to another process. n < 1 is written in decimal,
// which ParseSize refuses.
func FormatSize(n int64) string {
	best := strconv.FormatInt(n, 10)
	if n < 1 {
		return best
	}
	for _, u := range sizeUnits {
		if n%u.bytes == 0 {
			if s := strconv.FormatInt(n/u.bytes, 10) + u.suffix; len(s) < len(best) || len(s) == len(best) && s < best {
				best = s
			}
		}
	}
	return best
}

// SizeFlag is a flag holding a size (flag.Value for the standard library's flag package, and
// pflag.Value): Set reads the grammar, String writes FormatSize. Zero means the flag was not
// given, and prints as "".
type SizeFlag int64

// Set reads s with ParseSize; on error the flag keeps its value.
func (f *SizeFlag) Set(s string) error {
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*f = SizeFlag(n)
	return nil
}

func (f *SizeFlag) String() string {
	if f == nil || *f == 0 {
		return ""
	}
	return FormatSize(int64(*f))
}

// Type names the flag's value in pflag's help ("--pool-size size").
func (f *SizeFlag) Type() string { return "size" }
