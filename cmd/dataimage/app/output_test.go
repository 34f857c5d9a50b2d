package app

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dataimage/dataimage/local"
)

func TestRenderTables(t *testing.T) {
	v := view{now: testNow, loc: time.UTC}
	images, clones := testImages(), testClones()
	for _, tc := range []struct {
		name   string
		render func(*bytes.Buffer) error
	}{
		{"images.table", func(b *bytes.Buffer) error { return v.images(b, images) }},
		{"clones.table", func(b *bytes.Buffer) error { return v.clones(b, clones) }},
		{"image-backup.table", func(b *bytes.Buffer) error { return v.image(b, &images[0]) }},
		{"image-from-clone.table", func(b *bytes.Buffer) error { return v.image(b, &images[1]) }},
		{"image-expired.table", func(b *bytes.Buffer) error { return v.image(b, &images[2]) }},
		{"clone-running.table", func(b *bytes.Buffer) error { return v.clone(b, &clones[0]) }},
		{"clone-stopped.table", func(b *bytes.Buffer) error { return v.clone(b, &clones[1]) }},
		{"clone-failed.table", func(b *bytes.Buffer) error { return v.clone(b, &clones[2]) }},
		{"pool.table", func(b *bytes.Buffer) error { return v.pool(b, testPool()) }},
		{"daemon-running.table", func(b *bytes.Buffer) error {
			return v.daemon(b, &daemonStatus{Home: "/var/lib/dataimage", Running: true, PID: 4242, Socket: "/var/lib/dataimage/daemon.sock", Log: "/var/lib/dataimage/daemon.log", Pool: testPool()})
		}},
		{"daemon-stopped.table", func(b *bytes.Buffer) error {
			return v.daemon(b, &daemonStatus{Home: "/var/lib/dataimage", Socket: "/var/lib/dataimage/daemon.sock", Log: "/var/lib/dataimage/daemon.log"})
		}},
		{"built.table", func(b *bytes.Buffer) error { return v.built(b, &images[0]) }},
		{"check.table", func(b *bytes.Buffer) error {
			return v.check(b, &local.CheckReport{Summary: "2 problems, 1 repaired", Problems: []string{"block 17: leaked", "volume v3: refcount 2, want 1"}, Repaired: []string{"block 17: freed"}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.render(&b); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, b.Bytes())
		})
	}
}

func TestRenderJSONAndYAML(t *testing.T) {
	images, clones := testImages(), testClones()
	for _, tc := range []struct {
		name string
		v    any
	}{
		{"image", &images[0]},
		{"images", images},
		{"clone", &clones[0]},
		{"clones", clones},
		{"pool", testPool()},
		{"no-clones", []local.Clone{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var js, ym bytes.Buffer
			if err := writeJSON(&js, tc.v); err != nil {
				t.Fatal(err)
			}
			if err := writeYAML(&ym, tc.v); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name+".json", js.Bytes())
			golden(t, tc.name+".yaml", ym.Bytes())

			// Both say the same thing: the YAML, read as data, is the JSON.
			var fromJSON, fromYAML any
			if err := json.Unmarshal(js.Bytes(), &fromJSON); err != nil {
				t.Fatalf("JSON output does not parse: %v", err)
			}
			if err := yaml.Unmarshal(ym.Bytes(), &fromYAML); err != nil {
				t.Fatalf("YAML output does not parse: %v", err)
			}
			// Through JSON again, so that YAML's ints and JSON's float64s compare equal.
			a, _ := json.Marshal(fromJSON)
			b, err := json.Marshal(fromYAML)
			if err != nil {
				t.Fatalf("YAML output holds what JSON cannot: %v", err)
			}
			if !bytes.Equal(a, b) {
				t.Errorf("YAML and JSON outputs differ:\nJSON %s\nYAML %s", a, b)
			}
			if strings.ContainsAny(ym.String(), "{}") && tc.name != "no-clones" {
				t.Errorf("YAML output is in flow style:\n%s", ym.String())
			}
		})
	}
}

func TestFormatAge(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{0, "0s"},
		{59 * time.Second, "59s"},
		{60 * time.Second, "1m"},
		{59*time.Minute + 59*time.Second, "59m"},
		{time.Hour, "1h"},
		{3*time.Hour + 12*time.Minute, "3h12m"},
		{24 * time.Hour, "1d"},
		{50 * time.Hour, "2d2h"},
		{10 * 24 * time.Hour, "10d"},
	} {
		if got := formatAge(tc.d); got != tc.want {
			t.Errorf("formatAge(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
	for _, tc := range []struct {
		s    float64
		want string
	}{{0.843, "0.84s"}, {12.34, "12.3s"}, {72.4, "1m12s"}, {3725, "1h2m5s"}} {
		if got := formatSeconds(tc.s); got != tc.want {
			t.Errorf("formatSeconds(%v) = %q, want %q", tc.s, got, tc.want)
		}
	}
}

func TestExpires(t *testing.T) {
	v := view{now: testNow, loc: time.UTC}
	for _, tc := range []struct {
		at   time.Time
		want string
	}{
		{time.Time{}, "never"},
		{testNow, "expired"},
		{testNow.Add(-time.Hour), "expired"},
		{testNow.Add(30 * time.Second), "in 30s"},
		{testNow.Add(time.Hour - time.Second), "in 1h"}, // a 1h lifetime just begun
		{testNow.Add(time.Hour + 29*time.Second), "in 1h"},
		{testNow.Add(90 * time.Minute), "in 1h30m"},
		{testNow.Add(72 * time.Hour), "in 3d"},
	} {
		if got := v.expires(tc.at); got != tc.want {
			t.Errorf("expires(now%+v) = %q, want %q", tc.at.Sub(testNow), got, tc.want)
		}
	}
}
