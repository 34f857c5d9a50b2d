package app

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// sizeUnits are the suffixes a size may end with, as in Kubernetes quantities: binary (Ki to
// Ei, powers of 1024) and decimal (k or K to E, powers of 1000).
var sizeUnits = map[string]int64{
	"":   1,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
	"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}

// parseSize reads a size in bytes: a number (decimals allowed, e.g. 1.5Gi) with an optional
// unit suffix from sizeUnits. The result must be a positive whole number of bytes that fits in
// an int64.
func parseSize(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' })
	unit := s[len(num):]
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("%w %q: unknown unit %q (want Ki, Mi, Gi, Ti, Pi, Ei or k, M, G, T, P, E)", errInvalidSize, s, unit)
	}
	if num == "" || strings.Trim(num, "0123456789.") != "" || strings.Count(num, ".") > 1 || num[0] == '.' || num[len(num)-1] == '.' {
		return 0, fmt.Errorf("%w %q: want a number with an optional unit, e.g. 64Gi, 512Mi, 1.5T", errInvalidSize, s)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%w %q: want a number with an optional unit, e.g. 64Gi, 512Mi, 1.5T", errInvalidSize, s)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	switch {
	case !r.IsInt():
		return 0, fmt.Errorf("%w %q: not a whole number of bytes", errInvalidSize, s)
	case r.Sign() <= 0:
		return 0, fmt.Errorf("%w %q: must be positive", errInvalidSize, s)
	case !r.Num().IsInt64():
		return 0, fmt.Errorf("%w %q: too large", errInvalidSize, s)
	}
	return r.Num().Int64(), nil
}

// sizeFlag is a size-valued flag (parseSize); zero means not given.
type sizeFlag int64

func (f *sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*f = sizeFlag(n)
	return nil
}

func (f *sizeFlag) String() string {
	if *f == 0 {
		return ""
	}
	return formatSizeExact(int64(*f))
}

func (f *sizeFlag) Type() string { return "size" }

// formatSizeExact writes n in the shortest form parseSize reads back exactly: 64Gi, 1536Mi, 1T.
func formatSizeExact(n int64) string {
	best := strconv.FormatInt(n, 10)
	for unit, m := range sizeUnits {
		if m > 1 && n%m == 0 && unit != "K" {
			if s := strconv.FormatInt(n/m, 10) + unit; len(s) < len(best) || len(s) == len(best) && s < best {
				best = s
			}
		}
	}
	return best
}

// formatBytes writes n bytes for people, in binary units: "512 B", "4.0 KiB", "412 MiB",
// "1.1 GiB" (one decimal below 10 units, none from 10 up).
func formatBytes(n int64) string {
	if n < 0 {
		return "-" + formatBytes(-n)
	}
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n) / 1024
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	// Round first, so that 1023.96 KiB is written 1.0 MiB rather than 1024 KiB.
	if v >= 9.95 && strconv.FormatFloat(v, 'f', 0, 64) == "1024" && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v < 9.95 {
		return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[i]
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " " + units[i]
}
