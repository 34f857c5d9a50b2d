package dataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dataimage/dataimage/blockstore/export"
	"github.com/dataimage/dataimage/internal/atomicfile"
)

// The data plane keeps a record of each of its exports, one file per export id in
// Config.StateDir (<id>.json, replaced atomically: internal/atomicfile): the volume it serves
// and the control plane's attrs. The record is written before the export is made (and again
// when the attrs change) and removed once the export is torn down, so that every export the
// kernel has is recorded. A data plane that starts reads the records an earlier one left: they
// say which volume each export it finds served and what its control plane noted (the mount
// point), which is what serving the export again needs once its kernel side can be handed over
// (startExports), and what names the volume of a leftover meanwhile.

// record is an export's record.
type record struct {
	ID     string            `json:"id"`
	Volume uint64            `json:"volume"`
	Attrs  map[string]string `json:"attrs,omitempty"`
}

// records are the records of a Local's exports, in dir ("": none are kept, a Local in tests).
type records struct{ dir string }

func (r records) path(id string) string { return filepath.Join(r.dir, id+".json") }

// put writes the record of spec.
func (r records) put(spec ExportSpec) error {
	if r.dir == "" {
		return nil
	}
	data, err := json.Marshal(record{ID: spec.ID, Volume: uint64(spec.Volume), Attrs: spec.Attrs})
	if err != nil {
		return fmt.Errorf("dataplane: record of export %s: %w", spec.ID, err)
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return fmt.Errorf("dataplane: record of export %s: %w", spec.ID, err)
	}
	if err := atomicfile.WriteFile(r.path(spec.ID), data, 0o600); err != nil {
		return fmt.Errorf("dataplane: record of export %s: %w", spec.ID, err)
	}
	return nil
}

// remove removes the record of id; none is not an error.
func (r records) remove(id string) error {
	if r.dir == "" {
		return nil
	}
	if err := os.Remove(r.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dataplane: remove the record of export %s: %w", id, err)
	}
	return nil
}

// load returns the records in dir, by export id. A file that is not a record (a temporary file
// of an interrupted write, a record that does not decode) is skipped and named in the error
// list bad.
func (r records) load() (recs map[string]record, bad []string, err error) {
	recs = map[string]record{}
	if r.dir == "" {
		return recs, nil, nil
	}
	ents, err := os.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return recs, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("dataplane: the exports' records: %w", err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !export.ValidID(id) {
			bad = append(bad, e.Name())
			continue
		}
		data, err := os.ReadFile(filepath.Join(r.dir, e.Name()))
		var rec record
		if err == nil {
			err = json.Unmarshal(data, &rec)
		}
		if err != nil || rec.ID != id {
			bad = append(bad, e.Name())
			continue
		}
		recs[id] = rec
	}
	return recs, bad, nil
}
