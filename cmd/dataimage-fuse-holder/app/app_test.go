package app

import (
	"bytes"
	"flag"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore/export/holder"
	"github.com/dataimage/dataimage/internal/cli"
)

func TestParse(t *testing.T) {
	var out bytes.Buffer
	c, err := parse(nil, &out)
	require.NoError(t, err)
	require.Equal(t, Config{Socket: holder.DefaultSocket, Log: cli.LogFlags{Format: "text"}}, c)
	require.Empty(t, out.String())

	c, err = parse([]string{"--socket", "/run/x/h.sock", "-v", "1", "--log-format", "json"}, &out)
	require.NoError(t, err)
	require.Equal(t, Config{Socket: "/run/x/h.sock", Log: cli.LogFlags{Verbosity: 1, Format: "json"}}, c)

	for _, bad := range [][]string{
		{"--socket", "relative.sock"},
		{"--log-format", "xml"},
		{"-v", "-1"},
		{"extra"},
	} {
		_, err := parse(bad, &out)
		require.Error(t, err, "%v", bad)
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	_, err := parse([]string{"--help"}, &out)
	require.ErrorIs(t, err, flag.ErrHelp)
	require.Contains(t, out.String(), "Usage: dataimage-fuse-holder")
	require.Contains(t, out.String(), "-socket")
	require.Equal(t, 0, Main([]string{"--help"}, &out))
	require.Equal(t, 2, Main([]string{"--log-format", "xml"}, &out))
	require.Contains(t, out.String(), "--log-format \"xml\"")
}
