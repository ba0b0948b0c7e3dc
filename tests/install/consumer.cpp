// consumer.cpp — a C++17 program built against an installed ferry through find_package(ferry) and the
// ferry::cpp target (tests/install/cmake). It includes only <ferry.hpp> from the install tree and checks:
//
//  - ferry::version() equals the header's FERRY_VERSION_* and, when given, argv[1] (the CMake package's
//    ferry_VERSION);
//  - a CPU engine, a memory source over known samples and an iterator, walked with range-for, yield every
//    sample's values in order (batches of 4, 4, 2);
//  - a bad call throws ferry::error carrying the status and the library's message.
//
// Prints one line per check; exits 0 when all pass, 1 otherwise.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <ferry.hpp>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    std::printf("consumer_cpp: %s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) {
        failures++;
    }
}

} // namespace

int main(int argc, char** argv) {
    try {
        const ferry::library_version v = ferry::version();
        const std::string version =
            std::to_string(v.major) + "." + std::to_string(v.minor) + "." + std::to_string(v.patch);
        std::printf("consumer_cpp: libferry %s\n", version.c_str());
        expect(v.major == FERRY_VERSION_MAJOR && v.minor == FERRY_VERSION_MINOR && v.patch == FERRY_VERSION_PATCH,
               "ferry::version() equals FERRY_VERSION_MAJOR/MINOR/PATCH");
        if (argc > 1) {
            expect(version == argv[1], "ferry::version() equals the packaged version given as argv[1]");
        }

        constexpr int64_t n = 10;
        std::vector<int64_t> ids(n);
        std::vector<double> values(n * 3);
        for (int64_t i = 0; i < n; i++) {
            ids[i] = 1000 + 11 * i;
            for (int64_t k = 0; k < 3; k++) {
                values[i * 3 + k] = static_cast<double>(i) + 0.25 * static_cast<double>(k);
            }
        }

        ferry::engine eng(FERRY_DEVICE_CPU);
        ferry::source src = ferry::source::memory(
            n, {ferry::field::of<int64_t>("id"), ferry::field::of<double>("value", {3})}, {ids.data(), values.data()});
        ferry::iterator it(eng, src, ferry::iterator_options().batch_size(4).workers(2).prefetch(2));

        int64_t next = 0;
        int batches = 0;
        bool match = true;
        for (ferry::batch& b : it) {
            const ferry::tensor id = b.field("id");
            const ferry::tensor value = b.field(1);
            const std::vector<int64_t> idx = b.indices();
            match = match && id.shape() == std::vector<int64_t>{b.size()} &&
                    value.shape() == std::vector<int64_t>{b.size(), 3} && static_cast<int64_t>(idx.size()) == b.size();
            for (int64_t r = 0; match && r < b.size(); r++) {
                const int64_t i = next + r;
                match = idx[r] == i && id.data<int64_t>()[r] == ids[i];
                for (int64_t k = 0; match && k < 3; k++) {
                    match = value.data<double>()[r * 3 + k] == values[i * 3 + k];
                }
            }
            next += b.size();
            batches++;
        }
        expect(batches == 3 && next == n, "the epoch has 3 batches (4 + 4 + 2 samples)");
        expect(match, "every batch holds the expected samples and values, in order");

        bool threw = false;
        try {
            ferry::iterator bad(eng, src, ferry::iterator_options()); // batch_size 0 is refused
        } catch (const ferry::error& e) {
            threw = e.status() == FERRY_ERR_INVALID_ARGUMENT && !e.message().empty();
            std::printf("consumer_cpp: the bad call threw \"%s\"\n", e.what());
        }
        expect(threw, "an iterator without a batch size throws ferry::error FERRY_ERR_INVALID_ARGUMENT with a message");
    } catch (const std::exception& e) {
        std::printf("consumer_cpp: FAIL unexpected exception: %s\n", e.what());
        failures++;
    }
    std::printf("consumer_cpp: %s\n", failures == 0 ? "all checks passed" : "FAILED");
    return failures == 0 ? 0 : 1;
}
