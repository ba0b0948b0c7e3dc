// Token windows: u16/u32 tokens to int64 inputs x and targets y (x shifted by one), so only 2 or 4 bytes
// per token cross PCIe.
#include "params.h"

namespace {

template <typename T> __device__ __forceinline__ void tokens(const ferry_tokens_params& p) {
    const uint64_t total = static_cast<uint64_t>(p.batch) * p.seq;
    int64_t* x = reinterpret_cast<int64_t*>(p.x);
    int64_t* y = reinterpret_cast<int64_t*>(p.y);
    for (uint64_t t = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        const uint32_t b = static_cast<uint32_t>(t / p.seq);
        const uint32_t j = static_cast<uint32_t>(t % p.seq);
        const uint64_t start = p.offsets != 0 ? p.src + reinterpret_cast<const uint64_t*>(p.offsets)[b]
                                              : p.src + static_cast<uint64_t>(b) * p.stride * sizeof(T);
        const T* in = reinterpret_cast<const T*>(start);
        x[t] = static_cast<int64_t>(in[j]);
        if (y != nullptr) y[t] = static_cast<int64_t>(in[j + 1]);
    }
}

}  // namespace

extern "C" __global__ void ferry_tokens_u16(ferry_tokens_params p) { tokens<uint16_t>(p); }
extern "C" __global__ void ferry_tokens_u32(ferry_tokens_params p) { tokens<uint32_t>(p); }
