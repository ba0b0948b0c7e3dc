// iterate — a memory source over random images and labels, iterated for two shuffled epochs.
//
// It runs on GPU 0 when there is a device and on the CPU engine otherwise, prints batches per second for
// each epoch, and checks every field of one batch against the data it came from. A GPU batch is not read
// back here: on a GPU the check restores a CPU-engine iterator with the same options to the same
// position, checks that it picks the same samples, and checks its values.
// Usage: iterate [device]   (device -1 selects the CPU engine)

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <vector>

#include "ferry.hpp"

namespace {

constexpr int64_t kSamples = 4096;
constexpr int64_t kBatch = 128;
constexpr int64_t kImageBytes = 3 * 32 * 32;

// Compares one host batch against the source arrays; returns the number of mismatching samples.
int64_t check_batch(const ferry::batch& b, const std::vector<uint8_t>& images, const std::vector<int32_t>& labels) {
    const ferry::tensor image = b.field("image");
    const ferry::tensor label = b.field("label");
    const std::vector<int64_t> idx = b.indices();
    int64_t bad = 0;
    if (image.shape() != std::vector<int64_t>{b.size(), 3, 32, 32} || label.shape() != std::vector<int64_t>{b.size()}) {
        std::fprintf(stderr, "iterate: unexpected shapes\n");
        return b.size();
    }
    for (std::size_t r = 0; r < idx.size(); r++) {
        const uint8_t* got = image.data<uint8_t>() + static_cast<int64_t>(r) * kImageBytes;
        const uint8_t* want = images.data() + idx[r] * kImageBytes;
        if (std::memcmp(got, want, kImageBytes) != 0 || label.data<int32_t>()[r] != labels[idx[r]]) {
            bad++;
        }
    }
    return bad;
}

} // namespace

int main(int argc, char** argv) {
    try {
        int device = FERRY_DEVICE_CPU;
        if (argc > 1) {
            device = std::atoi(argv[1]);
        } else if (ferry::device_count() > 0) {
            device = 0;
        }

        std::mt19937_64 rng(std::random_device{}());
        std::vector<uint8_t> images(static_cast<std::size_t>(kSamples * kImageBytes));
        std::vector<int32_t> labels(static_cast<std::size_t>(kSamples));
        for (auto& v : images) {
            v = static_cast<uint8_t>(rng());
        }
        for (auto& v : labels) {
            v = static_cast<int32_t>(rng() % 10);
        }

        ferry::engine eng(device);
        ferry::source src = ferry::source::memory(
            kSamples, {ferry::field::of<uint8_t>("image", {3, 32, 32}), ferry::field::of<int32_t>("label")},
            {images.data(), labels.data()});
        const auto opts = ferry::iterator_options().batch_size(kBatch).shuffle().seed(rng());
        ferry::iterator it(eng, src, opts);
        std::printf("iterate: %s engine, %lld samples, %lld batches of %lld per epoch\n",
                    device == FERRY_DEVICE_CPU ? "CPU" : "GPU", static_cast<long long>(src.len()),
                    static_cast<long long>(it.size()), static_cast<long long>(kBatch));

        int64_t mismatches = 0;
        ferry::position checked{};
        std::vector<int64_t> checked_indices;
        for (int epoch = 0; epoch < 2; epoch++) {
            const auto start = std::chrono::steady_clock::now();
            int64_t batches = 0, samples = 0;
            for (ferry::batch& b : it) {
                if (b.epoch() != static_cast<uint64_t>(epoch) || b.index() != batches) {
                    std::fprintf(stderr, "iterate: batch %lld of epoch %llu out of order\n",
                                 static_cast<long long>(b.index()), static_cast<unsigned long long>(b.epoch()));
                    return 1;
                }
                if (epoch == 1 && b.index() == 3) {
                    checked = ferry::position{b.epoch(), b.index()};
                    checked_indices = b.indices();
                    if (device == FERRY_DEVICE_CPU) {
                        mismatches = check_batch(b, images, labels);
                    }
                }
                batches++;
                samples += b.size();
            }
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            std::printf("epoch %d: %lld batches, %lld samples in %.3f s: %.0f batches/s\n", epoch,
                        static_cast<long long>(batches), static_cast<long long>(samples), s,
                        static_cast<double>(batches) / s);
            if (batches != it.size() || samples != kSamples) {
                std::fprintf(stderr, "iterate: epoch %d had %lld batches and %lld samples\n", epoch,
                             static_cast<long long>(batches), static_cast<long long>(samples));
                return 1;
            }
        }

        if (device != FERRY_DEVICE_CPU) {
            // The same options on the CPU engine give the same batch at the same position.
            ferry::engine cpu(FERRY_DEVICE_CPU);
            ferry::iterator host(cpu, src, opts);
            host.restore(checked);
            auto b = host.next();
            if (!b || b->indices() != checked_indices) {
                std::fprintf(stderr, "iterate: the CPU engine picked other samples for batch %lld\n",
                             static_cast<long long>(checked.batch));
                return 1;
            }
            mismatches = check_batch(*b, images, labels);
        }
        if (mismatches != 0) {
            std::fprintf(stderr, "iterate: %lld samples of batch %lld (epoch %llu) differ from the data\n",
                         static_cast<long long>(mismatches), static_cast<long long>(checked.batch),
                         static_cast<unsigned long long>(checked.epoch));
            return 1;
        }
        std::printf("batch %lld of epoch %llu matches the data\n", static_cast<long long>(checked.batch),
                    static_cast<unsigned long long>(checked.epoch));
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "iterate: %s\n", e.what());
        return 1;
    }
}
