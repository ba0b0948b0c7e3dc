// Image layout: u8 HWC images to normalized f32/f16/bf16 in CHW or HWC order, with per-sample flips.
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

// Converts the 16 pixels in raw (C bytes each) and stores them. FLIP is a template parameter so that
// every index into raw is a compile-time constant and raw stays in registers.
template <typename T, int C, int LAYOUT, bool FLIP>
__device__ __forceinline__ void convert_chunk(const ferry_image_params& p, const uint4 (&raw)[C],
                                              const float (&scale)[C], const float (&bias)[C], uint32_t b,
                                              uint64_t hw, uint64_t p0) {
    uint32_t words[4 * C];
#pragma unroll
    for (int i = 0; i < C; i++) {
        words[4 * i] = raw[i].x;
        words[4 * i + 1] = raw[i].y;
        words[4 * i + 2] = raw[i].z;
        words[4 * i + 3] = raw[i].w;
    }
    auto byte = [&](int k) -> float { return static_cast<float>((words[k / 4] >> (8 * (k % 4))) & 0xffu); };
    if (LAYOUT == FERRY_LAYOUT_CHW) {
        T* out = reinterpret_cast<T*>(p.dst) + static_cast<uint64_t>(b) * C * hw + p0;
#pragma unroll
        for (int ch = 0; ch < C; ch++) {
            T v[16];
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const int s = FLIP ? 15 - i : i;
                v[i] = convert<T>(fmaf(byte(s * C + ch), scale[ch], bias[ch]));
            }
            store_vec(out + ch * hw, v);
        }
    } else {
        T v[16 * C];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int s = FLIP ? 15 - i : i;
#pragma unroll
            for (int ch = 0; ch < C; ch++) v[i * C + ch] = convert<T>(fmaf(byte(s * C + ch), scale[ch], bias[ch]));
        }
        store_vec(reinterpret_cast<T*>(p.dst) + (static_cast<uint64_t>(b) * hw + p0) * C, v);
    }
}

// One thread converts 16 consecutive pixels of one row: C 16-byte loads, then 16*C values out in
// 16-byte stores. With a flip, output pixels [x0, x0+16) read input pixels [w-16-x0, w-x0) reversed,
// which stays aligned because w % 16 == 0.
template <typename T, int C, int LAYOUT>
__device__ __forceinline__ void image_vec(const ferry_image_params& p) {
    const uint64_t hw = static_cast<uint64_t>(p.h) * p.w;
    const uint64_t chunks = hw / 16;
    const uint64_t total = chunks * p.batch;
    const uint64_t sample_bytes = hw * C;
    float scale[C], bias[C];
#pragma unroll
    for (int ch = 0; ch < C; ch++) {
        scale[ch] = p.scale[ch];
        bias[ch] = p.bias[ch];
    }
    for (uint64_t t = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        const uint32_t b = static_cast<uint32_t>(t / chunks);
        const uint64_t p0 = (t % chunks) * 16;
        const bool flip = flipped(p, b);
        uint64_t src_pix = p0;
        if (flip) {
            const uint64_t y = p0 / p.w, x0 = p0 % p.w;
            src_pix = y * p.w + (p.w - 16 - x0);
        }
        uint4 raw[C];
        const uint4* in = reinterpret_cast<const uint4*>(sample_start(p, b, sample_bytes) + src_pix * C);
#pragma unroll
        for (int i = 0; i < C; i++) raw[i] = in[i];
        if (flip) {
            convert_chunk<T, C, LAYOUT, true>(p, raw, scale, bias, b, hw, p0);
        } else {
            convert_chunk<T, C, LAYOUT, false>(p, raw, scale, bias, b, hw, p0);
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
        const uint8_t* in = reinterpret_cast<const uint8_t*>(sample_start(p, b, hw * c)) + src_pix * c;
        T* out = reinterpret_cast<T*>(p.dst);
#pragma unroll
        for (uint32_t ch = 0; ch < c; ch++) {
            const T v = convert<T>(fmaf(static_cast<float>(in[ch]), p.scale[ch], p.bias[ch]));
            if (LAYOUT == FERRY_LAYOUT_CHW) {
                out[(static_cast<uint64_t>(b) * c + ch) * hw + pix] = v;
            } else {
                out[(static_cast<uint64_t>(b) * hw + pix) * c + ch] = v;
            }
        }
    }
}

template <typename T, int LAYOUT> __device__ __forceinline__ void image(const ferry_image_params& p) {
    if (p.vec) {
        switch (p.c) {
        case 1: image_vec<T, 1, LAYOUT>(p); return;
        case 2: image_vec<T, 2, LAYOUT>(p); return;
        case 3: image_vec<T, 3, LAYOUT>(p); return;
        case 4: image_vec<T, 4, LAYOUT>(p); return;
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
