// Tests of the C++ binding's performance monitor (ferry::monitor_options, ferry::monitor, ferry::metric),
// with the background samplers off unless a test starts them. Values are fresh random numbers; summaries
// are checked against statistics computed here.

#include "ferry.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace {

using ferry_test::expect_error;
using ferry_test::fresh_seed;
using ferry_test::temp_dir;

namespace fs = std::filesystem;

constexpr double kAccuracy = 0.005;

// Options with every sampler off.
ferry::monitor_options quiet() { return ferry::monitor_options().no_gpu().no_pcie().no_system(); }

// n values spread over three decades, 1..1000.
std::vector<double> random_values(std::mt19937_64& rng, std::size_t n) {
    std::uniform_real_distribution<double> u(0.0, std::log(1000.0));
    std::vector<double> v(n);
    for (double& x : v) {
        x = std::exp(u(rng));
    }
    return v;
}

// True when got is within the sketch's accuracy of the exact inverted-CDF quantile q of sorted, or of a
// neighbouring rank.
bool quantile_ok(const std::vector<double>& sorted, double q, double got) {
    const long n = static_cast<long>(sorted.size());
    const long k = std::clamp(static_cast<long>(std::ceil(static_cast<double>(n) * q)) - 1, 0L, n - 1);
    for (long j = k - 1; j <= k + 1; j++) {
        if (j >= 0 && j < n) {
            const double x = sorted[static_cast<std::size_t>(j)];
            if (std::fabs(got - x) <= kAccuracy * std::fabs(x) * (1 + 1e-9)) {
                return true;
            }
        }
    }
    return false;
}

// Checks a summary against the exact statistics of values.
void expect_summary(std::vector<double> values, const ferry_metric_summary& s) {
    double sum = 0;
    for (double v : values) {
        sum += v;
    }
    const double mean = sum / static_cast<double>(values.size());
    double ss = 0;
    for (double v : values) {
        ss += (v - mean) * (v - mean);
    }
    std::sort(values.begin(), values.end());
    EXPECT_EQ(s.count, values.size());
    EXPECT_EQ(s.nonfinite, 0u);
    EXPECT_EQ(s.min, values.front());
    EXPECT_EQ(s.max, values.back());
    EXPECT_NEAR(s.mean, mean, 1e-12 * mean);
    const double std = std::sqrt(ss / static_cast<double>(values.size()));
    EXPECT_NEAR(s.std, std, 1e-9 * std);
    EXPECT_TRUE(quantile_ok(values, 0.5, s.p50)) << s.p50;
    EXPECT_TRUE(quantile_ok(values, 0.9, s.p90)) << s.p90;
    EXPECT_TRUE(quantile_ok(values, 0.99, s.p99)) << s.p99;
    EXPECT_TRUE(quantile_ok(values, 0.999, s.p999)) << s.p999;
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// ---------------------------------------------------------------------------------------------------

TEST(MonitorOptions, Builder) {
    const auto o = ferry::monitor_options()
                       .gpu_interval(std::chrono::milliseconds(50))
                       .pcie_interval(std::chrono::seconds(2))
                       .no_system()
                       .sketch_accuracy(0.01)
                       .series_points(64)
                       .rank(3)
                       .local_rank(1)
                       .node("node-7")
                       .disk_paths({"/"})
                       .start();
    EXPECT_EQ(o.gpu_interval(), std::chrono::milliseconds(50));
    EXPECT_EQ(o.pcie_interval(), std::chrono::seconds(2));
    EXPECT_LT(o.system_interval().count(), 0);
    EXPECT_EQ(o.sketch_accuracy(), 0.01);
    EXPECT_EQ(o.series_points(), 64);
    EXPECT_EQ(o.rank(), 3);
    EXPECT_EQ(o.local_rank(), 1);
    EXPECT_EQ(o.node(), "node-7");
    EXPECT_EQ(o.disk_paths(), std::vector<std::string>{"/"});
    EXPECT_TRUE(o.start());
    EXPECT_EQ(o.c().size, sizeof(ferry_monitor_options));
    const ferry::monitor_options off = ferry::monitor_options(o).start(false);
    EXPECT_FALSE(off.start());
}

TEST(Monitor, LabelsReachTheReport) {
    temp_dir dir("ferry-monitor");
    ferry::monitor mon(quiet().rank(3).local_rank(1).node("node-7").disk_paths({dir.file("")}));
    const std::string js = mon.report_json();
    EXPECT_NE(js.find("\"rank\": 3"), std::string::npos) << js.substr(0, 500);
    EXPECT_NE(js.find("\"local_rank\": 1"), std::string::npos);
    EXPECT_NE(js.find("\"node\": \"node-7\""), std::string::npos);
}

TEST(Monitor, BadOptions) {
    EXPECT_EQ(expect_error([] { ferry::monitor m(quiet().gpu_interval(std::chrono::milliseconds(5))); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([] { ferry::monitor m(quiet().system_interval(std::chrono::microseconds(9999))); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([] { ferry::monitor m(quiet().flags(0x80u)); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(expect_error([] { ferry::monitor m(quiet().sketch_accuracy(0.7)); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Monitor, LogAndSummary) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    ferry::monitor mon(quiet());
    ferry::metric loss = mon.metric("loss");
    EXPECT_EQ(mon.metric("loss").id(), loss.id());
    EXPECT_NE(mon.metric("train/accuracy").id(), loss.id());
    EXPECT_EQ(loss.monitor_handle(), mon.get());

    const std::vector<double> vs = random_values(rng, 10000);
    for (double v : vs) {
        loss.log(v);
    }
    ferry_metric_summary s = loss.summary();
    expect_summary(vs, s);
    EXPECT_EQ(s.last, vs.back());
    EXPECT_GT(s.first_ns, 0u);
    EXPECT_GE(s.last_ns, s.first_ns);

    loss.log(std::nan(""));
    loss.log(std::numeric_limits<double>::infinity());
    s = loss.summary();
    EXPECT_EQ(s.count, vs.size());
    EXPECT_EQ(s.nonfinite, 2u);
}

TEST(Monitor, FindMetricNeverCreates) {
    ferry::monitor mon(quiet());
    const ferry::metric loss = mon.metric("loss");
    EXPECT_EQ(mon.find_metric("loss").id(), loss.id());
    const ferry::error e = expect_error([&] { (void)mon.find_metric("losss"); });
    EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("losss"), std::string::npos) << e.what();
    // The failed look-up made no metric: the name is still unknown, and the report has none by it.
    EXPECT_EQ(expect_error([&] { (void)mon.find_metric("losss"); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(mon.report_json().find("\"losss\""), std::string::npos);
    EXPECT_EQ(expect_error([&] { (void)mon.find_metric(std::string("a\0b", 3)); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Monitor, LogFromThreads) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    ferry::monitor mon(quiet());
    const ferry::metric loss = mon.metric("loss");
    constexpr int kThreads = 4;
    std::vector<std::vector<double>> per(kThreads);
    std::vector<double> all;
    for (auto& v : per) {
        v = random_values(rng, 20000); // more than a thread's ring holds: the writers fold as they go
        all.insert(all.end(), v.begin(), v.end());
    }
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; i++) {
        threads.emplace_back([&loss, &v = per[static_cast<std::size_t>(i)]] {
            for (double x : v) {
                loss.log(x);
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    expect_summary(all, loss.summary());
}

TEST(Monitor, LogMany) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    ferry::monitor mon(quiet());
    const ferry::metric batch = mon.metric("batch_loss");
    const std::vector<double> a = random_values(rng, 3000), b = random_values(rng, 2000);
    batch.log_many(a);
    batch.log_many(b.data(), b.size());
    std::vector<double> ab = a;
    ab.insert(ab.end(), b.begin(), b.end());
    expect_summary(ab, batch.summary());

    const ferry::metric buffered = mon.metric("buffered");
    const std::vector<double> c = random_values(rng, 4000);
    std::vector<uint64_t> ts(c.size());
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    const uint64_t t0 = static_cast<uint64_t>(now.tv_sec) * 1000000000u + static_cast<uint64_t>(now.tv_nsec) - 4000000u;
    for (std::size_t i = 0; i < ts.size(); i++) {
        ts[i] = t0 + i * 1000u;
    }
    buffered.log_many_at(c.data(), ts.data(), c.size());
    const ferry_metric_summary s = buffered.summary();
    expect_summary(c, s);
    EXPECT_EQ(s.first_ns, ts.front());
    EXPECT_EQ(s.last_ns, ts.back());

    EXPECT_EQ(expect_error([&] { batch.log_many(nullptr, 3); }).status(), FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Monitor, BadNamesAndHandles) {
    ferry::monitor mon(quiet());
    for (const char* name : {"", "has space", "semi;colon"}) {
        const ferry::error e = expect_error([&] { (void)mon.metric(name); });
        EXPECT_EQ(e.status(), FERRY_ERR_INVALID_ARGUMENT) << name;
        EXPECT_NE(e.message().find("metric name"), std::string::npos) << e.what();
    }
    const ferry::metric none;
    EXPECT_EQ(expect_error([&] { none.log(1); }).status(), FERRY_ERR_INVALID_HANDLE);

    const ferry::metric loss = mon.metric("loss");
    ferry::monitor moved(std::move(mon));
    EXPECT_FALSE(mon);
    EXPECT_TRUE(moved);
    loss.log(1); // the handle moved with the object: the metric still works
    EXPECT_EQ(expect_error([&] { (void)mon.report_json(); }).status(), FERRY_ERR_INVALID_HANDLE);
    moved.reset();
    EXPECT_EQ(expect_error([&] { loss.log(1); }).status(), FERRY_ERR_INVALID_HANDLE);
    EXPECT_EQ(expect_error([&] { (void)loss.summary(); }).status(), FERRY_ERR_INVALID_HANDLE);
}

TEST(Monitor, Reports) {
    ferry::monitor mon(quiet());
    const ferry::metric loss = mon.metric("loss");
    for (int i = 0; i < 300; i++) {
        loss.log(1.0 / (i + 1));
    }
    const std::string js = mon.report_json();
    EXPECT_EQ(js.front(), '{');
    EXPECT_EQ(js.back(), '}');
    EXPECT_EQ(js.find('\0'), std::string::npos);
    EXPECT_NE(js.find("\"schema\": \"ferry.report/1\""), std::string::npos);
    EXPECT_NE(js.find("\"training_metrics\""), std::string::npos);
    EXPECT_NE(js.find("\"loss\""), std::string::npos);
    EXPECT_NE(js.find("\"count\": 300"), std::string::npos);

    temp_dir dir("ferry-monitor");
    mon.write_report(dir.file("report.json"));
    mon.write_report(dir.file("report.html"));
    EXPECT_NE(read_file(dir.file("report.json")).find("ferry.report/1"), std::string::npos);
    EXPECT_NE(read_file(dir.file("report.html")).find("<svg"), std::string::npos);
    for (const char* name : {"report.json", "report.html"}) {
        const fs::perms p = fs::status(dir.file(name)).permissions();
        EXPECT_EQ(p & fs::perms::all,
                  fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read)
            << name;
    }
    EXPECT_EQ(expect_error([&] { mon.write_report(dir.file("missing/report.json")); }).status(),
              FERRY_ERR_INVALID_ARGUMENT);
}

TEST(Monitor, Prometheus) {
    ferry::monitor mon(quiet());
    mon.metric("loss").log(0.5);
    const std::string bound = mon.serve_prometheus("127.0.0.1:0");
    ASSERT_EQ(bound.rfind("127.0.0.1:", 0), 0u) << bound;
    EXPECT_GT(std::stoi(bound.substr(10)), 0);
    EXPECT_EQ(expect_error([&] { (void)mon.serve_prometheus("127.0.0.1:0"); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    ferry::monitor other(quiet());
    EXPECT_EQ(expect_error([&] { (void)other.serve_prometheus(bound); }).status(), FERRY_ERR_IO);
}

TEST(Monitor, AttachIterator) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> data(64 * 16);
    for (auto& b : data) {
        b = static_cast<uint8_t>(rng());
    }
    const ferry::engine eng(FERRY_DEVICE_CPU, std::chrono::milliseconds(0));
    const ferry::source src = ferry::source::memory(64, {ferry::field::of<uint8_t>("x", {16})}, {data.data()});
    ferry::iterator it(eng, src, ferry::iterator_options().batch_size(8).world_size(1));
    ferry::monitor mon(quiet().system_interval(std::chrono::milliseconds(20)));
    mon.attach("train", it);
    EXPECT_EQ(expect_error([&] { mon.attach("train", it); }).status(), FERRY_ERR_INVALID_ARGUMENT);
    mon.start();
    for (ferry::batch& b : it) {
        (void)b;
    }
    bool found = false;
    for (int i = 0; i < 500 && !found; i++) {
        const std::string js = mon.report_json();
        found = js.find("\"batches_per_second\"") != std::string::npos;
        if (!found) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }
    EXPECT_TRUE(found);
    mon.stop();
}

} // namespace
