package imagebuilder

import (
	"slices"
	"strings"
)

// Versions lists the engine versions available to the builder, by engine. The caller owns the
// map; this package only reads it.
type Versions map[Engine][]string

// Match returns the available version of engine e that a definition's requested version names:
//
//   - the available version equal to requested, if there is one;
//   - else the highest available version whose leading dot-separated components are exactly the
//     components of requested: "16" matches "16.4", "8.0" matches "8.0.36", but "1" does not match
//     "16", and "16.4" does not match "16".
//
// Components compare as text for equality; to find the highest, two all-digit components compare
// as numbers (so "16.10" is above "16.9"), else as text. An empty requested version matches
// nothing.
func (v Versions) Match(e Engine, requested string) (string, bool) {
	if requested == "" {
		return "", false
	}
	want := strings.Split(requested, ".")
	best, found := "", false
	for _, avail := range v[e] {
		if avail == requested {
			return avail, true
		}
		have := strings.Split(avail, ".")
		if len(have) <= len(want) || !slices.Equal(have[:len(want)], want) {
			continue
		}
		if !found || compareVersions(avail, best) > 0 {
			best, found = avail, true
		}
	}
	return best, found
}

// sorted returns engine e's versions in ascending order, without duplicates.
func (v Versions) sorted(e Engine) []string {
	out := slices.Clone(v[e])
	slices.SortFunc(out, compareVersions)
	return slices.Compact(out)
}

// compareVersions orders dot-separated versions component by component: all-digit components
// as numbers, others as text; a version that is a prefix of another comes first.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if c := compareComponents(as[i], bs[i]); c != 0 {
			return c
		}
	}
	if c := len(as) - len(bs); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

func compareComponents(a, b string) int {
	if isDigits(a) && isDigits(b) {
		a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
		if len(a) != len(b) {
			return len(a) - len(b)
		}
	}
	return strings.Compare(a, b)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// CompareVersions orders two engine versions the way Match does: component by component, two
// all-digit components as numbers, others as text; a version that runs out of components first
// is lower. The result is negative, zero or positive.
func CompareVersions(a, b string) int { return compareVersions(a, b) }
