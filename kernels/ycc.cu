// JPEG color: nvJPEG's planar Y, Cb, Cr to RGB, bit for bit as libjpeg (and so Pillow) decodes by default:
// fancy upsampling (jdsample.c's h2v1 and h2v2) and the integer YCbCr tables (jdcolor.c, 16 fraction bits).
#include "params.h"

namespace {

// 4:2:2: output column x of a chroma row of cw samples, 3/4 the nearer sample and 1/4 the farther one.
__device__ __forceinline__ int fancy_h2v1(const uint8_t* row, int cw, int x) {
    const int c = x >> 1;
    if ((x & 1) == 0) return c == 0 ? row[0] : (row[c] * 3 + row[c - 1] + 1) >> 2;
    return c == cw - 1 ? row[c] : (row[c] * 3 + row[c + 1] + 2) >> 2;
}

// 4:2:0: near is the chroma row the output row falls in, far the one above (even rows) or below (odd rows),
// each column 3/4 near + 1/4 far, then across as 4:2:2 with sixteenths.
__device__ __forceinline__ int fancy_h2v2(const uint8_t* near, const uint8_t* far, int cw, int x) {
    const int c = x >> 1;
    const int sum = near[c] * 3 + far[c];
    if ((x & 1) == 0) {
        if (c == 0) return (sum * 4 + 8) >> 4;
        return (sum * 3 + near[c - 1] * 3 + far[c - 1] + 8) >> 4;
    }
    if (c == cw - 1) return (sum * 4 + 7) >> 4;
    return (sum * 3 + near[c + 1] * 3 + far[c + 1] + 7) >> 4;
}

__device__ __forceinline__ int chroma(const ferry_ycc_image& m, const uint8_t* plane, int x, int y) {
    if (m.hs == 1 && m.vs == 1) return plane[static_cast<uint64_t>(y) * m.c_pitch + x];
    if (m.vs == 1) return fancy_h2v1(plane + static_cast<uint64_t>(y) * m.c_pitch, static_cast<int>(m.cw), x);
    const int r = y >> 1;
    const int f = (y & 1) == 0 ? max(r - 1, 0) : min(r + 1, static_cast<int>(m.ch) - 1);
    return fancy_h2v2(plane + static_cast<uint64_t>(r) * m.c_pitch, plane + static_cast<uint64_t>(f) * m.c_pitch,
                      static_cast<int>(m.cw), x);
}

__device__ __forceinline__ uint8_t clamp255(int v) { return static_cast<uint8_t>(min(max(v, 0), 255)); }

}  // namespace

extern "C" __global__ void ferry_ycc_rgb(ferry_ycc_params p) {
    __shared__ ferry_ycc_image m;
    for (uint32_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
        __syncthreads(); // the previous image's readers are done with m
        if (threadIdx.x == 0) m = reinterpret_cast<const ferry_ycc_image*>(p.images)[b];
        __syncthreads();
        const uint64_t n = static_cast<uint64_t>(m.w) * m.h;
        const uint8_t* yp = reinterpret_cast<const uint8_t*>(m.y);
        uint8_t* out = reinterpret_cast<uint8_t*>(m.dst);
        for (uint64_t t = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; t < n;
             t += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
            const int y = static_cast<int>(t / m.w), x = static_cast<int>(t - static_cast<uint64_t>(y) * m.w);
            const int luma = yp[static_cast<uint64_t>(y) * m.y_pitch + x];
            if (m.gray) {
                out[3 * t] = out[3 * t + 1] = out[3 * t + 2] = static_cast<uint8_t>(luma);
                continue;
            }
            const int cb = chroma(m, reinterpret_cast<const uint8_t*>(m.cb), x, y) - 128;
            const int cr = chroma(m, reinterpret_cast<const uint8_t*>(m.cr), x, y) - 128;
            out[3 * t] = clamp255(luma + ((91881 * cr + 32768) >> 16));
            out[3 * t + 1] = clamp255(luma + ((-22554 * cb + 32768 - 46802 * cr) >> 16));
            out[3 * t + 2] = clamp255(luma + ((116130 * cb + 32768) >> 16));
        }
    }
}
