/*
 * The thread-local last error, the status strings and the version: the parts of the C API's error
 * reporting that never enter Go. Go records its errors here through ferry_capi_set_error; the C entry
 * points through ferry_capi_fail.
 */
#include <string.h>

#include "capi.h"

/* ---- last error ---------------------------------------------------------------------------------- */

static _Thread_local char last_error[1024];

void ferry_capi_set_error(const char* msg, size_t len) {
    size_t n = len;
    if (n >= sizeof last_error) {
        n = sizeof last_error - 1;
    }
    memcpy(last_error, msg, n);
    last_error[n] = '\0';
}

ferry_status ferry_capi_fail(ferry_status s, const char* msg) {
    strncpy(last_error, msg, sizeof last_error - 1);
    last_error[sizeof last_error - 1] = '\0';
    return s;
}

const char* ferry_last_error(void) { return last_error; }

/* ---- status strings and version ------------------------------------------------------------------ */

const char* ferry_status_string(ferry_status status) {
    switch (status) {
    case FERRY_OK: return "FERRY_OK";
    case FERRY_ERR_INVALID_ARGUMENT: return "FERRY_ERR_INVALID_ARGUMENT";
    case FERRY_ERR_INVALID_HANDLE: return "FERRY_ERR_INVALID_HANDLE";
    case FERRY_ERR_NO_DEVICE: return "FERRY_ERR_NO_DEVICE";
    case FERRY_ERR_CUDA: return "FERRY_ERR_CUDA";
    case FERRY_ERR_NVML: return "FERRY_ERR_NVML";
    case FERRY_ERR_OUT_OF_MEMORY: return "FERRY_ERR_OUT_OF_MEMORY";
    case FERRY_ERR_UNSUPPORTED: return "FERRY_ERR_UNSUPPORTED";
    case FERRY_ERR_IO: return "FERRY_ERR_IO";
    case FERRY_ERR_FORMAT: return "FERRY_ERR_FORMAT";
    case FERRY_ERR_CLOSED: return "FERRY_ERR_CLOSED";
    case FERRY_ERR_TIMEOUT: return "FERRY_ERR_TIMEOUT";
    case FERRY_ERR_LIMIT: return "FERRY_ERR_LIMIT";
    case FERRY_END_OF_EPOCH: return "FERRY_END_OF_EPOCH";
    case FERRY_ERR_INTERNAL: return "FERRY_ERR_INTERNAL";
    }
    return "FERRY_ERR_UNKNOWN_STATUS";
}

ferry_status ferry_version(int32_t* major, int32_t* minor, int32_t* patch) {
    if (major) *major = FERRY_VERSION_MAJOR;
    if (minor) *minor = FERRY_VERSION_MINOR;
    if (patch) *patch = FERRY_VERSION_PATCH;
    return FERRY_OK;
}
