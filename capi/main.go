// Command capi is libferry.so: the C API over the engine package, built with -buildmode=c-shared.
//
// It is thin on purpose. Each export validates its arguments, converts them, calls the engine and maps
// the error to a status through call(). The few entry points that must never enter Go (the memory
// snapshot read, the status strings, the thread-local last error) are written in C in capi.c.
package main

// #include "exports.h"
import "C"

func main() {}
