package cli

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNewLogger(t *testing.T) {
	var text, js bytes.Buffer
	NewLogger(&text, "text", 0).Debug("hidden")
	NewLogger(&text, "text", 0).Info("shown", "k", "v")
	require.NotContains(t, text.String(), "hidden")
	require.Contains(t, text.String(), "msg=shown k=v")
	NewLogger(&js, "json", 1).Debug("debug", "k", "v")
	require.Contains(t, js.String(), `"msg":"debug","k":"v"`)
}

func TestCheckFormat(t *testing.T) {
	for _, f := range Formats {
		require.NoError(t, CheckFormat(f))
	}
	require.EqualError(t, CheckFormat("yaml"), `--log-format "yaml": want text or json`)
}
