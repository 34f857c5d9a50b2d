package registry_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
)

// Every kind the definition format accepts has exactly one adapter, and every adapter serves
// kinds the format accepts.
func TestAdaptersServeTheFormatsKinds(t *testing.T) {
	served := map[imagebuilder.Engine]int{}
	for _, a := range registry.Adapters() {
		for _, k := range a.Kinds() {
			served[k]++
			require.Contains(t, imagebuilder.Engines(), k, "adapter %T serves a kind the definition format does not list", a)
		}
	}
	for _, k := range imagebuilder.Engines() {
		require.Equal(t, 1, served[k], "adapters serving kind %s", k)
		a, ok := registry.Lookup(k)
		require.True(t, ok, k)
		require.Contains(t, a.Kinds(), k)
	}
	_, ok := registry.Lookup("oracle")
	require.False(t, ok)
}

// The URLs clones show (local's Clone.Connection): unchanged from before the registry.
func TestURL(t *testing.T) {
	require.Equal(t, "postgresql://postgres:pw@127.0.0.1:5433/app?sslmode=disable",
		registry.URL(engine.ConnInfo{Engine: imagebuilder.EnginePostgres, Host: "127.0.0.1", Port: 5433, User: "postgres", Password: "pw", Database: "app"}))
	require.Equal(t, "mysql://root:p%40ss@[::1]:3307/shop",
		registry.URL(engine.ConnInfo{Engine: imagebuilder.EngineMariaDB, Host: "::1", Port: 3307, User: "root", Password: "p@ss", Database: "shop"}))
	require.Equal(t, "mysql://root:pw@127.0.0.1:3306/shop",
		registry.URL(engine.ConnInfo{Engine: imagebuilder.EngineMySQL, Host: "127.0.0.1", Port: 3306, User: "root", Password: "pw", Database: "shop"}))
	require.Empty(t, registry.URL(engine.ConnInfo{Engine: "oracle", Host: "127.0.0.1", Port: 1521}))
}

// Discover returns what the adapters find, each engine of a kind its adapter serves.
func TestDiscover(t *testing.T) {
	set, err := registry.Discover()
	if len(set) == 0 {
		t.Skipf("no engine installed: %v", err)
	}
	n := 0
	for _, a := range registry.Adapters() {
		found, _ := a.Discover()
		for _, e := range found {
			require.Contains(t, a.Kinds(), e.Kind(), "%T found %s %s", a, e.Kind(), e.Version())
			got, err := set.Lookup(e.Kind(), e.Version())
			require.NoError(t, err)
			require.Equal(t, e.Version(), got.Version())
		}
		n += len(found)
	}
	require.Len(t, set, n)
}
