// Command capi is libferry.so: the C API over the engine package, built with -buildmode=c-shared.
//
// It is thin on purpose. Each export validates its arguments, converts them, calls the engine and maps
// the error to a status through call(). The few entry points that must never enter Go are written in C,
// one file each: the status strings and the thread-local last error (last_error.c), the memory snapshot
// read (snapshot.c), the metric log (metric_log.c), and the DLPack tensors (tensor.c).
package main

/*
#include <stdlib.h>
#include "exports.h"
*/
import "C"

import (
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
)

func init() {
	// Read the live C environment, not Go's copy taken when the library loaded, so that variables a
	// host program sets afterwards (RANK and WORLD_SIZE from Python's os.environ) are seen.
	engine.LookupEnv = func(name string) (string, bool) {
		cname := C.CString(name)
		defer C.free(unsafe.Pointer(cname))
		v := C.getenv(cname)
		if v == nil {
			return "", false
		}
		return C.GoString(v), true
	}
}

func main() {}
