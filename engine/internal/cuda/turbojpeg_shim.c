#include "turbojpeg_shim.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static struct {
    void* (*init)(void);
    int (*destroy)(void*);
    int (*header3)(void*, const unsigned char*, unsigned long, int*, int*, int*, int*);
    int (*decompress2)(void*, const unsigned char*, unsigned long, unsigned char*, int, int, int, int, int);
    char* (*error_str2)(void*);
    int (*to_planes)(void*, const unsigned char*, unsigned long, unsigned char**, int, int*, int, int);
} tj;

static void* handle;

int ferry_tj_load(const char* path, char* err, size_t errlen) {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char* why = dlerror();
        snprintf(err, errlen, "cannot load %s: %s", path, why ? why : "unknown dlopen error");
        return FERRY_TJ_LOAD_DLOPEN_FAILED;
    }
    static const struct {
        size_t offset;
        const char* name;
    } syms[] = {
        {offsetof(__typeof__(tj), init), "tjInitDecompress"},
        {offsetof(__typeof__(tj), destroy), "tjDestroy"},
        {offsetof(__typeof__(tj), header3), "tjDecompressHeader3"},
        {offsetof(__typeof__(tj), decompress2), "tjDecompress2"},
        {offsetof(__typeof__(tj), error_str2), "tjGetErrorStr2"},
        {offsetof(__typeof__(tj), to_planes), "tjDecompressToYUVPlanes"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void* p = dlsym(h, syms[i].name);
        if (p == NULL) {
            snprintf(err, errlen, "symbol %s not found in %s (libjpeg-turbo 1.5 or later is needed)", syms[i].name,
                     path);
            dlclose(h);
            memset(&tj, 0, sizeof tj);
            return FERRY_TJ_LOAD_SYMBOL_MISSING;
        }
        memcpy((char*)&tj + syms[i].offset, &p, sizeof p);
    }
    handle = h;
    return 0;
}

void* ferry_tj_init(void) { return tj.init ? tj.init() : NULL; }

void ferry_tj_destroy(void* h) {
    if (h != NULL && tj.destroy) {
        tj.destroy(h);
    }
}

static void reason(void* h, char* err, size_t errlen) {
    const char* why = tj.error_str2 ? tj.error_str2(h) : NULL;
    snprintf(err, errlen, "%s", why ? why : "unknown TurboJPEG error");
}

int ferry_tj_header(void* h, const unsigned char* buf, unsigned long size, int* width, int* height, int* subsamp,
                    int* colorspace, char* err, size_t errlen) {
    if (tj.header3(h, buf, size, width, height, subsamp, colorspace) != 0) {
        reason(h, err, errlen);
        return -1;
    }
    return 0;
}

int ferry_tj_decompress(void* h, const unsigned char* buf, unsigned long size, unsigned char* dst, int width, int pitch,
                        int height, int format, int flags, char* err, size_t errlen) {
    if (tj.decompress2(h, buf, size, dst, width, pitch, height, format, flags) != 0) {
        reason(h, err, errlen);
        return -1;
    }
    return 0;
}

int ferry_tj_decompress_planes(void* h, const unsigned char* buf, unsigned long size, unsigned char** planes, int width,
                               int* strides, int height, int flags, char* err, size_t errlen) {
    if (tj.to_planes(h, buf, size, planes, width, strides, height, flags) != 0) {
        reason(h, err, errlen);
        return -1;
    }
    return 0;
}
