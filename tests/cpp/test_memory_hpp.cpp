// Tests of the C++ binding's memory manager (ferry.hpp): pressure options, thresholds and levels, pressure
// callbacks and their registrations, engine::optimize, and ferry::advisor.
//
// Levels need device memory. FakeGpuMemory.* tests run only with FERRY_FAKE_GPU=1, when
// FERRY_CUDA_LIBRARY names the stand-in driver (engine/testdata/fakecuda.c: one 80 GiB device with
// 70 GiB free, so 10 GiB used); the CTest test memory_hpp_fake_gpu sets both. The rest run on the CPU
// engine.

#include "ferry.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace {

using ferry_test::env_on;
using ferry_test::expect_error;
using ferry_test::fresh_seed;

using namespace std::chrono_literals;

constexpr uint64_t MiB = uint64_t(1) << 20;
constexpr uint64_t GiB = uint64_t(1) << 30;

static_assert(sizeof(ferry_pressure_options) == 40, "ferry_pressure_options");
static_assert(sizeof(ferry_optimize_result) == 40, "ferry_optimize_result");
static_assert(sizeof(ferry_advisor_fit) == 56, "ferry_advisor_fit");
static_assert(!std::is_copy_constructible_v<ferry::advisor>, "advisor is move-only");
static_assert(std::is_nothrow_move_constructible_v<ferry::advisor>, "advisor moves");
static_assert(!std::is_copy_constructible_v<ferry::callback_registration>, "registration is move-only");
static_assert(std::is_nothrow_move_constructible_v<ferry::callback_registration>, "registration moves");

// True when the error's message mentions word (case-insensitive).
bool mentions(const ferry::error& e, std::string word) {
    std::string m = e.message();
    std::transform(m.begin(), m.end(), m.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::transform(word.begin(), word.end(), word.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return m.find(word) != std::string::npos;
}

ferry::engine cpu_engine() { return ferry::engine(FERRY_DEVICE_CPU, 0ms); }

void linear(ferry::advisor& a, uint64_t fixed, uint64_t per_sample, std::initializer_list<int64_t> sizes) {
    for (int64_t b : sizes) {
        a.observe(b, fixed + per_sample * static_cast<uint64_t>(b));
    }
}

// A small data set for iterators: one uint8 field of 64 bytes per sample.
struct small_data {
    std::vector<uint8_t> bytes = std::vector<uint8_t>(256 * 64, 7);
    std::vector<ferry::field> fields{ferry::field::of<uint8_t>("x", {64})};
    ferry::source source() const { return ferry::source::memory(256, fields, {bytes.data()}); }
};

// ---------------------------------------------------------------------------------------------------
// pressure_options
// ---------------------------------------------------------------------------------------------------

TEST(PressureOptions, DefaultsAndBuilder) {
    const ferry::pressure_options d;
    EXPECT_EQ(d.c().size, sizeof(ferry_pressure_options));
    EXPECT_EQ(d.metric(), FERRY_PRESSURE_DEVICE_USED);
    EXPECT_EQ(d.warn_bytes(), 0u);
    EXPECT_EQ(d.critical_bytes(), 0u);
    EXPECT_EQ(d.warn_fraction(), 0.0);
    EXPECT_EQ(d.critical_fraction(), 0.0);

    const auto o = ferry::pressure_options()
                       .metric(FERRY_PRESSURE_ENGINE_RESERVED)
                       .warn_bytes(3 * GiB)
                       .critical_bytes(4 * GiB)
                       .warn_fraction(0.25)
                       .critical_fraction(0.5);
    EXPECT_EQ(o.metric(), FERRY_PRESSURE_ENGINE_RESERVED);
    EXPECT_EQ(o.c().metric, FERRY_PRESSURE_ENGINE_RESERVED);
    EXPECT_EQ(o.c().warn_bytes, 3 * GiB);
    EXPECT_EQ(o.c().critical_bytes, 4 * GiB);
    EXPECT_EQ(o.c().warn_fraction, 0.25);
    EXPECT_EQ(o.c().critical_fraction, 0.5);
    EXPECT_EQ(o.c().size, sizeof(ferry_pressure_options));
}

// ---------------------------------------------------------------------------------------------------
// Pressure on the CPU engine
// ---------------------------------------------------------------------------------------------------

TEST(PressureCpu, FractionsRefusedBytesAccepted) {
    ferry::engine eng = cpu_engine();
    EXPECT_EQ(eng.pressure(), FERRY_PRESSURE_NONE);
    for (auto m : {FERRY_PRESSURE_DEVICE_USED, FERRY_PRESSURE_PROCESS_USED, FERRY_PRESSURE_ENGINE_RESERVED}) {
        const ferry::error e =
            expect_error([&] { eng.set_pressure(ferry::pressure_options().metric(m).warn_fraction(0.5)); });
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
        EXPECT_TRUE(mentions(e, "fraction")) << e.what();
        EXPECT_EQ(expect_error([&] {
                      eng.set_pressure(ferry::pressure_options().metric(m).critical_fraction(0.9));
                  }).status(),
                  FERRY_ERR_INVALID_ARGUMENT);
    }
    EXPECT_EQ(eng.memory_check().warn_threshold_bytes, 0u);

    eng.set_pressure(ferry::pressure_options().metric(FERRY_PRESSURE_ENGINE_RESERVED).warn_bytes(1).critical_bytes(2));
    for (const ferry_memory_snapshot& s : {eng.memory_check(), eng.memory_check_live()}) {
        EXPECT_EQ(s.level, FERRY_PRESSURE_NONE);
        EXPECT_EQ(s.warn_threshold_bytes, 1u);
        EXPECT_EQ(s.critical_threshold_bytes, 2u);
    }
    EXPECT_EQ(eng.pressure(), FERRY_PRESSURE_NONE);
    const ferry_optimize_result r = eng.optimize();
    EXPECT_EQ(r.size, sizeof(ferry_optimize_result));
    EXPECT_EQ(r.level_before, FERRY_PRESSURE_NONE);
    EXPECT_EQ(r.level_after, FERRY_PRESSURE_NONE);
    EXPECT_EQ(r.recommended_batch_size, 0);

    // Bad thresholds: critical below warn, an unknown metric; the thresholds before stay.
    EXPECT_EQ(expect_error([&] {
                  eng.set_pressure(ferry::pressure_options().warn_bytes(5 * GiB).critical_bytes(4 * GiB));
              }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] {
                  eng.set_pressure(
                      ferry::pressure_options().metric(static_cast<ferry_pressure_metric>(9)).warn_bytes(1));
              }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(eng.memory_check().critical_threshold_bytes, 2u);
    EXPECT_EQ(expect_error([&] { (void)eng.optimize(-1); }).status(), FERRY_ERR_INVALID_ARGUMENT);
}

TEST(PressureCpu, CallbacksInOrderFailuresAndRemoval) {
    ferry::engine eng = cpu_engine();
    std::vector<std::pair<int, ferry_pressure>> calls;
    auto recorder = [&](int tag) { return [&calls, tag](ferry_pressure level) { calls.emplace_back(tag, level); }; };

    ferry::callback_registration r1 = eng.on_pressure(recorder(1));
    ferry::callback_registration r2 = eng.on_pressure([&](ferry_pressure level) {
        calls.emplace_back(2, level);
        throw std::runtime_error("this callback fails");
    });
    ferry::callback_registration r3 = eng.on_pressure(recorder(3));
    ferry::callback_registration r4 = eng.on_pressure([&](ferry_pressure level) {
        calls.emplace_back(4, level);
        throw 42; // not even a std::exception
    });
    EXPECT_TRUE(r1);
    EXPECT_NE(r1.id(), r3.id());
    EXPECT_EQ(r1.engine_handle(), eng.get());

    ferry_optimize_result r = eng.optimize(32);
    EXPECT_EQ(r.callbacks_called, 4);
    EXPECT_EQ(r.callbacks_failed, 2);
    using calls_t = std::vector<std::pair<int, ferry_pressure>>;
    EXPECT_EQ(
        calls,
        (calls_t{
            {1, FERRY_PRESSURE_NONE}, {2, FERRY_PRESSURE_NONE}, {3, FERRY_PRESSURE_NONE}, {4, FERRY_PRESSURE_NONE}}));
    calls.clear();

    // Destroying a registration removes its callback; moving one keeps it.
    { ferry::callback_registration gone = std::move(r2); }
    EXPECT_FALSE(r2);
    ferry::callback_registration moved(std::move(r3));
    EXPECT_FALSE(r3);
    r = eng.optimize();
    EXPECT_EQ(r.callbacks_called, 3);
    EXPECT_EQ(r.callbacks_failed, 1);
    EXPECT_EQ(calls, (calls_t{{1, FERRY_PRESSURE_NONE}, {3, FERRY_PRESSURE_NONE}, {4, FERRY_PRESSURE_NONE}}));
    calls.clear();

    // Explicit removal reports failure; the object is empty afterwards.
    r4.remove();
    EXPECT_FALSE(r4);
    EXPECT_EQ(expect_error([&] { r4.remove(); }).status(), FERRY_ERR_INVALID_HANDLE);
    // Move-assigning over a registration removes the one it held.
    r1 = eng.on_pressure(recorder(5));
    r = eng.optimize();
    EXPECT_EQ(r.callbacks_called, 2);
    EXPECT_EQ(r.callbacks_failed, 0);
    EXPECT_EQ(calls, (calls_t{{3, FERRY_PRESSURE_NONE}, {5, FERRY_PRESSURE_NONE}}));
    calls.clear();
    moved.reset();
    r1.reset();
    EXPECT_EQ(eng.optimize().callbacks_called, 0);
    EXPECT_TRUE(calls.empty());

    // The C layer refuses an unknown ID; the binding refuses an empty function.
    EXPECT_EQ(ferry_memory_remove_callback(eng.get(), 987654321), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { (void)eng.on_pressure(ferry::pressure_fn()); }).status(), FERRY_ERR_INVALID_ARGUMENT);
}

TEST(PressureCpu, RegistrationOutlivesItsEngine) {
    int called = 0;
    ferry::callback_registration kept;
    ferry::callback_registration removed_later;
    {
        ferry::engine eng = cpu_engine();
        kept = eng.on_pressure([&](ferry_pressure) { called++; });
        removed_later = eng.on_pressure([&](ferry_pressure) { called++; });
        EXPECT_EQ(eng.optimize().callbacks_called, 2);
    }
    EXPECT_EQ(called, 2);
    EXPECT_EQ(expect_error([&] { removed_later.remove(); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_FALSE(removed_later);
    kept.reset(); // the engine is gone: nothing to remove, nothing crashes
    EXPECT_FALSE(kept);
}

TEST(PressureCpu, OptimizeTrimsTheRing) {
    ferry::engine eng = cpu_engine();
    const small_data d;
    const ferry::source src = d.source();
    {
        ferry::iterator it(eng, src, ferry::iterator_options().batch_size(32).world_size(1));
        ASSERT_TRUE(it.next());
    }
    EXPECT_GT(eng.optimize(32).trimmed_bytes, 0u) << "the ring's memory was cached by the pool";
    EXPECT_EQ(eng.optimize(32).trimmed_bytes, 0u);
    ferry::iterator again(eng, src, ferry::iterator_options().batch_size(32).world_size(1));
    int n = 0;
    for (ferry::batch& b : again) {
        EXPECT_EQ(b.size(), 32);
        n++;
    }
    EXPECT_EQ(n, 8);
}

TEST(PressureCpu, AdvisorAttachedDetachedDestroyed) {
    ferry::engine eng = cpu_engine();
    EXPECT_EQ(eng.optimize().recommended_batch_size, 0);
    ferry::advisor adv(8);
    linear(adv, GiB, 100 * MiB, {8, 16, 32});
    eng.set_advisor(adv);
    (void)eng.optimize(32); // no device memory to recommend for: it must not fail
    eng.clear_advisor();
    EXPECT_EQ(eng.optimize(32).recommended_batch_size, 0);
    eng.set_advisor(adv);
    adv.reset(); // destroyed while attached
    for (int i = 0; i < 3; i++) {
        EXPECT_EQ(eng.optimize(32).recommended_batch_size, 0);
    }
    EXPECT_EQ(expect_error([&] { eng.set_advisor(adv); }).status(), FERRY_ERR_INVALID_HANDLE);
    eng.clear_advisor();
}

// ---------------------------------------------------------------------------------------------------
// ferry::advisor
// ---------------------------------------------------------------------------------------------------

TEST(Advisor, LinearExact) {
    const uint64_t fixed = 3 * GiB + 12345, per_sample = 50 * MiB + 7;
    ferry::advisor adv(8);
    linear(adv, fixed, per_sample, {8, 16, 32, 40});
    const ferry_advisor_fit f = adv.model();
    EXPECT_EQ(f.size, sizeof(ferry_advisor_fit));
    EXPECT_EQ(f.observations, 4);
    EXPECT_NEAR(f.fixed_bytes, static_cast<double>(fixed), 1.0);
    EXPECT_NEAR(f.per_sample_bytes, static_cast<double>(per_sample), 1e-3);
    EXPECT_NEAR(f.r_squared, 1.0, 1e-12);
    EXPECT_GE(f.max_residual_bytes, 0.0);
    EXPECT_LE(f.max_residual_bytes, 1.0);
    EXPECT_EQ(f.oom_ceiling, 0);
    // (16 GiB - fixed) / per_sample = 266.24; with 10% headroom 233.47; 25% 184.32.
    EXPECT_EQ(adv.recommend(16 * GiB), 264);
    EXPECT_EQ(adv.recommend(16 * GiB, 0.1), 232);
    EXPECT_EQ(adv.recommend(16 * GiB, 0.25), 184);

    // Two observations are enough, with R^2 = 1.
    ferry::advisor two(1);
    linear(two, fixed, per_sample, {16, 64});
    EXPECT_EQ(two.model().observations, 2);
    EXPECT_NEAR(two.model().r_squared, 1.0, 1e-12);
    EXPECT_EQ(two.recommend(16 * GiB), 266);
}

TEST(Advisor, Rounding) {
    const uint64_t fixed = GiB, per_sample = 100 * MiB;
    auto budget = [&](double b) {
        return static_cast<uint64_t>(static_cast<double>(fixed) + b * static_cast<double>(per_sample));
    };
    const struct {
        int64_t multiple;
        double fits;
        int64_t want;
    } cases[] = {{8, 92.16, 88}, {1, 92.16, 92}, {7, 92.16, 91}, {64, 92.16, 64},
                 {64, 40.5, 40}, {8, 5.5, 5},    {8, 1.2, 1}};
    for (const auto& c : cases) {
        ferry::advisor adv(c.multiple);
        linear(adv, fixed, per_sample, {4, 8});
        EXPECT_EQ(adv.recommend(budget(c.fits)), c.want) << "multiple " << c.multiple << ", fits " << c.fits;
    }
    ferry::advisor adv(8);
    linear(adv, fixed, per_sample, {4, 8});
    const ferry::error e = expect_error([&] { (void)adv.recommend(budget(0.5)); });
    EXPECT_NE(e.status(), FERRY_OK);
    EXPECT_FALSE(e.message().empty());
}

TEST(Advisor, NoisyNeverAboveTheLimit) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int trial = 0; trial < 10; trial++) {
        const double fixed = static_cast<double>(GiB) * (1 + 3 * u(rng));
        const double per_sample = static_cast<double>(MiB) * (8 + 64 * u(rng));
        const double noise = per_sample * (0.1 + u(rng));
        ferry::advisor adv(8);
        std::vector<double> peak(257);
        for (int64_t b = 1; b <= 256; b++) {
            peak[b] = std::round(fixed + per_sample * static_cast<double>(b) + noise * (2 * u(rng) - 1));
            adv.observe(b, static_cast<uint64_t>(peak[b]));
        }
        const ferry_advisor_fit f = adv.model();
        double max_res = 0;
        for (int64_t b = 1; b <= 256; b++) {
            max_res = std::max(max_res, peak[b] - (f.fixed_bytes + f.per_sample_bytes * static_cast<double>(b)));
        }
        EXPECT_GT(f.max_residual_bytes, 0.0);
        EXPECT_NEAR(f.max_residual_bytes, max_res, 1.0) << "the margin is the largest observation above the line";
        EXPECT_LT(f.r_squared, 1.0);
        EXPECT_GT(f.r_squared, 0.99);

        const uint64_t budget = static_cast<uint64_t>(fixed + per_sample * (40 + 180 * u(rng)));
        int64_t limit = 0;
        while (limit < 256 && peak[limit + 1] <= static_cast<double>(budget)) {
            limit++;
        }
        const int64_t got = adv.recommend(budget);
        EXPECT_GE(got, 1);
        EXPECT_LE(got, limit) << "trial " << trial << ": above the true limit";
        EXPECT_GE(got, limit - static_cast<int64_t>(std::ceil(4 * noise / per_sample)) - 16) << "trial " << trial;
        EXPECT_EQ(got % 8, 0);
    }
}

TEST(Advisor, ConvexStaysBelowTheCurve) {
    const double fixed = static_cast<double>(GiB), per_sample = 20.0 * MiB, quad = 0.5 * MiB;
    auto truth = [&](double b) { return fixed + per_sample * b + quad * b * b; };
    ferry::advisor adv(8);
    for (int64_t b : {8, 16, 32, 64}) {
        adv.observe(b, static_cast<uint64_t>(truth(static_cast<double>(b))));
    }
    const ferry_advisor_fit f = adv.model();
    EXPECT_GT(f.max_residual_bytes, 0.0);
    EXPECT_LT(f.r_squared, 1.0);
    for (double target = 30; target <= 63; target += 3.3) {
        const uint64_t budget = static_cast<uint64_t>(truth(target));
        int64_t limit = static_cast<int64_t>(target);
        while (truth(static_cast<double>(limit + 1)) <= static_cast<double>(budget)) {
            limit++;
        }
        const int64_t got = adv.recommend(budget);
        EXPECT_GE(got, 1);
        EXPECT_LE(got, limit) << "budget for " << target << " samples";
    }
}

TEST(Advisor, OomCeilingAndBackOff) {
    const uint64_t fixed = GiB, per_sample = 100 * MiB, budget = 16 * GiB; // 153.6 samples fit
    ferry::advisor adv(8);
    linear(adv, fixed, per_sample, {16, 32});
    EXPECT_EQ(adv.recommend(budget), 152);
    adv.report_oom(100);
    EXPECT_EQ(adv.model().oom_ceiling, 100);
    EXPECT_EQ(adv.recommend(budget), 96);
    adv.report_oom(96);
    const int64_t second = adv.recommend(budget);
    EXPECT_LE(second, 88);
    EXPECT_GE(second, 1);
    adv.report_oom(second); // the size recommended after the OOM ran out too
    const int64_t third = adv.recommend(budget);
    EXPECT_LT(third, second) << "a repeated OOM backs off further";
    EXPECT_EQ(adv.model().oom_ceiling, second);
    EXPECT_GE(third, 1);
    EXPECT_EQ(adv.recommend(fixed + 45 * per_sample), std::min<int64_t>(40, third));
    EXPECT_EQ(expect_error([&] { adv.report_oom(0); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([&] { adv.report_oom(-3); }).status(), FERRY_ERR_INVALID_ARGUMENT);

    ferry::advisor small(8);
    linear(small, fixed, per_sample, {16, 32});
    small.report_oom(5);
    const int64_t got = small.recommend(budget);
    EXPECT_GE(got, 1);
    EXPECT_LT(got, 5);
    small.report_oom(1);
    EXPECT_NE(expect_error([&] { (void)small.recommend(budget); }).status(), FERRY_OK);
}

TEST(Advisor, ReduceHookTakesTheMinimum) {
    const uint64_t budget = 16 * GiB;
    ferry::advisor adv(8);
    linear(adv, GiB, 100 * MiB, {16, 32});
    std::vector<int64_t> seen;
    int64_t other_rank = 24;
    adv.set_reduce([&](int64_t v) {
        seen.push_back(v);
        return std::min(v, other_rank);
    });
    EXPECT_EQ(adv.recommend(budget), 24) << "the other rank's smaller size wins";
    other_rank = 1000;
    EXPECT_EQ(adv.recommend(budget), 152);
    EXPECT_EQ(seen, (std::vector<int64_t>{152, 152}));

    // The hook lives on the heap: it survives moving the advisor.
    ferry::advisor moved = std::move(adv);
    EXPECT_FALSE(adv);
    other_rank = 40;
    EXPECT_EQ(moved.recommend(budget), 40);
    EXPECT_EQ(seen.size(), 3u);

    // A throwing hook fails the recommendation; the exception never reaches C.
    moved.set_reduce([](int64_t) -> int64_t { throw std::runtime_error("all-reduce failed"); });
    EXPECT_NE(expect_error([&] { (void)moved.recommend(budget); }).status(), FERRY_OK);
    moved.set_reduce(ferry::reduce_fn());
    EXPECT_EQ(moved.recommend(budget), 152);
    EXPECT_EQ(seen.size(), 3u);
}

TEST(Advisor, BadInput) {
    EXPECT_EQ(expect_error([] { ferry::advisor a(0); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([] { ferry::advisor a(-8); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    ferry::advisor adv(8);
    for (int64_t bad : {int64_t(0), int64_t(-1), std::numeric_limits<int64_t>::min()}) {
        const ferry::error e = expect_error([&] { adv.observe(bad, GiB); });
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
        EXPECT_TRUE(mentions(e, "batch")) << e.what();
    }
    const ferry::error peak = expect_error([&] { adv.observe(16, 0); });
    EXPECT_EQ(peak.status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_TRUE(mentions(peak, "peak")) << peak.what();

    EXPECT_EQ(expect_error([&] { (void)adv.model(); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    adv.observe(16, 2 * GiB);
    EXPECT_EQ(expect_error([&] { (void)adv.model(); }).status(), FERRY_ERR_INVALID_ARGUMENT) << "one observation";
    EXPECT_EQ(expect_error([&] { (void)adv.recommend(16 * GiB); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    adv.observe(32, 3 * GiB);
    const int64_t good = adv.recommend(16 * GiB);
    for (double h : {-0.1, 1.0, 2.0, std::nan("")}) {
        const ferry::error e = expect_error([&] { (void)adv.recommend(16 * GiB, h); });
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT) << h;
        EXPECT_TRUE(mentions(e, "headroom")) << e.what();
    }
    const ferry::error below = expect_error([&] { (void)adv.recommend(512 * MiB); });
    EXPECT_EQ(below.status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_TRUE(mentions(below, "budget")) << below.what();
    EXPECT_EQ(adv.recommend(16 * GiB), good) << "the advisor works after all that";

    ferry::advisor falling(8);
    falling.observe(8, 4 * GiB);
    falling.observe(64, 3 * GiB);
    EXPECT_LT(falling.model().per_sample_bytes, 0.0);
    EXPECT_EQ(expect_error([&] { (void)falling.recommend(16 * GiB); }).status(), FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Advisor, MovedFromIsEmpty) {
    ferry::advisor a(8);
    ferry::advisor b = std::move(a);
    EXPECT_FALSE(a);
    EXPECT_TRUE(b);
    EXPECT_EQ(a.get(), nullptr);
    EXPECT_EQ(expect_error([&] { a.observe(8, GiB); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { a.report_oom(8); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { (void)a.model(); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { (void)a.recommend(GiB); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { a.set_reduce([](int64_t v) { return v; }); }).status(), FERRY_ERR_INVALID_HANDLE);
    ferry::engine eng = cpu_engine();
    EXPECT_EQ(expect_error([&] { eng.set_advisor(a); }).status(), FERRY_ERR_INVALID_HANDLE);

    // A destroyed handle: the C layer says so, and a second destroy too.
    ferry_advisor raw = nullptr;
    ASSERT_EQ(ferry_advisor_create(8, &raw), FERRY_OK);
    ASSERT_EQ(ferry_advisor_destroy(raw), FERRY_OK);
    EXPECT_EQ(ferry_advisor_destroy(raw), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(ferry_advisor_observe(raw, 8, GiB), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(ferry_engine_set_advisor(eng.get(), raw), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(ferry_advisor_destroy(nullptr), FERRY_OK);
    // A foreign handle: the engine as an advisor.
    EXPECT_EQ(ferry_advisor_observe(reinterpret_cast<ferry_advisor>(eng.get()), 8, GiB), FERRY_ERR_INVALID_HANDLE);
}

// ---------------------------------------------------------------------------------------------------
// The stand-in GPU
// ---------------------------------------------------------------------------------------------------

#define FERRY_FAKE_GPU_OR_SKIP()                                                                            \
    do {                                                                                                    \
        if (!env_on("FERRY_FAKE_GPU")) {                                                                    \
            GTEST_SKIP() << "runs with FERRY_FAKE_GPU=1 and FERRY_CUDA_LIBRARY naming the stand-in driver"; \
        }                                                                                                   \
        ASSERT_EQ(ferry::device_count(), 1);                                                                \
        ASSERT_STREQ(ferry::device_info(0).name, "Fake GPU");                                               \
    } while (0)

void expect_level(const ferry::engine& eng, ferry_pressure level, uint64_t warn, uint64_t critical, const char* what) {
    for (const ferry_memory_snapshot& s : {eng.memory_check(), eng.memory_check_live()}) {
        EXPECT_EQ(s.device_used_bytes, 10 * GiB);
        EXPECT_EQ(s.level, level) << what;
        EXPECT_NEAR(static_cast<double>(s.warn_threshold_bytes), static_cast<double>(warn), 1.0) << what;
        EXPECT_NEAR(static_cast<double>(s.critical_threshold_bytes), static_cast<double>(critical), 1.0) << what;
    }
}

TEST(FakeGpuMemory, Levels) {
    FERRY_FAKE_GPU_OR_SKIP();
    ferry::engine eng(0, 0ms);
    expect_level(eng, FERRY_PRESSURE_NONE, 0, 0, "no thresholds");
    eng.set_pressure(ferry::pressure_options().warn_bytes(5 * GiB).critical_bytes(20 * GiB));
    expect_level(eng, FERRY_PRESSURE_WARN, 5 * GiB, 20 * GiB, "5/20 GiB");
    EXPECT_EQ(eng.pressure(), FERRY_PRESSURE_WARN);
    eng.set_pressure(ferry::pressure_options().warn_bytes(5 * GiB).critical_bytes(8 * GiB));
    expect_level(eng, FERRY_PRESSURE_CRITICAL, 5 * GiB, 8 * GiB, "5/8 GiB");
    eng.set_pressure(ferry::pressure_options());
    expect_level(eng, FERRY_PRESSURE_NONE, 0, 0, "none");
    eng.set_pressure(ferry::pressure_options().warn_fraction(0.1).critical_fraction(0.5));
    expect_level(eng, FERRY_PRESSURE_WARN, 8 * GiB, 40 * GiB, "fractions 0.1/0.5");
    eng.set_pressure(ferry::pressure_options().critical_bytes(10 * GiB));
    expect_level(eng, FERRY_PRESSURE_CRITICAL, 0, 10 * GiB, "at exactly the used bytes");
    eng.set_pressure(ferry::pressure_options().metric(FERRY_PRESSURE_PROCESS_USED).warn_bytes(5 * GiB));
    expect_level(eng, FERRY_PRESSURE_WARN, 5 * GiB, 0, "process used without NVML: device used");
    eng.set_pressure(ferry::pressure_options().metric(FERRY_PRESSURE_ENGINE_RESERVED).warn_bytes(1).critical_bytes(2));
    expect_level(eng, FERRY_PRESSURE_NONE, 1, 2, "engine reserved is 0");

    eng.set_pressure(ferry::pressure_options().warn_bytes(5 * GiB).critical_bytes(20 * GiB));
    for (double f : {-0.1, 1.5}) {
        const ferry::error e = expect_error([&] { eng.set_pressure(ferry::pressure_options().warn_fraction(f)); });
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
        EXPECT_TRUE(mentions(e, "fraction")) << e.what();
    }
    EXPECT_EQ(expect_error([&] {
                  eng.set_pressure(ferry::pressure_options().warn_fraction(0.5).critical_fraction(0.1));
              }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    expect_level(eng, FERRY_PRESSURE_WARN, 5 * GiB, 20 * GiB, "after refused calls");
}

TEST(FakeGpuMemory, CallbacksGetTheLevel) {
    FERRY_FAKE_GPU_OR_SKIP();
    ferry::engine eng(0, 0ms);
    std::vector<std::pair<int, ferry_pressure>> calls;
    auto r1 = eng.on_pressure([&](ferry_pressure l) { calls.emplace_back(1, l); });
    auto r2 = eng.on_pressure([&](ferry_pressure l) {
        calls.emplace_back(2, l);
        throw std::runtime_error("fails");
    });
    auto r3 = eng.on_pressure([&](ferry_pressure l) { calls.emplace_back(3, l); });
    using calls_t = std::vector<std::pair<int, ferry_pressure>>;
    for (auto [warn, critical, level] :
         {std::tuple{5 * GiB, 20 * GiB, FERRY_PRESSURE_WARN}, std::tuple{5 * GiB, 8 * GiB, FERRY_PRESSURE_CRITICAL},
          std::tuple{20 * GiB, 30 * GiB, FERRY_PRESSURE_NONE}}) {
        eng.set_pressure(ferry::pressure_options().warn_bytes(warn).critical_bytes(critical));
        const ferry_optimize_result r = eng.optimize(16);
        EXPECT_EQ(r.level_before, level);
        EXPECT_EQ(r.level_after, level);
        EXPECT_EQ(r.callbacks_called, 3);
        EXPECT_EQ(r.callbacks_failed, 1);
        EXPECT_EQ(calls, (calls_t{{1, level}, {2, level}, {3, level}}));
        calls.clear();
    }
    r2.reset();
    EXPECT_EQ(eng.optimize().callbacks_called, 2);
    EXPECT_EQ(eng.optimize().callbacks_failed, 0);
}

TEST(FakeGpuMemory, TrimGivesTheRingBack) {
    FERRY_FAKE_GPU_OR_SKIP();
    ferry::engine eng(0, 0ms);
    eng.set_pressure(ferry::pressure_options().metric(FERRY_PRESSURE_ENGINE_RESERVED).warn_bytes(1));
    EXPECT_EQ(eng.memory_check().engine_reserved_bytes, 0u);
    EXPECT_EQ(eng.pressure(), FERRY_PRESSURE_NONE);
    const small_data d;
    const ferry::source src = d.source();
    {
        ferry::iterator it(eng, src, ferry::iterator_options().batch_size(32).world_size(1).prefetch(2));
        ASSERT_TRUE(it.next());
        EXPECT_GT(eng.memory_check().engine_reserved_bytes, 0u);
        EXPECT_EQ(eng.pressure(), FERRY_PRESSURE_WARN);
    }
    const uint64_t reserved = eng.memory_check().engine_reserved_bytes;
    EXPECT_GT(reserved, 0u) << "the pool keeps the ring cached";
    const ferry_optimize_result r = eng.optimize(32);
    EXPECT_GE(r.trimmed_bytes, reserved);
    EXPECT_EQ(r.level_before, FERRY_PRESSURE_WARN);
    EXPECT_EQ(r.level_after, FERRY_PRESSURE_NONE);
    const ferry_memory_snapshot s = eng.memory_check();
    EXPECT_EQ(s.engine_reserved_bytes, 0u);
    EXPECT_EQ(s.host_pinned_bytes, 0u);
    EXPECT_EQ(s.level, FERRY_PRESSURE_NONE);
    EXPECT_EQ(eng.optimize(32).trimmed_bytes, 0u);
}

TEST(FakeGpuMemory, AdvisorRecommendation) {
    FERRY_FAKE_GPU_OR_SKIP();
    ferry::engine eng(0, 0ms);
    EXPECT_EQ(eng.optimize().recommended_batch_size, 0) << "no advisor";
    ferry::advisor adv(8);
    eng.set_advisor(adv);
    adv.observe(2, 9 * GiB);
    EXPECT_EQ(eng.optimize().recommended_batch_size, 0) << "no model yet";
    adv.observe(4, 17 * GiB); // 1 GiB fixed, 4 GiB per sample
    EXPECT_EQ(eng.optimize().recommended_batch_size, 16) << "the whole device, no thresholds";
    EXPECT_EQ(eng.optimize(8).recommended_batch_size, 16) << "level NONE: above the current size";

    eng.set_pressure(ferry::pressure_options().warn_bytes(5 * GiB).critical_bytes(20 * GiB));
    ferry_optimize_result r = eng.optimize(16);
    EXPECT_EQ(r.level_before, FERRY_PRESSURE_WARN);
    EXPECT_GE(r.recommended_batch_size, 1);
    EXPECT_LE(r.recommended_batch_size, 4) << "fits below the 20 GiB critical threshold";
    r = eng.optimize(2);
    EXPECT_GE(r.recommended_batch_size, 1);
    EXPECT_LE(r.recommended_batch_size, 2) << "under pressure: never above the current size";

    eng.set_pressure(ferry::pressure_options());
    eng.clear_advisor();
    EXPECT_EQ(eng.optimize().recommended_batch_size, 0);
    eng.set_advisor(adv);
    EXPECT_EQ(eng.optimize().recommended_batch_size, 16);
    adv.reset(); // destroyed while attached
    EXPECT_EQ(eng.optimize(16).recommended_batch_size, 0);
    EXPECT_EQ(eng.optimize(16).recommended_batch_size, 0);
}

} // namespace
