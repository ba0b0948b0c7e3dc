// Tests of the C++ binding's sources, iterator, batches and tensors (ferry.hpp).
//
// Every test builds fresh random data and checks each batch it reads against a CPU reference: the
// sample indices of the batch (batch::indices()) pick the expected bytes out of the data.
//
// GpuIterator.* tests run on device 0: they skip without a GPU, and fail instead when
// FERRY_REQUIRE_GPU=1. They copy device fields back with the CUDA driver, opened with dlopen (the library
// named by FERRY_CUDA_LIBRARY when set, else libcuda.so.1), so no CUDA toolkit is needed.
// FakeGpu.* tests run only with FERRY_FAKE_GPU=1, when FERRY_CUDA_LIBRARY names the stand-in driver
// (engine/testdata/fakecuda.c), whose device memory is host memory: they read kDLCUDA tensors directly.

#include "ferry.hpp"

#include <gtest/gtest.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace {

using ferry_test::env_on;
using ferry_test::expect_error;
using ferry_test::fresh_seed;
using ferry_test::temp_dir;

using namespace std::chrono_literals;
using bytes = std::vector<uint8_t>;

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

// A data set in host memory: per field, n samples back to back. It is the reference for every check.
struct dataset {
    int64_t n = 0;
    std::vector<ferry::field> fields;
    std::vector<bytes> data;

    std::vector<const void*> pointers() const {
        std::vector<const void*> p;
        for (const bytes& d : data) {
            p.push_back(d.data());
        }
        return p;
    }

    const uint8_t* sample(std::size_t k, int64_t i) const { return data[k].data() + i * fields[k].bytes(); }
};

void fill_random(bytes& b, std::mt19937_64& rng) {
    for (auto& v : b) {
        v = static_cast<uint8_t>(rng());
    }
}

// Three fields of different types and shapes, random contents.
dataset random_dataset(int64_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    dataset d;
    d.n = n;
    d.fields = {ferry::field::of<uint8_t>("image", {3, 4, 5}), ferry::field::of<int64_t>("label"),
                ferry::field::of<float>("feat", {6})};
    for (const auto& f : d.fields) {
        bytes b(static_cast<std::size_t>(n * f.bytes()));
        fill_random(b, rng);
        d.data.push_back(std::move(b));
    }
    return d;
}

// The CUDA driver, opened with dlopen, to copy device memory back in GPU tests.
class cuda_driver {
public:
    using CUresult = int;
    using CUdevice = int;
    using CUcontext = void*;
    using CUdeviceptr = unsigned long long;

    static cuda_driver& get() {
        static cuda_driver d;
        return d;
    }

    bool ok() const { return lib_ != nullptr; }
    const std::string& why() const { return why_; }

    // Copies a device tensor's bytes to the host with the device's primary context current. The legacy
    // default stream (the one the copy runs on) waits for ferry's copy when the batch came from
    // next(nullptr).
    ::testing::AssertionResult copy(const ferry::tensor& t, bytes& out) const {
        if (!ok()) {
            return ::testing::AssertionFailure() << why_;
        }
        out.assign(t.nbytes(), 0);
        CUdevice dev = 0;
        CUcontext ctx = nullptr, popped = nullptr;
        CUresult r = device_get_(&dev, t.device().device_id);
        if (r == 0) {
            r = retain_(&ctx, dev);
        }
        if (r != 0) {
            return ::testing::AssertionFailure() << "cuDevicePrimaryCtxRetain: CUDA error " << r;
        }
        r = push_(ctx);
        if (r == 0) {
            r = memcpy_dtoh_(out.data(), reinterpret_cast<CUdeviceptr>(t.data()), out.size());
            (void)pop_(&popped);
        }
        (void)release_(dev);
        if (r != 0) {
            return ::testing::AssertionFailure() << "cuMemcpyDtoH_v2: CUDA error " << r;
        }
        return ::testing::AssertionSuccess();
    }

private:
    cuda_driver() {
        const char* path = std::getenv("FERRY_CUDA_LIBRARY");
        if (path == nullptr || path[0] == '\0') {
            path = "libcuda.so.1";
        }
        lib_ = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (lib_ == nullptr) {
            why_ = std::string("dlopen ") + path + ": " + dlerror();
            return;
        }
        if (!(load(init_, "cuInit") && load(device_get_, "cuDeviceGet") && load(retain_, "cuDevicePrimaryCtxRetain") &&
              load(release_, "cuDevicePrimaryCtxRelease_v2") && load(push_, "cuCtxPushCurrent_v2") &&
              load(pop_, "cuCtxPopCurrent_v2") && load(memcpy_dtoh_, "cuMemcpyDtoH_v2"))) {
            lib_ = nullptr;
            return;
        }
        if (init_(0) != 0) {
            why_ = "cuInit failed";
            lib_ = nullptr;
        }
    }

    template <typename F>
    bool load(F& fn, const char* name) {
        void* sym = dlsym(lib_, name);
        if (sym == nullptr) {
            why_ = std::string("the driver has no ") + name;
            return false;
        }
        std::memcpy(&fn, &sym, sizeof(fn));
        return true;
    }

    void* lib_ = nullptr;
    std::string why_;
    CUresult (*init_)(unsigned) = nullptr;
    CUresult (*device_get_)(CUdevice*, int) = nullptr;
    CUresult (*retain_)(CUcontext*, CUdevice) = nullptr;
    CUresult (*release_)(CUdevice) = nullptr;
    CUresult (*push_)(CUcontext) = nullptr;
    CUresult (*pop_)(CUcontext*) = nullptr;
    CUresult (*memcpy_dtoh_)(void*, CUdeviceptr, std::size_t) = nullptr;
};

// How a test reads a tensor's bytes: kDLCPU tensors are always read directly; kDLCUDA tensors through
// the driver (a real GPU) or directly (the stand-in driver's device memory is host memory).
enum class read_mode { host, driver, direct };

::testing::AssertionResult read_tensor(const ferry::tensor& t, read_mode mode, bytes& out) {
    const DLDevice dev = t.device();
    if (mode == read_mode::host) {
        if (dev.device_type != kDLCPU) {
            return ::testing::AssertionFailure() << "a CPU-engine tensor has device type " << dev.device_type;
        }
    } else if (dev.device_type != kDLCUDA) {
        return ::testing::AssertionFailure() << "a GPU-engine tensor has device type " << dev.device_type;
    }
    if (mode == read_mode::driver) {
        return cuda_driver::get().copy(t, out);
    }
    const auto* p = static_cast<const uint8_t*>(t.data());
    out.assign(p, p + t.nbytes());
    return ::testing::AssertionSuccess();
}

DLDataType dl_type(ferry_dtype d) {
    switch (d) {
    case FERRY_DTYPE_BOOL: return DLDataType{kDLBool, 8, 1};
    case FERRY_DTYPE_UINT8:
    case FERRY_DTYPE_UINT16:
    case FERRY_DTYPE_UINT32:
    case FERRY_DTYPE_UINT64: return DLDataType{kDLUInt, static_cast<uint8_t>(8 * ferry::dtype_size(d)), 1};
    case FERRY_DTYPE_INT8:
    case FERRY_DTYPE_INT16:
    case FERRY_DTYPE_INT32:
    case FERRY_DTYPE_INT64: return DLDataType{kDLInt, static_cast<uint8_t>(8 * ferry::dtype_size(d)), 1};
    case FERRY_DTYPE_BFLOAT16: return DLDataType{kDLBfloat, 16, 1};
    default: return DLDataType{kDLFloat, static_cast<uint8_t>(8 * ferry::dtype_size(d)), 1};
    }
}

// Checks every field of b against d at b's indices: shape, dtype and bytes.
::testing::AssertionResult batch_matches(const ferry::batch& b, const dataset& d, read_mode mode = read_mode::host) {
    const std::vector<int64_t> idx = b.indices();
    if (static_cast<int64_t>(idx.size()) != b.size()) {
        return ::testing::AssertionFailure() << "indices() has " << idx.size() << " entries, size() is " << b.size();
    }
    if (b.num_fields() != static_cast<int32_t>(d.fields.size())) {
        return ::testing::AssertionFailure() << "num_fields() is " << b.num_fields();
    }
    for (std::size_t k = 0; k < d.fields.size(); k++) {
        const ferry::field& f = d.fields[k];
        const ferry::tensor t = (k % 2 == 0) ? b.field(static_cast<int32_t>(k)) : b.field(f.name);
        std::vector<int64_t> want_shape{b.size()};
        want_shape.insert(want_shape.end(), f.shape.begin(), f.shape.end());
        if (t.shape() != want_shape) {
            return ::testing::AssertionFailure() << "field " << f.name << " has the wrong shape";
        }
        const DLDataType dt = t.dtype(), want = dl_type(f.dtype);
        if (dt.code != want.code || dt.bits != want.bits || dt.lanes != 1) {
            return ::testing::AssertionFailure()
                   << "field " << f.name << " has dtype code " << int(dt.code) << " bits " << int(dt.bits);
        }
        bytes got;
        auto r = read_tensor(t, mode, got);
        if (!r) {
            return r;
        }
        const std::size_t fb = static_cast<std::size_t>(f.bytes());
        if (got.size() != fb * idx.size()) {
            return ::testing::AssertionFailure() << "field " << f.name << " has " << got.size() << " bytes";
        }
        for (std::size_t row = 0; row < idx.size(); row++) {
            if (idx[row] < 0 || idx[row] >= d.n) {
                return ::testing::AssertionFailure() << "index " << idx[row] << " out of range";
            }
            if (std::memcmp(got.data() + row * fb, d.sample(k, idx[row]), fb) != 0) {
                return ::testing::AssertionFailure()
                       << "field " << f.name << " row " << row << " (sample " << idx[row] << ") of batch " << b.index()
                       << " of epoch " << b.epoch() << " differs from the reference";
            }
        }
    }
    return ::testing::AssertionSuccess();
}

// Everything a batch holds, for bit-for-bit comparisons.
struct snapshot {
    uint64_t epoch;
    int64_t index;
    std::vector<int64_t> indices;
    std::vector<bytes> fields;
    bool operator==(const snapshot& o) const {
        return epoch == o.epoch && index == o.index && indices == o.indices && fields == o.fields;
    }
};

snapshot take(const ferry::batch& b) {
    snapshot s{b.epoch(), b.index(), b.indices(), {}};
    for (int32_t k = 0; k < b.num_fields(); k++) {
        const ferry::tensor t = b.field(k);
        const auto* p = static_cast<const uint8_t*>(t.data());
        s.fields.emplace_back(p, p + t.nbytes());
    }
    return s;
}

void write_file(const std::string& path, const bytes& b) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    ASSERT_TRUE(f.good()) << path;
}

template <typename T>
void put(bytes& b, std::size_t at, T v) {
    std::memcpy(b.data() + at, &v, sizeof(v));
}

ferry::iterator_options sequential(int64_t batch) { return ferry::iterator_options().batch_size(batch).workers(3); }

// Reads every batch of one epoch with next(), checking each against d; returns the batches seen.
int64_t check_epoch(ferry::iterator& it, const dataset& d, uint64_t epoch, read_mode mode = read_mode::host,
                    void* stream = nullptr) {
    std::multiset<int64_t> seen;
    int64_t count = 0;
    while (auto b = it.next(stream)) {
        EXPECT_EQ(b->epoch(), epoch);
        EXPECT_EQ(b->index(), count);
        EXPECT_TRUE(batch_matches(*b, d, mode));
        for (int64_t i : b->indices()) {
            seen.insert(i);
        }
        count++;
        if (count > it.size()) {
            ADD_FAILURE() << "more batches than size()";
            break;
        }
    }
    EXPECT_EQ(count, it.size());
    // Without sharding or drop_last, an epoch is a permutation of the source.
    EXPECT_EQ(static_cast<int64_t>(seen.size()), d.n);
    EXPECT_EQ(static_cast<int64_t>(std::set<int64_t>(seen.begin(), seen.end()).size()), d.n);
    return count;
}

// ---------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------

template <typename T>
constexpr bool move_only_v = !std::is_copy_constructible<T>::value && !std::is_copy_assignable<T>::value &&
                             std::is_nothrow_move_constructible<T>::value &&
                             std::is_nothrow_move_assignable<T>::value && std::is_nothrow_destructible<T>::value;

static_assert(move_only_v<ferry::source>, "source is move-only");
static_assert(move_only_v<ferry::tensor>, "tensor is move-only");
static_assert(move_only_v<ferry::batch>, "batch is move-only");
static_assert(move_only_v<ferry::iterator>, "iterator is move-only");
static_assert(std::is_same<decltype(std::declval<ferry::iterator&>().next()), std::optional<ferry::batch>>::value,
              "next() returns std::optional<batch>");
static_assert(!std::is_convertible<DLManagedTensorVersioned*, ferry::tensor>::value, "adopting is explicit");
static_assert(ferry::dtype_of<float>::value == FERRY_DTYPE_FLOAT32, "dtype_of<float>");
static_assert(ferry::dtype_size(FERRY_DTYPE_BFLOAT16) == 2, "bfloat16 is 2 bytes");

// ---------------------------------------------------------------------------------------------------
// Fields and sources
// ---------------------------------------------------------------------------------------------------

TEST(Field, Helpers) {
    const auto f = ferry::field::of<uint16_t>("tokens", {4, 7}, 12);
    EXPECT_EQ(f.dtype, FERRY_DTYPE_UINT16);
    EXPECT_EQ(f.elements(), 28);
    EXPECT_EQ(f.bytes(), 56);
    const ferry_field c = f.to_c();
    EXPECT_STREQ(c.name, "tokens");
    EXPECT_EQ(c.ndim, 2);
    EXPECT_EQ(c.shape[0], 4);
    EXPECT_EQ(c.shape[1], 7);
    EXPECT_EQ(c.offset, 12);
    EXPECT_EQ(ferry::field::from_c(c), f);
    EXPECT_EQ(ferry::field("s", FERRY_DTYPE_FLOAT64).bytes(), 8);
    EXPECT_EQ(ferry::dtype_size(static_cast<ferry_dtype>(77)), 0u);
    const auto nine = ferry::field::of<uint8_t>("x", std::vector<int64_t>(9, 1));
    EXPECT_EQ(expect_error([&] { (void)nine.to_c(); }).status(), FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Source, MemoryDescribesItself) {
    const dataset d = random_dataset(37, fresh_seed());
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    ASSERT_TRUE(src);
    EXPECT_EQ(src.len(), 37);
    EXPECT_EQ(src.fields(), d.fields);
}

TEST(Source, BadInputThrows) {
    const dataset d = random_dataset(8, fresh_seed());
    auto ptrs = d.pointers();
    ptrs.pop_back();
    EXPECT_EQ(expect_error([&] { ferry::source::memory(d.n, d.fields, ptrs); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { ferry::source::memory(0, d.fields, d.pointers()); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    auto dup = d.fields;
    dup[1].name = dup[0].name;
    EXPECT_EQ(expect_error([&] { ferry::source::memory(d.n, dup, d.pointers()); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    auto zero = d.fields;
    zero[0].shape[1] = 0;
    EXPECT_EQ(expect_error([&] { ferry::source::memory(d.n, zero, d.pointers()); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([] { ferry::source::cifar10("/nonexistent/data_batch_1.bin"); }).status(), FERRY_ERR_IO);
    EXPECT_EQ(expect_error([&] { ferry::source::callback(4, d.fields, nullptr); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    const ferry::source empty;
    EXPECT_EQ(expect_error([&] { (void)empty.len(); }).status(), FERRY_ERR_INVALID_HANDLE);
}

// ---------------------------------------------------------------------------------------------------
// Iteration
// ---------------------------------------------------------------------------------------------------

TEST(Iterator, RangeForOverEpochs) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    const dataset d = random_dataset(203, seed);
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    ferry::iterator it(eng, src, ferry::iterator_options().batch_size(16).shuffle().seed(seed).prefetch(3));
    ASSERT_EQ(it.size(), 13); // ceil(203 / 16)

    std::vector<std::vector<int64_t>> orders;
    for (uint64_t epoch = 0; epoch < 4; epoch++) {
        std::vector<int64_t> order;
        int64_t count = 0;
        auto body = [&](ferry::batch& b) {
            EXPECT_EQ(b.epoch(), epoch);
            EXPECT_EQ(b.index(), count);
            EXPECT_EQ(b.size(), count == 12 ? 203 - 12 * 16 : 16);
            EXPECT_TRUE(batch_matches(b, d));
            const auto idx = b.indices();
            order.insert(order.end(), idx.begin(), idx.end());
            count++;
        };
        if (epoch % 2 == 0) {
            for (ferry::batch& b : it.epoch()) {
                body(b);
            }
        } else {
            for (auto& b : it) {
                body(b);
            }
        }
        EXPECT_EQ(count, 13);
        EXPECT_EQ(it.state(), (ferry::position{epoch + 1, 0}));
        std::vector<int64_t> sorted = order;
        std::sort(sorted.begin(), sorted.end());
        for (int64_t i = 0; i < d.n; i++) {
            ASSERT_EQ(sorted[static_cast<std::size_t>(i)], i) << "epoch " << epoch << " is not a permutation";
        }
        orders.push_back(order);
    }
    // Each epoch is shuffled anew.
    EXPECT_NE(orders[0], orders[1]);
    EXPECT_NE(orders[1], orders[2]);
}

TEST(Iterator, NextEndsEachEpochOnce) {
    const dataset d = random_dataset(50, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    ferry::iterator it(eng, src, sequential(10).drop_last());
    ASSERT_EQ(it.size(), 5);
    for (uint64_t e = 0; e < 3; e++) {
        EXPECT_EQ(check_epoch(it, d, e), 5);
    }
    // Sequential order: batch b holds samples 10b .. 10b+9.
    auto b = it.next();
    ASSERT_TRUE(b);
    EXPECT_EQ(b->epoch(), 3u);
    const std::vector<int64_t> want{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    EXPECT_EQ(b->indices(), want);
}

TEST(Iterator, NextWaitReturnsBetweenWaits) {
    const dataset d = random_dataset(8, fresh_seed());
    // Sample 4 is slow: the first call for the second batch returns with no batch, the next ones take it.
    std::atomic<bool> slow{true};
    ferry::source src = ferry::source::callback(d.n, d.fields, [&](int64_t i, ferry::sample_buffers& buf) {
        if (i == 4) {
            while (slow.load()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
        }
        for (int32_t k = 0; k < buf.size(); k++) {
            std::memcpy(buf.data(k), d.sample(static_cast<std::size_t>(k), i), static_cast<std::size_t>(buf.bytes(k)));
        }
    });
    struct release_on_exit {
        std::atomic<bool>& flag;
        ~release_on_exit() { flag = false; }  // a failed assertion must not leave a worker waiting
    };
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::iterator it(eng, src, sequential(4).timeout(std::chrono::seconds(30)));
    const release_on_exit guard{slow};
    std::optional<ferry::batch> b;
    ASSERT_EQ(it.next_wait(b, std::chrono::seconds(20)), ferry::iterator::wait_result::batch);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->indices(), (std::vector<int64_t>{0, 1, 2, 3}));
    b.reset();
    EXPECT_EQ(it.next_wait(b, std::chrono::milliseconds(20)), ferry::iterator::wait_result::not_yet);
    EXPECT_FALSE(b);
    slow = false;
    ferry::iterator::wait_result r = ferry::iterator::wait_result::not_yet;
    for (int i = 0; i < 1000 && r == ferry::iterator::wait_result::not_yet; i++) {
        r = it.next_wait(b, std::chrono::milliseconds(20));
    }
    ASSERT_EQ(r, ferry::iterator::wait_result::batch);
    EXPECT_EQ(b->indices(), (std::vector<int64_t>{4, 5, 6, 7}));
    b.reset();
    EXPECT_EQ(it.next_wait(b, std::chrono::seconds(20)), ferry::iterator::wait_result::end_of_epoch);
    EXPECT_EQ(expect_error([&] { it.next_wait(b, std::chrono::milliseconds(0)); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Iterator, ShortLastBatchAndDropLast) {
    const dataset d = random_dataset(23, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    {
        ferry::iterator it(eng, src, sequential(5));
        std::vector<int64_t> sizes;
        for (auto& b : it) {
            EXPECT_TRUE(batch_matches(b, d));
            sizes.push_back(b.size());
        }
        EXPECT_EQ(sizes, (std::vector<int64_t>{5, 5, 5, 5, 3}));
    }
    {
        ferry::iterator it(eng, src, sequential(5).drop_last().shuffle().seed(3));
        int64_t n = 0;
        for (auto& b : it) {
            EXPECT_EQ(b.size(), 5);
            EXPECT_TRUE(batch_matches(b, d));
            n++;
        }
        EXPECT_EQ(n, 4);
    }
}

TEST(Iterator, ShardsLikeDistributedSampler) {
    const dataset d = random_dataset(30, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    std::multiset<int64_t> all;
    for (int32_t rank = 0; rank < 4; rank++) {
        ferry::iterator it(eng, src, sequential(4).rank(rank).world_size(4));
        EXPECT_EQ(it.size(), 2); // ceil(30 / 4) = 8 samples per rank, padded by wrapping
        for (auto& b : it) {
            EXPECT_TRUE(batch_matches(b, d));
            for (int64_t i : b.indices()) {
                EXPECT_EQ(all.count(i) == 0 || i < 2, true) << "sample " << i << " on two ranks";
                all.insert(i);
            }
        }
    }
    EXPECT_EQ(all.size(), 32u); // 30 samples and 2 wrapped ones
}

TEST(Iterator, TensorOutlivesItsBatch) {
    const dataset d = random_dataset(40, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    // No pinned budget: the ring may not grow, so the slot a tensor holds shows as a refusal.
    ferry::iterator it(eng, src, sequential(4).prefetch(2).pinned_budget(-1));

    ferry::tensor kept;
    std::vector<int64_t> kept_indices;
    {
        auto b0 = it.next();
        ASSERT_TRUE(b0);
        kept = b0->field("feat");
        kept_indices = b0->indices();
    } // batch 0 released; its slot stays held by the tensor
    auto check_kept = [&] {
        ASSERT_TRUE(kept);
        const std::size_t fb = static_cast<std::size_t>(d.fields[2].bytes());
        for (std::size_t r = 0; r < kept_indices.size(); r++) {
            ASSERT_EQ(std::memcmp(kept.data<uint8_t>() + r * fb, d.sample(2, kept_indices[r]), fb), 0) << "row " << r;
        }
    };
    check_kept();
    {
        auto b1 = it.next();
        ASSERT_TRUE(b1);
        EXPECT_EQ(b1->index(), 1);
        EXPECT_TRUE(batch_matches(*b1, d));
    }
    // Batch 2 needs batch 0's slot, which the tensor holds: refused at once until the tensor goes.
    const auto e = expect_error([&] { (void)it.next(); });
    EXPECT_EQ(e.status(), FERRY_ERR_LIMIT) << e.what();
    EXPECT_NE(std::string(e.what()).find("still held by the caller"), std::string::npos) << e.what();
    EXPECT_EQ(it.state(), (ferry::position{0, 2}));
    check_kept(); // the held memory was not overwritten
    kept.reset();
    auto b2 = it.next();
    ASSERT_TRUE(b2);
    EXPECT_EQ(b2->index(), 2);
    EXPECT_TRUE(batch_matches(*b2, d));
}

TEST(Iterator, KeptBatchesGrowTheRing) {
    const dataset d = random_dataset(40, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    ferry::iterator it(eng, src, sequential(4).prefetch(2));
    std::vector<ferry::batch> kept;
    for (ferry::batch& b : it.epoch()) {
        kept.push_back(std::move(b)); // every batch of the epoch, from a ring of two
    }
    ASSERT_EQ(kept.size(), 10u);
    for (std::size_t k = 0; k < kept.size(); k++) {
        EXPECT_EQ(kept[k].index(), static_cast<int64_t>(k));
        EXPECT_TRUE(batch_matches(kept[k], d)) << "batch " << k << " changed while held";
    }
}

TEST(Feed, PushesBatchesOfChangingShapesAndKeepsThem) {
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::feed f(eng, {ferry::transform::shift_tokens("tokens")}, 2);
    std::mt19937_64 rng(fresh_seed());
    std::vector<ferry::batch> kept;
    std::vector<ferry::tensor> kept_x;
    std::vector<std::vector<uint16_t>> sources;
    for (int k = 0; k < 8; k++) {
        const int64_t rows = 1 + static_cast<int64_t>(rng() % 9), n = 2 + static_cast<int64_t>(rng() % 30);
        std::vector<uint16_t> tok(static_cast<std::size_t>(rows * (n + 1)));
        for (uint16_t& v : tok) {
            v = static_cast<uint16_t>(rng());
        }
        ferry::host_tensor t{"tokens",
                             FERRY_DTYPE_UINT16,
                             {rows, n + 1},
                             tok.data(),
                             static_cast<int64_t>(tok.size() * sizeof(uint16_t))};
        ferry::batch b = f.push({t});
        EXPECT_EQ(b.size(), rows);
        EXPECT_EQ(b.num_fields(), 2); // x and y
        const ferry::tensor x = b.field(0), y = b.field(1);
        EXPECT_EQ(x.shape(), (std::vector<int64_t>{rows, n}));
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t j = 0; j < n; j++) {
                ASSERT_EQ(x.data<int64_t>()[r * n + j], tok[static_cast<std::size_t>(r * (n + 1) + j)]);
                ASSERT_EQ(y.data<int64_t>()[r * n + j], tok[static_cast<std::size_t>(r * (n + 1) + j + 1)]);
            }
        }
        kept_x.push_back(b.field(0));
        kept.push_back(std::move(b)); // every batch held: the feed adds slots
        sources.push_back(std::move(tok));
    }
    EXPECT_EQ(f.stats().batches, 8u);
    const ferry::host_tensor bad{"tokens", FERRY_DTYPE_UINT16, {2, 3}, sources[0].data(), 5};
    EXPECT_EQ(expect_error([&] { (void)f.push({bad}); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    f.reset(); // the tensors of batches held stay valid
    kept.clear();
    for (std::size_t k = 0; k < kept_x.size(); k++) {
        EXPECT_EQ(kept_x[k].data<int64_t>()[0], sources[k][0]);
    }
}

TEST(Iterator, MoveSemantics) {
    const dataset d = random_dataset(64, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::source s0 = ferry::source::memory(d.n, d.fields, d.pointers());
    ferry::source src = std::move(s0);
    EXPECT_FALSE(s0);
    EXPECT_EQ(expect_error([&] { (void)s0.fields(); }).status(), FERRY_ERR_INVALID_HANDLE);

    // Three slots, which may not grow: a batch that was not released shows up as FERRY_ERR_LIMIT.
    ferry::iterator i0(eng, src, sequential(8).prefetch(3).pinned_budget(-1));
    auto b0 = i0.next();
    ASSERT_TRUE(b0);
    ferry::iterator it = std::move(i0); // mid-epoch: the moved-to iterator continues
    EXPECT_FALSE(i0);
    EXPECT_EQ(expect_error([&] { (void)i0.next(); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { (void)i0.size(); }).status(), FERRY_ERR_INVALID_HANDLE);

    ferry::batch held = std::move(*b0);
    EXPECT_FALSE(*b0);
    EXPECT_EQ(expect_error([&] { (void)b0->size(); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { (void)b0->field(0); }).status(), FERRY_ERR_INVALID_HANDLE);
    b0.reset(); // destroying a moved-from batch releases nothing
    EXPECT_EQ(held.index(), 0);
    EXPECT_TRUE(batch_matches(held, d));

    // Move assignment releases the batch held before (else the ring would grow by a slot per batch).
    for (int64_t k = 1; k < 8; k++) {
        auto nb = it.next();
        ASSERT_TRUE(nb) << k;
        held = std::move(*nb);
        EXPECT_EQ(held.index(), k);
        EXPECT_TRUE(batch_matches(held, d));
    }
    held.release();
    EXPECT_FALSE(held);
    EXPECT_EQ(expect_error([&] { held.release(); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_FALSE(it.next()); // end of epoch 0

    // Tensors: move, release() and a manual deleter call.
    auto b = it.next();
    ASSERT_TRUE(b);
    ferry::tensor t0 = b->field("label");
    ferry::tensor t1 = std::move(t0);
    EXPECT_FALSE(t0);
    EXPECT_EQ(t0.data(), nullptr);
    EXPECT_EQ(expect_error([&] { (void)t0.shape(); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(t1.shape(), (std::vector<int64_t>{8}));
    EXPECT_EQ(t1.numel(), 8);
    EXPECT_EQ(t1.nbytes(), 64u);
    EXPECT_EQ(t1.device().device_type, kDLCPU);
    DLManagedTensorVersioned* raw = t1.release();
    EXPECT_FALSE(t1);
    ASSERT_NE(raw, nullptr);
    EXPECT_EQ(raw->version.major, 1u);
    ASSERT_NE(raw->deleter, nullptr);
    raw->deleter(raw);
    b.reset();

    // A batch moved out of a range-for stays valid after the loop moved on. (It keeps its slot of the
    // ring, so it is the epoch's last batch here: a later batch would need that slot.)
    std::vector<ferry::batch> kept;
    int64_t n = 0;
    for (ferry::batch& x : it) {
        if (n++ == 6) {
            kept.push_back(std::move(x));
        }
    }
    EXPECT_EQ(n, 7);
    ASSERT_EQ(kept.size(), 1u);
    EXPECT_EQ(kept[0].index(), 7); // batch 0 of epoch 1 came from next(); the loop began with batch 1
    EXPECT_EQ(kept[0].epoch(), 1u);
    EXPECT_TRUE(batch_matches(kept[0], d));
}

TEST(Iterator, BadOptionsAndInputThrow) {
    const dataset d = random_dataset(16, fresh_seed());
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    auto status = [&](const ferry::iterator_options& o) {
        return expect_error([&] { ferry::iterator it(eng, src, o); }).status();
    };
    EXPECT_EQ(status(ferry::iterator_options()), FERRY_ERR_INVALID_ARGUMENT); // no batch size
    EXPECT_EQ(status(sequential(4).prefetch(1)), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(status(sequential(4).workers(-1)), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(status(sequential(4).flags(0x100)), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(status(sequential(17).drop_last()), FERRY_ERR_INVALID_ARGUMENT); // no batch at all
    EXPECT_EQ(expect_error([] { ferry::iterator_options().timeout(-1ms); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    const ferry::source empty_src;
    EXPECT_EQ(expect_error([&] { ferry::iterator it(eng, empty_src, sequential(4)); }).status(),
              FERRY_ERR_INVALID_HANDLE);

    ferry::iterator it(eng, src, sequential(4));
    auto b = it.next();
    ASSERT_TRUE(b);
    EXPECT_EQ(expect_error([&] { (void)b->field("nope"); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { (void)b->field(3); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { (void)b->field(-1); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_NO_THROW(b->wait(nullptr)); // nothing to wait for on the CPU engine
    EXPECT_EQ(expect_error([&] { it.restore(ferry::position{0, 5}); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { it.restore(ferry::position{0, -1}); }).status(), FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Iterator, RestoreIsBitForBit) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    const dataset d = random_dataset(90, seed);
    const ferry::engine eng(FERRY_DEVICE_CPU);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    const auto opts = ferry::iterator_options().batch_size(7).shuffle().seed(seed ^ 0x5eed).prefetch(3);

    // An uninterrupted run of three epochs, with the position before each batch and each epoch's end.
    std::vector<snapshot> run;
    std::vector<ferry::position> before;
    ferry::iterator ref(eng, src, opts);
    ASSERT_EQ(ref.size(), 13);
    for (int e = 0; e < 3; e++) {
        for (;;) {
            before.push_back(ref.state());
            auto b = ref.next();
            if (!b) {
                break;
            }
            EXPECT_TRUE(batch_matches(*b, d));
            run.push_back(take(*b));
        }
    }
    ASSERT_EQ(run.size(), 39u);

    // The batches from position p of the run on, read with next(); an end of epoch reads as nullopt.
    auto tail_from = [&](std::size_t pos_index, ferry::iterator& it, std::size_t count) {
        std::size_t r = 0; // index into run of the next batch expected
        for (std::size_t i = 0; i < pos_index; i++) {
            if (before[i].batch < 13) {
                r++;
            }
        }
        for (std::size_t i = pos_index; i < pos_index + count && i < before.size(); i++) {
            ASSERT_EQ(it.state(), before[i]) << "step " << i;
            auto b = it.next();
            if (before[i].batch == 13) {
                ASSERT_FALSE(b) << "step " << i << " should end the epoch";
                continue;
            }
            ASSERT_TRUE(b) << "step " << i;
            ASSERT_TRUE(take(*b) == run[r]) << "batch at step " << i << " differs";
            r++;
        }
    };

    std::mt19937_64 rng(seed);
    // A fresh iterator restored to positions of the run, including epoch ends (batch == size()).
    for (std::size_t p : {std::size_t{0}, std::size_t{5}, std::size_t{13}, std::size_t{14}, std::size_t{27},
                          static_cast<std::size_t>(rng() % before.size())}) {
        ferry::iterator it(eng, src, opts);
        it.restore(before[p]);
        tail_from(p, it, 16);
    }
    // The same iterator moved backwards and forwards.
    ferry::iterator it(eng, src, opts);
    it.restore(before[30]);
    tail_from(30, it, 5);
    it.restore(before[3]);
    tail_from(3, it, 20);
    // set_epoch starts an epoch from its first batch.
    it.set_epoch(2);
    EXPECT_EQ(it.state(), (ferry::position{2, 0}));
    tail_from(28, it, 14);
    // An epoch beyond the run, twice, gives equal batches.
    it.set_epoch(9);
    auto a = it.next();
    ASSERT_TRUE(a);
    const snapshot first = take(*a);
    a.reset();
    it.set_epoch(9);
    auto again = it.next();
    ASSERT_TRUE(again);
    EXPECT_TRUE(take(*again) == first);
    EXPECT_TRUE(batch_matches(*again, d));
}

// ---------------------------------------------------------------------------------------------------
// Callback source
// ---------------------------------------------------------------------------------------------------

TEST(Callback, FillsSamples) {
    const dataset d = random_dataset(77, fresh_seed());
    std::atomic<int> wrong_sizes{0};
    std::atomic<int64_t> calls{0};
    ferry::source src = ferry::source::callback(d.n, d.fields, [&](int64_t i, ferry::sample_buffers& buf) {
        calls++;
        if (buf.size() != 3) {
            wrong_sizes++;
        }
        for (int32_t k = 0; k < buf.size(); k++) {
            if (buf.bytes(k) != d.fields[static_cast<std::size_t>(k)].bytes()) {
                wrong_sizes++;
            }
            std::memcpy(buf.data(k), d.sample(static_cast<std::size_t>(k), i), static_cast<std::size_t>(buf.bytes(k)));
        }
        float* feat = buf.data<float>(2);
        (void)feat;
    });
    EXPECT_EQ(src.len(), 77);
    EXPECT_EQ(src.fields(), d.fields);
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::iterator it(eng, src, ferry::iterator_options().batch_size(8).shuffle().seed(fresh_seed()));
    check_epoch(it, d, 0);
    check_epoch(it, d, 1);
    EXPECT_EQ(wrong_sizes.load(), 0);
    EXPECT_GE(calls.load(), 2 * 77);
}

TEST(Callback, ThrowingFunctionFailsTheBatchAndTheIteratorGoesOn) {
    const dataset d = random_dataset(64, fresh_seed());
    std::mt19937_64 rng(fresh_seed());
    const int64_t bad = static_cast<int64_t>(rng() % 64);
    const int64_t odd = (bad + 8 + static_cast<int64_t>(rng() % 48)) % 64; // another batch: throws a non-std value
    SCOPED_TRACE("bad sample " + std::to_string(bad) + ", odd sample " + std::to_string(odd));
    ferry::source src = ferry::source::callback(d.n, d.fields, [&](int64_t i, ferry::sample_buffers& buf) {
        if (i == bad) {
            throw std::runtime_error("cannot decode sample " + std::to_string(i));
        }
        if (i == odd) {
            throw 42;
        }
        for (int32_t k = 0; k < buf.size(); k++) {
            std::memcpy(buf.data(k), d.sample(static_cast<std::size_t>(k), i), static_cast<std::size_t>(buf.bytes(k)));
        }
    });
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::iterator it(eng, src, sequential(8).prefetch(3));

    // With next(): the failing batches throw FERRY_ERR_IO naming the sample; the others are intact.
    for (int64_t k = 0; k < 8; k++) {
        if (k == bad / 8 || k == odd / 8) {
            const int64_t sample = k == bad / 8 ? bad : odd;
            const auto e = expect_error([&] { (void)it.next(); });
            EXPECT_EQ(e.status(), FERRY_ERR_IO) << e.what();
            EXPECT_NE(e.message().find("sample " + std::to_string(sample)), std::string::npos) << e.message();
            EXPECT_EQ(it.state(), (ferry::position{0, k + 1}));
            continue;
        }
        auto b = it.next();
        ASSERT_TRUE(b) << "batch " << k;
        EXPECT_EQ(b->index(), k);
        EXPECT_TRUE(batch_matches(*b, d));
    }
    EXPECT_FALSE(it.next());

    // With range-for: the error leaves the loop; a new loop continues the epoch after the failed batch.
    std::vector<int64_t> seen;
    int failures = 0;
    for (int attempt = 0; attempt < 4; attempt++) {
        try {
            for (auto& b : it) {
                EXPECT_TRUE(batch_matches(b, d));
                seen.push_back(b.index());
            }
            break;
        } catch (const ferry::error& e) {
            EXPECT_EQ(e.status(), FERRY_ERR_IO);
            failures++;
        }
    }
    EXPECT_EQ(failures, 2);
    std::vector<int64_t> want;
    for (int64_t k = 0; k < 8; k++) {
        if (k != bad / 8 && k != odd / 8) {
            want.push_back(k);
        }
    }
    EXPECT_EQ(seen, want);
    EXPECT_EQ(it.state(), (ferry::position{2, 0}));
}

TEST(Callback, FunctionLivesAsLongAsTheSource) {
    const dataset d = random_dataset(20, fresh_seed());
    auto counter = std::make_shared<int>(0);
    std::weak_ptr<int> watch = counter;
    ferry::source moved;
    {
        ferry::source src = ferry::source::callback(d.n, d.fields, [counter, &d](int64_t i, ferry::sample_buffers& b) {
            for (int32_t k = 0; k < b.size(); k++) {
                std::memcpy(b.data(k), d.sample(static_cast<std::size_t>(k), i), static_cast<std::size_t>(b.bytes(k)));
            }
        });
        moved = std::move(src);
    }
    counter.reset();
    EXPECT_FALSE(watch.expired()); // the function (and its capture) is owned by the source
    {
        const ferry::engine eng(FERRY_DEVICE_CPU);
        ferry::iterator it(eng, moved, sequential(6));
        check_epoch(it, d, 0);
    }
    moved.reset();
    EXPECT_TRUE(watch.expired());
}

// ---------------------------------------------------------------------------------------------------
// File sources
// ---------------------------------------------------------------------------------------------------

TEST(Files, Records) {
    const uint64_t seed = fresh_seed();
    std::mt19937_64 rng(seed);
    const int64_t n = 57, header = 24, record = 40;
    bytes file(static_cast<std::size_t>(header + n * record));
    fill_random(file, rng);
    dataset d;
    d.n = n;
    d.fields = {ferry::field::of<int32_t>("a", {}, 4), ferry::field::of<uint16_t>("b", {3}, 10),
                ferry::field::of<float>("c", {2, 2}, 20)};
    for (const auto& f : d.fields) {
        bytes col;
        for (int64_t i = 0; i < n; i++) {
            const auto* p = file.data() + header + i * record + f.offset;
            col.insert(col.end(), p, p + f.bytes());
        }
        d.data.push_back(std::move(col));
    }
    temp_dir dir("ferry-iter");
    write_file(dir.file("r.bin"), file);
    const ferry::source src = ferry::source::records(dir.file("r.bin"), record, header, d.fields);
    EXPECT_EQ(src.len(), n);
    EXPECT_EQ(src.fields(), d.fields);
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::iterator it(eng, src, sequential(10).shuffle().seed(seed));
    check_epoch(it, d, 0);

    // A partial record is an error, never a silent truncation.
    file.push_back(0);
    write_file(dir.file("short.bin"), file);
    EXPECT_EQ(expect_error([&] { ferry::source::records(dir.file("short.bin"), record, header, d.fields); }).status(),
              FERRY_ERR_FORMAT);
    EXPECT_EQ(expect_error([&] { ferry::source::records(dir.file("r.bin"), 20, header, d.fields); }).status(),
              FERRY_ERR_INVALID_ARGUMENT); // a field does not fit in the record
}

TEST(Files, Cifar10) {
    std::mt19937_64 rng(fresh_seed());
    const int64_t n = 33;
    bytes file(static_cast<std::size_t>(n * 3073));
    fill_random(file, rng);
    for (int64_t i = 0; i < n; i++) {
        file[static_cast<std::size_t>(i * 3073)] = static_cast<uint8_t>(rng() % 10);
    }
    dataset d;
    d.n = n;
    d.fields = {ferry::field::of<uint8_t>("label", {}, 0), ferry::field::of<uint8_t>("image", {3, 32, 32}, 1)};
    d.data.resize(2);
    for (int64_t i = 0; i < n; i++) {
        const auto* r = file.data() + i * 3073;
        d.data[0].push_back(r[0]);
        d.data[1].insert(d.data[1].end(), r + 1, r + 3073);
    }
    temp_dir dir("ferry-iter");
    write_file(dir.file("data_batch_1.bin"), file);
    const ferry::source src = ferry::source::cifar10(dir.file("data_batch_1.bin"));
    EXPECT_EQ(src.len(), n);
    EXPECT_EQ(src.fields(), d.fields);
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::iterator it(eng, src, sequential(8).shuffle().seed(rng()));
    check_epoch(it, d, 0);
    check_epoch(it, d, 1);
}

// A version 1.0 .npy file: magic, header length, a dict padded with spaces to a multiple of 64 bytes.
bytes npy_file(const std::string& descr, const std::vector<int64_t>& shape, const bytes& data) {
    std::string dims;
    for (int64_t s : shape) {
        dims += std::to_string(s) + ", ";
    }
    if (shape.size() > 1) {
        dims.erase(dims.size() - 2); // "(n, m)"; a 1-d shape keeps its comma: "(n,)"
    } else {
        dims.erase(dims.size() - 1);
    }
    std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
    while ((10 + dict.size() + 1) % 64 != 0) {
        dict += ' ';
    }
    dict += '\n';
    std::string head = "\x93NUMPY";
    head += '\x01';
    head += '\x00';
    head += static_cast<char>(dict.size() & 0xff);
    head += static_cast<char>(dict.size() >> 8);
    head += dict;
    bytes out(head.size() + data.size());
    std::memcpy(out.data(), head.data(), head.size());
    std::memcpy(out.data() + head.size(), data.data(), data.size());
    return out;
}

TEST(Files, Npy) {
    const uint64_t seed = fresh_seed();
    const int64_t n = 45;
    dataset d = random_dataset(n, seed);
    // .npy fields come in name order.
    d.fields = {ferry::field::of<float>("feat", {6}), ferry::field::of<uint8_t>("image", {3, 4, 5}),
                ferry::field::of<int64_t>("label")};
    std::swap(d.data[0], d.data[2]);
    std::swap(d.data[1], d.data[2]);
    temp_dir dir("ferry-iter");
    write_file(dir.file("image.npy"), npy_file("|u1", {n, 3, 4, 5}, d.data[1]));
    write_file(dir.file("label.npy"), npy_file("<i8", {n}, d.data[2]));
    write_file(dir.file("feat.npy"), npy_file("<f4", {n, 6}, d.data[0]));
    const ferry::source src = ferry::source::npy(
        {{"image", dir.file("image.npy")}, {"label", dir.file("label.npy")}, {"feat", dir.file("feat.npy")}});
    EXPECT_EQ(src.len(), n);
    const auto got = src.fields();
    ASSERT_EQ(got.size(), 3u);
    // Match the reference to the source's field order, whatever it is.
    dataset ordered;
    ordered.n = n;
    for (const auto& f : got) {
        for (std::size_t k = 0; k < 3; k++) {
            if (d.fields[k].name == f.name) {
                EXPECT_EQ(f, d.fields[k]);
                ordered.fields.push_back(d.fields[k]);
                ordered.data.push_back(d.data[k]);
            }
        }
    }
    ASSERT_EQ(ordered.fields.size(), 3u);
    const ferry::engine eng(FERRY_DEVICE_CPU);
    ferry::iterator it(eng, src, sequential(6).shuffle().seed(seed));
    check_epoch(it, ordered, 0);

    write_file(dir.file("short.npy"), npy_file("<i8", {n - 1}, bytes(static_cast<std::size_t>((n - 1) * 8))));
    EXPECT_EQ(expect_error([&] {
                  ferry::source::npy({{"image", dir.file("image.npy")}, {"label", dir.file("short.npy")}});
              }).status(),
              FERRY_ERR_FORMAT);
}

// Checks that x and y of every batch of a token source are windows of tokens: x at the sample's offset
// (i * seq_len sequentially, anywhere in random mode) and y one token further.
template <typename T>
void check_tokens(ferry::iterator& it, const std::vector<T>& tokens, int64_t seq_len, bool random) {
    int64_t batches = 0;
    std::set<int64_t> offsets;
    for (auto& b : it) {
        const ferry::tensor x = b.field("x"), y = b.field("y");
        ASSERT_EQ(x.shape(), (std::vector<int64_t>{b.size(), seq_len}));
        ASSERT_EQ(x.dtype().bits, 8 * sizeof(T));
        ASSERT_EQ(x.dtype().code, kDLUInt);
        const auto idx = b.indices();
        for (std::size_t r = 0; r < idx.size(); r++) {
            const T* xr = x.data<T>() + r * static_cast<std::size_t>(seq_len);
            const T* yr = y.data<T>() + r * static_cast<std::size_t>(seq_len);
            int64_t off = idx[r] * seq_len;
            if (random) {
                off = -1;
                for (std::size_t o = 0; o + static_cast<std::size_t>(seq_len) < tokens.size(); o++) {
                    if (std::equal(xr, xr + seq_len, tokens.begin() + static_cast<std::ptrdiff_t>(o))) {
                        off = static_cast<int64_t>(o);
                        break;
                    }
                }
                ASSERT_GE(off, 0) << "x of sample " << idx[r] << " is no window of the file";
                offsets.insert(off);
            }
            ASSERT_TRUE(std::equal(xr, xr + seq_len, tokens.begin() + off)) << "x of sample " << idx[r];
            ASSERT_TRUE(std::equal(yr, yr + seq_len, tokens.begin() + off + 1)) << "y of sample " << idx[r];
        }
        batches++;
    }
    EXPECT_EQ(batches, it.size());
    if (random) {
        EXPECT_GT(offsets.size(), 1u);
    }
}

TEST(Files, Tokens) {
    std::mt19937_64 rng(fresh_seed());
    const int64_t seq_len = 16;
    temp_dir dir("ferry-iter");
    const ferry::engine eng(FERRY_DEVICE_CPU);

    // nanoGPT's flat uint16 file, sequential and random windows.
    std::vector<uint16_t> t16(1000);
    for (auto& t : t16) {
        t = static_cast<uint16_t>(rng());
    }
    bytes f16(t16.size() * 2);
    std::memcpy(f16.data(), t16.data(), f16.size());
    write_file(dir.file("train.bin"), f16);
    {
        const ferry::source src = ferry::source::tokens(dir.file("train.bin"), seq_len);
        EXPECT_EQ(src.len(), (1000 - 1) / seq_len);
        EXPECT_EQ(src.fields(), (std::vector<ferry::field>{ferry::field::of<uint16_t>("x", {seq_len}),
                                                           ferry::field::of<uint16_t>("y", {seq_len})}));
        ferry::iterator it(eng, src, sequential(4).shuffle().seed(rng()));
        check_tokens(it, t16, seq_len, false);
    }
    {
        const ferry::source src =
            ferry::source::tokens(dir.file("train.bin"), seq_len, FERRY_TOKENS_UINT16, true, rng());
        ferry::iterator it(eng, src, sequential(4));
        check_tokens(it, t16, seq_len, true);
    }

    // llm.c shards: a 256 x int32 header (magic, version, count); Llama 3 shards hold uint32 tokens.
    std::vector<uint32_t> t32(700);
    for (auto& t : t32) {
        t = static_cast<uint32_t>(rng());
    }
    bytes shard(1024 + t32.size() * 4, 0);
    put<int32_t>(shard, 0, 20240801);
    put<int32_t>(shard, 4, 7);
    put<int32_t>(shard, 8, static_cast<int32_t>(t32.size()));
    std::memcpy(shard.data() + 1024, t32.data(), t32.size() * 4);
    write_file(dir.file("shard.bin"), shard);
    {
        const ferry::source src = ferry::source::tokens(dir.file("shard.bin"), seq_len, FERRY_TOKENS_LLMC);
        EXPECT_EQ(src.len(), (700 - 1) / seq_len);
        ferry::iterator it(eng, src, sequential(5));
        check_tokens(it, t32, seq_len, false);
    }
    put<int32_t>(shard, 8, 699); // the count disagrees with the file
    write_file(dir.file("bad.bin"), shard);
    EXPECT_EQ(expect_error([&] { ferry::source::tokens(dir.file("bad.bin"), seq_len, FERRY_TOKENS_LLMC); }).status(),
              FERRY_ERR_FORMAT);
    EXPECT_EQ(expect_error([&] { ferry::source::tokens(dir.file("train.bin"), 0); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
}

// A C string ends at its first NUL: a std::string holding one would reach the library cut short ("a\0b"
// as field "a", "x.npy\0junk" opening x.npy). Every string the header hands to the library refuses it.
TEST(Files, ANulInAStringForTheLibraryThrows) {
    const int64_t n = 4;
    temp_dir dir("ferry-nul");
    const bytes zeros(16, 0);
    write_file(dir.file("x.npy"), npy_file("<i4", {n}, zeros));
    write_file(dir.file("data.bin"), zeros);
    const std::string npy = dir.file("x.npy"), data = dir.file("data.bin");
    const std::string nul("a\0b", 3), junk("\0junk", 5);
    const auto nul_refused = [](auto&& f) {
        const ferry::error e = expect_error(f);
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
        EXPECT_NE(e.message().find("contains a NUL character"), std::string::npos) << e.what();
    };
    nul_refused([&] { ferry::source::npy({{nul, npy}}); });
    nul_refused([&] { ferry::source::npy({{"x", npy + junk}}); });
    nul_refused([&] { ferry::source::records(data + junk, 4, 0, {ferry::field::of<uint8_t>("x", {4})}); });
    nul_refused([&] { ferry::source::records(data, 4, 0, {ferry::field::of<uint8_t>(nul, {4})}); });
    nul_refused([&] { ferry::source::cifar10(data + junk); });
    nul_refused([&] { ferry::source::tokens(data + junk, 2); });
    nul_refused([&] { ferry::source::ragged_tokens(data + junk, npy, 2); });
    nul_refused([&] { ferry::source::ragged_tokens(data, npy + junk, 2); });
    nul_refused([&] { ferry::source::ragged_tokens(data, npy, 2, FERRY_TOKENS_UINT16, nul); });
    std::vector<uint8_t> mem(4);
    nul_refused([&] { ferry::source::memory(n, {ferry::field::of<uint8_t>(nul)}, {mem.data()}); });
    nul_refused([&] { ferry::transform::normalize(nul); });
    nul_refused([&] { ferry::transform::shift_tokens("tokens", nul); });
    nul_refused([&] { ferry::transform::pad_sequences("tokens", 0, false, "mask", nul); });
    const auto quiet = [] { return ferry::monitor_options().no_gpu().no_pcie().no_system(); };
    nul_refused([&] { ferry::monitor m(quiet().node(nul)); });
    nul_refused([&] { ferry::monitor m(quiet().disk_paths({dir.file("") + junk})); });
    ferry::monitor mon(quiet());
    nul_refused([&] { (void)mon.metric(nul); });
    nul_refused([&] { mon.write_report(dir.file("r.json") + junk); });
    nul_refused([&] { mon.stream_jsonl(dir.file("m.jsonl") + junk); });
}

// ---------------------------------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------------------------------

// Skips the test without a GPU, or fails it when FERRY_REQUIRE_GPU=1.
#define FERRY_REQUIRE_GPU_OR_SKIP()                                                    \
    do {                                                                               \
        if (ferry::device_count() == 0) {                                              \
            if (env_on("FERRY_REQUIRE_GPU")) {                                         \
                FAIL() << "FERRY_REQUIRE_GPU is set but ferry::device_count() is 0";   \
            }                                                                          \
            GTEST_SKIP() << "no GPU (set FERRY_REQUIRE_GPU=1 to make this a failure)"; \
        }                                                                              \
        ASSERT_TRUE(cuda_driver::get().ok()) << cuda_driver::get().why();              \
    } while (0)

TEST(GpuIterator, DeviceFieldsMatchTheReference) {
    FERRY_REQUIRE_GPU_OR_SKIP();
    const uint64_t seed = fresh_seed();
    const dataset d = random_dataset(300, seed);
    const ferry::engine eng(0);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    ferry::iterator it(eng, src, ferry::iterator_options().batch_size(32).shuffle().seed(seed));
    for (uint64_t e = 0; e < 2; e++) {
        check_epoch(it, d, e, read_mode::driver);
    }
    auto b = it.next();
    ASSERT_TRUE(b);
    const ferry::tensor t = b->field(0);
    EXPECT_EQ(t.device().device_type, kDLCUDA);
    EXPECT_EQ(t.device().device_id, 0);
}

TEST(GpuIterator, RestoreAndCallbackOnTheDevice) {
    FERRY_REQUIRE_GPU_OR_SKIP();
    const dataset d = random_dataset(96, fresh_seed());
    const int64_t bad = 50;
    ferry::source src = ferry::source::callback(d.n, d.fields, [&](int64_t i, ferry::sample_buffers& buf) {
        if (i == bad) {
            throw std::runtime_error("bad sample");
        }
        for (int32_t k = 0; k < buf.size(); k++) {
            std::memcpy(buf.data(k), d.sample(static_cast<std::size_t>(k), i), static_cast<std::size_t>(buf.bytes(k)));
        }
    });
    const ferry::engine eng(0);
    ferry::iterator it(eng, src, sequential(16).prefetch(2));
    it.restore(ferry::position{4, 2});
    for (int64_t k = 2; k < 6; k++) {
        if (k == bad / 16) {
            EXPECT_EQ(expect_error([&] { (void)it.next(); }).status(), FERRY_ERR_IO);
            continue;
        }
        auto b = it.next();
        ASSERT_TRUE(b);
        EXPECT_EQ(b->epoch(), 4u);
        EXPECT_EQ(b->index(), k);
        EXPECT_TRUE(batch_matches(*b, d, read_mode::driver));
    }
    EXPECT_FALSE(it.next());
}

// The stand-in driver: skips unless FERRY_FAKE_GPU=1 (set by the CTest test that points
// FERRY_CUDA_LIBRARY at it), and then checks that the fake is the driver in use.
#define FERRY_FAKE_GPU_OR_SKIP()                                                                            \
    do {                                                                                                    \
        if (!env_on("FERRY_FAKE_GPU")) {                                                                    \
            GTEST_SKIP() << "runs with FERRY_FAKE_GPU=1 and FERRY_CUDA_LIBRARY naming the stand-in driver"; \
        }                                                                                                   \
        ASSERT_EQ(ferry::device_count(), 1);                                                                \
        ASSERT_STREQ(ferry::device_info(0).name, "Fake GPU");                                               \
    } while (0)

TEST(FakeGpu, TensorsAreCudaAndHoldTheReference) {
    FERRY_FAKE_GPU_OR_SKIP();
    const uint64_t seed = fresh_seed();
    const dataset d = random_dataset(150, seed);
    const ferry::engine eng(0);
    ASSERT_EQ(eng.device(), 0);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    ferry::iterator it(eng, src, ferry::iterator_options().batch_size(16).shuffle().seed(seed).prefetch(3));
    int token = 0;
    void* stream = &token; // any value: the fake's streams are tokens
    for (uint64_t e = 0; e < 2; e++) {
        int64_t n = 0;
        for (ferry::batch& b : it.epoch(stream)) {
            EXPECT_EQ(b.epoch(), e);
            EXPECT_TRUE(batch_matches(b, d, read_mode::direct));
            const ferry::tensor t = b.field("image");
            EXPECT_EQ(t.device().device_type, kDLCUDA);
            EXPECT_EQ(t.device().device_id, 0);
            b.wait(nullptr);
            n++;
        }
        EXPECT_EQ(n, 10);
    }
    // The device buffers are not the source's memory: the data was copied.
    auto b = it.next();
    ASSERT_TRUE(b);
    const ferry::tensor t = b->field(0);
    for (const bytes& col : d.data) {
        EXPECT_FALSE(t.data<uint8_t>() >= col.data() && t.data<uint8_t>() < col.data() + col.size());
    }
}

TEST(FakeGpu, TensorOutlivesItsBatchAndRestore) {
    FERRY_FAKE_GPU_OR_SKIP();
    const dataset d = random_dataset(64, fresh_seed());
    const ferry::engine eng(0);
    const ferry::source src = ferry::source::memory(d.n, d.fields, d.pointers());
    // No pinned budget: the ring may not grow, so a tensor held shows as a refusal.
    ferry::iterator it(eng, src,
                       ferry::iterator_options().batch_size(8).shuffle().seed(11).prefetch(2).pinned_budget(-1));
    ferry::tensor kept;
    std::vector<int64_t> kept_idx;
    {
        auto b = it.next();
        ASSERT_TRUE(b);
        kept = b->field("label");
        kept_idx = b->indices();
    }
    { ASSERT_TRUE(it.next()); }
    EXPECT_EQ(expect_error([&] { (void)it.next(); }).status(), FERRY_ERR_LIMIT);
    kept.wait(nullptr);  // the tensor alone orders a stream on its batch's copy
    for (std::size_t r = 0; r < kept_idx.size(); r++) {
        EXPECT_EQ(std::memcmp(kept.data<uint8_t>() + r * 8, d.sample(1, kept_idx[r]), 8), 0);
    }
    kept.reset();
    std::vector<snapshot> run;
    for (int k = 2; k < 8; k++) {
        auto b = it.next();
        ASSERT_TRUE(b) << k;
        EXPECT_TRUE(batch_matches(*b, d, read_mode::direct));
        run.push_back(take(*b));
    }
    it.restore(ferry::position{0, 5});
    for (int k = 5; k < 8; k++) {
        auto b = it.next();
        ASSERT_TRUE(b);
        EXPECT_TRUE(take(*b) == run[static_cast<std::size_t>(k - 2)]) << "batch " << k;
    }
    EXPECT_FALSE(it.next());
}

} // namespace
