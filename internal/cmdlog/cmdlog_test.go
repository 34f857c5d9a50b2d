package cmdlog

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNew(t *testing.T) {
	var text, js bytes.Buffer
	New(&text, "text", 0).Debug("hidden")
	New(&text, "text", 0).Info("shown", "k", "v")
	require.NotContains(t, text.String(), "hidden")
	require.Contains(t, text.String(), "msg=shown k=v")
	New(&js, "json", 1).Debug("debug", "k", "v")
	require.Contains(t, js.String(), `"msg":"debug","k":"v"`)
}

func TestCheckFormat(t *testing.T) {
	for _, f := range Formats {
		require.NoError(t, CheckFormat(f))
	}
	require.EqualError(t, CheckFormat("yaml"), `--log-format "yaml": want text or json`)
}
