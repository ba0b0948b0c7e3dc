// header_cxx17 — ferry.h compiles as strict C++17 (-std=c++17 -Wall -Wextra -pedantic -Werror) and links.
//
// It calls ferry_version() and checks it against the header's macros, so it also proves that the C
// declarations link from C++ (the extern "C" guards are in place).

#include "ferry.h"

#include <cstdio>
#include <type_traits>

static_assert(std::is_standard_layout<ferry_memory_snapshot>::value, "ferry_memory_snapshot is a C struct");
static_assert(sizeof(ferry_engine_options) == 16, "ferry_engine_options layout changed");
static_assert(sizeof(ferry_memory_snapshot) == 160, "ferry_memory_snapshot layout changed");
static_assert(sizeof(ferry_device_properties) == 416, "ferry_device_properties layout changed");
static_assert(sizeof(ferry_system_properties) == 688, "ferry_system_properties layout changed");
static_assert(FERRY_OK == 0, "FERRY_OK is 0");

int main() {
    int32_t major = -1, minor = -1, patch = -1;
    const ferry_status st = ferry_version(&major, &minor, &patch);
    if (st != FERRY_OK) {
        std::printf("ferry_version: %s: %s\n", ferry_status_string(st), ferry_last_error());
        return 1;
    }
    if (major != FERRY_VERSION_MAJOR || minor != FERRY_VERSION_MINOR || patch != FERRY_VERSION_PATCH) {
        std::printf("library %d.%d.%d, header %d.%d.%d\n", major, minor, patch, FERRY_VERSION_MAJOR,
                    FERRY_VERSION_MINOR, FERRY_VERSION_PATCH);
        return 1;
    }
    std::printf("ferry.h as C++17: ok (ferry %d.%d.%d)\n", major, minor, patch);
    return 0;
}
