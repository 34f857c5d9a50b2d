package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dataimage/dataimage/internal/units"
	"github.com/dataimage/dataimage/local"
)

// emit writes v in the output format -o asks for: JSON or YAML of v, or table(w) for table.
func (c *cli) emit(v any, table func(w io.Writer) error) error {
	switch c.output {
	case "json":
		return writeJSON(c.env.stdout, v)
	case "yaml":
		return writeYAML(c.env.stdout, v)
	}
	return table(c.env.stdout)
}

// view renders values for people, relative to a clock and in a time zone.
func (c *cli) view() view { return view{now: c.env.now(), loc: c.env.loc} }

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// writeYAML writes v as YAML with the JSON field names and in the JSON field order: v is encoded
// to JSON, read back as a YAML document (JSON is YAML) and written in block style.
func writeYAML(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("write YAML: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("write YAML: %w", err)
	}
	blockStyle(&doc)
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("write YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("write YAML: %w", err)
	}
	_, err = w.Write(out.Bytes())
	return err
}

// blockStyle clears the JSON (flow, quoted) styles of a document's nodes, so that the encoder
// picks YAML's own: block collections, plain scalars quoted only where needed.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// view renders values for people: times relative to now, in loc.
type view struct {
	now time.Time
	loc *time.Location
}

// newTable returns a writer that aligns tab-separated columns; Flush it.
func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 8, 3, ' ', 0) }

// images writes the image table.
func (v view) images(w io.Writer, images []local.Image) error {
	t := newTable(w)
	fmt.Fprintln(t, "NAME\tENGINE\tVERSION\tSIZE\tDATA\tCLONES\tCREATED\tEXPIRES\tSTATUS")
	for _, im := range images {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", im.Name, im.Engine, dash(im.Version),
			units.FormatBytes(im.Size), units.FormatBytes(im.DataBytes), im.Clones, v.ago(im.Created),
			v.expires(im.Expires), dash(im.Status))
	}
	return t.Flush()
}

// clones writes the clone table.
func (v view) clones(w io.Writer, clones []local.Clone) error {
	t := newTable(w)
	fmt.Fprintln(t, "NAME\tIMAGE\tSTATE\tPORT\tADDED\tAGE\tEXPIRES")
	for _, cl := range clones {
		port := "-"
		if cl.Port > 0 {
			port = strconv.Itoa(cl.Port)
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cl.Name, cl.Image, cl.State, port,
			units.FormatBytes(cl.AddedBytes), v.age(cl.Created), v.expires(cl.Expires))
	}
	return t.Flush()
}

// image writes one image in detail.
func (v view) image(w io.Writer, im *local.Image) error {
	t := newTable(w)
	row := func(k, val string) { fmt.Fprintf(t, "%s:\t%s\n", k, val) }
	row("Name", im.Name)
	row("Engine", strings.TrimSpace(string(im.Engine)+" "+im.Version))
	source := string(im.SourceType)
	if im.FromClone != "" {
		source = "clone " + im.FromClone
		if im.FromRevision != "" {
			source += ", revision " + im.FromRevision
		}
	}
	row("Source", dash(source))
	if im.Definition != nil && len(im.Definition.Backups) > 0 {
		paths := make([]string, len(im.Definition.Backups))
		for i, b := range im.Definition.Backups {
			paths[i] = b.Path
		}
		row("Backups", strings.Join(paths, ", "))
	}
	if !im.DataState.IsZero() {
		row("Data as of", v.time(im.DataState))
	}
	if im.LogPosition != "" {
		row("Log position", im.LogPosition)
	}
	row("Tags", dash(strings.Join(im.Tags, ", ")))
	row("Size", units.FormatBytes(im.Size))
	row("Data", units.FormatBytes(im.DataBytes))
	row("Created", v.time(im.Created)+" ("+v.ago(im.Created)+")")
	if im.BuildSeconds > 0 {
		row("Build time", formatSeconds(im.BuildSeconds))
	}
	row("Lifetime", v.lifetime(im.Lifetime, im.Expires))
	row("Clones", strconv.Itoa(im.Clones))
	if im.Digest != "" {
		row("Digest", im.Digest)
	}
	if im.ParentDigest != "" {
		parent := im.ParentDigest
		if im.Parent != "" {
			parent += " (" + im.Parent + ")"
		}
		row("Parent", parent)
	}
	if !im.Pulled.IsZero() {
		row("Pulled", v.time(im.Pulled)+" ("+v.ago(im.Pulled)+")")
	}
	if im.Status != "" {
		row("Status", im.Status)
	}
	return t.Flush()
}

// clone writes one clone in detail.
func (v view) clone(w io.Writer, cl *local.Clone) error {
	t := newTable(w)
	row := func(k, val string) { fmt.Fprintf(t, "%s:\t%s\n", k, val) }
	row("Name", cl.Name)
	row("Image", cl.Image)
	row("Engine", string(cl.Engine))
	row("State", string(cl.State))
	if cl.Message != "" {
		row("Message", cl.Message)
	}
	if cl.Connection != "" {
		row("Connection", cl.Connection)
	}
	if cl.Port > 0 {
		row("Address", cl.Host+":"+strconv.Itoa(cl.Port))
	}
	if cl.User != "" {
		row("User", cl.User)
	}
	if cl.Database != "" {
		row("Database", cl.Database)
	}
	row("Size", units.FormatBytes(cl.Size))
	row("Added", units.FormatBytes(cl.AddedBytes))
	row("Created", v.time(cl.Created)+" ("+v.ago(cl.Created)+")")
	if cl.CreateSeconds > 0 {
		row("Create time", formatSeconds(cl.CreateSeconds))
	}
	row("Lifetime", v.lifetime(cl.Lifetime, cl.Expires))
	if len(cl.Revisions) == 0 {
		row("Revisions", "-")
	}
	for i, r := range cl.Revisions {
		k := "Revisions:"
		if i > 0 {
			k = ""
		}
		fmt.Fprintf(t, "%s\t%s\t%s\n", k, r.Name, v.time(r.Created))
	}
	return t.Flush()
}

// pool writes the pool's status.
func (v view) pool(w io.Writer, p *local.PoolStatus) error {
	t := newTable(w)
	poolRows(t, p)
	return t.Flush()
}

// poolRows writes the pool's status as rows of a table.
func poolRows(t io.Writer, p *local.PoolStatus) {
	row := func(k, val string) { fmt.Fprintf(t, "%s:\t%s\n", k, val) }
	row("Pool", p.Path)
	row("Health", dash(p.Health))
	row("Capacity", units.FormatBytes(p.Capacity))
	row("Used", units.FormatBytes(p.Used)+" ("+percent(p.Used, p.Capacity)+")")
	row("Free", units.FormatBytes(p.Free))
	prov := units.FormatBytes(p.Provisioned)
	if p.OverProvisionRatio > 0 {
		prov += fmt.Sprintf(" (%s of capacity; limit %gx)", percent(p.Provisioned, p.Capacity), p.OverProvisionRatio)
	}
	row("Provisioned", prov)
	row("Images", fmt.Sprintf("%d, holding %s", p.Images, units.FormatBytes(p.ImageBytes)))
	row("Clones", fmt.Sprintf("%d, adding %s", p.Clones, units.FormatBytes(p.CloneBytes)))
}

// check writes a pool check's report.
func (v view) check(w io.Writer, r *local.CheckReport) error {
	fmt.Fprintln(w, r.Summary)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	for _, p := range r.Repaired {
		fmt.Fprintf(w, "repaired: %s\n", p)
	}
	return nil
}

// time writes t in the view's zone, to the second.
func (v view) time(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(v.loc).Format("2006-01-02 15:04:05 MST")
}

// age is how long ago t was: "45s", "12m", "3h5m", "2d4h".
func (v view) age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return formatAge(v.now.Sub(t))
}

// ago is age with " ago", or "just now".
func (v view) ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := v.now.Sub(t); d < time.Second {
		return "just now"
	}
	return v.age(t) + " ago"
}

// expires says when an expiry time comes: "never" (zero), "in 1h30m", "expired". Past a
// minute, the time left is rounded to the minute: a lifetime of 1h just begun is "in 1h".
func (v view) expires(t time.Time) string {
	switch {
	case t.IsZero():
		return "never"
	case !t.After(v.now):
		return "expired"
	}
	d := t.Sub(v.now)
	if d >= time.Minute {
		d = d.Round(time.Minute)
	}
	return "in " + formatAge(d)
}

// lifetime writes a lifetime with its expiry.
func (v view) lifetime(lifetime string, expires time.Time) string {
	if expires.IsZero() {
		if lifetime == "" || lifetime == "0" {
			return "never expires"
		}
		return lifetime
	}
	s := v.expires(expires)
	if s != "expired" {
		s = "expires " + s
	}
	return fmt.Sprintf("%s (%s, %s)", lifetime, s, v.time(expires))
}

// formatAge writes a duration the way people read an age: two units at most, rounded down.
func formatAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm", s/60)
	case s < 86400:
		if m := s % 3600 / 60; m > 0 {
			return fmt.Sprintf("%dh%dm", s/3600, m)
		}
		return fmt.Sprintf("%dh", s/3600)
	case s < 7*86400:
		if h := s % 86400 / 3600; h > 0 {
			return fmt.Sprintf("%dd%dh", s/86400, h)
		}
		return fmt.Sprintf("%dd", s/86400)
	}
	return fmt.Sprintf("%dd", s/86400)
}

// formatSeconds writes a duration in seconds for timings: "0.84s", "12.3s", "1m12s".
func formatSeconds(sec float64) string {
	switch {
	case sec < 10:
		return strconv.FormatFloat(sec, 'f', 2, 64) + "s"
	case sec < 60:
		return strconv.FormatFloat(sec, 'f', 1, 64) + "s"
	}
	d := time.Duration(sec * float64(time.Second)).Round(time.Second)
	return d.String()
}

// percent writes part/whole as a percentage with one decimal.
func percent(part, whole int64) string {
	if whole <= 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(part)/float64(whole), 'f', 1, 64) + "%"
}

// dash is s, or "-" when s is empty (an empty table cell would shift the columns).
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
