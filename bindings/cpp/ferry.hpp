/*
 * ferry.hpp — header-only C++17 wrapper over the ferry C API (ferry.h).
 *
 * It adds no logic of its own: every call goes to the C function of the same name, and a status other
 * than FERRY_OK becomes a ferry::error exception that carries the status and the library's message.
 *
 * Ownership: ferry::engine owns its handle. It is move-only; its destructor destroys the handle and never
 * throws. A moved-from engine is empty (get() == nullptr); calling a method on an empty engine throws
 * ferry::error with FERRY_ERR_INVALID_HANDLE, as the C API reports for a NULL handle.
 *
 * Thread safety: the free functions may be called from any thread. The const methods of one engine may be
 * called from several threads at once (the C API allows it). Moving, assigning, releasing or destroying an
 * engine must not race with other use of the same object, as for any standard library type.
 *
 * Usage: put ferry.h and this header on the include path and link libferry.so.
 */
#ifndef FERRY_HPP
#define FERRY_HPP

#include <chrono>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "ferry.h"

namespace ferry {

/**
 * The exception thrown for every status other than FERRY_OK. what() reads "<status name>: <message>",
 * where the message is ferry_last_error() of the failing call, copied when the exception was made.
 */
class error : public std::runtime_error {
public:
    /** Makes an error from a status and a message (the message may be empty). */
    error(ferry_status status, const std::string& message)
        : std::runtime_error(format(status, message)), status_(status), message_(message) {}

    /** The status the C call returned. */
    ferry_status status() const noexcept { return status_; }

    /** The library's message alone, without the status name; may be empty. */
    const std::string& message() const noexcept { return message_; }

private:
    static std::string format(ferry_status status, const std::string& message) {
        std::string s = ferry_status_string(status);
        if (!message.empty()) {
            s += ": ";
            s += message;
        }
        return s;
    }

    ferry_status status_;
    std::string message_;
};

/**
 * Throws ferry::error when status is not FERRY_OK, with the calling thread's ferry_last_error(). Call it
 * right after the C call, on the same thread, before any other ferry call.
 */
inline void check(ferry_status status) {
    if (status != FERRY_OK) {
        throw error(status, ferry_last_error());
    }
}

/** The version of the loaded library (which may differ from FERRY_VERSION_* of this header). */
struct library_version {
    int32_t major;
    int32_t minor;
    int32_t patch;
};

/** Returns the version of the loaded library. */
inline library_version version() {
    library_version v{0, 0, 0};
    check(ferry_version(&v.major, &v.minor, &v.patch));
    return v;
}

/** Returns the number of visible CUDA devices; 0 (not an exception) when there is no driver or device. */
inline int device_count() {
    int32_t n = 0;
    check(ferry_device_count(&n));
    return static_cast<int>(n);
}

/** Returns the properties of the device with the given CUDA ordinal; throws FERRY_ERR_NO_DEVICE if absent. */
inline ferry_device_properties device_info(int index) {
    ferry_device_properties p{};
    p.size = sizeof(p);
    check(ferry_device_info(static_cast<int32_t>(index), &p));
    return p;
}

/** Returns the driver stack as ferry sees it; works without a driver (cuda_status then says why). */
inline ferry_system_properties system_info() {
    ferry_system_properties p{};
    p.size = sizeof(p);
    check(ferry_system_info(&p));
    return p;
}

/**
 * An owned ferry engine: one device (or the CPU, FERRY_DEVICE_CPU) with its context and memory sampler.
 *
 * Move-only. The destructor destroys the handle and never throws. After a move the source is empty.
 */
class engine {
public:
    /**
     * Creates an engine on a CUDA device, or on the CPU with FERRY_DEVICE_CPU (-1). sample_interval is the
     * memory sampler's period (0 turns the background sampler off). Throws ferry::error, e.g.
     * FERRY_ERR_NO_DEVICE when there is no driver or no such device, FERRY_ERR_INVALID_ARGUMENT for a bad
     * device or interval.
     */
    explicit engine(int device = 0,
                    std::chrono::milliseconds sample_interval = std::chrono::milliseconds(100)) {
        ferry_engine_options opts;
        check(ferry_engine_options_init(&opts));
        opts.device = static_cast<int32_t>(device);
        const auto ms = sample_interval.count();
        if (ms < 0 || static_cast<unsigned long long>(ms) > std::numeric_limits<uint32_t>::max()) {
            throw error(FERRY_ERR_INVALID_ARGUMENT,
                        "sample_interval " + std::to_string(ms) + " ms does not fit in uint32_t");
        }
        opts.sample_interval_ms = static_cast<uint32_t>(ms);
        check(ferry_engine_create(&opts, &handle_));
    }

    /** Creates an engine from options filled by ferry_engine_options_init() and then adjusted. */
    explicit engine(const ferry_engine_options& opts) { check(ferry_engine_create(&opts, &handle_)); }

    engine(const engine&) = delete;
    engine& operator=(const engine&) = delete;

    /** Takes other's handle; other becomes empty. */
    engine(engine&& other) noexcept : handle_(other.release()) {}

    /** Destroys the handle held now, then takes other's; other becomes empty. */
    engine& operator=(engine&& other) noexcept {
        if (this != &other) {
            reset(other.release());
        }
        return *this;
    }

    /** Destroys the handle, if any. Never throws; a failure to destroy is ignored. */
    ~engine() noexcept { reset(); }

    /** Returns the latest published snapshot (a memory read: no driver call, tens of nanoseconds). */
    ferry_memory_snapshot memory_check() const {
        ferry_memory_snapshot s{};
        s.size = sizeof(s);
        check(ferry_memory_check(handle_, &s));
        return s;
    }

    /** Queries the device now and returns the snapshot with FERRY_MEMORY_F_LIVE set. */
    ferry_memory_snapshot memory_check_live() const {
        ferry_memory_snapshot s{};
        s.size = sizeof(s);
        check(ferry_memory_check_live(handle_, &s));
        return s;
    }

    /** Takes a memory sample now and publishes it as the snapshot memory_check() reads. */
    void sample_now() const { check(ferry_engine_sample_now(handle_)); }

    /** Returns the engine's device: a CUDA ordinal or FERRY_DEVICE_CPU. */
    int device() const {
        int32_t d = 0;
        check(ferry_engine_device(handle_, &d));
        return static_cast<int>(d);
    }

    /** Returns the raw handle, still owned by this object; nullptr when empty. */
    ferry_engine get() const noexcept { return handle_; }

    /** True when this object holds a handle. */
    explicit operator bool() const noexcept { return handle_ != nullptr; }

    /**
     * Gives up ownership: returns the raw handle and leaves this object empty. The caller must destroy the
     * handle with ferry_engine_destroy().
     */
    ferry_engine release() noexcept { return std::exchange(handle_, nullptr); }

    /** Destroys the handle held now (if any) and takes ownership of h (which may be nullptr). */
    void reset(ferry_engine h = nullptr) noexcept {
        ferry_engine old = std::exchange(handle_, h);
        if (old != nullptr) {
            (void)ferry_engine_destroy(old);
        }
    }

private:
    ferry_engine handle_ = nullptr;
};

} // namespace ferry

#endif // FERRY_HPP
