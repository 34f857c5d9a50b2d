// Package registry lists the engine adapters: it is the one place that names them. Discover
// finds the servers of every adapter installed on this machine; URL makes a clone's connection
// URL from its record, without a running server.
//
// It must not know an engine beyond its adapter's name: whatever depends on the kind is the
// adapter's (engine.Adapter, engine.Engine, engine.Instance). Adding an engine is writing its
// adapter and adding it to the list below (see the package engine's documentation).
package registry

import (
	"errors"
	"fmt"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb"
	"github.com/dataimage/dataimage/imagebuilder/engine/postgres"
)

// adapters are the engine adapters, in the order Discover lists their engines.
var adapters = []engine.Adapter{
	postgres.Adapter{},
	mariadb.Adapter{},
}

// Adapters returns the listed adapters.
func Adapters() []engine.Adapter { return append([]engine.Adapter(nil), adapters...) }

// Lookup returns the adapter that serves kind.
func Lookup(kind imagebuilder.Engine) (engine.Adapter, bool) {
	for _, a := range adapters {
		for _, k := range a.Kinds() {
			if k == kind {
				return a, true
			}
		}
	}
	return nil, false
}

// Discover returns every engine installed on this machine: the servers each adapter finds in
// its standard places. An installation that cannot be used is skipped; the error is returned
// only when no engine is found at all.
func Discover() (engine.Set, error) {
	var set engine.Set
	var errs []error
	for _, a := range adapters {
		found, err := a.Discover()
		set = append(set, found...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(set) == 0 {
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("registry: discover engines: %w", err)
		}
	}
	return set, nil
}

// URL returns the URL a client reaches the server c describes with (see engine.Adapter.URL),
// or "" when no adapter serves c.Engine.
func URL(c engine.ConnInfo) string {
	a, ok := Lookup(c.Engine)
	if !ok {
		return ""
	}
	return a.URL(c)
}
