// Tests of the C++ binding's Megatron sources (ferry::source::megatron, gpt, blend, megatron_blend_sizes)
// and of shift_tokens' GPT outputs, on the CPU engine, over a corpus written here from fresh random
// documents in Megatron's indexed format. The references are computed here from the token stream.

#include "ferry.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace {

using ferry_test::expect_error;
using ferry_test::fresh_seed;
using ferry_test::temp_dir;

constexpr uint16_t kEOD = 50256;

// A corpus of random documents (uint16 tokens, each document ending in kEOD, one sequence each), written
// as prefix.bin and prefix.idx the way Megatron's builder lays them out; stream is every token in order.
struct corpus {
    std::string prefix;
    std::vector<int64_t> stream;

    corpus(const temp_dir& dir, const std::string& name, std::mt19937_64& rng, int docs) : prefix(dir.file(name)) {
        std::vector<int32_t> lengths;
        std::vector<uint16_t> bin;
        for (int d = 0; d < docs; d++) {
            const int32_t n = 1 + static_cast<int32_t>(rng() % 60);
            for (int32_t j = 0; j < n; j++) {
                const uint16_t tok = j == n - 1 ? kEOD : static_cast<uint16_t>(rng() % kEOD);
                bin.push_back(tok);
                stream.push_back(tok);
            }
            lengths.push_back(n);
        }
        std::ofstream b(prefix + ".bin", std::ios::binary);
        b.write(reinterpret_cast<const char*>(bin.data()), static_cast<std::streamsize>(bin.size() * 2));
        std::ofstream x(prefix + ".idx", std::ios::binary);
        auto put = [&](const void* p, std::size_t n) {
            x.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
        };
        put("MMIDIDX\0\0", 9);
        const uint64_t version = 1, nseq = lengths.size(), ndoc = lengths.size() + 1;
        const uint8_t code = 8; // uint16
        put(&version, 8);
        put(&code, 1);
        put(&nseq, 8);
        put(&ndoc, 8);
        put(lengths.data(), lengths.size() * 4);
        int64_t ptr = 0;
        for (int32_t n : lengths) {
            put(&ptr, 8);
            ptr += 2 * static_cast<int64_t>(n);
        }
        for (uint64_t d = 0; d < ndoc; d++) {
            put(&d, 8);
        }
    }
};

template <typename T>
std::vector<T> read_all(const ferry::tensor& t) {
    int64_t n = 1;
    for (int64_t d : t.shape()) {
        n *= d;
    }
    return std::vector<T>(t.data<T>(), t.data<T>() + n);
}

TEST(Megatron, DocumentsAndErrors) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    temp_dir dir("ferry-megatron");
    const corpus a(dir, "a", rng, 50), b(dir, "b", rng, 30);
    const ferry::source src = ferry::source::megatron({a.prefix, b.prefix}, 16, "text");
    EXPECT_EQ(src.len(), 80);
    ASSERT_EQ(src.fields().size(), 1u);
    EXPECT_EQ(src.fields()[0].name, "text");
    EXPECT_EQ(src.fields()[0].dtype, FERRY_DTYPE_UINT16);

    EXPECT_EQ(expect_error([&] { (void)ferry::source::megatron({dir.file("missing")}, 8); }).status(), FERRY_ERR_IO);
    EXPECT_EQ(expect_error([&] { (void)ferry::source::megatron({}, 8); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { (void)src.gpt_index_info(); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    const ferry::source m = ferry::source::gpt(
        {a.prefix}, 8, ferry::gpt_options().order(FERRY_GPT_ORDER_MEGATRON).seed(3).cache_dir(dir.file("cache")));
    const ferry::error e =
        expect_error([&] { ferry::iterator it(eng, m, ferry::iterator_options().batch_size(4).shuffle()); });
    EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("without Shuffle"), std::string::npos) << e.what();
}

// Ferry's order with every GPT output: window i is stream[i*seq, i*seq + seq + 1); the loss mask is 0
// where the input is EOD; the position ids restart after each EOD input.
TEST(Megatron, GPTWindowsWithMaskAndPositions) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    temp_dir dir("ferry-megatron");
    const corpus a(dir, "a", rng, 300);
    const int64_t seq = 24;
    const ferry::source src = ferry::source::gpt({a.prefix}, seq);
    EXPECT_EQ(src.len(), static_cast<int64_t>((a.stream.size() - 1) / seq));
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    ferry::transform shift = ferry::transform::shift_tokens("tokens");
    shift.loss_mask("loss_mask").position_ids("position_ids").eod(kEOD, true, true);
    ferry::iterator it(eng, src, ferry::iterator_options().batch_size(16).shuffle().seed(seed).add(shift));
    int64_t seen = 0;
    while (auto b = it.next()) {
        ASSERT_EQ(b->num_fields(), 4);
        const auto x = read_all<int64_t>(b->field("x"));
        const auto y = read_all<int64_t>(b->field("y"));
        const auto m = read_all<float>(b->field("loss_mask"));
        const auto p = read_all<int64_t>(b->field("position_ids"));
        const std::vector<int64_t> idx = b->indices();
        for (std::size_t r = 0; r < idx.size(); r++) {
            const int64_t start = idx[r] * seq;
            int64_t restart = 0;
            for (int64_t j = 0; j < seq; j++) {
                const std::size_t k = r * static_cast<std::size_t>(seq) + static_cast<std::size_t>(j);
                const int64_t in = a.stream[static_cast<std::size_t>(start + j)];
                ASSERT_EQ(x[k], in);
                ASSERT_EQ(y[k], a.stream[static_cast<std::size_t>(start + j + 1)]);
                ASSERT_EQ(m[k], in == kEOD ? 0.0f : 1.0f);
                ASSERT_EQ(p[k], j - restart);
                if (in == kEOD) {
                    restart = j + 1;
                }
            }
        }
        seen += b->size();
    }
    EXPECT_EQ(seen, src.len());
}

// Megatron's order: the index is built once and mapped the second time; a Megatron blend of two corpora
// and a ferry blend read whole epochs.
TEST(Megatron, IndexCacheAndBlends) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    temp_dir dir("ferry-megatron");
    const corpus a(dir, "a", rng, 200), b(dir, "b", rng, 120);
    const auto [per, size] = ferry::megatron_blend_sizes({0.3, 0.7}, 500);
    ASSERT_EQ(per.size(), 2u);
    EXPECT_EQ(per[0], 151); // ceil(ceil(500 * 0.3) * 1.005)
    EXPECT_EQ(per[1], 352); // ceil(ceil(500 * 0.7) * 1.005)
    EXPECT_EQ(size, 500);
    auto opts = [&](int64_t n) {
        return ferry::gpt_options()
            .order(FERRY_GPT_ORDER_MEGATRON)
            .seed(1234)
            .split("98,2,0")
            .num_samples(n)
            .cache_dir(dir.file("cache"));
    };
    const ferry::source ga = ferry::source::gpt({a.prefix}, 16, opts(per[0]));
    const ferry::gpt_index_info first = ga.gpt_index_info();
    EXPECT_FALSE(first.cached);
    EXPECT_TRUE(first.cache_error.empty()) << first.cache_error;
    EXPECT_GE(ga.len(), per[0]);
    const ferry::source again = ferry::source::gpt({a.prefix}, 16, opts(per[0]));
    EXPECT_TRUE(again.gpt_index_info().cached);
    EXPECT_EQ(again.gpt_index_info().path, first.path);
    const ferry::source gb = ferry::source::gpt({b.prefix}, 16, opts(per[1]));
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    for (ferry_blend_order order : {FERRY_BLEND_ORDER_MEGATRON, FERRY_BLEND_ORDER_FERRY}) {
        const ferry::source blend = ferry::source::blend({{0.3, &ga}, {0.7, &gb}}, size, order, seed);
        EXPECT_EQ(blend.len(), size);
        ferry::iterator it(eng, blend, ferry::iterator_options().batch_size(64));
        int64_t seen = 0;
        while (auto bt = it.next()) {
            seen += bt->size();
        }
        EXPECT_EQ(seen, size);
    }
}

}  // namespace
