package engine

import (
	"os"
	"strings"

	"github.com/rs/zerolog"
)

// defaultLogger writes to standard error at the level named by FERRY_LOG (default warn).
func defaultLogger() zerolog.Logger {
	level := zerolog.WarnLevel
	if s := strings.TrimSpace(os.Getenv("FERRY_LOG")); s != "" {
		if l, err := zerolog.ParseLevel(strings.ToLower(s)); err == nil {
			level = l
		}
	}
	return zerolog.New(os.Stderr).Level(level).With().Timestamp().Str("lib", "ferry").Logger()
}
