// Tests of the C++ binding's layout transforms and staging (ferry::transform, iterator_options::transforms,
// iterator::staging) on the CPU engine. Every test builds fresh random data and checks each batch against
// values computed here from the source's bytes, picked by the batch's sample indices.

#include "ferry.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace {

using ferry_test::expect_error;
using ferry_test::fresh_seed;
using ferry_test::temp_dir;

constexpr int64_t H = 4, W = 8, C = 3, SEQ = 8;
const std::vector<float> kMean = {0.485f, 0.456f, 0.406f};
const std::vector<float> kStd = {0.229f, 0.224f, 0.225f};

// A memory source of n samples: u8 images [H, W, C] and windows of SEQ + 1 uint16 tokens, random.
struct image_tokens {
    int64_t n;
    std::vector<uint8_t> images;
    std::vector<uint16_t> tokens;
    ferry::source src;

    image_tokens(int64_t n_, uint64_t seed)
        : n(n_), images(static_cast<std::size_t>(n_ * H * W * C)), tokens(static_cast<std::size_t>(n_ * (SEQ + 1))) {
        std::mt19937_64 rng(seed);
        for (auto& v : images) {
            v = static_cast<uint8_t>(rng());
        }
        for (auto& v : tokens) {
            v = static_cast<uint16_t>(rng());
        }
        src = ferry::source::memory(
            n, {ferry::field::of<uint8_t>("image", {H, W, C}), ferry::field::of<uint16_t>("tokens", {SEQ + 1})},
            {images.data(), tokens.data()});
    }

    uint8_t pixel(int64_t i, int64_t y, int64_t x, int64_t c) const {
        return images[static_cast<std::size_t>(((i * H + y) * W + x) * C + c)];
    }
    int64_t token(int64_t i, int64_t j) const { return tokens[static_cast<std::size_t>(i * (SEQ + 1) + j)]; }
};

void write_bytes(const std::string& path, const void* data, std::size_t n) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
    ASSERT_TRUE(f.good()) << path;
}

// A version 1.0 .npy file of int64 offsets.
void write_offsets_npy(const std::string& path, const std::vector<int64_t>& offsets) {
    std::string header =
        "{'descr': '<i8', 'fortran_order': False, 'shape': (" + std::to_string(offsets.size()) + ",), }";
    const std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string out = std::string("\x93NUMPY\x01\x00", 8);
    out += static_cast<char>(header.size() & 0xff);
    out += static_cast<char>(header.size() >> 8);
    out += header;
    out.append(reinterpret_cast<const char*>(offsets.data()), offsets.size() * sizeof(int64_t));
    write_bytes(path, out.data(), out.size());
}

template <typename T>
std::vector<T> read_all(const ferry::tensor& t) {
    const T* p = t.data<T>();
    return std::vector<T>(p, p + t.numel());
}

// ---------------------------------------------------------------------------------------------------

TEST(Transform, NormalizeAndShiftTokens) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    const image_tokens d(37, seed);
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    const auto opts = ferry::iterator_options().batch_size(5).shuffle().seed(seed).transforms(
        {ferry::transform::normalize("image", kMean, kStd, FERRY_LAYOUT_CHW, FERRY_DTYPE_FLOAT32, 0.0),
         ferry::transform::shift_tokens("tokens")});
    ferry::iterator it(eng, d.src, opts);
    std::multiset<int64_t> seen;
    for (ferry::batch& b : it) {
        ASSERT_EQ(b.num_fields(), 3);
        const std::vector<int64_t> idx = b.indices();
        const int64_t n = b.size();
        seen.insert(idx.begin(), idx.end());

        const ferry::tensor image = b.field("image");
        EXPECT_EQ(image.shape(), (std::vector<int64_t>{n, C, H, W}));
        EXPECT_EQ(image.dtype().code, kDLFloat);
        EXPECT_EQ(image.dtype().bits, 32);
        const std::vector<float> px = read_all<float>(image);
        for (int64_t s = 0; s < n; s++) {
            for (int64_t c = 0; c < C; c++) {
                for (int64_t y = 0; y < H; y++) {
                    for (int64_t x = 0; x < W; x++) {
                        const double want = (d.pixel(idx[s], y, x, c) / 255.0 - kMean[c]) / kStd[c];
                        const float got = px[static_cast<std::size_t>(((s * C + c) * H + y) * W + x)];
                        ASSERT_NEAR(got, want, 1e-6)
                            << "sample " << idx[s] << " (" << y << ", " << x << ", " << c << ")";
                    }
                }
            }
        }

        const ferry::tensor x = b.field("x"), y = b.field("y");
        for (const ferry::tensor* t : {&x, &y}) {
            EXPECT_EQ(t->shape(), (std::vector<int64_t>{n, SEQ}));
            EXPECT_EQ(t->dtype().code, kDLInt);
            EXPECT_EQ(t->dtype().bits, 64);
        }
        const std::vector<int64_t> xs = read_all<int64_t>(x), ys = read_all<int64_t>(y);
        for (int64_t s = 0; s < n; s++) {
            for (int64_t j = 0; j < SEQ; j++) {
                ASSERT_EQ(xs[static_cast<std::size_t>(s * SEQ + j)], d.token(idx[s], j)) << "sample " << idx[s];
                ASSERT_EQ(ys[static_cast<std::size_t>(s * SEQ + j)], d.token(idx[s], j + 1)) << "sample " << idx[s];
            }
        }
        // The fields come in the batch's order: the image, then x and y in place of the window.
        EXPECT_EQ(b.field(0).data(), image.data());
        EXPECT_EQ(b.field(1).data(), x.data());
        EXPECT_EQ(b.field(2).data(), y.data());
        const ferry::error e = expect_error([&] { (void)b.field("tokens"); });
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
    }
    EXPECT_EQ(static_cast<int64_t>(seen.size()), d.n);
    EXPECT_EQ(static_cast<int64_t>(std::set<int64_t>(seen.begin(), seen.end()).size()), d.n);
}

TEST(Transform, NormalizeFlipHWC) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    const image_tokens d(12, seed);
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    // One mean and std for every channel, and a scale of 1: out = (x - 100) / 50, mirrored.
    ferry::transform t =
        ferry::transform::normalize("image", {100.0f}, {50.0f}, FERRY_LAYOUT_HWC, FERRY_DTYPE_FLOAT32, 1.0);
    t.scale(1.0f);
    ferry::iterator it(eng, d.src, ferry::iterator_options().batch_size(12).add(t));
    auto b = it.next();
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->num_fields(), 2); // the image and the untouched window
    const ferry::tensor image = b->field("image");
    EXPECT_EQ(image.shape(), (std::vector<int64_t>{12, H, W, C}));
    const std::vector<float> px = read_all<float>(image);
    const std::vector<int64_t> idx = b->indices();
    for (int64_t s = 0; s < 12; s++) {
        for (int64_t y = 0; y < H; y++) {
            for (int64_t x = 0; x < W; x++) {
                for (int64_t c = 0; c < C; c++) {
                    const float want = (static_cast<float>(d.pixel(idx[s], y, W - 1 - x, c)) - 100.0f) / 50.0f;
                    ASSERT_NEAR(px[static_cast<std::size_t>(((s * H + y) * W + x) * C + c)], want, 1e-6);
                }
            }
        }
    }
    const ferry::tensor window = b->field("tokens");
    EXPECT_EQ(window.shape(), (std::vector<int64_t>{12, SEQ + 1}));
}

TEST(Transform, PadSequences) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const int64_t n = 40, max_len = 10;
    std::vector<int64_t> offsets = {0};
    for (int64_t i = 0; i < n; i++) {
        offsets.push_back(offsets.back() + static_cast<int64_t>(rng() % (2 * max_len)));
    }
    std::vector<uint16_t> tokens(static_cast<std::size_t>(offsets.back()) + 1);
    for (auto& v : tokens) {
        v = static_cast<uint16_t>(rng());
    }
    temp_dir dir("ferry-transform");
    write_bytes(dir.file("tokens.bin"), tokens.data(), tokens.size() * sizeof(uint16_t));
    write_offsets_npy(dir.file("offsets.npy"), offsets);
    const ferry::source src = ferry::source::ragged_tokens(dir.file("tokens.bin"), dir.file("offsets.npy"), max_len);
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    ferry::iterator it(eng, src,
                       ferry::iterator_options().batch_size(8).shuffle().seed(seed).transforms(
                           {ferry::transform::pad_sequences("tokens", -1, false, "mask", "len")}));
    int64_t count = 0;
    for (ferry::batch& b : it) {
        ASSERT_EQ(b.num_fields(), 3);
        const std::vector<int64_t> idx = b.indices();
        std::vector<int64_t> want_len;
        for (int64_t i : idx) {
            const auto k = static_cast<std::size_t>(i);
            want_len.push_back(std::min(offsets[k + 1] - offsets[k], max_len));
        }
        const int64_t width = *std::max_element(want_len.begin(), want_len.end());
        const ferry::tensor ids = b.field("tokens"), mask = b.field("mask"), len = b.field("len");
        ASSERT_EQ(ids.shape(), (std::vector<int64_t>{b.size(), width}));
        ASSERT_EQ(mask.shape(), (std::vector<int64_t>{b.size(), width}));
        ASSERT_EQ(len.shape(), (std::vector<int64_t>{b.size()}));
        EXPECT_EQ(mask.dtype().code, kDLBool);
        const std::vector<int64_t> got_ids = read_all<int64_t>(ids), got_len = read_all<int64_t>(len);
        const std::vector<uint8_t> got_mask = read_all<uint8_t>(mask);
        EXPECT_EQ(got_len, want_len);
        for (std::size_t s = 0; s < idx.size(); s++) {
            const int64_t start = offsets[static_cast<std::size_t>(idx[s])];
            for (int64_t j = 0; j < width; j++) {
                const std::size_t at = s * static_cast<std::size_t>(width) + static_cast<std::size_t>(j);
                const bool in = j < want_len[s];
                ASSERT_EQ(got_ids[at], in ? tokens[static_cast<std::size_t>(start + j)] : -1) << "sample " << idx[s];
                ASSERT_EQ(got_mask[at], in ? 1 : 0) << "sample " << idx[s];
            }
        }
        count += b.size();
    }
    EXPECT_EQ(count, n);
}

TEST(Transform, StagingOnTheCpuIsGather) {
    const image_tokens d(10, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    for (ferry_staging want : {FERRY_STAGING_AUTO, FERRY_STAGING_GATHER, FERRY_STAGING_DMA, FERRY_STAGING_MAPPED}) {
        const auto opts = ferry::iterator_options().batch_size(5).staging(want).pinned_budget(1 << 20);
        EXPECT_EQ(opts.staging(), want);
        EXPECT_EQ(opts.pinned_budget(), 1 << 20);
        const ferry::iterator it(eng, d.src, opts);
        const ferry::staging_info s = it.staging();
        EXPECT_EQ(s.strategy, FERRY_STAGING_GATHER);
        EXPECT_FALSE(s.reason.empty());
    }
    const ferry::iterator empty;
    EXPECT_EQ(expect_error([&] { (void)empty.staging(); }).status(), FERRY_ERR_INVALID_HANDLE);
}

TEST(Transform, BadTransformThrows) {
    const image_tokens d(10, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    struct bad_case {
        const char* name;
        ferry::iterator_options opts;
        const char* word;
    };
    const auto base = [] { return ferry::iterator_options().batch_size(5); };
    const std::vector<bad_case> cases = {
        {"7 channels", base().add(ferry::transform::normalize("image", std::vector<float>(7, 0.5f))), "channels"},
        {"unknown field", base().add(ferry::transform::normalize("picture")), "picture"},
        {"normalize on tokens", base().add(ferry::transform::normalize("tokens")), "uint8"},
        {"std 0", base().add(ferry::transform::normalize("image", kMean, {0.2f, 0.0f, 0.2f})), "std[1]"},
        {"flip 2", base().add(ferry::transform::normalize("image", {}, {}, FERRY_LAYOUT_CHW, FERRY_DTYPE_FLOAT32, 2.0)),
         "flip"},
        {"int32 output", base().add(ferry::transform::normalize("image", {}, {}, FERRY_LAYOUT_CHW, FERRY_DTYPE_INT32)),
         "float32"},
        {"two on one field", base().add(ferry::transform::normalize("image")).add(ferry::transform::normalize("image")),
         "two transforms"},
        {"shift an image", base().add(ferry::transform::shift_tokens("image")), "ShiftTokens"},
        {"x and y alike", base().add(ferry::transform::shift_tokens("tokens", "t", "t")), "x and y"},
        {"pad a fixed field", base().add(ferry::transform::pad_sequences("tokens")), "PadSequences"},
        {"staging 9", base().staging(static_cast<ferry_staging>(9)), "staging"},
    };
    for (const bad_case& c : cases) {
        SCOPED_TRACE(c.name);
        const ferry::error e = expect_error([&] { ferry::iterator it(eng, d.src, c.opts); });
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
        EXPECT_NE(e.message().find(c.word), std::string::npos) << e.message();
    }
    const ferry::error e = expect_error([] { (void)ferry::transform::normalize("image", {0.1f, 0.2f}, kStd); });
    EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
    // The library is still usable: the same engine and source make an iterator with transforms.
    ferry::iterator it(
        eng, d.src,
        base().add(ferry::transform::normalize("image", kMean, kStd)).add(ferry::transform::shift_tokens("tokens")));
    auto b = it.next();
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->num_fields(), 3);
}

TEST(Transform, LaunchOnTheCpuIsUnsupported) {
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    std::vector<uint8_t> in(static_cast<std::size_t>(2 * H * W * C));
    std::vector<float> out(static_cast<std::size_t>(2 * H * W * C), -7.0f);
    const auto src = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(in.data()));
    const auto dst = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(out.data()));
    const ferry::field image = ferry::field::of<uint8_t>("image", {H, W, C});
    const ferry::transform t = ferry::transform::normalize("image", kMean, kStd);
    EXPECT_EQ(expect_error([&] { t.launch(eng, image, 2, src, {dst}); }).status(), FERRY_ERR_UNSUPPORTED);
    EXPECT_EQ(expect_error([&] { t.launch(eng, image, 2, src, {}); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { t.launch(eng, image, 0, src, {dst}); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    ferry::engine other(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    const ferry::engine taken(std::move(other));
    EXPECT_EQ(expect_error([&] { t.launch(other, image, 2, src, {dst}); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float v) { return v == -7.0f; })) << "nothing was written";
}

TEST(Transform, ValueType) {
    ferry::transform copy = ferry::transform::shift_tokens("tokens", "inputs", "targets");
    {
        const ferry::transform original = ferry::transform::pad_sequences("ids", 5, true, "m", "l");
        copy = original;
    }
    EXPECT_EQ(copy.kind(), FERRY_TRANSFORM_PAD_SEQUENCES);
    EXPECT_EQ(copy.field(), "ids");
    const ferry_transform c = copy.to_c();
    EXPECT_EQ(c.size, sizeof(ferry_transform));
    EXPECT_STREQ(c.field, "ids");
    EXPECT_STREQ(c.mask_name, "m");
    EXPECT_STREQ(c.lengths_name, "l");
    EXPECT_EQ(c.pad_value, 5);
    EXPECT_EQ(c.fixed_length, 1);
    EXPECT_EQ(c.x_name, nullptr);

    const ferry_transform n =
        ferry::transform::normalize("image", {0.5f}, {}, FERRY_LAYOUT_HWC, FERRY_DTYPE_FLOAT16, 0.25)
            .scale(2.0f)
            .to_c();
    EXPECT_EQ(n.channels, 1);
    EXPECT_EQ(n.mean[0], 0.5f);
    EXPECT_EQ(n.std[0], 1.0f);
    EXPECT_EQ(n.layout, FERRY_LAYOUT_HWC);
    EXPECT_EQ(n.dtype, FERRY_DTYPE_FLOAT16);
    EXPECT_EQ(n.flip, 0.25);
    EXPECT_EQ(n.scale, 2.0f);
    EXPECT_EQ(n.input_layout, FERRY_LAYOUT_HWC) << "images are read as [H, W, C] by default";
    const ferry_transform planar = ferry::transform::normalize("image").input_layout(FERRY_LAYOUT_CHW).to_c();
    EXPECT_EQ(planar.input_layout, FERRY_LAYOUT_CHW);

    // Options copy their transforms with them.
    ferry::iterator_options a = ferry::iterator_options().batch_size(4).add(ferry::transform::shift_tokens("w"));
    const ferry::iterator_options b = a;
    a.transforms({});
    ASSERT_EQ(b.transforms().size(), 1u);
    EXPECT_STREQ(b.transforms()[0].to_c().x_name, "x");
    EXPECT_EQ(b.c().transforms, nullptr);
}

} // namespace
