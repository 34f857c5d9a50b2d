package imagebuilder

import (
	"slices"
	"testing"
)

func TestVersionsMatch(t *testing.T) {
	v := Versions{
		EnginePostgres: {"16", "16.4", "15.2", "15.10", "15.9", "1"},
		EngineMySQL:    {"8.0.36", "8.0.4", "8.4.2"},
	}
	tests := []struct {
		engine    Engine
		requested string
		want      string // "" for no match
	}{
		{EnginePostgres, "16", "16"},       // exact wins over 16.4
		{EnginePostgres, "16.4", "16.4"},   // exact
		{EnginePostgres, "15", "15.10"},    // highest 15.x, numerically
		{EnginePostgres, "1", "1"},         // exact; "1" is not a prefix of "16"
		{EnginePostgres, "17", ""},         // not available
		{EnginePostgres, "16.4.1", ""},     // more precise than any available
		{EnginePostgres, "", ""},           // nothing
		{EnginePostgres, "16.", ""},        // empty component
		{EngineMySQL, "8", "8.4.2"},        // highest 8.x
		{EngineMySQL, "8.0", "8.0.36"},     // highest 8.0.x
		{EngineMySQL, "8.0.4", "8.0.4"},    // exact
		{EngineMariaDB, "11", ""},          // no versions of this engine
		{EngineMySQL, "08.0", ""},          // components compare as text
		{Engine("oracle"), "19", ""},       // unknown engine
		{EnginePostgres, "15.2.0", ""},     // not a prefix
		{EnginePostgres, "15.10.1", ""},    // not available
		{EngineMySQL, "8.0.36.1", ""},      // not available
		{EngineMySQL, "8.4.2", "8.4.2"},    // exact
		{EnginePostgres, "15.9", "15.9"},   // exact
		{EnginePostgres, "15.1", ""},       // "15.1" is not a prefix of "15.10"
		{EnginePostgres, "16.04", ""},      // text, not numbers, for matching
		{EnginePostgres, "1.6", ""},        // dots matter
		{EnginePostgres, "15.10", "15.10"}, // exact
	}
	for _, tt := range tests {
		got, ok := v.Match(tt.engine, tt.requested)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("Match(%s, %q) = %q, %v; want %q", tt.engine, tt.requested, got, ok, tt.want)
		}
	}
	if got, want := v.sorted(EnginePostgres), []string{"1", "15.2", "15.9", "15.10", "16", "16.4"}; !slices.Equal(got, want) {
		t.Errorf("sorted = %q, want %q", got, want)
	}
}
