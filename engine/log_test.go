package engine

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDefaultLoggerLevelAndFormat(t *testing.T) {
	t.Setenv("FERRY_LOG", "")
	t.Setenv("FERRY_LOG_LEVEL", "debug")
	t.Setenv("FERRY_LOG_FORMAT", "")
	require.Equal(t, "debug", DefaultLogger().GetLevel().String())
	t.Setenv("FERRY_LOG_LEVEL", "")
	t.Setenv("FERRY_LOG", "error")
	require.Equal(t, "error", DefaultLogger().GetLevel().String(), "FERRY_LOG is the older name")
	t.Setenv("FERRY_LOG", "nonsense")
	require.Equal(t, "warn", DefaultLogger().GetLevel().String(), "an unknown level keeps the default")
	t.Setenv("FERRY_LOG_FORMAT", "console")
	require.Equal(t, "warn", DefaultLogger().GetLevel().String())
}
