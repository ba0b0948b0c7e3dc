/*
 * The TurboJPEG shim: loads libturbojpeg.so.0 (libjpeg-turbo's TurboJPEG API) with dlopen on first use and
 * calls it through function pointers, like the CUDA and NVML shims, so that libferry.so needs no JPEG
 * library to load. The CPU path decodes JPEG with it.
 */
#ifndef FERRY_TURBOJPEG_SHIM_H
#define FERRY_TURBOJPEG_SHIM_H

#include <stddef.h>

#pragma GCC visibility push(hidden)

#define FERRY_TJ_LOAD_DLOPEN_FAILED (-1)
#define FERRY_TJ_LOAD_SYMBOL_MISSING (-2)

/* TurboJPEG's pixel formats, colorspaces and flags that ferry uses (turbojpeg.h). */
#define FERRY_TJPF_RGB 0
#define FERRY_TJPF_GRAY 6
#define FERRY_TJPF_CMYK 11
#define FERRY_TJCS_CMYK 3
#define FERRY_TJCS_YCCK 4
#define FERRY_TJFLAG_ACCURATEDCT 4096
#define FERRY_TJFLAG_STOPONWARNING 8192

/* Loads the library at path. Returns 0 or FERRY_TJ_LOAD_*, with the reason in err. */
int ferry_tj_load(const char* path, char* err, size_t errlen);

/* A decompressor (tjInitDecompress); NULL on failure. */
void* ferry_tj_init(void);
void ferry_tj_destroy(void* h);

/* tjDecompressHeader3. Returns 0, or -1 with the reason in err. */
int ferry_tj_header(void* h, const unsigned char* buf, unsigned long size, int* width, int* height, int* subsamp,
                    int* colorspace, char* err, size_t errlen);

/* tjDecompress2 into dst (height rows of pitch bytes). Returns 0, or -1 with the reason in err. */
int ferry_tj_decompress(void* h, const unsigned char* buf, unsigned long size, unsigned char* dst, int width, int pitch,
                        int height, int format, int flags, char* err, size_t errlen);

/* tjDecompressToYUVPlanes: the components' samples as decoded, before upsampling and color conversion, into
   planes[c] (rows strides[c] bytes apart). Returns 0, or -1 with the reason in err. */
int ferry_tj_decompress_planes(void* h, const unsigned char* buf, unsigned long size, unsigned char** planes, int width,
                               int* strides, int height, int flags, char* err, size_t errlen);

#pragma GCC visibility pop

#endif
