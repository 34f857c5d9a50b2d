package postgres

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// The isolation settings follow the versions that have them: a server refuses a setting it
// does not know.
func TestIsolationSettings(t *testing.T) {
	names := func(major int) []string { return slices.Sorted(maps.Keys(isolationSettings(major))) }
	require.Equal(t, []string{"archive_command", "archive_mode", "synchronous_standby_names"}, names(9))
	require.Equal(t, []string{"archive_command", "archive_mode", "max_logical_replication_workers", "synchronous_standby_names"}, names(11))
	v12 := names(12)
	for _, n := range []string{"restore_command", "primary_conninfo", "primary_slot_name", "recovery_target_time", "archive_cleanup_command"} {
		require.Contains(t, v12, n)
	}
	require.NotContains(t, v12, "archive_library")
	require.Contains(t, names(15), "archive_library")
	for k, v := range isolationSettings(16) {
		want := ""
		switch k {
		case "archive_mode":
			want = "off"
		case "max_logical_replication_workers":
			want = "0"
		}
		require.Equal(t, want, v, k)
	}
	require.Equal(t, 15, majorNumber("15.18"))
	require.Equal(t, 9, majorNumber("9.6.24"))
	require.Equal(t, 17, majorNumber("17beta1"))
	require.Equal(t, 0, majorNumber("devel"))

	// They are Start's own: a caller cannot turn archiving back on.
	_, err := serverSettings("/run/x", 5432, 15, engine.StartOptions{Settings: map[string]string{"Archive_Mode": "on"}})
	require.ErrorContains(t, err, "setting Archive_Mode is Start's own")
	s, err := serverSettings("/run/x", 5432, 15, engine.StartOptions{Settings: map[string]string{"shared_buffers": "16MB"}})
	require.NoError(t, err)
	require.Equal(t, "off", s["archive_mode"])
	require.Equal(t, "16MB", s["shared_buffers"])
	require.NotContains(t, s, "fsync", "a server that is not Volatile keeps its durability")
	require.NotContains(t, s, "synchronous_commit")
}

// A Volatile server (a build's) syncs nothing, and the caller cannot turn that back on halfway.
func TestVolatileSettings(t *testing.T) {
	s, err := serverSettings("/run/x", 5432, 15, engine.StartOptions{Volatile: true, Settings: map[string]string{"shared_buffers": "16MB"}})
	require.NoError(t, err)
	require.Equal(t, "off", s["fsync"])
	require.Equal(t, "off", s["synchronous_commit"])
	require.Equal(t, "off", s["archive_mode"], "still isolated")
	_, err = serverSettings("/run/x", 5432, 15, engine.StartOptions{Volatile: true, Settings: map[string]string{"FSYNC": "on"}})
	require.ErrorContains(t, err, "setting FSYNC is Start's own")
}

// Over TCP the access rules admit nothing before SetPassword, then the administrative role by
// password only, and never a replication connection.
func TestHBARules(t *testing.T) {
	closed, open := hbaRules(false), hbaRules(true)
	for _, rules := range []string{closed, open} {
		require.Contains(t, rules, "local all all trust\n")
		require.NotContains(t, rules, "host replication")
	}
	require.NotContains(t, closed, "\nhost ")
	require.Equal(t, 2, strings.Count(open, "\nhost all \"postgres\" "))
	for _, line := range strings.Split(open, "\n") {
		if strings.HasPrefix(line, "host ") {
			require.True(t, strings.HasSuffix(line, " scram-sha-256"), line)
		}
	}
}
