//go:build !amd64

package monitor

import "github.com/ferry-ml/ferry/engine"

func rdtsc() uint64 { return uint64(int64(engine.MonotonicNow())) }

const tscAvailable = false
