// megatron — GPT samples from a Megatron corpus (prefix.idx + prefix.bin), in megatron-core's order, with
// the loss mask and the position ids Megatron's GPTDataset returns, made on the device.
//
// It reads the corpus given on the command line, or writes a small random one to a temporary directory
// when none is given, builds (or maps from the cache) the Megatron-order index, iterates one pass, checks
// the first batch's shapes and that y is x shifted by one, and prints tokens per second.
// Usage: megatron [prefix [seq_len [eod [device]]]]   (device -1 selects the CPU engine)

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "ferry.hpp"

namespace {

// Writes a random corpus of uint16 documents, each ending in eod, as Megatron's builder lays it out.
std::string write_corpus(const std::filesystem::path& dir, uint16_t eod) {
    std::mt19937_64 rng(7);
    std::vector<int32_t> lengths;
    std::vector<uint16_t> tokens;
    for (int d = 0; d < 20000; d++) {
        const int32_t n = 16 + static_cast<int32_t>(rng() % 1200);
        for (int32_t j = 0; j < n; j++) {
            tokens.push_back(j == n - 1 ? eod : static_cast<uint16_t>(rng() % eod));
        }
        lengths.push_back(n);
    }
    const std::string prefix = (dir / "corpus_text_document").string();
    std::ofstream(prefix + ".bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
    std::ofstream idx(prefix + ".idx", std::ios::binary);
    auto put = [&](const void* p, std::size_t n) {
        idx.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    };
    const uint64_t version = 1, nseq = lengths.size(), ndoc = lengths.size() + 1;
    const uint8_t uint16_code = 8;
    put("MMIDIDX\0\0", 9);
    put(&version, 8);
    put(&uint16_code, 1);
    put(&nseq, 8);
    put(&ndoc, 8);
    put(lengths.data(), lengths.size() * 4);
    int64_t pointer = 0;
    for (int32_t n : lengths) {
        put(&pointer, 8);
        pointer += 2 * static_cast<int64_t>(n);
    }
    for (uint64_t d = 0; d < ndoc; d++) {
        put(&d, 8);
    }
    return prefix;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::filesystem::path tmp;
        std::string prefix = argc > 1 ? argv[1] : "";
        const int64_t seq_len = argc > 2 ? std::atoll(argv[2]) : 2048;
        const int64_t eod = argc > 3 ? std::atoll(argv[3]) : 50256;
        int32_t device = argc > 4 ? std::atoi(argv[4]) : (ferry::device_count() > 0 ? 0 : FERRY_DEVICE_CPU);
        if (prefix.empty()) {
            tmp = std::filesystem::temp_directory_path() / ("ferry-megatron-" + std::to_string(::getpid()));
            std::filesystem::create_directories(tmp);
            prefix = write_corpus(tmp, static_cast<uint16_t>(eod));
        }
        const ferry::engine eng(device);
        // megatron-core's GPTDataset for seed 1234, split 969,30,1, the train split, one epoch; the index
        // is cached beside the corpus, so a second run maps it.
        const ferry::source src = ferry::source::gpt(
            {prefix}, seq_len, ferry::gpt_options().order(FERRY_GPT_ORDER_MEGATRON).seed(1234).split("969,30,1"));
        const ferry::gpt_index_info info = src.gpt_index_info();
        std::printf("megatron: %lld windows of %lld+1 tokens; index %s in %.3f s (%s)\n",
                    static_cast<long long>(src.len()), static_cast<long long>(seq_len),
                    info.cached ? "mapped from the cache" : "built", info.seconds, info.path.c_str());
        ferry::transform shift = ferry::transform::shift_tokens("tokens");
        shift.loss_mask("loss_mask").position_ids("position_ids").eod(eod, true, true);
        // Megatron's order is the source's own: no shuffle.
        ferry::iterator it(eng, src, ferry::iterator_options().batch_size(16).add(shift));
        int64_t tokens = 0;
        bool checked = false;
        const auto t0 = std::chrono::steady_clock::now();
        while (auto b = it.next()) {
            if (!checked && device == FERRY_DEVICE_CPU) {
                const ferry::tensor x = b->field("x");
                const ferry::tensor y = b->field("y");
                for (int64_t j = 0; j + 1 < seq_len; j++) {
                    if (x.data<int64_t>()[j + 1] != y.data<int64_t>()[j]) {
                        std::fprintf(stderr, "megatron: y is not x shifted by one at %lld\n",
                                     static_cast<long long>(j));
                        return 1;
                    }
                }
                checked = true;
            }
            if (b->field("position_ids").shape() != std::vector<int64_t>{b->size(), seq_len}) {
                std::fprintf(stderr, "megatron: unexpected position_ids shape\n");
                return 1;
            }
            tokens += b->size() * seq_len;
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("megatron: %lld tokens in %.3f s, %.1f M tokens/s on %s\n", static_cast<long long>(tokens), s,
                    static_cast<double>(tokens) / s / 1e6, device == FERRY_DEVICE_CPU ? "the CPU engine" : "the GPU");
        if (!tmp.empty()) {
            std::filesystem::remove_all(tmp);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "megatron: %s\n", e.what());
        return 1;
    }
}
