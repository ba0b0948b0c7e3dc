package engine

import (
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// DefaultLogger is the logger of engines and monitors: zerolog to standard error, at the level named by FERRY_LOG_LEVEL
// (trace, debug, info, warn, error; FERRY_LOG is accepted too; default warn), as JSON lines or, with
// FERRY_LOG_FORMAT=console, as human-readable lines.
func DefaultLogger() zerolog.Logger {
	level := zerolog.WarnLevel
	env := "FERRY_LOG_LEVEL"
	name := os.Getenv(env)
	if name == "" {
		env = "FERRY_LOG"
		name = os.Getenv(env)
	}
	bad := false
	if s := strings.ToLower(strings.TrimSpace(name)); s != "" {
		if l, err := zerolog.ParseLevel(s); err == nil {
			level = l
		} else {
			bad = true
		}
	}
	var w io.Writer = os.Stderr
	if strings.EqualFold(strings.TrimSpace(os.Getenv("FERRY_LOG_FORMAT")), "console") {
		w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.RFC3339Nano, NoColor: true}
	}
	log := zerolog.New(w).Level(level).With().Timestamp().Str("lib", "ferry").Logger()
	if bad {
		if _, warned := badLogLevels.LoadOrStore(env+"="+name, true); !warned { // once: every engine and monitor makes one
			warn := zerolog.New(w).With().Timestamp().Str("lib", "ferry").Logger()
			warn.Warn().Str(env, name).
				Msg("unknown log level, using warn; the levels are trace, debug, info, warn, error, fatal, panic and disabled")
		}
	}
	return log
}

// badLogLevels holds the log level names already seen, so that an unknown one is reported once.
var badLogLevels sync.Map
