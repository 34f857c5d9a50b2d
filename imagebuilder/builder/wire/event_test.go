package wire

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files of the current format from what the encoder writes")

// decoded is what DecodeEvent made of one line: an event, or an error that matches err.
type decoded struct {
	ev  Event
	err error
}

// decodeFile decodes every line of a golden file.
func decodeFile(t *testing.T, name string) []decoded {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	var out []decoded
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		ev, err := DecodeEvent(sc.Bytes())
		out = append(out, decoded{ev, err})
	}
	require.NoError(t, sc.Err())
	return out
}

// requireDecoded checks each line's result: the event, or an error matching the sentinel.
func requireDecoded(t *testing.T, got, want []decoded) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		if want[i].err != nil {
			assert.ErrorIs(t, got[i].err, want[i].err, "line %d", i+1)
			continue
		}
		if assert.NoError(t, got[i].err, "line %d", i+1) {
			assert.Equal(t, want[i].ev, got[i].ev, "line %d", i+1)
		}
	}
}

// currentEvents are the events written to the golden file of the current format: every field,
// and the characters JSON escapes.
var currentEvents = []Event{
	{Step: "validate", Message: "image shop: postgres 16 (16.4), source backup, 1 backup(s) under /backups, into /data"},
	{Step: "restore", Message: "restoring backups[0] shop.dump (custom)", Total: 4 << 20},
	{Step: "restore", Done: 1 << 20, Total: 4 << 20},
	{Step: "restore", Log: "LOG:  \"quoted\" <tag> & tab\tand é"},
	{Step: "checkpoint"},
}

// TestEventCurrentFormat: what the encoder writes now is the golden file, byte for byte
// (go test -run TestEventCurrentFormat -update rewrites it after a deliberate change, which
// is then a new format version), and reads back as written.
func TestEventCurrentFormat(t *testing.T) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // what the builder binary and the local daemon write with
	for _, ev := range currentEvents {
		require.NoError(t, enc.Encode(ev))
	}
	golden := filepath.Join("testdata", "events-"+EventVersion+".ndjson")
	if *update {
		require.NoError(t, os.WriteFile(golden, buf.Bytes(), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), buf.String(), "the encoder's output changed: that is a new format version (see the package doc)")
	for line := range strings.Lines(buf.String()) {
		require.True(t, strings.HasPrefix(line, `{"buildEvent":"`+EventVersion+`",`), "the version comes first: %s", line)
	}

	var want2 []decoded
	for _, ev := range currentEvents {
		want2 = append(want2, decoded{ev: ev})
	}
	requireDecoded(t, decodeFile(t, "events-"+EventVersion+".ndjson"), want2)
}

// TestEventOlderFormat: lines of builders from before the format had versions (1.0) read as
// they were written; a 1.0 line with a field 1.0 did not have, or without a step, is not an
// event (a JSON log line of another program could look like that).
func TestEventOlderFormat(t *testing.T) {
	requireDecoded(t, decodeFile(t, "events-1.0.ndjson"), []decoded{
		{ev: Event{Step: "validate", Message: "image shop: postgres 16 (16.4), source backup, 1 backup(s) under /backups, into /data"}},
		{ev: Event{Step: "restore", Message: "restoring backups[0] shop.dump (custom)", Total: 4 << 20}},
		{ev: Event{Step: "restore", Done: 1 << 20, Total: 4 << 20}},
		{ev: Event{Step: "restore", Log: "LOG:  checkpoint starting: time"}},
		{ev: Event{Step: "checkpoint"}},
		{err: ErrNotEvent},
		{err: ErrNotEvent},
	})
}

// TestEventNewerMinor: a hypothetical 1.7 builder's lines, with fields and event kinds this
// reader does not know: the fields are ignored, events of unknown kinds skipped, an unknown
// step read as written.
func TestEventNewerMinor(t *testing.T) {
	requireDecoded(t, decodeFile(t, "events-1.7.ndjson"), []decoded{
		{ev: Event{Step: "restore", Message: "restoring backups[0] base.tar (basebackup-tar)", Total: 4 << 20}},
		{ev: Event{Step: "restore", Done: 2 << 20, Total: 4 << 20}},
		{err: ErrUnknownKind},
		{err: ErrUnknownKind},
		{ev: Event{Step: "analyze", Message: "collecting planner statistics"}},
		{ev: Event{Step: "stop", Log: "LOG:  database system is shut down"}},
		{err: ErrMalformed},
	})
}

// TestEventOtherMajor: another major version is not guessed at; the error says which versions,
// for the reader to show. A version that is not MAJOR.MINOR is malformed.
func TestEventOtherMajor(t *testing.T) {
	got := decodeFile(t, "events-2.0.ndjson")
	requireDecoded(t, got, []decoded{
		{err: ErrUnsupportedVersion},
		{err: ErrUnsupportedVersion},
		{err: ErrMalformed},
		{err: ErrMalformed},
	})
	require.EqualError(t, got[0].err, "wire: unsupported format version: the build event is in format 2.0; this version of Dataimage reads 1.x")
}

// TestDecodeEventNotEvents: lines a log mixes with events.
func TestDecodeEventNotEvents(t *testing.T) {
	for _, line := range []string{
		``, `   `, `not json`, `{`, `[]`, `null`, `"step"`,
		`time=2024-05-06T07:08:09Z level=INFO msg="restore"`,
		`{"time":"2024-05-06T07:08:09Z","level":"INFO","msg":"a JSON log line","step":"x"}`,
		`{"step":"restore"} {"step":"two on a line"}`,
		`{"buildEvent":"1.1","step":"restore"} junk`,
		`{"step":""}`,
		`{"buildEvent":1.1,"step":"restore"}`,
	} {
		_, err := DecodeEvent([]byte(line))
		assert.ErrorIs(t, err, ErrNotEvent, "%q", line)
	}
	// Space around the object (a \r\n line end) is no matter.
	ev, err := DecodeEvent([]byte(" {\"buildEvent\":\"1.1\",\"step\":\"stop\"}\r\n"))
	require.NoError(t, err)
	assert.Equal(t, Event{Step: "stop"}, ev)
	// A field of the wrong type in a versioned event breaks the format.
	_, err = DecodeEvent([]byte(`{"buildEvent":"1.1","step":"restore","done":"half"}`))
	assert.ErrorIs(t, err, ErrMalformed)
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]version{"1.0": {1, 0}, "1.1": {1, 1}, "12.345": {12, 345}, "0.0": {0, 0}} {
		got, ok := parseVersion(in)
		assert.True(t, ok, in)
		assert.Equal(t, want, got, in)
		assert.Equal(t, in, got.String())
	}
	for _, in := range []string{"", "1", "1.", ".1", "01.1", "1.01", "+1.1", "1.-1", "1.1.1", " 1.1", "1.1 ", "1e3.1", "9999999.1"} {
		_, ok := parseVersion(in)
		assert.False(t, ok, "%q", in)
	}
}

// FuzzDecodeEvent: any line decodes to an event with a step or fails with one of the
// sentinels; an event encodes and decodes back to itself.
func FuzzDecodeEvent(f *testing.F) {
	for _, name := range []string{"events-1.0.ndjson", "events-" + EventVersion + ".ndjson", "events-1.7.ndjson", "events-2.0.ndjson"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		require.NoError(f, err)
		for line := range bytes.Lines(b) {
			f.Add(line)
		}
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := DecodeEvent(line)
		if err != nil {
			if !errors.Is(err, ErrNotEvent) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedVersion) && !errors.Is(err, ErrUnknownKind) {
				t.Fatalf("%q: an error without a sentinel: %v", line, err)
			}
			return
		}
		if ev.Step == "" {
			t.Fatalf("%q: an event without a step", line)
		}
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeEvent(b)
		if err != nil || back != ev {
			t.Fatalf("%q: %+v encodes to %s, which decodes to %+v, %v", line, ev, b, back, err)
		}
	})
}
