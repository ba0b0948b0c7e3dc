// Variable-length sequences: pads each sample's tokens to maxlen in an int64 matrix, with an attention
// mask and the lengths.
#include "params.h"

namespace {

template <typename T> __device__ __forceinline__ void pad(const ferry_pad_params& p) {
    const uint64_t total = static_cast<uint64_t>(p.batch) * p.maxlen;
    const uint32_t* lengths = reinterpret_cast<const uint32_t*>(p.lengths);
    const uint64_t* offsets = reinterpret_cast<const uint64_t*>(p.offsets);
    int64_t* tokens = reinterpret_cast<int64_t*>(p.tokens);
    uint8_t* mask = reinterpret_cast<uint8_t*>(p.mask);
    int64_t* lengths_out = reinterpret_cast<int64_t*>(p.lengths_out);
    // One thread per output token; the first batch threads also write the lengths (so that a batch of
    // empty sequences, maxlen 0, still gets them).
    const uint64_t work = total > p.batch ? total : p.batch;
    for (uint64_t t = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; t < work;
         t += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        if (lengths_out != nullptr && t < p.batch) lengths_out[t] = lengths[t];
        if (t >= total) continue;
        const uint32_t b = static_cast<uint32_t>(t / p.maxlen);
        const uint32_t j = static_cast<uint32_t>(t % p.maxlen);
        const bool real = j < lengths[b];
        tokens[t] = real ? static_cast<int64_t>(reinterpret_cast<const T*>(p.src + offsets[b])[j]) : p.pad_value;
        if (mask != nullptr) mask[t] = real ? 1 : 0;
    }
}

}  // namespace

extern "C" __global__ void ferry_pad_u16(ferry_pad_params p) { pad<uint16_t>(p); }
extern "C" __global__ void ferry_pad_u32(ferry_pad_params p) { pad<uint32_t>(p); }
