// Tests of the C++ binding, ferry.hpp.
//
// GPU tests skip without a GPU, and fail instead when FERRY_REQUIRE_GPU=1.

#include "ferry.hpp"
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;

bool require_gpu() {
    const char* v = std::getenv("FERRY_REQUIRE_GPU");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// Skips the test without a GPU, or fails it when FERRY_REQUIRE_GPU=1.
#define FERRY_REQUIRE_GPU_OR_SKIP()                                                    \
    do {                                                                               \
        if (ferry::device_count() == 0) {                                              \
            if (require_gpu()) {                                                       \
                FAIL() << "FERRY_REQUIRE_GPU is set but ferry::device_count() is 0";   \
            }                                                                          \
            GTEST_SKIP() << "no GPU (set FERRY_REQUIRE_GPU=1 to make this a failure)"; \
        }                                                                              \
    } while (0)

using ferry_test::expect_error;

// ---------------------------------------------------------------------------------------------------
// Types and errors
// ---------------------------------------------------------------------------------------------------

static_assert(!std::is_copy_constructible<ferry::engine>::value, "engine is move-only");
static_assert(!std::is_copy_assignable<ferry::engine>::value, "engine is move-only");
static_assert(std::is_nothrow_move_constructible<ferry::engine>::value, "engine moves without throwing");
static_assert(std::is_nothrow_move_assignable<ferry::engine>::value, "engine moves without throwing");
static_assert(std::is_nothrow_destructible<ferry::engine>::value, "engine's destructor is noexcept");
static_assert(!std::is_convertible<int, ferry::engine>::value, "engine(int) is explicit");
static_assert(std::is_base_of<std::runtime_error, ferry::error>::value, "error is a runtime_error");

TEST(Error, CarriesStatusAndMessage) {
    const ferry::error e(FERRY_ERR_NO_DEVICE, "no libcuda.so.1 here");
    EXPECT_EQ(e.status(), FERRY_ERR_NO_DEVICE);
    EXPECT_EQ(e.message(), "no libcuda.so.1 here");
    EXPECT_STREQ(e.what(), "FERRY_ERR_NO_DEVICE: no libcuda.so.1 here");
    EXPECT_STREQ(ferry::error(FERRY_ERR_LIMIT, "").what(), "FERRY_ERR_LIMIT");
}

TEST(Error, CheckThrowsOnlyOnFailure) {
    EXPECT_NO_THROW(ferry::check(FERRY_OK));
    // A real failing call, so that check() picks up the library's message for this thread.
    const ferry_status st = ferry_device_count(nullptr);
    ASSERT_EQ(st, FERRY_ERR_INVALID_ARGUMENT);
    const std::string last = ferry_last_error();
    ASSERT_FALSE(last.empty());
    const auto e = expect_error([&] { ferry::check(st); });
    EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(e.message(), last);
    EXPECT_NE(std::string(e.what()).find("FERRY_ERR_INVALID_ARGUMENT"), std::string::npos);
}

TEST(Error, BadDeviceThrowsInvalidArgument) {
    const auto e = expect_error([] { ferry::engine eng(-5); });
    EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_FALSE(e.message().empty());
    EXPECT_NE(std::string(e.what()).find("FERRY_ERR_INVALID_ARGUMENT"), std::string::npos);
}

TEST(Error, BadIntervalThrowsInvalidArgument) {
    EXPECT_EQ(expect_error([] { ferry::engine eng(FERRY_DEVICE_CPU, 60001ms); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([] { ferry::engine eng(FERRY_DEVICE_CPU, -1ms); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([] { ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::hours(24 * 365 * 200)); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Error, BadOptionsThrowInvalidArgument) {
    ferry_engine_options o;
    ASSERT_EQ(ferry_engine_options_init(&o), FERRY_OK);
    o.device = FERRY_DEVICE_CPU;
    o.flags = 1;
    EXPECT_EQ(expect_error([&] { ferry::engine eng(o); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    o.flags = 0;
    o.size = 4;
    EXPECT_EQ(expect_error([&] { ferry::engine eng(o); }).status(), FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Error, DeviceOutOfRangeThrowsNoDevice) {
    const int n = ferry::device_count();
    EXPECT_EQ(expect_error([&] { ferry::engine eng(n); }).status(), FERRY_ERR_NO_DEVICE);
    EXPECT_EQ(expect_error([&] { ferry::device_info(n); }).status(), FERRY_ERR_NO_DEVICE);
}

TEST(Error, NoDriverThrowsNoDeviceNamingLibcuda) {
    const auto sys = ferry::system_info();
    if (ferry::device_count() != 0 || (sys.flags & FERRY_SYSTEM_F_CUDA)) {
        GTEST_SKIP() << "the CUDA driver is present";
    }
    EXPECT_STRNE(sys.cuda_status, "");
    const auto e = expect_error([] { ferry::engine eng(0); });
    EXPECT_EQ(e.status(), FERRY_ERR_NO_DEVICE);
    // It names the missing library, or the driver's CUDA_ERROR_NO_DEVICE where a driver is installed
    // without a GPU.
    EXPECT_TRUE(e.message().find("libcuda.so.1") != std::string::npos ||
                e.message().find("CUDA_ERROR_NO_DEVICE") != std::string::npos)
        << e.what();
    // The default constructor selects device 0.
    EXPECT_EQ(expect_error([] { ferry::engine eng; }).status(), FERRY_ERR_NO_DEVICE);
}

// ---------------------------------------------------------------------------------------------------
// Free functions
// ---------------------------------------------------------------------------------------------------

TEST(Library, VersionMatchesHeader) {
    const auto v = ferry::version();
    EXPECT_EQ(v.major, FERRY_VERSION_MAJOR);
    EXPECT_EQ(v.minor, FERRY_VERSION_MINOR);
    EXPECT_EQ(v.patch, FERRY_VERSION_PATCH);
}

TEST(Library, SystemInfoAgreesWithDeviceCount) {
    const int n = ferry::device_count();
    EXPECT_GE(n, 0);
    const auto sys = ferry::system_info();
    EXPECT_EQ(sys.size, sizeof(sys));
    EXPECT_EQ(sys.device_count, n);
    if (sys.flags & FERRY_SYSTEM_F_CUDA) {
        EXPECT_GT(sys.cuda_driver_version, 0);
        EXPECT_STREQ(sys.cuda_status, "");
    } else {
        EXPECT_EQ(n, 0);
        EXPECT_TRUE(std::strstr(sys.cuda_status, "libcuda.so.1") != nullptr ||
                    std::strstr(sys.cuda_status, "CUDA_ERROR_NO_DEVICE") != nullptr)
            << sys.cuda_status;
    }
}

// ---------------------------------------------------------------------------------------------------
// CPU engine
// ---------------------------------------------------------------------------------------------------

uint64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void expect_host_snapshot(const ferry_memory_snapshot& s) {
    EXPECT_EQ(s.size, sizeof(s));
    EXPECT_TRUE(s.flags & FERRY_MEMORY_F_HOST);
    EXPECT_FALSE(s.flags & FERRY_MEMORY_F_DEVICE);
    EXPECT_EQ(s.device, FERRY_DEVICE_CPU);
    EXPECT_GE(s.sequence, 1u);
    EXPECT_GT(s.host_total_bytes, 0u);
    EXPECT_GT(s.host_available_bytes, 0u);
    EXPECT_LE(s.host_available_bytes, s.host_total_bytes);
    EXPECT_EQ(s.device_total_bytes, 0u);
    EXPECT_EQ(s.device_free_bytes, 0u);
    EXPECT_EQ(s.device_used_bytes, 0u);
    EXPECT_EQ(s.level, FERRY_PRESSURE_NONE);
}

TEST(CpuEngine, MemoryCheck) {
    const uint64_t t0 = monotonic_ns();
    ferry::engine e(FERRY_DEVICE_CPU);
    ASSERT_TRUE(e);
    ASSERT_NE(e.get(), nullptr);
    EXPECT_EQ(e.device(), FERRY_DEVICE_CPU);

    const auto s = e.memory_check();
    const uint64_t t1 = monotonic_ns();
    expect_host_snapshot(s);
    EXPECT_FALSE(s.flags & FERRY_MEMORY_F_LIVE);
    EXPECT_GE(s.timestamp_ns, t0);
    EXPECT_LE(s.timestamp_ns, t1);
    EXPECT_LE(s.age_ns, t1 - s.timestamp_ns);
}

TEST(CpuEngine, SampleNowAdvancesTheSequence) {
    ferry::engine e(FERRY_DEVICE_CPU, 0ms);  // no background sampler: only sample_now publishes
    const auto a = e.memory_check();
    EXPECT_EQ(e.memory_check().sequence, a.sequence);
    const uint64_t t0 = monotonic_ns();
    e.sample_now();
    const auto b = e.memory_check();
    EXPECT_EQ(b.sequence, a.sequence + 1);
    EXPECT_GE(b.timestamp_ns, t0);
    expect_host_snapshot(b);
}

TEST(CpuEngine, LiveCheckSetsTheLiveFlag) {
    ferry::engine e(FERRY_DEVICE_CPU);
    const uint64_t t0 = monotonic_ns();
    const auto s = e.memory_check_live();
    const uint64_t t1 = monotonic_ns();
    expect_host_snapshot(s);
    EXPECT_TRUE(s.flags & FERRY_MEMORY_F_LIVE);
    EXPECT_GE(s.timestamp_ns, t0);
    EXPECT_LE(s.timestamp_ns, t1);
}

TEST(CpuEngine, FromOptions) {
    ferry_engine_options o;
    ASSERT_EQ(ferry_engine_options_init(&o), FERRY_OK);
    o.device = FERRY_DEVICE_CPU;
    o.sample_interval_ms = 0;
    ferry::engine e(o);
    EXPECT_EQ(e.device(), FERRY_DEVICE_CPU);
    expect_host_snapshot(e.memory_check());
}

TEST(CpuEngine, EnginesAreDistinct) {
    std::vector<ferry::engine> v;
    for (int i = 0; i < 8; ++i) {
        v.emplace_back(FERRY_DEVICE_CPU, 0ms);
    }
    std::set<ferry_engine> handles;
    for (const auto& e : v) {
        handles.insert(e.get());
    }
    EXPECT_EQ(handles.size(), v.size());
    for (const auto& e : v) {
        EXPECT_EQ(e.device(), FERRY_DEVICE_CPU);
    }
}

// ---------------------------------------------------------------------------------------------------
// Ownership
// ---------------------------------------------------------------------------------------------------

TEST(Ownership, MoveConstructionEmptiesTheSource) {
    ferry::engine a(FERRY_DEVICE_CPU);
    const ferry_engine h = a.get();
    ferry::engine b(std::move(a));
    EXPECT_EQ(a.get(), nullptr);  // NOLINT(bugprone-use-after-move): the state after a move is the test
    EXPECT_FALSE(a);
    EXPECT_EQ(b.get(), h);
    EXPECT_EQ(b.device(), FERRY_DEVICE_CPU);
    // The empty source reports the C API's status for a NULL handle.
    EXPECT_EQ(expect_error([&] { (void)a.memory_check(); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { (void)a.device(); }).status(), FERRY_ERR_INVALID_HANDLE);
}

TEST(Ownership, MoveAssignmentDestroysTheOldHandleOnce) {
    ferry_engine first = nullptr;
    ferry_engine second = nullptr;
    {
        ferry::engine a(FERRY_DEVICE_CPU);
        ferry::engine b(FERRY_DEVICE_CPU);
        first = a.get();
        second = b.get();
        a = std::move(b);
        EXPECT_EQ(a.get(), second);
        EXPECT_EQ(b.get(), nullptr);  // NOLINT(bugprone-use-after-move)
        // a's old handle was destroyed by the assignment.
        ferry_memory_snapshot s{};
        s.size = sizeof(s);
        EXPECT_EQ(ferry_memory_check(first, &s), FERRY_ERR_INVALID_HANDLE);
        EXPECT_EQ(ferry_memory_check(second, &s), FERRY_OK);
        // Self-move keeps the handle.
        ferry::engine& self = a;
        a = std::move(self);
        EXPECT_EQ(a.get(), second);
        EXPECT_EQ(ferry_memory_check(second, &s), FERRY_OK);
    }
    // Leaving the scope destroyed `second` (held by a) and nothing else (b was empty): both are stale now.
    EXPECT_EQ(ferry_engine_destroy(second), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(ferry_engine_destroy(first), FERRY_ERR_INVALID_HANDLE);
}

TEST(Ownership, MovedFromDestructorDoesNotDestroy) {
    ferry_engine h = nullptr;
    auto outer = std::make_unique<ferry::engine>(FERRY_DEVICE_CPU);
    h = outer->get();
    {
        ferry::engine inner(std::move(*outer));
        outer.reset();  // destroys the empty engine: must not touch h
        ferry_memory_snapshot s{};
        s.size = sizeof(s);
        EXPECT_EQ(ferry_memory_check(h, &s), FERRY_OK);
        EXPECT_EQ(inner.get(), h);
    }
    ferry_memory_snapshot s{};
    s.size = sizeof(s);
    EXPECT_EQ(ferry_memory_check(h, &s), FERRY_ERR_INVALID_HANDLE);
}

TEST(Ownership, ReleaseHandsOverTheHandle) {
    ferry::engine e(FERRY_DEVICE_CPU);
    const ferry_engine h = e.release();
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(e.get(), nullptr);
    // Still alive after the wrapper gave it up; the caller destroys it.
    int32_t d = 0;
    EXPECT_EQ(ferry_engine_device(h, &d), FERRY_OK);
    EXPECT_EQ(d, FERRY_DEVICE_CPU);
    EXPECT_EQ(ferry_engine_destroy(h), FERRY_OK);
    EXPECT_EQ(ferry_engine_destroy(h), FERRY_ERR_INVALID_HANDLE);
}

TEST(Ownership, ResetAdoptsAHandle) {
    ferry_engine_options o;
    ASSERT_EQ(ferry_engine_options_init(&o), FERRY_OK);
    o.device = FERRY_DEVICE_CPU;
    ferry_engine raw = nullptr;
    ASSERT_EQ(ferry_engine_create(&o, &raw), FERRY_OK);
    ferry_engine old = nullptr;
    {
        ferry::engine e(FERRY_DEVICE_CPU);
        old = e.get();
        e.reset(raw);
        EXPECT_EQ(e.get(), raw);
        EXPECT_EQ(ferry_engine_destroy(old), FERRY_ERR_INVALID_HANDLE);
    }
    EXPECT_EQ(ferry_engine_destroy(raw), FERRY_ERR_INVALID_HANDLE);
}

// ---------------------------------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------------------------------

// One line of `nvidia-smi --query-gpu=uuid,name,memory.total,pci.bus_id --format=csv,noheader,nounits`.
struct smi_gpu {
    std::string uuid, name, pci_bus_id;
    double memory_total_mib = 0;
};

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    const auto e = s.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// Returns the GPUs nvidia-smi lists; empty when nvidia-smi is not available.
std::vector<smi_gpu> query_nvidia_smi() {
    std::vector<smi_gpu> out;
    FILE* p = popen("nvidia-smi --query-gpu=uuid,name,memory.total,pci.bus_id --format=csv,noheader,nounits "
                    "2>/dev/null",
                    "r");
    if (p == nullptr) {
        return out;
    }
    char line[1024];
    while (std::fgets(line, sizeof(line), p) != nullptr) {
        std::stringstream ss(line);
        std::string f[4];
        for (auto& field : f) {
            std::getline(ss, field, ',');
            field = trim(field);
        }
        if (f[0].rfind("GPU-", 0) != 0) {
            continue;
        }
        smi_gpu g;
        g.uuid = f[0];
        g.name = f[1];
        g.memory_total_mib = std::atof(f[2].c_str());
        g.pci_bus_id = f[3];
        out.push_back(g);
    }
    pclose(p);
    return out;
}

std::string lower(std::string s) {
    for (auto& c : s) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
}

TEST(Gpu, DeviceInfo) {
    FERRY_REQUIRE_GPU_OR_SKIP();
    const auto sys = ferry::system_info();
    EXPECT_TRUE(sys.flags & FERRY_SYSTEM_F_CUDA);
    const int n = ferry::device_count();
    for (int i = 0; i < n; ++i) {
        SCOPED_TRACE("device " + std::to_string(i));
        const auto p = ferry::device_info(i);
        EXPECT_EQ(p.index, i);
        EXPECT_GT(std::strlen(p.name), 0u);
        EXPECT_GE(p.compute_capability_major * 10 + p.compute_capability_minor, 70);
        EXPECT_GT(p.multiprocessor_count, 0);
        EXPECT_GE(p.total_memory_bytes, 1ull << 30);
        EXPECT_EQ(std::string(p.uuid_string).rfind("GPU-", 0), 0u) << p.uuid_string;
        EXPECT_EQ(std::strlen(p.uuid_string), 40u) << p.uuid_string;

        // The engine's snapshot reports the same device memory, within 1%.
        ferry::engine e(i);
        const auto s = e.memory_check();
        const double total = static_cast<double>(p.total_memory_bytes);
        EXPECT_NEAR(static_cast<double>(s.device_total_bytes), total, 0.01 * total);
    }
}

TEST(Gpu, DeviceInfoMatchesNvidiaSmi) {
    FERRY_REQUIRE_GPU_OR_SKIP();
    const auto gpus = query_nvidia_smi();
    if (gpus.empty()) {
        if (require_gpu()) {
            FAIL() << "FERRY_REQUIRE_GPU is set but nvidia-smi gave no GPUs to compare with";
        }
        GTEST_SKIP() << "nvidia-smi is not available";
    }
    const int n = ferry::device_count();
    for (int i = 0; i < n; ++i) {
        const auto p = ferry::device_info(i);
        SCOPED_TRACE(std::string("device ") + std::to_string(i) + " " + p.uuid_string);
        const smi_gpu* match = nullptr;
        for (const auto& g : gpus) {
            if (g.uuid == p.uuid_string) {
                match = &g;
            }
        }
        ASSERT_NE(match, nullptr) << "nvidia-smi does not list this UUID";
        EXPECT_EQ(match->name, p.name);
        // nvidia-smi prints an 8-digit domain in upper case ("00000000:1B:00.0"); ferry "0000:1b:00.0".
        const std::string ours = lower(p.pci_bus_id);
        const std::string theirs = lower(match->pci_bus_id);
        ASSERT_GE(ours.size(), 7u);
        ASSERT_GE(theirs.size(), 7u);
        EXPECT_EQ(ours.substr(ours.size() - 7), theirs.substr(theirs.size() - 7));
        const double total_mib = static_cast<double>(p.total_memory_bytes) / (1024.0 * 1024.0);
        EXPECT_NEAR(total_mib, match->memory_total_mib, 0.01 * match->memory_total_mib);
    }
}

TEST(Gpu, SnapshotDeviceFields) {
    FERRY_REQUIRE_GPU_OR_SKIP();
    ferry::engine e(0);
    EXPECT_EQ(e.device(), 0);
    const auto s = e.memory_check();
    EXPECT_TRUE(s.flags & FERRY_MEMORY_F_DEVICE);
    EXPECT_TRUE(s.flags & FERRY_MEMORY_F_HOST);
    EXPECT_FALSE(s.flags & FERRY_MEMORY_F_LIVE);
    EXPECT_EQ(s.device, 0);
    EXPECT_GE(s.sequence, 1u);
    EXPECT_GT(s.device_total_bytes, 0u);
    EXPECT_LE(s.device_free_bytes, s.device_total_bytes);
    EXPECT_EQ(s.device_used_bytes, s.device_total_bytes - s.device_free_bytes);
    if (s.flags & FERRY_MEMORY_F_PROCESS) {
        EXPECT_GT(s.process_device_bytes, 0u);
        EXPECT_LE(s.process_device_bytes, s.device_used_bytes);
    }
    EXPECT_GT(s.host_total_bytes, 0u);
    EXPECT_LE(s.host_available_bytes, s.host_total_bytes);
}

TEST(Gpu, LiveCheck) {
    FERRY_REQUIRE_GPU_OR_SKIP();
    ferry::engine e(0);
    const uint64_t t0 = monotonic_ns();
    const auto s = e.memory_check_live();
    const uint64_t t1 = monotonic_ns();
    EXPECT_TRUE(s.flags & FERRY_MEMORY_F_LIVE);
    EXPECT_TRUE(s.flags & FERRY_MEMORY_F_DEVICE);
    EXPECT_GT(s.device_total_bytes, 0u);
    EXPECT_LE(s.device_free_bytes, s.device_total_bytes);
    EXPECT_EQ(s.device_used_bytes, s.device_total_bytes - s.device_free_bytes);
    EXPECT_GE(s.timestamp_ns, t0);
    EXPECT_LE(s.timestamp_ns, t1);
    // The live figure and the cached one describe the same device.
    EXPECT_EQ(s.device_total_bytes, e.memory_check().device_total_bytes);
}

TEST(Gpu, MovedGpuEngineKeepsItsDevice) {
    FERRY_REQUIRE_GPU_OR_SKIP();
    const int last = ferry::device_count() - 1;
    ferry::engine a(last);
    ferry::engine b(std::move(a));
    EXPECT_EQ(b.device(), last);
    EXPECT_EQ(b.memory_check().device, last);
    EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move)
}

}  // namespace
