/*
 * The preamble of every Go file in capi. cgo writes its own prototype for each //export function, in Go's
 * terms: no const, and handles as uintptr_t (so that the Go garbage collector never sees a caller's
 * made-up handle as a pointer). Those prototypes would conflict with ferry.h's, so the header's
 * prototypes of those functions are renamed away here. The ABI is identical; the C and purego tests
 * call every one of them through the real header.
 */
#ifndef FERRY_CAPI_EXPORTS_H
#define FERRY_CAPI_EXPORTS_H

#define ferry_engine_create ferry_engine_create_header_decl
#define ferry_engine_destroy ferry_engine_destroy_header_decl
#define ferry_engine_device ferry_engine_device_header_decl
#define ferry_engine_sample_now ferry_engine_sample_now_header_decl
#define ferry_memory_check_live ferry_memory_check_live_header_decl
#include "capi.h"
#undef ferry_engine_create
#undef ferry_engine_destroy
#undef ferry_engine_device
#undef ferry_engine_sample_now
#undef ferry_memory_check_live

#endif
