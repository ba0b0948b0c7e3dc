/*
 * The nvJPEG shim: loads libnvjpeg (FERRY_NVJPEG_LIBRARY, else libnvjpeg.so.13, .so.12, .so.11 on the library
 * path) with dlopen on first use and calls it through function pointers, like the CUDA, NVML and TurboJPEG
 * shims, so that libferry.so loads without it. The GPU image path decodes batches of JPEGs with it.
 */
#ifndef FERRY_NVJPEG_SHIM_H
#define FERRY_NVJPEG_SHIM_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(hidden)

#define FERRY_NVJPEG_LOAD_DLOPEN_FAILED (-1)
#define FERRY_NVJPEG_LOAD_SYMBOL_MISSING (-2)

/* nvjpeg.h's values that ferry uses. */
#define FERRY_NVJPEG_BACKEND_DEFAULT 0
#define FERRY_NVJPEG_BACKEND_HARDWARE 3
#define FERRY_NVJPEG_OUTPUT_YUV 1

/* Loads the library at path. Returns 0 or FERRY_NVJPEG_LOAD_*, with the reason in err. */
int ferry_nvjpeg_load(const char* path, char* err, size_t errlen);

/* nvjpegCreateEx(backend, NULL, NULL, 0, handle). Returns nvJPEG's status. */
int ferry_nvjpeg_create(int backend, void** handle);
int ferry_nvjpeg_destroy(void* handle);
int ferry_nvjpeg_state_create(void* handle, void** state);
int ferry_nvjpeg_state_destroy(void* state);

/* nvjpegDecodeBatchedInitialize then nvjpegDecodeBatched of n images in output format (FERRY_NVJPEG_OUTPUT_*):
   image i from data[i] (lengths[i] bytes, host memory) to the device addresses dst[3*i + c] (plane c; one plane
   for interleaved RGB), rows pitch[3*i + c] bytes apart, on stream. */
int ferry_nvjpeg_decode_batched(void* handle, void* state, int n, const unsigned char* const* data,
                                const size_t* lengths, const uint64_t* dst, const size_t* pitch, int format,
                                uintptr_t stream);

#pragma GCC visibility pop

#endif
