#include "nvjpeg_shim.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FERRY_NVJPEG_MAX_COMPONENT 4

typedef struct {
    unsigned char* channel[FERRY_NVJPEG_MAX_COMPONENT];
    size_t pitch[FERRY_NVJPEG_MAX_COMPONENT];
} ferry_nvjpeg_image;

static struct {
    int (*create_ex)(int, void*, void*, unsigned int, void**);
    int (*destroy)(void*);
    int (*state_create)(void*, void**);
    int (*state_destroy)(void*);
    int (*batched_init)(void*, void*, int, int, int);
    int (*batched)(void*, void*, const unsigned char* const*, const size_t*, ferry_nvjpeg_image*, void*);
} nv;

int ferry_nvjpeg_load(const char* path, char* err, size_t errlen) {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char* why = dlerror();
        snprintf(err, errlen, "cannot load %s: %s", path, why ? why : "unknown dlopen error");
        return FERRY_NVJPEG_LOAD_DLOPEN_FAILED;
    }
    static const struct {
        size_t offset;
        const char* name;
    } syms[] = {
        {offsetof(__typeof__(nv), create_ex), "nvjpegCreateEx"},
        {offsetof(__typeof__(nv), destroy), "nvjpegDestroy"},
        {offsetof(__typeof__(nv), state_create), "nvjpegJpegStateCreate"},
        {offsetof(__typeof__(nv), state_destroy), "nvjpegJpegStateDestroy"},
        {offsetof(__typeof__(nv), batched_init), "nvjpegDecodeBatchedInitialize"},
        {offsetof(__typeof__(nv), batched), "nvjpegDecodeBatched"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void* p = dlsym(h, syms[i].name);
        if (p == NULL) {
            snprintf(err, errlen, "symbol %s not found in %s", syms[i].name, path);
            dlclose(h);
            memset(&nv, 0, sizeof nv);
            return FERRY_NVJPEG_LOAD_SYMBOL_MISSING;
        }
        memcpy((char*)&nv + syms[i].offset, &p, sizeof p);
    }
    return 0;
}

int ferry_nvjpeg_create(int backend, void** handle) {
    *handle = NULL;
    return nv.create_ex ? nv.create_ex(backend, NULL, NULL, 0, handle) : 1;
}

int ferry_nvjpeg_destroy(void* handle) { return nv.destroy ? nv.destroy(handle) : 1; }

int ferry_nvjpeg_state_create(void* handle, void** state) {
    *state = NULL;
    return nv.state_create ? nv.state_create(handle, state) : 1;
}

int ferry_nvjpeg_state_destroy(void* state) { return nv.state_destroy ? nv.state_destroy(state) : 1; }

int ferry_nvjpeg_decode_batched(void* handle, void* state, int n, const unsigned char* const* data,
                                const size_t* lengths, const uint64_t* dst, const size_t* pitch, int format,
                                uintptr_t stream) {
    if (nv.batched == NULL || n <= 0) return 2; /* NVJPEG_STATUS_INVALID_PARAMETER */
    ferry_nvjpeg_image* out = calloc((size_t)n, sizeof *out);
    if (out == NULL) return 5; /* NVJPEG_STATUS_ALLOCATOR_FAILURE */
    for (int i = 0; i < n; i++) {
        for (int c = 0; c < 3; c++) {
            out[i].channel[c] = (unsigned char*)(uintptr_t)dst[3 * i + c];
            out[i].pitch[c] = pitch[3 * i + c];
        }
    }
    int st = nv.batched_init(handle, state, n, 1, format);
    if (st == 0) st = nv.batched(handle, state, data, lengths, out, (void*)stream);
    free(out);
    return st;
}
