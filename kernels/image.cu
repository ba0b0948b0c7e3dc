// Image layout: u8 HWC (or CHW-planar) images to normalized f32/f16/bf16 in CHW or HWC order, with per-sample
// flips.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "params.h"

namespace {

template <typename T> __device__ __forceinline__ T convert(float v);
template <> __device__ __forceinline__ float convert<float>(float v) { return v; }
template <> __device__ __forceinline__ __half convert<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

__device__ __forceinline__ uint64_t sample_start(const ferry_image_params& p, uint32_t b, uint64_t bytes) {
    if (p.offsets == 0) return p.src + static_cast<uint64_t>(b) * bytes;
    return p.src + reinterpret_cast<const uint64_t*>(p.offsets)[b];
}

__device__ __forceinline__ bool flipped(const ferry_image_params& p, uint32_t b) {
    return p.flip != 0 && reinterpret_cast<const uint8_t*>(p.flip)[b] != 0;
}

// Stores n consecutive values (n * sizeof(T) a multiple of 16 bytes, dst 16-byte aligned) as 16-byte words.
template <typename T, int N> __device__ __forceinline__ void store_vec(T* dst, const T (&v)[N]) {
    static_assert((N * sizeof(T)) % 16 == 0, "whole 16-byte words");
    const uint4* src = reinterpret_cast<const uint4*>(v);
    uint4* out = reinterpret_cast<uint4*>(dst);
#pragma unroll
    for (int i = 0; i < static_cast<int>(N * sizeof(T) / 16); i++) out[i] = src[i];
}

// The tiled path. A block lays out `rows` whole rows of one sample: it loads their bytes into shared memory
// with contiguous 16-byte loads (a warp reads 512 consecutive bytes: full sectors from device memory, and
// full-size reads across PCIe when the source is mapped host memory), then each thread converts K
// consecutive outputs and writes them with one 16-byte store (a warp writes 512 consecutive bytes). Whole
// rows in the tile keep a flipped row's mirror inside the tile. A planar input's tile holds the rows of
// each channel's plane one after the other.
constexpr int kTileBytes = 16384;

// The tile's byte of channel ch at row y, column x (npix pixels in the tile).
template <int C, bool PLANAR>
__device__ __forceinline__ uint8_t tile_px(const uint8_t* px, uint32_t npix, uint32_t w, uint32_t y, uint32_t x,
                                           uint32_t ch) {
    return PLANAR ? px[ch * npix + y * w + x] : px[(y * w + x) * C + ch];
}

template <typename T, int C, int LAYOUT, bool PLANAR>
__device__ __forceinline__ void image_tile(const ferry_image_params& p, uint4* tile) {
    constexpr int K = 16 / sizeof(T); // outputs per 16-byte store
    const uint8_t* px = reinterpret_cast<const uint8_t*>(tile);
    const uint32_t w = p.w, h = p.h, rows = p.rows;
    const uint32_t tiles_per_sample = (h + rows - 1) / rows;
    const uint64_t hw = static_cast<uint64_t>(h) * w;
    float scale[C], bias[C];
#pragma unroll
    for (int ch = 0; ch < C; ch++) {
        scale[ch] = p.scale[ch];
        bias[ch] = p.bias[ch];
    }
    for (uint64_t blk = blockIdx.x; blk < static_cast<uint64_t>(tiles_per_sample) * p.batch; blk += gridDim.x) {
        const uint32_t b = static_cast<uint32_t>(blk / tiles_per_sample);
        const uint32_t y0 = static_cast<uint32_t>(blk % tiles_per_sample) * rows;
        const uint32_t nrows = min(rows, h - y0);
        const uint32_t npix = nrows * w;
        const uint64_t start = sample_start(p, b, hw * C);
        const uint32_t words = npix * C / 16;
        __syncthreads(); // the previous tile's readers are done
        if (PLANAR) {
            const uint32_t plane_words = npix / 16; // w % 16 == 0: each plane's rows are whole words
            for (uint32_t i = threadIdx.x; i < words; i += blockDim.x) {
                const uint32_t ch = i / plane_words, j = i - ch * plane_words;
                tile[i] = reinterpret_cast<const uint4*>(start + ch * hw + static_cast<uint64_t>(y0) * w)[j];
            }
        } else {
            const uint4* in = reinterpret_cast<const uint4*>(start + static_cast<uint64_t>(y0) * w * C);
            for (uint32_t i = threadIdx.x; i < words; i += blockDim.x) tile[i] = in[i];
        }
        __syncthreads();
        const bool flip = flipped(p, b);
        if (LAYOUT == FERRY_LAYOUT_CHW) {
            T* out = reinterpret_cast<T*>(p.dst) + static_cast<uint64_t>(b) * C * hw + static_cast<uint64_t>(y0) * w;
            const uint32_t chunks = npix / K;
#pragma unroll
            for (int ch = 0; ch < C; ch++) {
                for (uint32_t j = threadIdx.x; j < chunks; j += blockDim.x) {
                    const uint32_t p0 = j * K, y = p0 / w, x = p0 - y * w;
                    T v[K];
#pragma unroll
                    for (int k = 0; k < K; k++) {
                        const uint32_t sx = flip ? w - 1 - (x + k) : x + k;
                        v[k] = convert<T>(fmaf(static_cast<float>(tile_px<C, PLANAR>(px, npix, w, y, sx, ch)), scale[ch], bias[ch]));
                    }
                    store_vec(out + ch * hw + p0, v);
                }
            }
        } else {
            T* out = reinterpret_cast<T*>(p.dst) + (static_cast<uint64_t>(b) * hw + static_cast<uint64_t>(y0) * w) * C;
            const uint32_t chunks = npix * C / K;
            for (uint32_t j = threadIdx.x; j < chunks; j += blockDim.x) {
                T v[K];
                const uint32_t e0 = j * K, pix = e0 / C;
                uint32_t ch = e0 - pix * C, y = pix / w, x = pix - y * w;
#pragma unroll
                for (int k = 0; k < K; k++) {
                    float sc = scale[0], bi = bias[0];
#pragma unroll
                    for (int q = 1; q < C; q++) {
                        if (ch == static_cast<uint32_t>(q)) {
                            sc = scale[q];
                            bi = bias[q];
                        }
                    }
                    const uint32_t sx = flip ? w - 1 - x : x;
                    v[k] = convert<T>(fmaf(static_cast<float>(tile_px<C, PLANAR>(px, npix, w, y, sx, ch)), sc, bi));
                    if (++ch == C) {
                        ch = 0;
                        if (++x == w) {
                            x = 0;
                            y++;
                        }
                    }
                }
                store_vec(out + static_cast<uint64_t>(j) * K, v);
            }
        }
    }
}

// Any shape and alignment: one thread per output pixel, byte loads.
template <typename T, int C, int LAYOUT> __device__ __forceinline__ void image_any(const ferry_image_params& p) {
    const uint64_t hw = static_cast<uint64_t>(p.h) * p.w;
    const uint64_t total = hw * p.batch;
    const uint32_t c = C;
    for (uint64_t t = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        const uint32_t b = static_cast<uint32_t>(t / hw);
        const uint64_t pix = t % hw;
        const uint64_t y = pix / p.w, x = pix % p.w;
        const uint64_t src_pix = flipped(p, b) ? y * p.w + (p.w - 1 - x) : pix;
        const uint8_t* in = reinterpret_cast<const uint8_t*>(sample_start(p, b, hw * c));
        T* out = reinterpret_cast<T*>(p.dst);
#pragma unroll
        for (uint32_t ch = 0; ch < c; ch++) {
            const uint8_t u = p.planar ? in[ch * hw + src_pix] : in[src_pix * c + ch];
            const T v = convert<T>(fmaf(static_cast<float>(u), p.scale[ch], p.bias[ch]));
            if (LAYOUT == FERRY_LAYOUT_CHW) {
                out[(static_cast<uint64_t>(b) * c + ch) * hw + pix] = v;
            } else {
                out[(static_cast<uint64_t>(b) * hw + pix) * c + ch] = v;
            }
        }
    }
}

template <typename T, int LAYOUT> __device__ __forceinline__ void image(const ferry_image_params& p) {
    __shared__ uint4 tile[kTileBytes / 16];
    if (p.rows != 0 && p.planar != 0) {
        switch (p.c) {
        case 1: image_tile<T, 1, LAYOUT, true>(p, tile); return;
        case 2: image_tile<T, 2, LAYOUT, true>(p, tile); return;
        case 3: image_tile<T, 3, LAYOUT, true>(p, tile); return;
        case 4: image_tile<T, 4, LAYOUT, true>(p, tile); return;
        }
    } else if (p.rows != 0) {
        switch (p.c) {
        case 1: image_tile<T, 1, LAYOUT, false>(p, tile); return;
        case 2: image_tile<T, 2, LAYOUT, false>(p, tile); return;
        case 3: image_tile<T, 3, LAYOUT, false>(p, tile); return;
        case 4: image_tile<T, 4, LAYOUT, false>(p, tile); return;
        }
    }
    switch (p.c) {
    case 1: image_any<T, 1, LAYOUT>(p); return;
    case 2: image_any<T, 2, LAYOUT>(p); return;
    case 3: image_any<T, 3, LAYOUT>(p); return;
    case 4: image_any<T, 4, LAYOUT>(p); return;
    }
}

}  // namespace

extern "C" __global__ void ferry_image_f32_chw(ferry_image_params p) { image<float, FERRY_LAYOUT_CHW>(p); }
extern "C" __global__ void ferry_image_f32_hwc(ferry_image_params p) { image<float, FERRY_LAYOUT_HWC>(p); }
extern "C" __global__ void ferry_image_f16_chw(ferry_image_params p) { image<__half, FERRY_LAYOUT_CHW>(p); }
extern "C" __global__ void ferry_image_f16_hwc(ferry_image_params p) { image<__half, FERRY_LAYOUT_HWC>(p); }
extern "C" __global__ void ferry_image_bf16_chw(ferry_image_params p) {
    image<__nv_bfloat16, FERRY_LAYOUT_CHW>(p);
}
extern "C" __global__ void ferry_image_bf16_hwc(ferry_image_params p) {
    image<__nv_bfloat16, FERRY_LAYOUT_HWC>(p);
}
