// helpers.hpp — what the GoogleTest suites share: the env switch, a fresh seed, expect_error and temp_dir.
#ifndef FERRY_TESTS_CPP_HELPERS_HPP
#define FERRY_TESTS_CPP_HELPERS_HPP

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>

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

// A temporary directory (named after prefix), removed with its contents.
class temp_dir {
public:
    explicit temp_dir(const std::string& prefix = "ferry-test") {
        std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
        if (mkdtemp(tmpl.data()) == nullptr) {
            throw std::runtime_error("mkdtemp failed");
        }
        path_ = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

}  // namespace ferry_test

#endif
