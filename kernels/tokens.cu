// Token windows: u16/u32/i32 tokens to int64 inputs x and targets y (x shifted by one), so only 2 or 4
// bytes per token cross PCIe; with them the loss mask and position ids of a GPT sample.
#include "params.h"

namespace {

template <typename T> __device__ __forceinline__ void tokens(const ferry_tokens_params& p) {
    const uint64_t total = static_cast<uint64_t>(p.batch) * p.seq;
    int64_t* x = reinterpret_cast<int64_t*>(p.x);
    int64_t* y = reinterpret_cast<int64_t*>(p.y);
    float* mask = reinterpret_cast<float*>(p.mask);
    int64_t* pos = reinterpret_cast<int64_t*>(p.pos);
    const bool maskEOD = (p.flags & FERRY_TOKENS_MASK_EOD) != 0;
    const bool plainPos = pos != nullptr && (p.flags & FERRY_TOKENS_RESET_POSITIONS) == 0;
    for (uint64_t t = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        const uint32_t b = static_cast<uint32_t>(t / p.seq);
        const uint32_t j = static_cast<uint32_t>(t % p.seq);
        const uint64_t start = p.offsets != 0 ? p.src + reinterpret_cast<const uint64_t*>(p.offsets)[b]
                                              : p.src + static_cast<uint64_t>(b) * p.stride * sizeof(T);
        const T* in = reinterpret_cast<const T*>(start);
        const int64_t v = static_cast<int64_t>(in[j]);
        x[t] = v;
        if (y != nullptr) y[t] = static_cast<int64_t>(in[j + 1]);
        if (mask != nullptr) mask[t] = (maskEOD && v == p.eod) ? 0.0f : 1.0f;
        if (plainPos) pos[t] = j;
    }
}

}  // namespace

extern "C" __global__ void ferry_tokens_u16(ferry_tokens_params p) { tokens<uint16_t>(p); }
extern "C" __global__ void ferry_tokens_u32(ferry_tokens_params p) { tokens<uint32_t>(p); }
extern "C" __global__ void ferry_tokens_i32(ferry_tokens_params p) { tokens<int32_t>(p); }

// One block per sample: each thread takes a run of positions, finds the last EOD in it, a block-wide
// max-scan gives every run the last EOD before it, and each thread writes its run.
extern "C" __global__ void ferry_positions(ferry_positions_params p) {
    __shared__ int64_t last[256];
    const uint32_t run = (p.seq + blockDim.x - 1) / blockDim.x;
    const uint32_t begin = min(threadIdx.x * run, p.seq);
    const uint32_t end = min(begin + run, p.seq);
    for (uint32_t b = blockIdx.x; b < p.batch; b += gridDim.x) {
        const int64_t* x = reinterpret_cast<const int64_t*>(p.x) + static_cast<uint64_t>(b) * p.seq;
        int64_t* pos = reinterpret_cast<int64_t*>(p.pos) + static_cast<uint64_t>(b) * p.seq;
        int64_t mine = -1;
        for (uint32_t j = begin; j < end; j++) {
            if (x[j] == p.eod) mine = j;
        }
        last[threadIdx.x] = mine;
        __syncthreads();
        for (uint32_t off = 1; off < blockDim.x; off <<= 1) {
            const int64_t v = threadIdx.x >= off ? last[threadIdx.x - off] : -1;
            __syncthreads();
            last[threadIdx.x] = max(last[threadIdx.x], v);
            __syncthreads();
        }
        int64_t prev = threadIdx.x > 0 ? last[threadIdx.x - 1] : -1;
        __syncthreads();  // the scan's values are read before the next sample overwrites them
        for (uint32_t j = begin; j < end; j++) {
            pos[j] = static_cast<int64_t>(j) - (prev + 1);
            if (x[j] == p.eod) prev = j;
        }
    }
}
