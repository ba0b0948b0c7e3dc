// Gather: copies samples from scattered places (typically host memory mapped into the device's address
// space) into one contiguous device batch, with no host CPU involved.
#include "params.h"

// Grid: (blocks per sample, batch). Each block copies its share of one sample.
extern "C" __global__ void ferry_gather(ferry_gather_params p) {
    const uint32_t b = blockIdx.y;
    if (b >= p.batch) return;
    const uint64_t off = reinterpret_cast<const uint64_t*>(p.offsets)[b];
    const uint64_t step = static_cast<uint64_t>(gridDim.x) * blockDim.x;
    const uint64_t first = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
    if (p.vec) {
        const uint4* in = reinterpret_cast<const uint4*>(p.src + off);
        uint4* out = reinterpret_cast<uint4*>(p.dst + b * p.bytes);
        for (uint64_t i = first; i < p.bytes / 16; i += step) out[i] = in[i];
    } else {
        const uint8_t* in = reinterpret_cast<const uint8_t*>(p.src + off);
        uint8_t* out = reinterpret_cast<uint8_t*>(p.dst + b * p.bytes);
        for (uint64_t i = first; i < p.bytes; i += step) out[i] = in[i];
    }
}
