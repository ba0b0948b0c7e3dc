// helpers.hpp — what the GoogleTest suites share: the env switch, a fresh seed, and expect_error.
#ifndef FERRY_TESTS_CPP_HELPERS_HPP
#define FERRY_TESTS_CPP_HELPERS_HPP

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>

#include "ferry.hpp"

namespace ferry_test {

// True when the environment variable is set to something other than "" or "0".
inline bool env_on(const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// A fresh seed per run; tests print it through SCOPED_TRACE so that a failure can be replayed.
inline uint64_t fresh_seed() {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// Runs f, which must throw ferry::error, and returns the error.
template <typename F>
ferry::error expect_error(F&& f) {
    try {
        f();
    } catch (const ferry::error& e) {
        return e;
    }
    ADD_FAILURE() << "no ferry::error was thrown";
    return ferry::error(FERRY_OK, "");
}

}  // namespace ferry_test

#endif
