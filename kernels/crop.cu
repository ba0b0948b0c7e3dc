// Crops: RandomResizedCrop and CenterCrop, a resample of a box of a decoded RGB image fused with the flip and
// Normalize. Every operation is rounded as the host reference rounds it (no contraction into fused
// multiply-adds but the one the reference makes), so the kernel and the host agree to the output's rounding.
// Uses convert<T> from image.cu (one translation unit: ferry_kernels.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "params.h"

namespace {

// One axis of the bilinear resample: output k reads source i0 and i1, weight f of i1.
__device__ __forceinline__ void crop_tap(double origin, double step, uint32_t k, int lo, int hi, int& i0, int& i1,
                                         float& f) {
    double p = __dadd_rn(__dadd_rn(origin, __dmul_rn(static_cast<double>(k) + 0.5, step)), -0.5);
    p = fmax(p, static_cast<double>(lo));
    i0 = min(static_cast<int>(floor(p)), hi);
    i1 = min(i0 + 1, hi);
    f = static_cast<float>(__dadd_rn(p, -static_cast<double>(i0)));
}

// The antialiased filter of one axis for output k: source positions [start, start + n), each weight
// aa_weight(...) / sum.
struct aa_axis {
    double center, ss, sum;
    int start, n;
};

__device__ __forceinline__ double aa_raw(const aa_axis& a, int x) {
    const double d = fabs(__dmul_rn(__dadd_rn(__dadd_rn(static_cast<double>(x + a.start), -a.center), 0.5), a.ss));
    return d < 1 ? __dadd_rn(1.0, -d) : 0.0;
}

__device__ __forceinline__ aa_axis aa_taps(double origin, double step, uint32_t k, int lo, int hi) {
    const double support = fmax(step, 1.0);
    aa_axis a;
    a.ss = __ddiv_rn(1.0, support);
    a.center = __dadd_rn(origin, __dmul_rn(static_cast<double>(k) + 0.5, step));
    int xmin = max(static_cast<int>(__dadd_rn(__dadd_rn(a.center, -support), 0.5)), lo);
    int xmax = min(static_cast<int>(__dadd_rn(__dadd_rn(a.center, support), 0.5)), hi + 1);
    if (xmax <= xmin) {
        xmin = min(max(static_cast<int>(a.center), lo), hi);
        xmax = xmin + 1;
    }
    a.start = xmin;
    a.n = xmax - xmin;
    a.sum = 0;
    for (int x = 0; x < a.n; x++) a.sum = __dadd_rn(a.sum, aa_raw(a, x));
    return a;
}

__device__ __forceinline__ float aa_weight(const aa_axis& a, int x) {
    return a.sum > 0 ? static_cast<float>(__ddiv_rn(aa_raw(a, x), a.sum)) : 0.0f;
}

__device__ __forceinline__ void crop_bilinear(const ferry_crop_sample& s, const uint8_t* img, uint32_t oy, uint32_t sx,
                                              float (&v)[3]) {
    int y0, y1, x0, x1;
    float fy, fx;
    crop_tap(s.y0, s.dy, oy, s.ylo, s.yhi, y0, y1, fy);
    crop_tap(s.x0, s.dx, sx, s.xlo, s.xhi, x0, x1, fx);
    const uint64_t pitch = 3ull * s.w;
    const uint8_t* r0 = img + y0 * pitch;
    const uint8_t* r1 = img + y1 * pitch;
#pragma unroll
    for (int c = 0; c < 3; c++) {
        const float a00 = r0[x0 * 3 + c], a01 = r0[x1 * 3 + c], a10 = r1[x0 * 3 + c], a11 = r1[x1 * 3 + c];
        const float a = __fadd_rn(a00, __fmul_rn(fx, __fsub_rn(a01, a00)));
        const float b = __fadd_rn(a10, __fmul_rn(fx, __fsub_rn(a11, a10)));
        v[c] = __fadd_rn(a, __fmul_rn(fy, __fsub_rn(b, a)));
    }
}

// The antialiased resample: per source row of the vertical filter, the horizontal filter's sum (the
// reference's intermediate), then the vertical sum, both in the reference's order.
__device__ __forceinline__ void crop_antialias(const ferry_crop_sample& s, const uint8_t* img, uint32_t oy,
                                               uint32_t sx, float (&v)[3]) {
    const aa_axis ya = aa_taps(s.y0, s.dy, oy, s.ylo, s.yhi);
    const aa_axis xa = aa_taps(s.x0, s.dx, sx, s.xlo, s.xhi);
    const uint64_t pitch = 3ull * s.w;
    v[0] = v[1] = v[2] = 0;
    for (int ky = 0; ky < ya.n; ky++) {
        const float wy = aa_weight(ya, ky);
        const uint8_t* row = img + static_cast<uint64_t>(ya.start + ky) * pitch;
        float t[3] = {0, 0, 0};
        for (int kx = 0; kx < xa.n; kx++) {
            const float wx = aa_weight(xa, kx);
            const uint8_t* px = row + 3 * (xa.start + kx);
#pragma unroll
            for (int c = 0; c < 3; c++) t[c] = __fadd_rn(t[c], __fmul_rn(wx, static_cast<float>(px[c])));
        }
#pragma unroll
        for (int c = 0; c < 3; c++) v[c] = __fadd_rn(v[c], __fmul_rn(wy, t[c]));
    }
}

template <typename T, int LAYOUT> __device__ __forceinline__ void crop(const ferry_crop_params& p) {
    __shared__ ferry_crop_sample s;
    const uint32_t size = p.size, n = size * size;
    for (uint32_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
        __syncthreads(); // the previous sample's readers are done with s
        if (threadIdx.x == 0) s = reinterpret_cast<const ferry_crop_sample*>(p.samples)[b];
        __syncthreads();
        const uint8_t* img = reinterpret_cast<const uint8_t*>(p.src + s.offset);
        const bool aa = p.antialias != 0 && (s.dy > 1 || s.dx > 1);
        T* out = reinterpret_cast<T*>(p.dst) + static_cast<uint64_t>(b) * 3 * n;
        for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
            const uint32_t oy = t / size, ox = t - oy * size;
            const uint32_t sx = s.flip ? size - 1 - ox : ox;
            float v[3];
            if (aa) {
                crop_antialias(s, img, oy, sx, v);
            } else {
                crop_bilinear(s, img, oy, sx, v);
            }
#pragma unroll
            for (int c = 0; c < 3; c++) {
                const float y = static_cast<float>(
                    fma(static_cast<double>(v[c]), static_cast<double>(p.scale[c]), static_cast<double>(p.bias[c])));
                if (LAYOUT == FERRY_LAYOUT_CHW) {
                    out[c * n + t] = convert<T>(y);
                } else {
                    out[t * 3 + c] = convert<T>(y);
                }
            }
        }
    }
}

}  // namespace

extern "C" __global__ void ferry_crop_f32_chw(ferry_crop_params p) { crop<float, FERRY_LAYOUT_CHW>(p); }
extern "C" __global__ void ferry_crop_f32_hwc(ferry_crop_params p) { crop<float, FERRY_LAYOUT_HWC>(p); }
extern "C" __global__ void ferry_crop_f16_chw(ferry_crop_params p) { crop<__half, FERRY_LAYOUT_CHW>(p); }
extern "C" __global__ void ferry_crop_f16_hwc(ferry_crop_params p) { crop<__half, FERRY_LAYOUT_HWC>(p); }
extern "C" __global__ void ferry_crop_bf16_chw(ferry_crop_params p) { crop<__nv_bfloat16, FERRY_LAYOUT_CHW>(p); }
extern "C" __global__ void ferry_crop_bf16_hwc(ferry_crop_params p) { crop<__nv_bfloat16, FERRY_LAYOUT_HWC>(p); }
