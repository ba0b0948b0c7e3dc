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
	format := os.Getenv("FERRY_LOG_FORMAT")
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "console":
		w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.RFC3339Nano, NoColor: true}
	case "", "json":
	default:
		warnOnce(w, "FERRY_LOG_FORMAT", format, "unknown log format, using json; the formats are json and console")
	}
	log := zerolog.New(w).Level(level).With().Timestamp().Str("lib", "ferry").Logger()
	if bad {
		warnOnce(w, env, name, "unknown log level, using warn; the levels are trace, debug, info, warn, error, fatal, panic and disabled")
	}
	return log
}

// warnOnce logs msg with the variable env and its value to w, the first time this process sees that
// value (every engine and monitor makes a logger).
func warnOnce(w io.Writer, env, value, msg string) {
	if _, warned := badLogSettings.LoadOrStore(env+"="+value, true); !warned {
		warn := zerolog.New(w).With().Timestamp().Str("lib", "ferry").Logger()
		warn.Warn().Str(env, value).Msg(msg)
	}
}

// badLogSettings holds the unknown log settings already reported, so that each is reported once.
var badLogSettings sync.Map
