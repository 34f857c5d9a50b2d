package imagebuilder

import (
	"errors"
	"testing"
	"time"
)

func TestParseLifetime(t *testing.T) {
	const syntax = `must be 0 (never expires) or <n>s, <n>m or <n>h with n a whole number, got `
	tests := []struct {
		in   string
		want Lifetime
		err  string // the rule broken, "" if none
	}{
		{in: "0", want: Lifetime{Never: true}},
		{in: "1s", want: Lifetime{Duration: time.Second}},
		{in: "90m", want: Lifetime{Duration: 90 * time.Minute}},
		{in: "72h", want: Lifetime{Duration: 72 * time.Hour}},
		{in: "007m", want: Lifetime{Duration: 7 * time.Minute}},
		{in: "2562047h", want: Lifetime{Duration: 2562047 * time.Hour}},
		{in: "9223372036s", want: Lifetime{Duration: 9223372036 * time.Second}},
		{in: "", err: syntax + `""`},
		{in: "1d", err: syntax + `"1d"`},
		{in: "-5m", err: syntax + `"-5m"`},
		{in: "+5m", err: syntax + `"+5m"`},
		{in: "1.5h", err: syntax + `"1.5h"`},
		{in: "5", err: syntax + `"5"`},
		{in: "00", err: syntax + `"00"`},
		{in: "h", err: syntax + `"h"`},
		{in: "5H", err: syntax + `"5H"`},
		{in: " 5m", err: syntax + `" 5m"`},
		{in: "5ms", err: syntax + `"5ms"`},
		{in: "1h30m", err: syntax + `"1h30m"`},
		{in: "0s", err: `"0s" is ambiguous: write 0 for a lifetime that never expires`},
		{in: "000h", err: `"000h" is ambiguous: write 0 for a lifetime that never expires`},
		{in: "2562048h", err: `"2562048h" is too long: at most 2562047h`},
		{in: "9223372037s", err: `"9223372037s" is too long: at most 9223372036s`},
		{in: "99999999999999999999999m", err: `"99999999999999999999999m" is too long: at most 153722867m`},
	}
	for _, tt := range tests {
		got, err := ParseLifetime(tt.in)
		if tt.err != "" {
			want := "lifetime: " + tt.err
			if err == nil || err.Error() != want || !errors.Is(err, ErrInvalidDefinition) {
				t.Errorf("ParseLifetime(%q) = %v, %v; want error %q", tt.in, got, err, want)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseLifetime(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		// String gives a form that parses back to the same lifetime.
		if back, err := ParseLifetime(got.String()); err != nil || back != got {
			t.Errorf("ParseLifetime(%q.String() = %q) = %+v, %v", tt.in, got.String(), back, err)
		}
	}
}

func TestLifetimeString(t *testing.T) {
	tests := []struct {
		l    Lifetime
		want string
	}{
		{Lifetime{Never: true}, "0"},
		{Lifetime{}, "0"},
		{Lifetime{Duration: 90 * time.Minute}, "90m"},
		{Lifetime{Duration: 120 * time.Minute}, "2h"},
		{Lifetime{Duration: 61 * time.Second}, "61s"},
		{Lifetime{Duration: 1500 * time.Millisecond}, "1.5s"},
	}
	for _, tt := range tests {
		if got := tt.l.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.l, got, tt.want)
		}
	}
}
