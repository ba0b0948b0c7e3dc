/*
 * fork(): the Go runtime does not survive it (the child has one thread; the runtime's others, and the
 * goroutines on them, are gone), so a child forked after the library loaded hangs in any call that
 * enters Go. The C entry points check the flag set here: in such a child a DLPack tensor's deleter (which
 * a consumer calls, also at exit) frees the tensor without entering Go, and ferry_memory_check and
 * ferry_metric_log return FERRY_ERR_UNSUPPORTED. The entry points written in Go cannot check it before
 * entering Go; a forked child must not call them (the Python binding refuses them there itself).
 */
#include <pthread.h>
#include <stdio.h>

#include "capi.h"

static volatile int forked;

static void on_fork_child(void) { forked = 1; }

__attribute__((constructor)) static void ferry_capi_fork_init(void) { pthread_atfork(NULL, NULL, on_fork_child); }

int ferry_capi_forked(void) { return forked; }

ferry_status ferry_capi_fail_forked(const char* fn) {
    char msg[320];
    snprintf(msg, sizeof msg,
             "%s: ferry cannot be used in a process forked after the library was loaded (the Go runtime does "
             "not survive fork); use the spawn start method, or load the library after the fork",
             fn);
    return ferry_capi_fail(FERRY_ERR_UNSUPPORTED, msg);
}
