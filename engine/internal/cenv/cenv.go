// Package cenv brings the C environment into Go's. A Go runtime loaded as a shared library (libferry.so)
// takes the environment the process started with; variables a host program sets later (Python's
// os.environ, setenv in C) are visible to C's getenv only. Sync copies them in before a setting is read.
package cenv

/*
#include <stdlib.h>
extern char** environ;

static char* ferry_environ_at(int i) { return environ[i]; }
*/
import "C"

import (
	"os"
	"strings"
	"sync"
)

var mu sync.Mutex

// Sync sets in Go's environment every variable of the C environment whose value differs there. It does
// not remove variables.
func Sync() {
	mu.Lock()
	defer mu.Unlock()
	for i := 0; ; i++ {
		p := C.ferry_environ_at(C.int(i))
		if p == nil {
			return
		}
		k, v, ok := strings.Cut(C.GoString(p), "=")
		if !ok || k == "" {
			continue
		}
		if cur, set := os.LookupEnv(k); !set || cur != v {
			_ = os.Setenv(k, v)
		}
	}
}
