package units

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{1023, "1023 B"},
		{1024, "1 KiB"},
		{1025, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{4 << 10, "4 KiB"},
		{10 << 10, "10 KiB"},
		{10<<10 + 1, "10 KiB"},
		{412 << 20, "412 MiB"},
		{412<<20 + 300<<10, "412 MiB"},
		{412<<20 + 700<<10, "413 MiB"},
		{1181116006, "1.1 GiB"},
		{3 << 29, "1.5 GiB"},
		{32 << 30, "32 GiB"},
		{64 << 30, "64 GiB"},
		{1<<20 - 1, "1.0 MiB"},
		{1<<20 - 1<<9, "1.0 MiB"},
		{1<<20 - 1<<10, "1023 KiB"},
		{1<<30 - 1<<10, "1.0 GiB"},
		{1 << 40, "1 TiB"},
		{5 << 40, "5 TiB"},
		{1 << 60, "1 EiB"},
		{math.MaxInt64, "8.0 EiB"},
		{-2048, "-2 KiB"},
		{-1, "-1 B"},
		{math.MinInt64, "-8 EiB"},
	} {
		if got := FormatBytes(tc.in); got != tc.want {
			t.Errorf("FormatBytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// shape is the number FormatBytes writes: a whole number, or one digit and one decimal.
var shape = regexp.MustCompile(`^([1-9][0-9]{0,3}|0|[1-9]\.[0-9])$`)

// FuzzFormatBytes: what FormatBytes writes is within 5% of the count (exact for whole units and
// below 1024 B), a whole number or one digit and one decimal, and never 1024 or more of a unit
// below EiB.
func FuzzFormatBytes(f *testing.F) {
	for _, n := range []int64{0, 1023, 1024, 1<<20 - 1, 1181116006, math.MaxInt64, math.MinInt64, -1 << 40} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		s := FormatBytes(n)
		num, unit, ok := strings.Cut(strings.TrimPrefix(s, "-"), " ")
		if !ok || strings.HasPrefix(s, "-") != (n < 0) {
			t.Fatalf("FormatBytes(%d) = %q", n, s)
		}
		v, err := strconv.ParseFloat(num, 64)
		if err != nil {
			t.Fatalf("FormatBytes(%d) = %q: %v", n, s, err)
		}
		mult := 1.0
		if unit != "B" {
			i := strings.Index("KMGTPE", unit[:1])
			if i < 0 || unit[1:] != "iB" {
				t.Fatalf("FormatBytes(%d) = %q: unit %q", n, s, unit)
			}
			mult = math.Pow(1024, float64(i+1))
			if v >= 1024 && unit != "EiB" || v < 1 {
				t.Fatalf("FormatBytes(%d) = %q: not the largest unit that leaves at least 1", n, s)
			}
		}
		if !shape.MatchString(num) {
			t.Fatalf("FormatBytes(%d) = %q: want 1 to 1023 or one digit and one decimal", n, s)
		}
		abs := math.Abs(float64(n))
		shown := v * mult
		if unit == "B" && shown != abs {
			t.Fatalf("FormatBytes(%d) = %q: not exact", n, s)
		}
		if math.Abs(shown-abs)/abs > 0.05 {
			t.Fatalf("FormatBytes(%d) = %q: %.0f is more than 5%% off", n, s, shown)
		}
	})
}
