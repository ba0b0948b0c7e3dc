/*
 * Calling a caller's sample function, and knowing on which threads one runs. ferry_capi_call_sample marks
 * the calling thread, for the duration of the call, with the id of the callback source whose function it
 * runs. A ferry call that the function makes (re-entering the library) runs on the same thread, so the Go
 * side can tell: it refuses calls that would wait for the worker they run on, and defers destroys instead
 * of joining that worker.
 */
#include "capi.h"

static _Thread_local uint64_t running_source;

int32_t ferry_capi_call_sample(uintptr_t fn, uintptr_t user, uint64_t source, int64_t index, void* const* dst,
                               const int64_t* dst_bytes, int32_t n) {
    uint64_t outer = running_source; /* a callback may run another source's iterator */
    running_source = source;
    int32_t r = ((ferry_sample_fn)fn)((void*)user, index, dst, dst_bytes, n);
    running_source = outer;
    return r;
}

uint64_t ferry_capi_running_source(void) { return running_source; }
