package engine

import (
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// DefaultLogger is the logger of engines and monitors: zerolog to standard error, at the level named by FERRY_LOG_LEVEL
// (trace, debug, info, warn, error; FERRY_LOG is accepted too; default warn), as JSON lines or, with
// FERRY_LOG_FORMAT=console, as human-readable lines.
func DefaultLogger() zerolog.Logger {
	level := zerolog.WarnLevel
	name := os.Getenv("FERRY_LOG_LEVEL")
	if name == "" {
		name = os.Getenv("FERRY_LOG")
	}
	if s := strings.ToLower(strings.TrimSpace(name)); s != "" {
		if l, err := zerolog.ParseLevel(s); err == nil {
			level = l
		}
	}
	var w io.Writer = os.Stderr
	if strings.EqualFold(strings.TrimSpace(os.Getenv("FERRY_LOG_FORMAT")), "console") {
		w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.RFC3339Nano, NoColor: true}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Str("lib", "ferry").Logger()
}
