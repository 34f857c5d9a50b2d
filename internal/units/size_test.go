package units

import (
	"errors"
	"flag"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1", 1},
		{"4096", 4096},
		{"007Mi", 7 << 20},
		{"1Ki", 1 << 10},
		{"512Mi", 512 << 20},
		{"64Gi", 64 << 30},
		{"1Ti", 1 << 40},
		{"2Pi", 2 << 50},
		{"7Ei", 7 << 60},
		{"3k", 3000},
		{"500M", 500e6},
		{"1G", 1e9},
		{"1T", 1e12},
		{"9P", 9e15},
		{"9E", 9e18},
		// The three that people mix up: 1.5Gi is binary, 1.5G and 1500M decimal and equal.
		{"1.5Gi", 1610612736},
		{"1.5G", 1500000000},
		{"1500M", 1500000000},
		{"1536Mi", 1610612736},
		{"0.5Ki", 512},
		{"2.25T", 2.25e12},
		{"1.0", 1},
		{"4194304Ti", 1 << 62},
		{"9223372036854775807", math.MaxInt64},
		{"7.999999999999999999132638262011596452794037759304046630859375Ei", math.MaxInt64},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSizeErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "empty; want a number with an optional unit"},
		{"Gi", "want a number with an optional unit, e.g. 64Gi"},
		{"0", "must be positive"},
		{"0Gi", "must be positive"},
		{"0.0", "must be positive"},
		{"-1Gi", "must be positive"},
		{"-", "want a number"},
		{"-x", "want a number"},
		{"+1Gi", "want a number"},
		{"1.5", "not a whole number of bytes"},
		{"0.1Ki", "not a whole number of bytes"},
		{"1..5Gi", "want a number"},
		{".5Gi", "want a number"},
		{"5.Gi", "want a number"},
		{"1 Gi", "want a number"},
		{" 1Gi", "want a number"},
		{"1,5Gi", "want a number"},
		{"0x10", "want a number"},
		{"1e3", "want a number"},
		{"1E3", "want a number"},
		{"1KiMi", `unknown unit "KiMi"`},
		{"1X", `unknown unit "X": want Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000)`},
		{"3K", `unknown unit "K": write k (1000 bytes) or Ki (1024 bytes)`},
		{"3KB", `unknown unit "KB": write k (1000 bytes) or Ki (1024 bytes)`},
		{"100m", `unknown unit "m" (milli): write M`},
		{"12B", `unknown unit "B": write the number of bytes alone`},
		{"1gi", `unknown unit "gi": write Gi`},
		{"1GiB", `unknown unit "GiB": write Gi`},
		{"12GB", `unknown unit "GB": write G`},
		{"1kib", `unknown unit "kib": write Ki`},
		{"8Ei", "too large: the most is 9223372036854775807 bytes"},
		{"9223372036854775808", "too large"},
		{"99999999999999999999T", "too large"},
		{"9223372036854775807Ki", "too large"},
		{strings.Repeat("0", 64) + "1", "longer than 64 characters"},
	} {
		got, err := ParseSize(tc.in)
		if err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", tc.in, got)
			continue
		}
		if !errors.Is(err, ErrInvalidSize) {
			t.Errorf("ParseSize(%q): %v does not wrap ErrInvalidSize", tc.in, err)
		}
		if prefix := "invalid size " + strconv.Quote(tc.in) + ": "; !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSize(%q) = %q, want %q and then %q", tc.in, err, prefix, tc.want)
		}
	}
}

func TestExamples(t *testing.T) {
	for _, e := range Examples {
		n, err := ParseSize(e.Text)
		if e.Rule == "" && (err != nil || n != e.Bytes) || e.Rule != "" && (err == nil || !strings.Contains(err.Error(), e.Rule)) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d or %q", e.Text, n, err, e.Bytes, e.Rule)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{1, "1"}, {1000, "1k"}, {1001, "1001"}, {1024, "1Ki"}, {4096, "4Ki"}, {1024000, "1024k"},
		{1 << 20, "1Mi"}, {3 << 29, "1536Mi"}, {64 << 30, "64Gi"}, {1e12, "1T"}, {8 << 30, "8Gi"},
		{math.MaxInt64, "9223372036854775807"}, {0, "0"}, {-5, "-5"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSizeFlag(t *testing.T) {
	var f SizeFlag
	var _ flag.Value = &f
	var _ pflag.Value = &f
	if f.String() != "" {
		t.Errorf("an unset size flag prints %q, want nothing", f.String())
	}
	for _, tc := range []struct{ in, out string }{{"64Gi", "64Gi"}, {"1.5Gi", "1536Mi"}, {"1000", "1k"}, {"1001", "1001"}, {"1T", "1T"}, {"1024k", "1024k"}, {"1Mi", "1Mi"}, {"4096", "4Ki"}} {
		if err := f.Set(tc.in); err != nil {
			t.Fatalf("Set(%q): %v", tc.in, err)
		}
		if f.String() != tc.out {
			t.Errorf("Set(%q) then String() = %q, want %q", tc.in, f.String(), tc.out)
		}
		// What String prints reads back to the same size: forwarded flags depend on it.
		var g SizeFlag
		if err := g.Set(f.String()); err != nil || g != f {
			t.Errorf("Set(String()) of %q = %d, %v; want %d", tc.in, g, err, f)
		}
	}
	before := f
	if err := f.Set("lots"); !errors.Is(err, ErrInvalidSize) || f != before {
		t.Errorf("Set(lots) = %v and the value %d; want ErrInvalidSize and %d kept", err, f, before)
	}
	// Through both flag packages, the flag's name is in the error.
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	fs.Var(&f, "pool-size", "")
	if err := fs.Parse([]string{"--pool-size", "-1Gi"}); err == nil || !strings.Contains(err.Error(), "pool-size") || !strings.Contains(err.Error(), "must be positive") {
		t.Errorf("flag: %v", err)
	}
	pfs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	pfs.SetOutput(new(strings.Builder))
	pfs.Var(&f, "pool-size", "")
	if err := pfs.Parse([]string{"--pool-size", "8Ei"}); err == nil || !strings.Contains(err.Error(), `"--pool-size"`) || !strings.Contains(err.Error(), "too large") {
		t.Errorf("pflag: %v", err)
	}
}

// grammar is the package's grammar as a regular expression: what a string must look like to be
// read (its value must then also be whole, positive and at most math.MaxInt64).
var grammar = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`)

// quantityBytes is what Kubernetes reads s as, when that is a whole number of bytes below
// math.MaxInt64. (Kubernetes clamps larger quantities to math.MaxInt64; ParseSize refuses them.)
func quantityBytes(s string) (int64, bool) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, false
	}
	if s == "9223372036854775807" {
		return math.MaxInt64, true
	}
	d := q.AsDec()
	v := new(big.Rat).SetInt(d.UnscaledBig())
	scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(max(d.Scale(), -d.Scale()))), nil)
	if d.Scale() > 0 {
		v.Quo(v, new(big.Rat).SetInt(scale))
	} else {
		v.Mul(v, new(big.Rat).SetInt(scale))
	}
	if !v.IsInt() || !v.Num().IsInt64() || v.Num().Int64() == math.MaxInt64 {
		return 0, false
	}
	return v.Num().Int64(), true
}

// checkSize is what holds for any string: ParseSize does not panic; what it accepts is in the
// grammar, is the same size for Kubernetes, and reads back from FormatSize; what Kubernetes
// reads as a positive whole size and the grammar allows, ParseSize accepts.
func checkSize(t *testing.T, s string) {
	n, err := ParseSize(s)
	q, qok := quantityBytes(s)
	if err != nil {
		if !errors.Is(err, ErrInvalidSize) || !strings.Contains(err.Error(), strconv.Quote(s)) {
			t.Fatalf("ParseSize(%q): %v does not wrap ErrInvalidSize or does not quote the input", s, err)
		}
		if grammar.MatchString(s) && len(s) <= maxSizeLen && qok && q > 0 {
			t.Fatalf("ParseSize(%q): %v; Kubernetes reads %d bytes", s, err, q)
		}
		return
	}
	if n <= 0 || !grammar.MatchString(s) {
		t.Fatalf("ParseSize(%q) = %d: accepted outside the grammar", s, n)
	}
	if !qok || q != n {
		t.Fatalf("ParseSize(%q) = %d; Kubernetes reads %d (%v)", s, n, q, qok)
	}
	if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
		t.Fatalf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, FormatSize(n), back, err)
	}
}

func TestParseSizeMatchesKubernetes(t *testing.T) {
	for _, s := range sizeSeeds {
		checkSize(t, s)
	}
}

var sizeSeeds = []string{
	"1", "64Gi", "1.5Gi", "1.5G", "1500M", "0.5Ki", "0.1Ki", "007Mi", "8Ei", "7Ei", "1E", "9.2E", "9.3E",
	"3K", "100m", "1e3", "+1Gi", "-1Gi", "0", "1.5", "1.0", "1GiB", "", "Gi", "1..5Gi", "0.000000000000000001E",
	"9223372036854775807", "9223372036854775808", "18446744073709551616Ki", "1.00000000000000000000000001Gi",
}

func FuzzParseSize(f *testing.F) {
	for _, s := range sizeSeeds {
		f.Add(s)
	}
	f.Fuzz(checkSize)
}

// FuzzFormatSize: every positive size has an exact form that reads back, no longer than its
// decimal form.
func FuzzFormatSize(f *testing.F) {
	for _, n := range []int64{1, 1000, 1024, 3 << 29, 1e12, math.MaxInt64, 1<<62 + 1} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		if n < 1 {
			return
		}
		s := FormatSize(n)
		if back, err := ParseSize(s); err != nil || back != n {
			t.Fatalf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, s, back, err)
		}
		if len(s) > len(strconv.FormatInt(n, 10)) {
			t.Fatalf("FormatSize(%d) = %q, longer than the number", n, s)
		}
	})
}
