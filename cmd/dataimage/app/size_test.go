package app

import (
	"errors"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := []struct {
		in   string
		want int64
	}{
		{"1", 1},
		{"4096", 4096},
		{"64Gi", 64 << 30},
		{"512Mi", 512 << 20},
		{"1Ti", 1 << 40},
		{"1Ki", 1024},
		{"2Pi", 2 << 50},
		{"7Ei", 7 << 60},
		{"1T", 1e12},
		{"500M", 500e6},
		{"3k", 3000},
		{"3K", 3000},
		{"1G", 1e9},
		{"1.5Gi", 3 << 29},
		{"0.5Ki", 512},
		{"2.25T", 2.25e12},
		{"007Mi", 7 << 20},
	}
	for _, tc := range good {
		got, err := parseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	bad := []string{
		"", "Gi", "0", "0Gi", "-1Gi", "+1Gi", "1.5", "0.1Ki", "1..5Gi", ".5Gi", "5.Gi", "1 Gi", "1GiB",
		"1gi", "1X", "1e3", "8Ei", "9223372036854775808", "99999999999999999999T", "1,5Gi", "0x10",
	}
	for _, in := range bad {
		got, err := parseSize(in)
		if err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
			continue
		}
		if !errors.Is(err, errInvalidSize) {
			t.Errorf("parseSize(%q) error %v does not match errInvalidSize", in, err)
		}
	}
}

func TestSizeFlag(t *testing.T) {
	var f sizeFlag
	if f.String() != "" {
		t.Errorf("unset size flag prints %q, want empty", f.String())
	}
	for _, tc := range []struct{ in, out string }{{"64Gi", "64Gi"}, {"1.5Gi", "1536Mi"}, {"1000", "1k"}, {"1001", "1001"}, {"1T", "1T"}, {"1024k", "1024k"}, {"1Mi", "1Mi"}, {"4096", "4Ki"}} {
		if err := f.Set(tc.in); err != nil {
			t.Fatalf("Set(%q): %v", tc.in, err)
		}
		if f.String() != tc.out {
			t.Errorf("Set(%q) then String() = %q, want %q", tc.in, f.String(), tc.out)
		}
		// What String prints reads back to the same size: forwarded flags depend on it.
		var g sizeFlag
		if err := g.Set(f.String()); err != nil || g != f {
			t.Errorf("Set(String()) of %q = %d, %v; want %d", tc.in, g, err, f)
		}
	}
	before := f
	if err := f.Set("lots"); err == nil || f != before {
		t.Errorf("Set(lots) = %v and changed the value to %d; want an error and %d", err, f, before)
	}
}

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{10 << 10, "10 KiB"},
		{412 << 20, "412 MiB"},
		{1181116006, "1.1 GiB"},
		{64 << 30, "64 GiB"},
		{1<<20 - 1, "1.0 MiB"},
		{1<<30 - 1<<10, "1.0 GiB"},
		{1 << 40, "1.0 TiB"},
		{-2048, "-2.0 KiB"},
	} {
		if got := formatBytes(tc.in); got != tc.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
