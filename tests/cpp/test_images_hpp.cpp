// Tests of the C++ binding's image sources and crops (ferry::source::image_folder, sample_name,
// transform::center_crop, random_resized_crop and decode_image) on the CPU engine, over PNG files written here (stored,
// uncompressed deflate blocks) from fresh random pixels.

#include "ferry.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "helpers.hpp"

namespace {

using ferry_test::expect_error;
using ferry_test::fresh_seed;
using ferry_test::temp_dir;

uint32_t crc32(const uint8_t* p, std::size_t n, uint32_t c = 0xFFFFFFFFu) {
    for (std::size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) {
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        }
    }
    return c;
}

void put32(std::vector<uint8_t>& out, uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) {
        out.push_back(static_cast<uint8_t>(v >> s));
    }
}

void chunk(std::vector<uint8_t>& out, const char* kind, const std::vector<uint8_t>& data) {
    put32(out, static_cast<uint32_t>(data.size()));
    std::vector<uint8_t> body(kind, kind + 4);
    body.insert(body.end(), data.begin(), data.end());
    out.insert(out.end(), body.begin(), body.end());
    put32(out, crc32(body.data(), body.size()) ^ 0xFFFFFFFFu);
}

// A PNG of an RGB image, its pixel rows in stored (uncompressed) deflate blocks.
std::vector<uint8_t> png(const std::vector<uint8_t>& rgb, int w, int h) {
    std::vector<uint8_t> raw;
    for (int y = 0; y < h; y++) {
        raw.push_back(0);
        raw.insert(raw.end(), rgb.begin() + y * w * 3, rgb.begin() + (y + 1) * w * 3);
    }
    std::vector<uint8_t> z = {0x78, 0x01};
    uint32_t a = 1, b = 0;
    for (uint8_t v : raw) {
        a = (a + v) % 65521;
        b = (b + a) % 65521;
    }
    for (std::size_t off = 0; off < raw.size(); off += 65535) {
        const std::size_t n = std::min<std::size_t>(65535, raw.size() - off);
        z.push_back(off + n == raw.size() ? 1 : 0);
        z.push_back(static_cast<uint8_t>(n));
        z.push_back(static_cast<uint8_t>(n >> 8));
        z.push_back(static_cast<uint8_t>(~n));
        z.push_back(static_cast<uint8_t>(~n >> 8));
        z.insert(z.end(), raw.begin() + static_cast<std::ptrdiff_t>(off),
                 raw.begin() + static_cast<std::ptrdiff_t>(off + n));
    }
    put32(z, (b << 16) | a);
    std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<uint8_t> ihdr;
    put32(ihdr, static_cast<uint32_t>(w));
    put32(ihdr, static_cast<uint32_t>(h));
    ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});
    chunk(out, "IHDR", ihdr);
    chunk(out, "IDAT", z);
    chunk(out, "IEND", {});
    return out;
}

TEST(Images, FolderAndCrops) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    temp_dir dir("ferry-images");
    const int side = 12;
    std::map<std::string, std::pair<std::vector<uint8_t>, std::pair<int, int>>> images;
    for (int k = 0; k < 9; k++) {
        const int w = k % 2 ? side : side + static_cast<int>(rng() % 20),
                  h = k % 2 ? side + static_cast<int>(rng() % 20) : side;
        std::vector<uint8_t> rgb(static_cast<std::size_t>(w * h * 3));
        for (auto& v : rgb) {
            v = static_cast<uint8_t>(rng());
        }
        const std::string cls = k % 3 == 0 ? "a" : "b";
        std::filesystem::create_directories(dir.file(cls));
        const std::string path = dir.file(cls + "/" + std::to_string(k) + ".png");
        const std::vector<uint8_t> bytes = png(rgb, w, h);
        std::ofstream(path, std::ios::binary)
            .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        images[path] = {rgb, {w, h}};
    }
    const ferry::source src = ferry::source::image_folder(dir.file(""));
    ASSERT_EQ(src.len(), 9);
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    // CenterCrop(side, resize=side) of an image whose shorter side is `side` copies its central square.
    ferry::iterator it(eng, src,
                       ferry::iterator_options().batch_size(4).add(
                           ferry::transform::center_crop("image", side, side, {}, {}, FERRY_LAYOUT_HWC)));
    int64_t checked = 0;
    while (auto b = it.next()) {
        const ferry::tensor image = b->field("image");
        ASSERT_EQ(image.shape(), (std::vector<int64_t>{b->size(), side, side, 3}));
        const float* px = image.data<float>();
        const std::vector<int64_t> idx = b->indices();
        for (std::size_t r = 0; r < idx.size(); r++) {
            const auto& im = images.at(src.sample_name(idx[r]));
            const int w = im.second.first, h = im.second.second;
            const int top = static_cast<int>(std::nearbyint((h - side) / 2.0)),
                      left = static_cast<int>(std::nearbyint((w - side) / 2.0));
            for (int y = 0; y < side; y++) {
                for (int x = 0; x < side; x++) {
                    for (int c = 0; c < 3; c++) {
                        const float want =
                            im.first[static_cast<std::size_t>(((top + y) * w + left + x) * 3 + c)] / 255.0f;
                        ASSERT_NEAR(px[((static_cast<int>(r) * side + y) * side + x) * 3 + c], want, 1e-6);
                    }
                }
            }
            checked++;
        }
    }
    EXPECT_EQ(checked, 9);

    ferry::iterator rrc(eng, src,
                        ferry::iterator_options().batch_size(9).shuffle().seed(seed).add(
                            ferry::transform::random_resized_crop("image", 8, {0.5f}, {0.25f}, 0.5)));
    auto b = rrc.next();
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->field("image").shape(), (std::vector<int64_t>{9, 3, 8, 8}));

    EXPECT_EQ(expect_error([&] { (void)ferry::source::image_folder(dir.file("missing")); }).status(), FERRY_ERR_IO);
}

TEST(Images, DecodeImage) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    temp_dir dir("ferry-decode");
    const int w = 7, h = 5;
    std::map<std::string, std::vector<uint8_t>> images;
    std::filesystem::create_directories(dir.file("a"));
    for (int k = 0; k < 4; k++) {
        std::vector<uint8_t> rgb(static_cast<std::size_t>(w * h * 3));
        for (auto& v : rgb) {
            v = static_cast<uint8_t>(rng());
        }
        const std::string path = dir.file("a/" + std::to_string(k) + ".png");
        const std::vector<uint8_t> bytes = png(rgb, w, h);
        std::ofstream(path, std::ios::binary)
            .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        images[path] = rgb;
    }
    const ferry::source src = ferry::source::image_folder(dir.file(""));
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    ferry::iterator it(eng, src,
                       ferry::iterator_options().batch_size(4).add(ferry::transform::decode_image("image", h, w)));
    auto b = it.next();
    ASSERT_TRUE(b.has_value());
    const ferry::tensor image = b->field("image");
    ASSERT_EQ(image.shape(), (std::vector<int64_t>{4, h, w, 3}));
    const uint8_t* px = image.data<uint8_t>();
    const std::vector<int64_t> idx = b->indices();
    for (std::size_t r = 0; r < idx.size(); r++) {
        const std::vector<uint8_t>& want = images.at(src.sample_name(idx[r]));
        EXPECT_EQ(std::memcmp(px + r * want.size(), want.data(), want.size()), 0) << src.sample_name(idx[r]);
    }
    EXPECT_EQ(expect_error([&] {
                  ferry::iterator bad(
                      eng, src,
                      ferry::iterator_options().batch_size(2).add(ferry::transform::decode_image("image", 0, w)));
              }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
}

} // namespace
