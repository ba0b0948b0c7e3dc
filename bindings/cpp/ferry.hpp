/*
 * ferry.hpp — header-only C++17 wrapper over the ferry C API (ferry.h).
 *
 * It adds no logic of its own: every call goes to the C function of the same name, and a status other
 * than FERRY_OK becomes a ferry::error exception that carries the status and the library's message.
 *
 * Ownership: ferry::engine, ferry::source, ferry::iterator, ferry::batch, ferry::tensor, ferry::advisor
 * and ferry::monitor each own one C object; ferry::callback_registration owns one pressure callback; a
 * ferry::metric is a non-owning handle into its monitor. The owners are move-only; their destructors
 * destroy (or release, or remove) the object and never throw. A moved-from object is empty
 * (get() == nullptr); calling a method on an empty engine, source, iterator, batch, advisor or monitor
 * throws ferry::error with FERRY_ERR_INVALID_HANDLE, as the C API reports for a NULL handle.
 *
 * C++ functions given to the library (a callback source's sample function, a pressure callback, an
 * advisor's reduce hook) live in heap objects owned by the C++ object that registered them, so they stay
 * put when that object moves. An exception they throw is caught before it reaches C and reported as the
 * callback's failure.
 *
 * Lifetimes follow the C API: an iterator must be destroyed before its source, batches (and the
 * tensors taken from them) before their iterator, and an advisor attached to an engine must be detached
 * (engine::clear_advisor) before it is destroyed. Declaring the objects in the order engine, source,
 * iterator in one scope gives the right order of destruction.
 *
 * Thread safety: the free functions may be called from any thread. The const methods of one engine or
 * source may be called from several threads at once (the C API allows it). An iterator's next(),
 * state(), restore() and set_epoch() must be called from one thread at a time (the training loop). A
 * batch or tensor may be destroyed on any thread. Moving, assigning, releasing or destroying an object
 * must not race with other use of the same object, as for any standard library type.
 *
 * Usage: put ferry.h and this header on the include path and link libferry.so.
 */
#ifndef FERRY_HPP
#define FERRY_HPP

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

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

/**
 * s as the C string the library takes. A C string ends at its first NUL, so a std::string holding one
 * would reach the library cut short ("a\0b" as "a", "x.npy\0junk" as x.npy): it is refused with
 * FERRY_ERR_INVALID_ARGUMENT, naming what (a path, a field name...). Every string this header hands to
 * the library goes through it. The pointer is s's own: keep s alive and unchanged while it is in use.
 */
inline const char* c_string(const std::string& s, const char* what) {
    if (s.find('\0') != std::string::npos) {
        throw error(FERRY_ERR_INVALID_ARGUMENT, std::string(what) + " contains a NUL character");
    }
    return s.c_str();
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

// ---------------------------------------------------------------------------------------------------
// Memory pressure and the batch-size advisor
// ---------------------------------------------------------------------------------------------------

/**
 * The pressure thresholds of an engine (engine::set_pressure), set with chained calls:
 *
 *     ferry::pressure_options().metric(FERRY_PRESSURE_DEVICE_USED).warn_fraction(0.85).critical_fraction(0.95)
 *
 * A threshold is given in bytes, or as a fraction of the device's total memory (used when its bytes are
 * 0); one left at 0 is unset. Fractions need a GPU engine. Every setter returns *this; the getter of the
 * same name reads the value. The library checks the values when they are set on an engine.
 */
class pressure_options {
public:
    /** What the thresholds compare against; the default is FERRY_PRESSURE_DEVICE_USED. */
    pressure_options& metric(ferry_pressure_metric m) noexcept {
        o_.metric = static_cast<int32_t>(m);
        return *this;
    }
    /** Level WARN at or above this many bytes (0: unset, or given as a fraction). */
    pressure_options& warn_bytes(uint64_t n) noexcept {
        o_.warn_bytes = n;
        return *this;
    }
    /** Level CRITICAL at or above this many bytes (0: unset, or given as a fraction). */
    pressure_options& critical_bytes(uint64_t n) noexcept {
        o_.critical_bytes = n;
        return *this;
    }
    /** Level WARN at or above this fraction (0..1) of the device's total memory; used when warn_bytes is 0. */
    pressure_options& warn_fraction(double f) noexcept {
        o_.warn_fraction = f;
        return *this;
    }
    /** Level CRITICAL at or above this fraction of the device's total memory; used when critical_bytes is 0. */
    pressure_options& critical_fraction(double f) noexcept {
        o_.critical_fraction = f;
        return *this;
    }

    /** @name Getters */
    ///@{
    ferry_pressure_metric metric() const noexcept { return static_cast<ferry_pressure_metric>(o_.metric); }
    uint64_t warn_bytes() const noexcept { return o_.warn_bytes; }
    uint64_t critical_bytes() const noexcept { return o_.critical_bytes; }
    double warn_fraction() const noexcept { return o_.warn_fraction; }
    double critical_fraction() const noexcept { return o_.critical_fraction; }
    ///@}

    /** The C options struct. */
    const ferry_pressure_options& c() const noexcept { return o_; }

private:
    ferry_pressure_options o_ = [] {
        ferry_pressure_options o;
        (void)ferry_pressure_options_init(&o);
        return o;
    }();
};

/**
 * A pressure callback: called by engine::optimize() with the level at the time of the call, on the thread
 * that called optimize(). Throwing any exception reports the callback as failed
 * (ferry_optimize_result::callbacks_failed); the later callbacks still run, and the exception never
 * crosses into C.
 */
using pressure_fn = std::function<void(ferry_pressure level)>;

/**
 * A reduction across ranks for ferry::advisor::set_reduce: given this rank's batch size, returns the
 * minimum over every rank (e.g. an all-reduce with MIN). Every rank must call advisor::recommend() for it
 * to complete. Throwing any exception makes recommend() fail; the exception never crosses into C.
 */
using reduce_fn = std::function<int64_t(int64_t value)>;

namespace detail {

/** What a pressure callback passes to C as `user`: the function, owned by its callback_registration. */
struct pressure_state {
    pressure_fn fn;
};

/** The ferry_pressure_fn of engine::on_pressure: calls the std::function and turns any exception into 1. */
inline int32_t pressure_trampoline(void* user, int32_t level) noexcept {
    try {
        static_cast<pressure_state*>(user)->fn(static_cast<ferry_pressure>(level));
        return 0;
    } catch (...) {
        return 1;
    }
}

/** What an advisor's reduction passes to C as `user`: the function, owned by the ferry::advisor. */
struct reduce_state {
    reduce_fn fn;
};

/** The ferry_reduce_fn of advisor::set_reduce: calls the std::function and turns any exception into 1. */
inline int32_t reduce_trampoline(void* user, int64_t* value) noexcept {
    try {
        *value = static_cast<reduce_state*>(user)->fn(*value);
        return 0;
    } catch (...) {
        return 1;
    }
}

} // namespace detail

/**
 * The registration of a pressure callback, returned by engine::on_pressure(). It owns the callback's
 * function: the destructor removes the callback from its engine and then frees the function, and never
 * throws. It may outlive the engine (the removal then has nothing to do). Move-only; a moved-from or
 * removed registration is empty.
 */
class callback_registration {
public:
    /** An empty registration. */
    callback_registration() noexcept = default;

    callback_registration(const callback_registration&) = delete;
    callback_registration& operator=(const callback_registration&) = delete;

    /** Takes other's registration; other becomes empty. */
    callback_registration(callback_registration&& other) noexcept
        : engine_(std::exchange(other.engine_, nullptr)), id_(std::exchange(other.id_, 0)),
          state_(std::move(other.state_)) {}

    /** Removes the callback held now, then takes other's; other becomes empty. */
    callback_registration& operator=(callback_registration&& other) noexcept {
        if (this != &other) {
            reset();
            engine_ = std::exchange(other.engine_, nullptr);
            id_ = std::exchange(other.id_, 0);
            state_ = std::move(other.state_);
        }
        return *this;
    }

    /** Removes the callback, if any. Never throws; a failure to remove (e.g. a destroyed engine) is ignored. */
    ~callback_registration() noexcept { reset(); }

    /**
     * Removes the callback now and leaves this object empty. Unlike the destructor, it reports failure:
     * FERRY_ERR_INVALID_HANDLE when the engine was destroyed (the function is freed all the same).
     */
    void remove() {
        if (state_ == nullptr) {
            throw error(FERRY_ERR_INVALID_HANDLE, "the ferry::callback_registration is empty");
        }
        const ferry_status st = ferry_memory_remove_callback(std::exchange(engine_, nullptr), std::exchange(id_, 0));
        state_.reset();
        check(st);
    }

    /** The ID ferry_memory_on_pressure wrote; 0 when empty. */
    uint64_t id() const noexcept { return id_; }

    /** The engine the callback is registered with; nullptr when empty. */
    ferry_engine engine_handle() const noexcept { return engine_; }

    /** True when this object holds a registration. */
    explicit operator bool() const noexcept { return state_ != nullptr; }

    /** Removes the callback, if any, and leaves this object empty. Never throws. */
    void reset() noexcept {
        if (state_ != nullptr) {
            (void)ferry_memory_remove_callback(std::exchange(engine_, nullptr), std::exchange(id_, 0));
            state_.reset();
        }
    }

private:
    friend class engine;

    callback_registration(ferry_engine e, uint64_t id, std::unique_ptr<detail::pressure_state> state) noexcept
        : engine_(e), id_(id), state_(std::move(state)) {}

    ferry_engine engine_ = nullptr;
    uint64_t id_ = 0;
    std::unique_ptr<detail::pressure_state> state_;
};

/**
 * An owned batch-size advisor. It fits peak memory = fixed + per_sample x batch by least squares from
 * observe() calls, and recommends the largest batch that fits a budget, rounded down to a multiple, below
 * any size reported out of memory, and reduced across ranks by the reduce hook when one is set:
 *
 *     ferry::advisor adv(8);
 *     adv.observe(16, peak16);
 *     adv.observe(32, peak32);
 *     int64_t batch = adv.recommend(budget, 0.1);   // keep 10% of the budget free
 *
 * Move-only. The destructor destroys the advisor and then frees the reduce hook, and never throws; detach
 * it from engines (engine::clear_advisor()) first. A moved-from advisor is empty; its methods throw
 * FERRY_ERR_INVALID_HANDLE, as the C API reports for a NULL handle. Calls on one advisor must not race
 * with set_reduce(), moving or destroying it.
 */
class advisor {
public:
    /**
     * Creates an advisor that rounds recommendations down to a multiple of `multiple` (>= 1). Throws
     * FERRY_ERR_INVALID_ARGUMENT for a multiple below 1.
     */
    explicit advisor(int64_t multiple = 8) { check(ferry_advisor_create(multiple, &h_)); }

    advisor(const advisor&) = delete;
    advisor& operator=(const advisor&) = delete;

    /** Takes other's advisor (and reduce hook); other becomes empty. */
    advisor(advisor&& other) noexcept : h_(std::exchange(other.h_, nullptr)), reduce_(std::move(other.reduce_)) {}

    /** Destroys the advisor held now, then takes other's; other becomes empty. */
    advisor& operator=(advisor&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, nullptr);
            reduce_ = std::move(other.reduce_);
        }
        return *this;
    }

    /** Destroys the advisor, if any. Never throws. */
    ~advisor() noexcept { reset(); }

    /** Records the peak memory of a step at batch_size (> 0); peak_bytes must be > 0. */
    void observe(int64_t batch_size, uint64_t peak_bytes) { check(ferry_advisor_observe(h_, batch_size, peak_bytes)); }

    /** Records that batch_size ran out of memory: recommendations stay below it from then on. */
    void report_oom(int64_t batch_size) { check(ferry_advisor_report_oom(h_, batch_size)); }

    /**
     * The fitted model and its confidence. Throws FERRY_ERR_INVALID_ARGUMENT with fewer than two distinct
     * batch sizes observed.
     */
    ferry_advisor_fit model() const {
        ferry_advisor_fit f{};
        f.size = sizeof(f);
        check(ferry_advisor_model(h_, &f));
        return f;
    }

    /**
     * The largest batch whose predicted peak (the fitted line raised by its largest positive residual) fits
     * budget_bytes x (1 - headroom), rounded down to the multiple, below any OOM ceiling, and reduced across
     * ranks when a reduce hook is set. Throws FERRY_ERR_INVALID_ARGUMENT for fewer than two observations,
     * memory that does not grow with the batch, a budget below the fixed cost, or headroom outside [0, 1);
     * the reduce hook's failure is reported too.
     */
    int64_t recommend(uint64_t budget_bytes, double headroom = 0.0) const {
        int64_t b = 0;
        check(ferry_advisor_recommend(h_, budget_bytes, headroom, &b));
        return b;
    }

    /**
     * Sets the reduction across ranks (an empty function clears it). The function is owned by this object
     * and called on the thread that calls recommend().
     */
    void set_reduce(reduce_fn fn) {
        if (!fn) {
            check(ferry_advisor_set_reduce(h_, nullptr, nullptr));
            reduce_.reset();
            return;
        }
        auto state = std::make_unique<detail::reduce_state>(detail::reduce_state{std::move(fn)});
        check(ferry_advisor_set_reduce(h_, &detail::reduce_trampoline, state.get()));
        reduce_ = std::move(state); // the old hook is no longer referenced by the library
    }

    /** Returns the raw handle, still owned by this object; nullptr when empty. */
    ferry_advisor get() const noexcept { return h_; }

    /** True when this object holds an advisor. */
    explicit operator bool() const noexcept { return h_ != nullptr; }

    /** Destroys the advisor held now, if any, and leaves this object empty. Never throws. */
    void reset() noexcept {
        if (h_ != nullptr) {
            (void)ferry_advisor_destroy(std::exchange(h_, nullptr));
        }
        reduce_.reset();
    }

private:
    ferry_advisor h_ = nullptr;
    std::unique_ptr<detail::reduce_state> reduce_;
};

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
    explicit engine(int device = 0, std::chrono::milliseconds sample_interval = std::chrono::milliseconds(100)) {
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

    /** The pressure level of the latest published snapshot (memory_check().level). */
    ferry_pressure pressure() const { return static_cast<ferry_pressure>(memory_check().level); }

    /**
     * Sets the pressure thresholds; the current snapshot is re-evaluated at once, and every snapshot then
     * carries the level and the thresholds in bytes. Throws FERRY_ERR_INVALID_ARGUMENT for bad thresholds,
     * and for fractions on the CPU engine.
     */
    void set_pressure(const pressure_options& opts) { check(ferry_engine_set_pressure(handle_, &opts.c())); }

    /**
     * Registers fn, called by optimize() after the callbacks registered before it. The returned
     * registration owns fn and removes the callback when destroyed: keep it alive as long as the callback
     * should run. Throws FERRY_ERR_INVALID_ARGUMENT for an empty function.
     */
    [[nodiscard]] callback_registration on_pressure(pressure_fn fn) {
        if (!fn) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "the pressure callback is an empty std::function");
        }
        auto state = std::make_unique<detail::pressure_state>(detail::pressure_state{std::move(fn)});
        uint64_t id = 0;
        check(ferry_memory_on_pressure(handle_, &detail::pressure_trampoline, state.get(), &id));
        return callback_registration(handle_, id, std::move(state));
    }

    /**
     * The engine's empty-cache: trims its pools, calls every registered callback in order with the level
     * (on this thread), then re-reads memory. current_batch_size is the batch size in use (> 0), or 0 when
     * unknown; with an advisor attached, result.recommended_batch_size is the size to use next (0 without
     * one), never above current_batch_size under pressure.
     */
    ferry_optimize_result optimize(int64_t current_batch_size = 0) {
        ferry_optimize_result r{};
        r.size = sizeof(r);
        check(ferry_memory_optimize(handle_, current_batch_size, &r));
        return r;
    }

    /**
     * Attaches adv for optimize()'s recommendation. adv must stay alive while attached: call
     * clear_advisor() before destroying it.
     */
    void set_advisor(advisor& adv) {
        if (!adv) {
            throw error(FERRY_ERR_INVALID_HANDLE, "the ferry::advisor is empty");
        }
        check(ferry_engine_set_advisor(handle_, adv.get()));
    }

    /** Detaches the advisor, if any: optimize() then recommends nothing. */
    void clear_advisor() { check(ferry_engine_set_advisor(handle_, nullptr)); }

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

// ---------------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------------

/** Returns the size in bytes of one element of dtype, or 0 for a value that is not a ferry_dtype. */
constexpr std::size_t dtype_size(ferry_dtype dtype) noexcept {
    switch (dtype) {
    case FERRY_DTYPE_BOOL:
    case FERRY_DTYPE_UINT8:
    case FERRY_DTYPE_INT8: return 1;
    case FERRY_DTYPE_UINT16:
    case FERRY_DTYPE_INT16:
    case FERRY_DTYPE_FLOAT16:
    case FERRY_DTYPE_BFLOAT16: return 2;
    case FERRY_DTYPE_UINT32:
    case FERRY_DTYPE_INT32:
    case FERRY_DTYPE_FLOAT32: return 4;
    case FERRY_DTYPE_UINT64:
    case FERRY_DTYPE_INT64:
    case FERRY_DTYPE_FLOAT64: return 8;
    }
    return 0;
}

/**
 * dtype_of<T>::value is the ferry_dtype of the C++ type T (bool, the fixed-width integers, float,
 * double). There is no entry for float16 or bfloat16: name those with FERRY_DTYPE_FLOAT16/BFLOAT16.
 */
template <typename T>
struct dtype_of;
/** @cond specializations */
// clang-format off: a table, one specialization a line (clang-format would spread each over four lines).
template <> struct dtype_of<bool> { static constexpr ferry_dtype value = FERRY_DTYPE_BOOL; };
template <> struct dtype_of<uint8_t> { static constexpr ferry_dtype value = FERRY_DTYPE_UINT8; };
template <> struct dtype_of<int8_t> { static constexpr ferry_dtype value = FERRY_DTYPE_INT8; };
template <> struct dtype_of<uint16_t> { static constexpr ferry_dtype value = FERRY_DTYPE_UINT16; };
template <> struct dtype_of<int16_t> { static constexpr ferry_dtype value = FERRY_DTYPE_INT16; };
template <> struct dtype_of<uint32_t> { static constexpr ferry_dtype value = FERRY_DTYPE_UINT32; };
template <> struct dtype_of<int32_t> { static constexpr ferry_dtype value = FERRY_DTYPE_INT32; };
template <> struct dtype_of<uint64_t> { static constexpr ferry_dtype value = FERRY_DTYPE_UINT64; };
template <> struct dtype_of<int64_t> { static constexpr ferry_dtype value = FERRY_DTYPE_INT64; };
template <> struct dtype_of<float> { static constexpr ferry_dtype value = FERRY_DTYPE_FLOAT32; };
template <> struct dtype_of<double> { static constexpr ferry_dtype value = FERRY_DTYPE_FLOAT64; };
// clang-format on
/** @endcond */

/**
 * The description of one named field of a sample: element type, per-sample shape (empty for a scalar;
 * a batch holds the field as [batch, shape...]) and, for ferry::source::records, the byte offset of the
 * field inside a record. A plain value type: it owns its name and is copied freely.
 */
struct field {
    std::string name;                    /**< unique within a source */
    ferry_dtype dtype = FERRY_DTYPE_UINT8; /**< the element type */
    std::vector<int64_t> shape;          /**< per-sample shape, at most FERRY_MAX_DIMS entries, each > 0 */
    int64_t offset = 0;                  /**< byte offset inside a record (records sources only) */

    field() = default;

    /** A field of dtype elements with the given per-sample shape (empty: one element per sample). */
    field(std::string name_, ferry_dtype dtype_, std::vector<int64_t> shape_ = {}, int64_t offset_ = 0)
        : name(std::move(name_)), dtype(dtype_), shape(std::move(shape_)), offset(offset_) {}

    /** A field whose element type is the C++ type T, e.g. field::of<float>("image", {3, 32, 32}). */
    template <typename T>
    static field of(std::string name, std::vector<int64_t> shape = {}, int64_t offset = 0) {
        return field(std::move(name), dtype_of<T>::value, std::move(shape), offset);
    }

    /** Elements per sample: the product of shape (1 for a scalar). */
    int64_t elements() const noexcept {
        int64_t n = 1;
        for (int64_t d : shape) {
            n *= d;
        }
        return n;
    }

    /** Bytes per sample: elements() times the size of dtype. */
    int64_t bytes() const noexcept { return elements() * static_cast<int64_t>(dtype_size(dtype)); }

    /** A copy of a C field description (the name is copied). */
    static field from_c(const ferry_field& f) {
        field out;
        out.name = f.name != nullptr ? f.name : "";
        out.dtype = static_cast<ferry_dtype>(f.dtype);
        const int32_t nd = f.ndim < 0 ? 0 : (f.ndim > FERRY_MAX_DIMS ? FERRY_MAX_DIMS : f.ndim);
        out.shape.assign(f.shape, f.shape + nd);
        out.offset = f.offset;
        return out;
    }

    /**
     * The C description of this field. Its name points into this object: keep the object alive and
     * unchanged while the result is in use. Throws FERRY_ERR_INVALID_ARGUMENT for more than
     * FERRY_MAX_DIMS dimensions or a NUL in the name.
     */
    ferry_field to_c() const {
        if (shape.size() > static_cast<std::size_t>(FERRY_MAX_DIMS)) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "field \"" + name + "\" has " + std::to_string(shape.size()) +
                                                        " dimensions; at most " + std::to_string(FERRY_MAX_DIMS));
        }
        ferry_field f{};
        f.name = c_string(name, "field name");
        f.dtype = static_cast<int32_t>(dtype);
        f.ndim = static_cast<int32_t>(shape.size());
        for (std::size_t i = 0; i < shape.size(); i++) {
            f.shape[i] = shape[i];
        }
        f.offset = offset;
        return f;
    }
};

/** Two fields are equal when name, dtype, shape and offset are. */
inline bool operator==(const field& a, const field& b) {
    return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.offset == b.offset;
}
/** The negation of ==. */
inline bool operator!=(const field& a, const field& b) { return !(a == b); }

namespace detail {

/** The C descriptions of fields; their names point into fields. Throws for an empty or too long list. */
inline std::vector<ferry_field> to_c(const std::vector<field>& fields) {
    if (fields.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
        throw error(FERRY_ERR_INVALID_ARGUMENT, "too many fields");
    }
    std::vector<ferry_field> out;
    out.reserve(fields.size());
    for (const field& f : fields) {
        out.push_back(f.to_c());
    }
    return out;
}

} // namespace detail

// ---------------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------------

/**
 * The buffers of one sample that a callback source's function fills: one per field, in the source's
 * field order, each exactly (bytes per sample of that field) long. They are the iterator's staging
 * memory: write them during the call only, and keep no pointer after it returns.
 */
class sample_buffers {
public:
    /** Wraps the arrays that ferry passes to a ferry_sample_fn. */
    sample_buffers(void* const* dst, const int64_t* bytes, int32_t count) noexcept
        : dst_(dst), bytes_(bytes), count_(count) {}

    /** The number of fields. */
    int32_t size() const noexcept { return count_; }

    /** The buffer of field k. Throws FERRY_ERR_INVALID_ARGUMENT when k is out of range. */
    void* data(int32_t k) const {
        check_index(k);
        return dst_[k];
    }

    /** The buffer of field k as T*. Throws FERRY_ERR_INVALID_ARGUMENT when its size is not a multiple of T. */
    template <typename T>
    T* data(int32_t k) const {
        check_index(k);
        if (bytes_[k] % static_cast<int64_t>(sizeof(T)) != 0) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "sample buffer " + std::to_string(k) + " is " +
                                                        std::to_string(bytes_[k]) + " bytes, not a multiple of " +
                                                        std::to_string(sizeof(T)));
        }
        return static_cast<T*>(dst_[k]);
    }

    /** The size in bytes of field k's buffer. Throws FERRY_ERR_INVALID_ARGUMENT when k is out of range. */
    int64_t bytes(int32_t k) const {
        check_index(k);
        return bytes_[k];
    }

private:
    void check_index(int32_t k) const {
        if (k < 0 || k >= count_) {
            throw error(FERRY_ERR_INVALID_ARGUMENT,
                        "sample buffer " + std::to_string(k) + " of " + std::to_string(count_));
        }
    }

    void* const* dst_;
    const int64_t* bytes_;
    int32_t count_;
};

/**
 * The function of a callback source: fills sample `index` into the buffers. It is called from ferry's
 * worker threads, several at once, so it must be thread-safe. Throwing any exception fails the batch
 * that holds the sample: ferry::iterator::next() then throws ferry::error with FERRY_ERR_IO naming the
 * sample, and the iterator goes on with the following batch. The exception never crosses into C.
 */
using sample_fn = std::function<void(int64_t index, sample_buffers& buffers)>;

namespace detail {

/** What a callback source passes to C as `user`: the function, owned by the ferry::source. */
struct callback_state {
    sample_fn fn;
};

/** The ferry_sample_fn of callback sources: calls the std::function and turns any exception into 1. */
inline int32_t sample_trampoline(void* user, int64_t index, void* const* dst, const int64_t* dst_bytes,
                                 int32_t num_fields) noexcept {
    try {
        sample_buffers buffers(dst, dst_bytes, num_fields);
        static_cast<callback_state*>(user)->fn(index, buffers);
        return 0;
    } catch (...) {
        return 1;
    }
}

} // namespace detail

/**
 * The options of ferry::source::gpt, set with chained calls:
 *
 *     ferry::gpt_options().order(FERRY_GPT_ORDER_MEGATRON).seed(1234).split("969,30,1").num_samples(n)
 *
 * Megatron's seed, split, which, num_samples and cache apply to FERRY_GPT_ORDER_MEGATRON only.
 */
class gpt_options {
public:
    gpt_options() { check(ferry_gpt_options_init(&o_)); }

    /** FERRY_GPT_ORDER_FERRY (corpus order; shuffle with the iterator) or FERRY_GPT_ORDER_MEGATRON. */
    gpt_options& order(ferry_gpt_order v) noexcept {
        o_.order = static_cast<int32_t>(v);
        return *this;
    }
    /** Megatron's random_seed, 0 .. 2^32-1. */
    gpt_options& seed(uint64_t v) noexcept {
        o_.seed = v;
        return *this;
    }
    /** Megatron's split string, e.g. "969,30,1"; empty means "1" (every sequence in train). */
    gpt_options& split(std::string v) {
        split_ = std::move(v);
        (void)c_string(split_, "split");
        return *this;
    }
    /** The split to read. */
    gpt_options& which(ferry_megatron_split v) noexcept {
        o_.which = static_cast<int32_t>(v);
        return *this;
    }
    /** Samples asked for (train_iters x global batch); 0 builds one epoch. */
    gpt_options& num_samples(int64_t v) noexcept {
        o_.num_samples = v;
        return *this;
    }
    /** Where built indices are kept; empty means a "cache" directory beside the first prefix. */
    gpt_options& cache_dir(std::string v) {
        cache_ = std::move(v);
        (void)c_string(cache_, "cache_dir");
        return *this;
    }
    /** Build the index at every creation and write no cache. */
    gpt_options& no_cache(bool v = true) noexcept {
        o_.flags = v ? (o_.flags | FERRY_GPT_F_NO_CACHE) : (o_.flags & ~FERRY_GPT_F_NO_CACHE);
        return *this;
    }
    /** The window field's name; "tokens" by default. */
    gpt_options& field(std::string v) {
        field_ = std::move(v);
        (void)c_string(field_, "field name");
        return *this;
    }

    /** The C options with seq_len; its strings point into this object. */
    ferry_gpt_options to_c(int64_t seq_len) const noexcept {
        ferry_gpt_options o = o_;
        o.seq_len = seq_len;
        o.field_name = field_.empty() ? nullptr : field_.c_str();
        o.split = split_.empty() ? nullptr : split_.c_str();
        o.cache_dir = cache_.empty() ? nullptr : cache_.c_str();
        return o;
    }

private:
    ferry_gpt_options o_{};
    std::string split_, cache_, field_;
};

/** How a GPT source got its Megatron-order index (ferry::source::gpt_index_info). */
struct gpt_index_info {
    bool cached = false;     /**< mapped from the cache */
    int64_t epochs = 0;      /**< passes over the split */
    double seconds = 0;      /**< time to build or map it */
    std::string path;        /**< the cache file read or written; empty when none */
    std::string cache_error; /**< why the cache could not be used, if it could not */
};

/**
 * An owned source of samples: caller memory, a file of fixed-size records, CIFAR-10, .npy files, a token
 * file, ragged token sequences, or a C++ function. Created by the static factories below.
 *
 * Move-only. The destructor destroys the handle (which waits for calls of a callback source's function
 * in flight) and then frees the function; it never throws. Destroy every iterator over the source first.
 * The const methods may be called from any thread.
 */
class source {
public:
    /** An empty source (get() == nullptr). */
    source() noexcept = default;

    source(const source&) = delete;
    source& operator=(const source&) = delete;

    /** Takes other's handle (and function); other becomes empty. */
    source(source&& other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)), callback_(std::move(other.callback_)) {}

    /** Destroys the source held now, then takes other's; other becomes empty. */
    source& operator=(source&& other) noexcept {
        if (this != &other) {
            reset();
            handle_ = std::exchange(other.handle_, nullptr);
            callback_ = std::move(other.callback_);
        }
        return *this;
    }

    /** Destroys the source, if any. Never throws. */
    ~source() noexcept { reset(); }

    /**
     * A source over caller memory: data[k] points to n samples of fields[k], back to back (a C-order array
     * whose first dimension is the sample). Nothing is copied: the memory must stay alive and unchanged
     * until the source and every iterator over it are destroyed. Throws FERRY_ERR_INVALID_ARGUMENT when
     * data and fields differ in length, or for fields the library refuses.
     */
    static source memory(int64_t n, const std::vector<field>& fields, const std::vector<const void*>& data) {
        if (data.size() != fields.size()) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, std::to_string(fields.size()) + " fields but " +
                                                        std::to_string(data.size()) + " data pointers");
        }
        const std::vector<ferry_field> cf = detail::to_c(fields);
        source s;
        check(ferry_source_memory(n, cf.data(), static_cast<int32_t>(cf.size()), data.data(), &s.handle_));
        return s;
    }

    /**
     * A memory-mapped file of fixed-size records of record_size bytes after a header of header_size
     * bytes, each field at its `offset` inside the record. Throws FERRY_ERR_IO when the file cannot be
     * opened, FERRY_ERR_FORMAT when its size past the header is not a whole number of records.
     */
    static source records(const std::string& path, int64_t record_size, int64_t header_size,
                          const std::vector<field>& fields) {
        const std::vector<ferry_field> cf = detail::to_c(fields);
        source s;
        check(ferry_source_records(c_string(path, "path"), record_size, header_size, cf.data(),
                                   static_cast<int32_t>(cf.size()), &s.handle_));
        return s;
    }

    /** A CIFAR-10 binary file as is: fields "label" (uint8) and "image" (uint8 [3, 32, 32], CHW). */
    static source cifar10(const std::string& path) {
        source s;
        check(ferry_source_cifar10(c_string(path, "path"), &s.handle_));
        return s;
    }

    /**
     * One .npy file per field, memory-mapped: npy({{"image", "x.npy"}, {"label", "y.npy"}}). The first
     * dimension of every array is the sample and must agree across files.
     */
    static source npy(const std::vector<std::pair<std::string, std::string>>& files) {
        if (files.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "too many .npy files");
        }
        std::vector<const char*> names, paths;
        for (const auto& f : files) {
            names.push_back(c_string(f.first, "field name"));
            paths.push_back(c_string(f.second, "path"));
        }
        source s;
        check(ferry_source_npy(names.data(), paths.data(), static_cast<int32_t>(files.size()), &s.handle_));
        return s;
    }

    /**
     * A token file whose samples are windows of seq_len + 1 tokens, as fields "x" and "y" (y is x shifted
     * by one), each [seq_len] of the file's token type. With random, sample i starts at a pseudo-random
     * offset that is a pure function of (seed, i), as nanoGPT's get_batch draws them; else at i * seq_len.
     * With window, each sample is one field "tokens", [seq_len + 1]: the same window, each token once.
     */
    static source tokens(const std::string& path, int64_t seq_len, ferry_token_format format = FERRY_TOKENS_UINT16,
                         bool random = false, uint64_t seed = 0, bool window = false) {
        ferry_token_options o;
        check(ferry_token_options_init(&o));
        o.format = static_cast<int32_t>(format);
        o.seq_len = seq_len;
        o.seed = seed;
        o.flags = (random ? FERRY_TOKENS_F_RANDOM : 0u) | (window ? FERRY_TOKENS_F_WINDOW : 0u);
        source s;
        check(ferry_source_tokens(c_string(path, "path"), &o, &s.handle_));
        return s;
    }

    /**
     * Variable-length token sequences: a flat file of little-endian tokens (format FERRY_TOKENS_UINT16 or
     * FERRY_TOKENS_UINT32) and a .npy file of N + 1 int64 or uint64 non-decreasing token offsets, sample i
     * being tokens [off[i], off[i+1]). One field, named field, of [max_len] tokens: the sample's tokens cut
     * at max_len, then zeros. Throws FERRY_ERR_FORMAT, naming the file, for malformed files.
     */
    static source ragged_tokens(const std::string& tokens_path, const std::string& offsets_path, int64_t max_len,
                                ferry_token_format format = FERRY_TOKENS_UINT16, const std::string& field = "tokens") {
        ferry_ragged_options o;
        check(ferry_ragged_options_init(&o));
        o.format = static_cast<int32_t>(format);
        o.max_len = max_len;
        o.field_name = c_string(field, "field name");
        source s;
        check(ferry_source_ragged_tokens(c_string(tokens_path, "tokens path"), c_string(offsets_path, "offsets path"),
                                         &o, &s.handle_));
        return s;
    }

    /**
     * A Megatron indexed dataset (prefix.idx + prefix.bin) whose samples are its sequences: one field,
     * named field, of [max_len] of the index's token type, variable length (pad_sequences lays it out).
     * Several prefixes make one corpus. Throws FERRY_ERR_FORMAT, naming the file and the field, for a
     * malformed index.
     */
    static source megatron(const std::vector<std::string>& prefixes, int64_t max_len,
                           const std::string& field = "tokens") {
        const std::vector<const char*> ps = c_prefixes(prefixes);
        ferry_megatron_options o;
        check(ferry_megatron_options_init(&o));
        o.max_len = max_len;
        o.field_name = c_string(field, "field name");
        source s;
        check(ferry_source_megatron(ps.data(), static_cast<int32_t>(ps.size()), &o, &s.handle_));
        return s;
    }

    /**
     * GPT samples over a Megatron corpus: windows of seq_len + 1 tokens packed across documents as
     * megatron-core's GPTDataset packs them, in ferry's order or megatron-core's (see gpt_options).
     * transform::shift_tokens makes x, y, the loss mask and the position ids on the device.
     */
    static source gpt(const std::vector<std::string>& prefixes, int64_t seq_len,
                      const gpt_options& opts = gpt_options()) {
        const std::vector<const char*> ps = c_prefixes(prefixes);
        const ferry_gpt_options o = opts.to_c(seq_len);
        source s;
        check(ferry_source_gpt(ps.data(), static_cast<int32_t>(ps.size()), &o, &s.handle_));
        return s;
    }

    /**
     * Sources mixed by weight: parts are (weight, source) pairs of sources with equal fields, which must
     * outlive the blend and its iterators (a part destroyed first makes reads fail, never crash).
     * FERRY_BLEND_ORDER_FERRY: a pure function of (seed, epoch, position); FERRY_BLEND_ORDER_MEGATRON:
     * megatron-core's BlendedDataset (build the parts with megatron_blend_sizes()).
     */
    static source blend(const std::vector<std::pair<double, const source*>>& parts, int64_t num_samples,
                        ferry_blend_order order = FERRY_BLEND_ORDER_FERRY, uint64_t seed = 0) {
        if (parts.empty() || parts.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "a blend needs 1 or more sources");
        }
        std::vector<double> w;
        std::vector<ferry_source> hs;
        for (const auto& p : parts) {
            if (p.second == nullptr) {
                throw error(FERRY_ERR_INVALID_ARGUMENT, "a blend's source is null");
            }
            w.push_back(p.first);
            hs.push_back(p.second->get());
        }
        ferry_blend_options o;
        check(ferry_blend_options_init(&o));
        o.order = static_cast<int32_t>(order);
        o.num_samples = num_samples;
        o.seed = seed;
        source s;
        check(ferry_source_blend(hs.data(), w.data(), static_cast<int32_t>(hs.size()), &o, &s.handle_));
        return s;
    }

    /** How a GPT source got its Megatron-order index; throws FERRY_ERR_INVALID_ARGUMENT for other sources. */
    ferry::gpt_index_info gpt_index_info() const {
        ferry_gpt_index_info ci{};
        ci.size = sizeof(ci);
        check(ferry_source_gpt_index_info(handle_, &ci));
        ferry::gpt_index_info out;
        out.cached = ci.cached != 0;
        out.epochs = ci.epochs;
        out.seconds = ci.seconds;
        out.path = std::string(ci.path, std::find(ci.path, ci.path + sizeof(ci.path), '\0'));
        out.cache_error =
            std::string(ci.cache_error, std::find(ci.cache_error, ci.cache_error + sizeof(ci.cache_error), '\0'));
        return out;
    }

    /**
     * A folder per class, read as torchvision's ImageFolder reads it (the same labels and sample order):
     * fields "image" (the file's encoded bytes, at most max_bytes; 0: 8 MiB) and "label" (int64). Decode and
     * crop them with transform::random_resized_crop or transform::center_crop.
     */
    static source image_folder(const std::string& root, int64_t max_bytes = 0, bool allow_empty = false) {
        ferry_image_source_options o;
        check(ferry_image_source_options_init(&o));
        o.max_bytes = max_bytes;
        o.flags = allow_empty ? FERRY_IMAGES_F_ALLOW_EMPTY : 0u;
        source s;
        check(ferry_source_image_folder(c_string(root, "root"), &o, &s.handle_));
        return s;
    }

    /**
     * WebDataset tar shards (brace patterns expanded) with random access: fields "image" (the first present
     * of image_keys, ";"-separated) and "label" (the integer member label_key; "-" for none). Shard indexes
     * are cached in cache_dir (empty: a "cache" folder beside the first shard) unless no_cache.
     */
    static source webdataset(const std::vector<std::string>& shards,
                             const std::string& image_keys = "jpg;jpeg;png;webp", const std::string& label_key = "cls",
                             int64_t max_bytes = 0, const std::string& cache_dir = "", bool no_cache = false) {
        const std::vector<const char*> ps = c_prefixes(shards);
        ferry_image_source_options o;
        check(ferry_image_source_options_init(&o));
        o.max_bytes = max_bytes;
        o.flags = no_cache ? FERRY_IMAGES_F_NO_CACHE : 0u;
        o.image_keys = c_string(image_keys, "image keys");
        o.label_key = c_string(label_key, "label key");
        o.cache_dir = cache_dir.empty() ? nullptr : c_string(cache_dir, "cache dir");
        source s;
        check(ferry_source_webdataset(ps.data(), static_cast<int32_t>(ps.size()), &o, &s.handle_));
        return s;
    }

    /** Sample index's name: its file, or "shard.tar:key.ext"; empty for sources without names. */
    std::string sample_name(int64_t index) const {
        std::vector<char> buf(4096);
        check(ferry_source_sample_name(handle_, index, buf.data(), static_cast<uint32_t>(buf.size())));
        return std::string(buf.data());
    }

    /**
     * A source of n samples that fn fills (custom decoding in C++). The function is moved into a heap
     * object owned by the returned source and handed to C as `user`; it lives until the source is
     * destroyed, and moving the source does not move it. See ferry::sample_fn for the threads that call
     * it and what an exception in it does.
     */
    static source callback(int64_t n, const std::vector<field>& fields, sample_fn fn) {
        if (!fn) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "the sample function is empty");
        }
        const std::vector<ferry_field> cf = detail::to_c(fields);
        auto state = std::make_unique<detail::callback_state>();
        state->fn = std::move(fn);
        source s;
        check(ferry_source_callback(n, cf.data(), static_cast<int32_t>(cf.size()), &detail::sample_trampoline,
                                    state.get(), &s.handle_));
        s.callback_ = std::move(state);
        return s;
    }

    /** The number of samples. */
    int64_t len() const {
        int64_t n = 0;
        check(ferry_source_len(handle_, &n));
        return n;
    }

    /** The fields of one sample, in order (offsets are those given, for records and CIFAR-10 sources). */
    std::vector<field> fields() const {
        int32_t n = 0;
        check(ferry_source_num_fields(handle_, &n));
        std::vector<field> out;
        out.reserve(static_cast<std::size_t>(n));
        for (int32_t i = 0; i < n; i++) {
            ferry_field f{};
            check(ferry_source_field(handle_, i, &f));
            out.push_back(field::from_c(f));
        }
        return out;
    }

    /** Returns the raw handle, still owned by this object; nullptr when empty. */
    ferry_source get() const noexcept { return handle_; }

    /** True when this object holds a source. */
    explicit operator bool() const noexcept { return handle_ != nullptr; }

    /**
     * Destroys the source held now, if any, and leaves this object empty. Never throws. (There is no
     * release(): a callback source's function must not outlive nor predecease its handle.)
     */
    void reset() noexcept {
        if (handle_ != nullptr) {
            (void)ferry_source_destroy(std::exchange(handle_, nullptr));
        }
        callback_.reset(); // after the handle: destroying it waits for calls in flight
    }

private:
    static std::vector<const char*> c_prefixes(const std::vector<std::string>& prefixes) {
        if (prefixes.empty() || prefixes.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "give one or more prefixes");
        }
        std::vector<const char*> out;
        for (const auto& p : prefixes) {
            out.push_back(c_string(p, "prefix"));
        }
        return out;
    }

    ferry_source handle_ = nullptr;
    std::unique_ptr<detail::callback_state> callback_;
};

/**
 * What Megatron's builder does with a blend of size samples: the number of samples to build each source
 * with (gpt_options::num_samples) and the blend's own size (source::blend's num_samples).
 */
inline std::pair<std::vector<int64_t>, int64_t> megatron_blend_sizes(const std::vector<double>& weights, int64_t size) {
    if (weights.empty() || weights.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
        throw error(FERRY_ERR_INVALID_ARGUMENT, "a blend needs 1 or more weights");
    }
    std::vector<int64_t> per(weights.size());
    int64_t total = 0;
    check(ferry_megatron_blend_sizes(weights.data(), static_cast<int32_t>(weights.size()), size, per.data(), &total));
    return {per, total};
}

// ---------------------------------------------------------------------------------------------------
// Tensors and batches
// ---------------------------------------------------------------------------------------------------

/**
 * An owned DLPack 1.0 tensor (DLManagedTensorVersioned), as ferry::batch::field hands it out: a view of
 * one field of a batch, with no copy, in device memory (kDLCUDA) or, on the CPU engine, in host memory
 * (kDLCPU). While the tensor is alive the batch's memory is not reused: the iterator's ring grows by a
 * slot when it needs the slot of a batch still held, within the pinned budget, beyond which next() throws
 * FERRY_ERR_LIMIT. The tensor keeps its memory valid while it lives, also after the iterator is destroyed.
 *
 * Move-only. The noexcept destructor calls the DLPack deleter once; it may run on any thread. release()
 * hands ownership to another DLPack consumer, e.g. at::fromDLPack(t.release()).
 *
 * On a GPU, the data is ready for work queued on the stream given to ferry::iterator::next() (or to
 * ferry::batch::wait() or wait()); reading it from the host needs that stream synchronized first.
 */
class tensor {
public:
    /** An empty tensor. */
    tensor() noexcept = default;

    /** Takes ownership of t (which may be nullptr). */
    explicit tensor(DLManagedTensorVersioned* t) noexcept : t_(t) {}

    tensor(const tensor&) = delete;
    tensor& operator=(const tensor&) = delete;

    /** Takes other's tensor; other becomes empty. */
    tensor(tensor&& other) noexcept : t_(other.release()) {}

    /** Deletes the tensor held now, then takes other's; other becomes empty. */
    tensor& operator=(tensor&& other) noexcept {
        if (this != &other) {
            reset(other.release());
        }
        return *this;
    }

    /** Calls the deleter, if a tensor is held. */
    ~tensor() noexcept { reset(); }

    /** The first element's address (data + byte_offset): a device address for kDLCUDA. Empty: nullptr. */
    void* data() const noexcept {
        if (t_ == nullptr) {
            return nullptr;
        }
        return static_cast<char*>(t_->dl_tensor.data) + t_->dl_tensor.byte_offset;
    }

    /** data() as T*. No type check: compare dtype() first. */
    template <typename T>
    T* data() const noexcept {
        return static_cast<T*>(data());
    }

    /** The number of dimensions (batch first). */
    int32_t ndim() const { return dl().ndim; }

    /** The shape: [batch size, per-sample shape...]. */
    std::vector<int64_t> shape() const {
        const DLTensor& d = dl();
        return std::vector<int64_t>(d.shape, d.shape + d.ndim);
    }

    /** The element type. */
    DLDataType dtype() const { return dl().dtype; }

    /** Where the memory is: kDLCUDA with the CUDA ordinal, or kDLCPU. */
    DLDevice device() const { return dl().device; }

    /** The number of elements: the product of shape(). */
    int64_t numel() const {
        const DLTensor& d = dl();
        int64_t n = 1;
        for (int32_t i = 0; i < d.ndim; i++) {
            n *= d.shape[i];
        }
        return n;
    }

    /** The size in bytes (ferry's tensors are compact, row-major). */
    std::size_t nbytes() const {
        const DLDataType t = dtype();
        return static_cast<std::size_t>(numel()) * ((static_cast<std::size_t>(t.bits) * t.lanes + 7) / 8);
    }

    /** The DLTensor view. Throws FERRY_ERR_INVALID_HANDLE when empty. */
    const DLTensor& dl() const {
        if (t_ == nullptr) {
            throw error(FERRY_ERR_INVALID_HANDLE, "the ferry::tensor is empty");
        }
        return t_->dl_tensor;
    }

    /**
     * Makes stream wait for the copy of the tensor's batch (ferry_tensor_wait), for work on a stream other
     * than the one given to next(); works while the tensor lives, after its batch was released too.
     */
    void wait(void* stream) const { check(ferry_tensor_wait(t_, stream)); }

    /** The managed tensor, still owned by this object; nullptr when empty. */
    DLManagedTensorVersioned* get() const noexcept { return t_; }

    /** True when a tensor is held. */
    explicit operator bool() const noexcept { return t_ != nullptr; }

    /** Gives up ownership: the caller (e.g. a framework's from-DLPack) must call the deleter once. */
    DLManagedTensorVersioned* release() noexcept { return std::exchange(t_, nullptr); }

    /** Deletes the tensor held now, if any, and takes ownership of t. */
    void reset(DLManagedTensorVersioned* t = nullptr) noexcept {
        DLManagedTensorVersioned* old = std::exchange(t_, t);
        if (old != nullptr && old->deleter != nullptr) {
            old->deleter(old);
        }
    }

private:
    DLManagedTensorVersioned* t_ = nullptr;
};

/**
 * An owned batch from ferry::iterator::next(): batch_size samples (fewer in a short last batch) of every
 * field, in one slot of the iterator's ring.
 *
 * Move-only. The noexcept destructor gives the batch back with ferry_batch_release on the stream given to
 * next(): on a GPU ferry records an event there and refills the slot only after the work queued on that
 * stream so far, so the host never waits. Tensors taken with field() keep the slot until they are
 * destroyed too. Destroy batches before their iterator.
 *
 * The accessors may be called from any thread; epoch(), index(), size() and num_fields() read values
 * cached when the batch was made.
 */
class batch {
public:
    /** An empty batch. */
    batch() noexcept = default;

    /** Takes ownership of h, a batch from ferry_iterator_next; releases it and throws if its info fails. */
    explicit batch(ferry_batch h) : h_(h) {
        info_.size = sizeof(info_);
        const ferry_status st = ferry_batch_info(h_, &info_);
        if (st != FERRY_OK) {
            error e(st, ferry_last_error());
            (void)ferry_batch_release(std::exchange(h_, nullptr), nullptr);
            throw e;
        }
    }

    batch(const batch&) = delete;
    batch& operator=(const batch&) = delete;

    /** Takes other's batch; other becomes empty. */
    batch(batch&& other) noexcept : h_(std::exchange(other.h_, nullptr)), info_(other.info_) {}

    /** Releases the batch held now, then takes other's; other becomes empty. */
    batch& operator=(batch&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, nullptr);
            info_ = other.info_;
        }
        return *this;
    }

    /** Releases the batch, if any, on the stream given to next(). Never throws. */
    ~batch() noexcept { reset(); }

    /**
     * Field i as a tensor [size(), shape...], with no copy. The batch's fields are the source's, in order,
     * each replaced by its transform's outputs when it has one.
     */
    tensor field(int32_t i) const {
        DLManagedTensorVersioned* t = nullptr;
        check(ferry_batch_field(h_, i, &t));
        return tensor(t);
    }

    /** The field called name as a tensor. Throws FERRY_ERR_INVALID_ARGUMENT for an unknown name. */
    tensor field(const std::string& name) const {
        DLManagedTensorVersioned* t = nullptr;
        check(ferry_batch_field_by_name(h_, c_string(name, "field name"), &t));
        return tensor(t);
    }

    /** The number of samples (batch_size, or fewer in the last batch without drop_last). */
    int64_t size() const { return valid().num_samples; }

    /** The epoch the batch belongs to. */
    uint64_t epoch() const { return valid().epoch; }

    /** The batch's number within its epoch, from 0. */
    int64_t index() const { return valid().index; }

    /** The number of fields. */
    int32_t num_fields() const { return valid().num_fields; }

    /** The source's sample indices, in batch order: row r of every field is sample indices()[r]. */
    std::vector<int64_t> indices() const {
        std::vector<int64_t> out(static_cast<std::size_t>(valid().num_samples));
        check(ferry_batch_indices(h_, out.data(), static_cast<int64_t>(out.size())));
        return out;
    }

    /**
     * Makes stream (a CUstream or cudaStream_t; nullptr is the legacy default stream) wait for the batch's
     * copy too, for work on a stream other than the one given to next(). Does nothing on the CPU engine.
     */
    void wait(void* stream) const { check(ferry_batch_wait(h_, stream)); }

    /**
     * Gives the batch back now, ordered after the work queued so far on stream (nullptr: the stream given
     * to next()), and leaves this object empty. Unlike the destructor, it reports failure.
     */
    void release(void* stream = nullptr) {
        if (h_ == nullptr) {
            throw error(FERRY_ERR_INVALID_HANDLE, "the ferry::batch is empty");
        }
        check(ferry_batch_release(std::exchange(h_, nullptr), stream));
    }

    /** Returns the raw handle, still owned by this object; nullptr when empty. */
    ferry_batch get() const noexcept { return h_; }

    /** True when this object holds a batch. */
    explicit operator bool() const noexcept { return h_ != nullptr; }

private:
    const ferry_batch_properties& valid() const {
        if (h_ == nullptr) {
            throw error(FERRY_ERR_INVALID_HANDLE, "the ferry::batch is empty");
        }
        return info_;
    }

    void reset() noexcept {
        if (h_ != nullptr) {
            (void)ferry_batch_release(std::exchange(h_, nullptr), nullptr);
        }
    }

    ferry_batch h_ = nullptr;
    ferry_batch_properties info_{};
};

// ---------------------------------------------------------------------------------------------------
// Layout transforms
// ---------------------------------------------------------------------------------------------------

/**
 * A layout transform of one source field (ferry_transform), made by the static builders and given to an
 * iterator through iterator_options::transforms. On a GPU the library runs it as a kernel on the
 * iterator's stream right after the batch's bytes cross PCIe; on the CPU engine it runs on the host, with
 * the same results within float rounding. The batch's fields are then the transforms' outputs.
 *
 * A plain value type: it owns its strings and is copied freely. The builders only fill the C struct; the
 * library checks the values when the iterator is created (ferry::error with FERRY_ERR_INVALID_ARGUMENT
 * naming the problem).
 */
class transform {
public:
    /**
     * u8 images [H, W, C] (C <= 4; [C, H, W] after input_layout(FERRY_LAYOUT_CHW)) of field to floating
     * point: (x * scale - mean[c]) / std[c], in layout,
     * as dtype (FERRY_DTYPE_FLOAT32, FERRY_DTYPE_FLOAT16 or FERRY_DTYPE_BFLOAT16), flipped left-right with
     * probability flip (a pure function of the iterator's seed, the epoch and the sample index). mean and
     * std_dev: empty (0 and 1), one value for every channel, or one per channel, in units of x * scale
     * (torchvision's ImageNet values are {0.485, 0.456, 0.406} and {0.229, 0.224, 0.225}); the scale is
     * 1/255 unless set with scale(). The field keeps its name.
     */
    static transform normalize(std::string field, std::vector<float> mean = {}, std::vector<float> std_dev = {},
                               ferry_image_layout layout = FERRY_LAYOUT_CHW, ferry_dtype dtype = FERRY_DTYPE_FLOAT32,
                               double flip = 0.0) {
        transform t(FERRY_TRANSFORM_NORMALIZE, std::move(field));
        // One count covers both arrays: an empty one takes the neutral value, a single one is repeated.
        const std::size_t n = std::max(mean.size(), std_dev.size());
        if (!mean.empty() && !std_dev.empty() && mean.size() != std_dev.size() && mean.size() != 1 &&
            std_dev.size() != 1) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "normalize: " + std::to_string(mean.size()) + " mean values and " +
                                                        std::to_string(std_dev.size()) + " std values");
        }
        if (n > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "normalize: too many mean or std values");
        }
        t.t_.channels = static_cast<int32_t>(n);
        const std::size_t slots = sizeof(t.t_.mean) / sizeof(t.t_.mean[0]);
        for (std::size_t c = 0; c < n && c < slots; c++) {
            t.t_.mean[c] = mean.empty() ? 0.0f : mean[mean.size() == 1 ? 0 : c];
            t.t_.std[c] = std_dev.empty() ? 1.0f : std_dev[std_dev.size() == 1 ? 0 : c];
        }
        t.t_.layout = static_cast<int32_t>(layout);
        t.t_.dtype = static_cast<int32_t>(dtype);
        t.t_.flip = flip;
        return t;
    }

    /**
     * A window of seq_len + 1 uint16/uint32/int32 tokens of field (ferry::source::tokens with window,
     * ferry::source::gpt) to the language-model pair x (the first seq_len tokens) and y (shifted by one),
     * both int64 [seq_len]. The field is replaced by x, y and the outputs loss_mask() and position_ids()
     * add, in that order.
     */
    static transform shift_tokens(std::string field, std::string x = "x", std::string y = "y") {
        transform t(FERRY_TRANSFORM_SHIFT_TOKENS, std::move(field));
        t.x_ = std::move(x);
        t.y_ = std::move(y);
        (void)c_string(t.x_, "shift_tokens x");
        (void)c_string(t.y_, "shift_tokens y");
        return t;
    }

    /**
     * A variable-length token field (ferry::source::ragged_tokens) to int64 tokens [L] padded with
     * pad_value, a bool attention mask [L] named mask and the int64 length named lengths; L is the batch's
     * longest sequence, or the source's max_len when fixed. The token field keeps its name.
     */
    static transform pad_sequences(std::string field, int64_t pad_value = 0, bool fixed = false,
                                   std::string mask = "attention_mask", std::string lengths = "lengths") {
        transform t(FERRY_TRANSFORM_PAD_SEQUENCES, std::move(field));
        t.t_.pad_value = pad_value;
        t.t_.fixed_length = fixed ? 1 : 0;
        t.mask_ = std::move(mask);
        t.lengths_ = std::move(lengths);
        (void)c_string(t.mask_, "pad_sequences mask");
        (void)c_string(t.lengths_, "pad_sequences lengths");
        return t;
    }

    /**
     * An encoded image (image_folder, webdataset) or a decoded uint8 [H, W, 3] image of field to torchvision's
     * RandomResizedCrop(size, scale, ratio), flipped with probability flip and normalized (mean, std as
     * normalize's), [3, size, size] (or [size, size, 3]) of dtype. The box is a pure function of the
     * iterator's seed, the epoch and the sample. On a GPU one kernel crops the batch from images decoded in
     * device memory.
     */
    static transform random_resized_crop(std::string field, int32_t size, std::vector<float> mean = {},
                                         std::vector<float> std_dev = {}, double flip = 0.0,
                                         std::pair<double, double> scale = {0.08, 1.0},
                                         std::pair<double, double> ratio = {3.0 / 4, 4.0 / 3},
                                         ferry_image_layout layout = FERRY_LAYOUT_CHW,
                                         ferry_dtype dtype = FERRY_DTYPE_FLOAT32) {
        transform t = crop(FERRY_TRANSFORM_RANDOM_RESIZED_CROP, std::move(field), size, mean, std_dev, layout, dtype);
        t.t_.flip = flip;
        t.t_.scale_min = scale.first;
        t.t_.scale_max = scale.second;
        t.t_.ratio_min = ratio.first;
        t.t_.ratio_max = ratio.second;
        return t;
    }

    /** torchvision's evaluation crop: the shorter side resized to resize_to (0: size * 256 / 224), the central
        [size, size], normalized; as random_resized_crop otherwise. */
    static transform center_crop(std::string field, int32_t size, int32_t resize_to = 0, std::vector<float> mean = {},
                                 std::vector<float> std_dev = {}, ferry_image_layout layout = FERRY_LAYOUT_CHW,
                                 ferry_dtype dtype = FERRY_DTYPE_FLOAT32) {
        transform t = crop(FERRY_TRANSFORM_CENTER_CROP, std::move(field), size, mean, std_dev, layout, dtype);
        t.t_.resize_to = resize_to;
        return t;
    }

    /**
     * An encoded image of field to its pixels, uint8 [height, width, 3] RGB, for data sets whose images all
     * have one size; an image of another size fails its batch naming the file. On a GPU, JPEGs are decoded by
     * nvJPEG straight into the batch.
     */
    static transform decode_image(std::string field, int32_t height, int32_t width) {
        transform t(FERRY_TRANSFORM_DECODE_IMAGE, std::move(field));
        t.t_.height = height;
        t.t_.width = width;
        return t;
    }

    /** random_resized_crop, center_crop: widen the bilinear filter by the downscale factor when the crop
        shrinks the image (Pillow's resize, torchvision's antialias=True). */
    transform& antialias(bool on = true) noexcept {
        t_.crop_flags = on ? (t_.crop_flags | FERRY_CROP_F_ANTIALIAS) : (t_.crop_flags & ~FERRY_CROP_F_ANTIALIAS);
        return *this;
    }

    /** random_resized_crop, center_crop, decode_image: images of more pixels are refused, naming them (0: 64
        Mpx). */
    transform& max_pixels(int64_t n) noexcept {
        t_.max_pixels = n;
        return *this;
    }

    /** shift_tokens: also a float32 loss mask named name (Megatron's loss_mask; see eod()). */
    transform& loss_mask(std::string name) {
        loss_mask_ = std::move(name);
        (void)c_string(loss_mask_, "shift_tokens loss_mask");
        return *this;
    }

    /** shift_tokens: also int64 position ids named name (Megatron's position_ids; see eod()). */
    transform& position_ids(std::string name) {
        positions_ = std::move(name);
        (void)c_string(positions_, "shift_tokens position_ids");
        return *this;
    }

    /**
     * shift_tokens: the end-of-document token; with mask_eod the loss mask is 0 where the input is eod
     * (Megatron's eod_mask_loss), with reset_positions the position ids restart after it (reset_position_ids).
     */
    transform& eod(int64_t token, bool mask_eod, bool reset_positions) noexcept {
        t_.eod = token;
        t_.shift_flags =
            (mask_eod ? FERRY_SHIFT_F_MASK_EOD : 0u) | (reset_positions ? FERRY_SHIFT_F_RESET_POSITIONS : 0u);
        return *this;
    }

    /** normalize: the factor x is multiplied by before mean and std apply; 0 means 1/255. */
    transform& scale(float s) noexcept {
        t_.scale = s;
        return *this;
    }

    /**
     * normalize: the layout of the u8 input, FERRY_LAYOUT_HWC ([H, W, C], the default) or FERRY_LAYOUT_CHW
     * ([C, H, W] channel planes, as CIFAR's binary records hold them).
     */
    transform& input_layout(ferry_image_layout layout) noexcept {
        t_.input_layout = static_cast<int32_t>(layout);
        return *this;
    }

    /** The source field it applies to. */
    const std::string& field() const noexcept { return field_; }

    /** What it does. */
    ferry_transform_kind kind() const noexcept { return static_cast<ferry_transform_kind>(t_.kind); }

    /**
     * The C description of this transform. Its strings point into this object: keep the object alive and
     * unchanged while the result is in use (the library copies it when the iterator is created). None holds
     * a NUL: the factories refuse one (c_string).
     */
    ferry_transform to_c() const noexcept {
        ferry_transform t = t_;
        t.field = field_.c_str();
        if (t_.kind == FERRY_TRANSFORM_SHIFT_TOKENS) {
            t.x_name = x_.c_str();
            t.y_name = y_.c_str();
            t.loss_mask_name = loss_mask_.empty() ? nullptr : loss_mask_.c_str();
            t.position_ids_name = positions_.empty() ? nullptr : positions_.c_str();
        } else if (t_.kind == FERRY_TRANSFORM_PAD_SEQUENCES) {
            t.mask_name = mask_.c_str();
            t.lengths_name = lengths_.c_str();
        }
        return t;
    }

    /**
     * Runs this transform's kernel alone (ferry_transform_launch) on stream over batch samples of in that
     * lie back to back at device address src, writing its outputs at the device addresses dst (normalize:
     * the image; shift_tokens: x then y). The host does not wait. Throws FERRY_ERR_UNSUPPORTED on the CPU
     * engine or where the kernels cannot load; pad_sequences needs an iterator.
     */
    void launch(const engine& eng, const ferry::field& in, int64_t batch, uint64_t src,
                const std::vector<uint64_t>& dst, void* stream = nullptr) const {
        if (dst.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "too many destinations");
        }
        const ferry_transform t = to_c();
        const ferry_field f = in.to_c();
        check(ferry_transform_launch(eng.get(), &t, &f, batch, src, dst.empty() ? nullptr : dst.data(),
                                     static_cast<int32_t>(dst.size()), stream));
    }

private:
    static transform crop(ferry_transform_kind kind, std::string field, int32_t size, const std::vector<float>& mean,
                          const std::vector<float>& std_dev, ferry_image_layout layout, ferry_dtype dtype) {
        transform n = normalize(field, mean, std_dev, layout, dtype);
        transform t(kind, std::move(field));
        t.t_.channels = n.t_.channels;
        std::copy(std::begin(n.t_.mean), std::end(n.t_.mean), std::begin(t.t_.mean));
        std::copy(std::begin(n.t_.std), std::end(n.t_.std), std::begin(t.t_.std));
        t.t_.layout = n.t_.layout;
        t.t_.dtype = n.t_.dtype;
        t.t_.crop_size = size;
        return t;
    }

    transform(ferry_transform_kind kind, std::string field) : field_(std::move(field)) {
        check(ferry_transform_init(&t_, static_cast<int32_t>(kind), c_string(field_, "a transform's field name")));
        t_.field = nullptr; // set by to_c(), from this object's copy of the name
    }

    ferry_transform t_{};
    std::string field_, x_, y_, mask_, lengths_, loss_mask_, positions_;
};

namespace detail {
/** The C structs of ts, for a create call; they point into ts, which must outlive the call. */
inline std::vector<ferry_transform> c_transforms(const std::vector<transform>& ts) {
    if (ts.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
        throw error(FERRY_ERR_INVALID_ARGUMENT, "too many transforms");
    }
    std::vector<ferry_transform> ct;
    ct.reserve(ts.size());
    for (const transform& t : ts) {
        ct.push_back(t.to_c());
    }
    return ct;
}
} // namespace detail

/** How an iterator stages samples (ferry_iterator_staging): the strategy and why it was picked. */
struct staging_info {
    ferry_staging strategy = FERRY_STAGING_GATHER; /**< never FERRY_STAGING_AUTO */
    std::string reason;                          /**< e.g. why it fell back to gather */
};

// ---------------------------------------------------------------------------------------------------
// Iterator
// ---------------------------------------------------------------------------------------------------

/**
 * The options of a ferry::iterator, set with chained calls:
 *
 *     ferry::iterator_options().batch_size(256).shuffle(true).seed(7).drop_last(true)
 *
 * Every setter returns *this; the getter of the same name reads the value. Zero selects the library's
 * default for workers, prefetch, world_size and timeout.
 */
class iterator_options {
public:
    /** Samples per batch; required (the default 0 is refused by the library). */
    iterator_options& batch_size(int64_t n) noexcept {
        o_.batch_size = n;
        return *this;
    }
    /** A seeded permutation per epoch (else sequential order). */
    iterator_options& shuffle(bool on = true) noexcept { return flag(FERRY_ITERATOR_F_SHUFFLE, on); }
    /** The shuffle's seed: the order is a pure function of (seed, epoch, position). */
    iterator_options& seed(uint64_t s) noexcept {
        o_.seed = s;
        return *this;
    }
    /** Drop the last incomplete batch (and cut the tail when sharding). */
    iterator_options& drop_last(bool on = true) noexcept { return flag(FERRY_ITERATOR_F_DROP_LAST, on); }
    /** Gather threads; 0 picks min(cores, 16). */
    iterator_options& workers(int32_t n) noexcept {
        o_.workers = n;
        return *this;
    }
    /** Batches in flight (the ring depth), 2..64; 0 picks 4. */
    iterator_options& prefetch(int32_t n) noexcept {
        o_.prefetch = n;
        return *this;
    }
    /** This rank, as torch's DistributedSampler shards. */
    iterator_options& rank(int32_t r) noexcept {
        o_.rank = r;
        return *this;
    }
    /** Ranks; 0 reads RANK and WORLD_SIZE when set (torchrun), else 1. */
    iterator_options& world_size(int32_t n) noexcept {
        o_.world_size = n;
        return *this;
    }
    /**
     * The longest one next() waits; 0 picks 5 minutes. Throws FERRY_ERR_INVALID_ARGUMENT when negative
     * or longer than uint32_t milliseconds.
     */
    iterator_options& timeout(std::chrono::milliseconds t) {
        const auto ms = t.count();
        if (ms < 0 || static_cast<unsigned long long>(ms) > std::numeric_limits<uint32_t>::max()) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "timeout " + std::to_string(ms) + " ms does not fit in uint32_t");
        }
        o_.timeout_ms = static_cast<uint32_t>(ms);
        return *this;
    }
    /** Adds raw FERRY_ITERATOR_F_* bits (unknown bits are refused by the library). */
    iterator_options& flags(uint32_t f) noexcept {
        o_.flags |= f;
        return *this;
    }
    /** The layout transforms, at most one per source field (replaces those set before). */
    iterator_options& transforms(std::vector<transform> ts) {
        transforms_ = std::move(ts);
        return *this;
    }
    /** Adds one layout transform. */
    iterator_options& add(transform t) {
        transforms_.push_back(std::move(t));
        return *this;
    }
    /** How samples cross to the device; FERRY_STAGING_AUTO (the default) picks the fastest that applies. */
    iterator_options& staging(ferry_staging s) noexcept {
        o_.staging = static_cast<int32_t>(s);
        return *this;
    }
    /** Bytes of source memory the iterator may register for DMA or mapped staging; 0: a quarter of RAM;
        negative: none. */
    iterator_options& pinned_budget(int64_t bytes) noexcept {
        o_.pinned_budget = bytes;
        return *this;
    }

    /** What a sample that fails to read or lay out does: FERRY_ON_ERROR_RAISE (the default) fails its batch,
        FERRY_ON_ERROR_SKIP puts the next readable sample in its place and counts it (stats().skipped). */
    iterator_options& on_error(ferry_on_error policy) noexcept {
        o_.on_error = static_cast<int32_t>(policy);
        return *this;
    }

    /** @name Getters */
    ///@{
    int64_t batch_size() const noexcept { return o_.batch_size; }
    bool shuffle() const noexcept { return (o_.flags & FERRY_ITERATOR_F_SHUFFLE) != 0; }
    uint64_t seed() const noexcept { return o_.seed; }
    bool drop_last() const noexcept { return (o_.flags & FERRY_ITERATOR_F_DROP_LAST) != 0; }
    int32_t workers() const noexcept { return o_.workers; }
    int32_t prefetch() const noexcept { return o_.prefetch; }
    int32_t rank() const noexcept { return o_.rank; }
    int32_t world_size() const noexcept { return o_.world_size; }
    std::chrono::milliseconds timeout() const noexcept { return std::chrono::milliseconds(o_.timeout_ms); }
    uint32_t flags() const noexcept { return o_.flags; }
    const std::vector<transform>& transforms() const noexcept { return transforms_; }
    ferry_staging staging() const noexcept { return static_cast<ferry_staging>(o_.staging); }
    int64_t pinned_budget() const noexcept { return o_.pinned_budget; }
    ///@}

    /**
     * The C options struct, without the transforms (its transforms field is NULL): the iterator's
     * constructor adds them from transforms().
     */
    const ferry_iterator_options& c() const noexcept { return o_; }

private:
    iterator_options& flag(uint32_t bit, bool on) noexcept {
        o_.flags = on ? (o_.flags | bit) : (o_.flags & ~bit);
        return *this;
    }

    ferry_iterator_options o_ = [] {
        ferry_iterator_options o;
        (void)ferry_iterator_options_init(&o);
        return o;
    }();
    std::vector<transform> transforms_;
};

/**
 * An iterator position: the next batch next() returns. batch may equal the batches per epoch, meaning the
 * end of the epoch comes next. All an exact resume needs: save it with a checkpoint, restore() it later.
 */
struct position {
    uint64_t epoch = 0;
    int64_t batch = 0;
};

/** Positions are equal when epoch and batch are. */
inline bool operator==(const position& a, const position& b) noexcept {
    return a.epoch == b.epoch && a.batch == b.batch;
}
/** The negation of ==. */
inline bool operator!=(const position& a, const position& b) noexcept { return !(a == b); }

class iterator;

/** The end of an epoch_range (a sentinel: it compares equal to an epoch_cursor with no batch). */
struct epoch_end {};

/**
 * The input iterator of an epoch_range. It holds the current batch; ++ releases it before fetching the
 * next, so a loop holds one slot of the ring at a time. To keep a batch past its loop step, move it
 * out: `ferry::batch kept = std::move(b);`. Move-only, like the batch it holds.
 */
class epoch_cursor {
public:
    using iterator_category = std::input_iterator_tag;
    using value_type = batch;
    using difference_type = std::ptrdiff_t;
    using pointer = batch*;
    using reference = batch&;

    /** Fetches the first batch (none at the end of the epoch). Throws what iterator::next() throws. */
    epoch_cursor(iterator* it, void* stream);

    epoch_cursor(const epoch_cursor&) = delete;
    epoch_cursor& operator=(const epoch_cursor&) = delete;
    epoch_cursor(epoch_cursor&&) noexcept = default;
    epoch_cursor& operator=(epoch_cursor&&) noexcept = default;

    /** The current batch. */
    batch& operator*() noexcept { return *current_; }
    /** The current batch. */
    batch* operator->() noexcept { return &*current_; }

    /**
     * Releases the current batch, then fetches the next one. At the end of the epoch the cursor becomes
     * equal to epoch_end. When next() throws (e.g. FERRY_ERR_IO for a failed batch), the cursor is at the
     * end and the exception propagates; the iterator stays usable.
     */
    epoch_cursor& operator++();

    /** True at the end of the epoch. */
    friend bool operator==(const epoch_cursor& c, epoch_end) noexcept { return !c.current_.has_value(); }
    /** True before the end of the epoch. */
    friend bool operator!=(const epoch_cursor& c, epoch_end e) noexcept { return !(c == e); }
    /** True at the end of the epoch. */
    friend bool operator==(epoch_end e, const epoch_cursor& c) noexcept { return c == e; }
    /** True before the end of the epoch. */
    friend bool operator!=(epoch_end e, const epoch_cursor& c) noexcept { return !(c == e); }

private:
    iterator* it_;
    void* stream_;
    std::optional<batch> current_;
};

/**
 * The rest of the current epoch as a range, from ferry::iterator::epoch(stream):
 *
 *     for (ferry::batch& b : it.epoch(stream)) { ... }   // one epoch
 *
 * begin() fetches the first batch; the loop ends at the epoch's FERRY_END_OF_EPOCH, which it consumes, so
 * the next loop runs the next epoch. A loop that starts mid-epoch (after next() or restore()) runs the
 * rest of that epoch; one that starts exactly at an epoch's end (state().batch == size()) is empty. A
 * range is a view: the iterator must outlive it and not move while it is used.
 */
class epoch_range {
public:
    /** A range over it's current epoch, whose batches are for stream. */
    epoch_range(iterator* it, void* stream) noexcept : it_(it), stream_(stream) {}

    /** Fetches the first batch. */
    epoch_cursor begin() const { return epoch_cursor(it_, stream_); }
    /** The end sentinel. */
    epoch_end end() const noexcept { return {}; }

private:
    iterator* it_;
    void* stream_;
};

/**
 * An owned prefetching iterator over a source on an engine's device. It starts prefetching when created:
 * gather threads fill a ring of prefetch slots and, on a GPU, a copier moves each to device memory on
 * the iterator's own stream.
 *
 * Two ways to walk it:
 *  - next(stream) returns the next batch, or std::nullopt once at the end of each epoch (the following
 *    call returns the next epoch's first batch);
 *  - range-for over one epoch: `for (ferry::batch& b : it.epoch(stream))`, or `for (ferry::batch& b : it)`,
 *    which is it.epoch(nullptr) (the legacy default stream; the CPU engine ignores streams). See
 *    epoch_range.
 *
 * Stream ordering: the stream given to next() (a CUstream or cudaStream_t; nullptr is the legacy default
 * stream) waits on the batch's copy with cuStreamWaitEvent, so work queued on it afterwards sees the
 * data, and the host never waits for the copy. The batch's release is ordered after the work queued on
 * the same stream before the batch is destroyed.
 *
 * Move-only. The destructor destroys the iterator (waiting, bounded, for copies in flight); destroy
 * batches and tensors first. next(), state(), restore() and set_epoch() must be called from one thread at
 * a time.
 */
class iterator {
public:
    /** An empty iterator. */
    iterator() noexcept = default;

    /**
     * Creates an iterator over src on eng's device and starts prefetching. src must outlive the
     * iterator. Throws ferry::error, e.g. FERRY_ERR_INVALID_ARGUMENT for bad options.
     */
    iterator(const engine& eng, const source& src, const iterator_options& opts) {
        const std::vector<ferry_transform> ct = detail::c_transforms(opts.transforms());
        ferry_iterator_options o = opts.c();
        o.transforms = ct.empty() ? nullptr : ct.data();
        o.num_transforms = static_cast<int32_t>(ct.size());
        check(ferry_iterator_create(eng.get(), src.get(), &o, &h_));
        int64_t n = 0;
        const ferry_status st = ferry_iterator_len(h_, &n);
        if (st != FERRY_OK) {
            error e(st, ferry_last_error());
            reset();
            throw e;
        }
        batches_ = n;
    }

    iterator(const iterator&) = delete;
    iterator& operator=(const iterator&) = delete;

    /** Takes other's iterator; other becomes empty. */
    iterator(iterator&& other) noexcept
        : h_(std::exchange(other.h_, nullptr)), batches_(std::exchange(other.batches_, 0)) {}

    /** Destroys the iterator held now, then takes other's; other becomes empty. */
    iterator& operator=(iterator&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, nullptr);
            batches_ = std::exchange(other.batches_, 0);
        }
        return *this;
    }

    /** Destroys the iterator, if any. Never throws. */
    ~iterator() noexcept { reset(); }

    /**
     * Returns the next batch, or std::nullopt at the end of the epoch (once; the call after it returns
     * the next epoch's first batch). stream will use the batch; see the class comment. Throws ferry::error:
     * FERRY_ERR_IO (or the source's error) when a sample of the batch could not be read, after which the
     * iterator goes on with the following batch; FERRY_ERR_TIMEOUT when no batch was ready within the
     * timeout; FERRY_ERR_LIMIT when the caller holds more batches than the ring may grow by (the pinned
     * budget). After either the position is unchanged.
     */
    std::optional<batch> next(void* stream = nullptr) {
        ferry_batch b = nullptr;
        const ferry_status st = ferry_iterator_next(h_, stream, &b);
        if (st == FERRY_END_OF_EPOCH) {
            return std::nullopt;
        }
        check(st);
        return std::optional<batch>(std::in_place, b);
    }

    /** What next_wait found (see next_wait). */
    enum class wait_result { batch, end_of_epoch, not_yet };

    /**
     * next() that waits at most `wait` in this call, for a loop that must react to something between
     * waits (a stop flag, an event loop): not_yet when no batch came within it, with nothing changed (call
     * again: consecutive calls continue one wait, bounded by the timeout option as next() is);
     * end_of_epoch once at the end of each epoch; batch with the batch in out. Throws as next() does, and
     * FERRY_ERR_INVALID_ARGUMENT for a wait under 1 ms or over uint32_t milliseconds.
     */
    wait_result next_wait(std::optional<batch>& out, std::chrono::milliseconds wait, void* stream = nullptr) {
        const auto ms = wait.count();
        if (ms < 1 || static_cast<unsigned long long>(ms) > std::numeric_limits<uint32_t>::max()) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "wait " + std::to_string(ms) + " ms is outside 1 .. 2^32-1 ms");
        }
        out.reset();
        ferry_batch b = nullptr;
        const ferry_status st = ferry_iterator_next_wait(h_, stream, static_cast<uint32_t>(ms), &b);
        if (st == FERRY_END_OF_EPOCH) {
            return wait_result::end_of_epoch;
        }
        check(st);
        if (b == nullptr) {
            return wait_result::not_yet;
        }
        out.emplace(b);
        return wait_result::batch;
    }

    /** The rest of the current epoch as a range of batches for stream. */
    epoch_range epoch(void* stream = nullptr) noexcept { return epoch_range(this, stream); }

    /** it.epoch(nullptr).begin(): range-for over the current epoch, on the legacy default stream. */
    epoch_cursor begin() { return epoch_cursor(this, nullptr); }
    /** The end sentinel of begin(). */
    epoch_end end() const noexcept { return {}; }

    /** Batches per epoch on this rank. */
    int64_t size() const {
        if (h_ == nullptr) {
            throw error(FERRY_ERR_INVALID_HANDLE, "the ferry::iterator is empty");
        }
        return batches_;
    }

    /** The position of the next batch next() returns. */
    position state() const {
        ferry_iterator_position p{};
        p.size = sizeof(p);
        check(ferry_iterator_state(h_, &p));
        return position{p.epoch, p.batch};
    }

    /**
     * Moves to p in O(1): the batches that follow equal, bit for bit, those an uninterrupted iterator
     * would have returned from there. Prefetched batches are discarded; batches held stay valid.
     */
    void restore(const position& p) {
        ferry_iterator_position c{};
        c.size = sizeof(c);
        c.epoch = p.epoch;
        c.batch = p.batch;
        check(ferry_iterator_restore(h_, &c));
    }

    /** Starts epoch e from its first batch, like DistributedSampler.set_epoch. */
    void set_epoch(uint64_t e) { check(ferry_iterator_set_epoch(h_, e)); }

    /** The staging strategy the iterator uses and why it was picked. */
    staging_info staging() const {
        int32_t st = 0;
        char why[1024];
        why[0] = '\0';
        check(ferry_iterator_staging(h_, &st, why, sizeof(why)));
        return staging_info{static_cast<ferry_staging>(st), std::string(why)};
    }

    /** Returns the raw handle, still owned by this object; nullptr when empty. */
    ferry_iterator get() const noexcept { return h_; }

    /** True when this object holds an iterator. */
    explicit operator bool() const noexcept { return h_ != nullptr; }

    /** Destroys the iterator held now, if any, and leaves this object empty. Never throws. */
    void reset() noexcept {
        if (h_ != nullptr) {
            (void)ferry_iterator_destroy(std::exchange(h_, nullptr));
        }
        batches_ = 0;
    }

private:
    ferry_iterator h_ = nullptr;
    int64_t batches_ = 0;
};

inline epoch_cursor::epoch_cursor(iterator* it, void* stream) : it_(it), stream_(stream) {
    current_ = it_->next(stream_);
}

inline epoch_cursor& epoch_cursor::operator++() {
    current_.reset(); // release first: the ring gets its slot back before we wait for the next batch
    current_ = it_->next(stream_);
    return *this;
}

// ---------------------------------------------------------------------------------------------------
// Feeds: batches the caller already has, staged onto the device
// ---------------------------------------------------------------------------------------------------

/** One tensor of a batch for feed::push: dense, row-major host memory, read during the call only. */
struct host_tensor {
    std::string name;                      /**< what a transform is keyed by */
    ferry_dtype dtype = FERRY_DTYPE_UINT8; /**< the element type */
    std::vector<int64_t> shape;            /**< [rows, per-row shape...], at most FERRY_MAX_DIMS + 1 entries */
    const void* data = nullptr;            /**< the first byte */
    int64_t bytes = 0;                     /**< the product of shape times the element size */
};

/**
 * Stages batches the program already has in host memory onto the engine's device (ferry_feed_*): push()
 * copies the tensors into ferry's page-locked staging, queues the copy and the layout transforms on the
 * feed's own stream and returns the batch, used as an iterator's (batch::wait orders the consuming stream
 * on it). Slots grow to the largest batch seen, and in number when the program holds them all, within
 * pinned_budget. Move-only; push() from one thread at a time.
 */
class feed {
public:
    /** An empty feed. */
    feed() noexcept = default;

    /**
     * Creates a feed on eng's device: transforms by tensor name, `slots` staging slots to start with (0: 6),
     * pinned_budget the most memory its slots hold (0: a quarter of RAM; negative: no more than `slots`).
     */
    explicit feed(const engine& eng, const std::vector<transform>& transforms = {}, int32_t slots = 0,
                  int64_t pinned_budget = 0) {
        const std::vector<ferry_transform> ct = detail::c_transforms(transforms);
        ferry_feed_options o;
        check(ferry_feed_options_init(&o));
        o.slots = slots;
        o.pinned_budget = pinned_budget;
        o.transforms = ct.empty() ? nullptr : ct.data();
        o.num_transforms = static_cast<int32_t>(ct.size());
        check(ferry_feed_create(eng.get(), &o, &h_));
    }

    feed(const feed&) = delete;
    feed& operator=(const feed&) = delete;

    /** Takes other's feed; other becomes empty. */
    feed(feed&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}

    /** Destroys the feed held now, then takes other's; other becomes empty. */
    feed& operator=(feed&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, nullptr);
        }
        return *this;
    }

    /** Destroys the feed, if any (batches still held stay valid). Never throws. */
    ~feed() noexcept { reset(); }

    /**
     * Stages one batch and returns it. Throws ferry::error: FERRY_ERR_INVALID_ARGUMENT for a bad tensor,
     * FERRY_ERR_IO when its memory faults while read, FERRY_ERR_LIMIT beyond the pinned budget.
     */
    batch push(const std::vector<host_tensor>& tensors) {
        std::vector<ferry_host_tensor> ct(tensors.size());
        for (std::size_t k = 0; k < tensors.size(); k++) {
            const host_tensor& t = tensors[k];
            if (t.shape.empty() || t.shape.size() > FERRY_MAX_DIMS + 1) {
                throw error(FERRY_ERR_INVALID_ARGUMENT, "tensor " + t.name + " has " + std::to_string(t.shape.size()) +
                                                            " dimensions; it must have 1.." +
                                                            std::to_string(FERRY_MAX_DIMS + 1));
            }
            ferry_host_tensor& c = ct[k];
            c.name = c_string(t.name, "a tensor name");
            c.dtype = t.dtype;
            c.ndim = static_cast<int32_t>(t.shape.size());
            for (std::size_t d = 0; d < t.shape.size(); d++) {
                c.shape[d] = t.shape[d];
            }
            c.data = t.data;
            c.bytes = t.bytes;
        }
        ferry_batch b = nullptr;
        check(ferry_feed_push(h_, ct.empty() ? nullptr : ct.data(), static_cast<int32_t>(ct.size()), &b));
        return batch(b);
    }

    /** What the feed staged so far (ferry_feed_stats). */
    ferry_pipeline_stats stats() const {
        ferry_pipeline_stats st{};
        st.size = sizeof(st);
        check(ferry_feed_stats(h_, &st));
        return st;
    }

    /** The C handle, still owned by this object. */
    ferry_feed get() const noexcept { return h_; }

    /** True when a feed is held. */
    explicit operator bool() const noexcept { return h_ != nullptr; }

    /** Destroys the feed, if any. Never throws. */
    void reset() noexcept {
        if (h_ != nullptr) {
            (void)ferry_feed_destroy(std::exchange(h_, nullptr));
        }
    }

private:
    ferry_feed h_ = nullptr;
};

// ---------------------------------------------------------------------------------------------------
// Performance monitor
// ---------------------------------------------------------------------------------------------------

/**
 * The options of a ferry::monitor, set with chained calls:
 *
 *     ferry::monitor_options().gpu_interval(std::chrono::milliseconds(50)).no_pcie().node("node-3").start()
 *
 * A sampler's interval left at 0 picks its default (GPU 100 ms, PCIe 1 s, system 1 s); an interval must
 * be at least 10 ms, and a negative one (or no_gpu(), no_pcie(), no_system()) turns that sampler off. Every
 * setter returns *this; the getter of the same name reads the value. The library checks the values when
 * the monitor is created.
 */
class monitor_options {
public:
    /** How often NVML samples the GPUs. */
    monitor_options& gpu_interval(std::chrono::microseconds d) noexcept {
        o_.gpu_interval_us = d.count();
        return *this;
    }
    /** How often the PCIe throughput is read (each reading blocks its sampler for ~20 ms). */
    monitor_options& pcie_interval(std::chrono::microseconds d) noexcept {
        o_.pcie_interval_us = d.count();
        return *this;
    }
    /** How often the host (CPU, memory, disks) and the attached iterators are sampled. */
    monitor_options& system_interval(std::chrono::microseconds d) noexcept {
        o_.system_interval_us = d.count();
        return *this;
    }
    /** Turns the GPU sampler off. */
    monitor_options& no_gpu() noexcept {
        o_.gpu_interval_us = -1;
        return *this;
    }
    /** Turns the PCIe throughput sampler off. */
    monitor_options& no_pcie() noexcept {
        o_.pcie_interval_us = -1;
        return *this;
    }
    /** Turns the host and pipeline sampler off. */
    monitor_options& no_system() noexcept {
        o_.system_interval_us = -1;
        return *this;
    }
    /** The quantiles' relative accuracy, in (0, 0.5); 0 picks 0.005. */
    monitor_options& sketch_accuracy(double a) noexcept {
        o_.sketch_accuracy = a;
        return *this;
    }
    /** Points per metric time series, 16..2^20; 0 picks 512. */
    monitor_options& series_points(int32_t n) noexcept {
        o_.series_points = n;
        return *this;
    }
    /** The rank label (rank and local rank both 0 read RANK and LOCAL_RANK when set). */
    monitor_options& rank(int32_t r) noexcept {
        o_.rank = r;
        return *this;
    }
    /** The local rank label. */
    monitor_options& local_rank(int32_t r) noexcept {
        o_.local_rank = r;
        return *this;
    }
    /** The node label ("" for none). */
    monitor_options& node(std::string n) {
        node_ = std::move(n);
        return *this;
    }
    /** The paths whose disks the system sampler reads (replaces those set before). */
    monitor_options& disk_paths(std::vector<std::string> paths) {
        disk_paths_ = std::move(paths);
        return *this;
    }
    /** Starts the samplers when the monitor is created (else monitor::start()). */
    monitor_options& start(bool on = true) noexcept {
        o_.flags = on ? (o_.flags | FERRY_MONITOR_F_START) : (o_.flags & ~FERRY_MONITOR_F_START);
        return *this;
    }
    /** Adds raw FERRY_MONITOR_F_* bits (unknown bits are refused by the library). */
    monitor_options& flags(uint32_t f) noexcept {
        o_.flags |= f;
        return *this;
    }

    /** @name Getters */
    ///@{
    std::chrono::microseconds gpu_interval() const noexcept { return std::chrono::microseconds(o_.gpu_interval_us); }
    std::chrono::microseconds pcie_interval() const noexcept { return std::chrono::microseconds(o_.pcie_interval_us); }
    std::chrono::microseconds system_interval() const noexcept {
        return std::chrono::microseconds(o_.system_interval_us);
    }
    double sketch_accuracy() const noexcept { return o_.sketch_accuracy; }
    int32_t series_points() const noexcept { return o_.series_points; }
    int32_t rank() const noexcept { return o_.rank; }
    int32_t local_rank() const noexcept { return o_.local_rank; }
    const std::string& node() const noexcept { return node_; }
    const std::vector<std::string>& disk_paths() const noexcept { return disk_paths_; }
    bool start() const noexcept { return (o_.flags & FERRY_MONITOR_F_START) != 0; }
    uint32_t flags() const noexcept { return o_.flags; }
    ///@}

    /**
     * The C options struct, without the node and the disk paths (NULL there): the monitor's constructor
     * adds them from node() and disk_paths().
     */
    const ferry_monitor_options& c() const noexcept { return o_; }

private:
    ferry_monitor_options o_ = [] {
        ferry_monitor_options o;
        (void)ferry_monitor_options_init(&o);
        return o;
    }();
    std::string node_;
    std::vector<std::string> disk_paths_;
};

/**
 * One metric of a ferry::monitor, from monitor::metric(name): the monitor's handle and the metric's ID, a
 * small value to copy freely and keep in a loop. It owns nothing; the monitor must outlive its use (a
 * call after the monitor is destroyed throws FERRY_ERR_INVALID_HANDLE, never crashes). Every method may be
 * called from any thread.
 */
class metric {
public:
    /** A metric of no monitor; its methods throw FERRY_ERR_INVALID_HANDLE. */
    metric() noexcept = default;

    /**
     * Logs v, stamped now. Inline and in C (ferry_metric_log): no lock, no call into Go, about the cost of
     * reading the clock. NaN and infinities are counted apart (ferry_metric_summary::nonfinite).
     */
    void log(double v) const { check(ferry_metric_log(m_, id_, v)); }

    /** Logs n values with one timestamp (e.g. a batch's per-sample losses). */
    void log_many(const double* values, std::size_t n) const {
        check(ferry_metric_log_many(m_, id_, values, static_cast<int64_t>(n)));
    }

    /** Logs every value of values with one timestamp. */
    void log_many(const std::vector<double>& values) const { log_many(values.data(), values.size()); }

    /** Logs values[i] at timestamps_ns[i] (CLOCK_MONOTONIC nanoseconds), for values buffered by the caller. */
    void log_many_at(const double* values, const uint64_t* timestamps_ns, std::size_t n) const {
        check(ferry_metric_log_many_at(m_, id_, values, timestamps_ns, static_cast<int64_t>(n)));
    }

    /**
     * The summary: exact count, mean, min, max, std (population) and last value, and p50..p999 within the
     * sketch's relative accuracy. The statistics are NaN while count is 0.
     */
    ferry_metric_summary summary() const {
        ferry_metric_summary s{};
        s.size = sizeof(s);
        check(ferry_metric_summary_get(m_, id_, &s));
        return s;
    }

    /** The metric's ID in its monitor. */
    uint32_t id() const noexcept { return id_; }

    /** The monitor's handle, not owned. */
    ferry_monitor monitor_handle() const noexcept { return m_; }

private:
    friend class monitor;

    metric(ferry_monitor m, uint32_t id) noexcept : m_(m), id_(id) {}

    ferry_monitor m_ = nullptr;
    uint32_t id_ = 0;
};

/**
 * An owned performance monitor: metrics logged at nanosecond cost from any thread, folded into exact
 * summaries, streaming quantiles and time series; background samplers for the GPUs (NVML), the host and
 * attached iterators; reports as JSON and HTML and a Prometheus endpoint.
 *
 *     ferry::monitor mon(ferry::monitor_options().start());
 *     ferry::metric loss = mon.metric("loss");
 *     for (...) { loss.log(value); }
 *     mon.write_report("report.html");
 *
 * Move-only. The destructor stops the samplers and the endpoint and destroys the monitor, and never
 * throws. A moved-from monitor is empty; its methods throw FERRY_ERR_INVALID_HANDLE. Every method may be
 * called from any thread; moving or destroying it must not race with other use.
 */
class monitor {
public:
    /** Creates a monitor. Throws ferry::error, e.g. FERRY_ERR_INVALID_ARGUMENT for a bad option. */
    explicit monitor(const monitor_options& opts = monitor_options()) {
        ferry_monitor_options o = opts.c();
        std::vector<const char*> paths;
        paths.reserve(opts.disk_paths().size());
        for (const std::string& p : opts.disk_paths()) {
            paths.push_back(c_string(p, "disk path"));
        }
        if (paths.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
            throw error(FERRY_ERR_INVALID_ARGUMENT, "too many disk paths");
        }
        o.node = opts.node().empty() ? nullptr : c_string(opts.node(), "node");
        o.disk_paths = paths.empty() ? nullptr : paths.data();
        o.num_disk_paths = static_cast<int32_t>(paths.size());
        check(ferry_monitor_create(&o, &h_));
    }

    monitor(const monitor&) = delete;
    monitor& operator=(const monitor&) = delete;

    /** Takes other's monitor; other becomes empty. */
    monitor(monitor&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}

    /** Destroys the monitor held now, then takes other's; other becomes empty. */
    monitor& operator=(monitor&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, nullptr);
        }
        return *this;
    }

    /** Destroys the monitor, if any. Never throws. */
    ~monitor() noexcept { reset(); }

    /** Starts the background samplers; a running monitor is left alone. */
    void start() { check(ferry_monitor_start(h_)); }

    /** Stops the background samplers; the metrics stay. */
    void stop() { check(ferry_monitor_stop(h_)); }

    /**
     * The metric called name (1..256 bytes of letters, digits and . _ - / :), created on first use; the
     * same name always gives the same metric. Throws FERRY_ERR_INVALID_ARGUMENT for a bad name.
     */
    ferry::metric metric(const std::string& name) const {
        uint32_t id = 0;
        check(ferry_metric_id(h_, c_string(name, "metric name"), &id));
        return ferry::metric(h_, id);
    }

    /**
     * The metric called name, which must exist already (logged from any thread or binding, or made by a
     * sampler): unlike metric(), it never creates one. Throws FERRY_ERR_INVALID_ARGUMENT, naming it, when
     * there is none.
     */
    ferry::metric find_metric(const std::string& name) const {
        uint32_t id = 0;
        check(ferry_metric_find(h_, c_string(name, "metric name"), &id));
        return ferry::metric(h_, id);
    }

    /** The JSON report (schema "ferry.report/1"). */
    std::string report_json() const {
        uint64_t n = 0;
        ferry_status st = ferry_monitor_report_json(h_, nullptr, 0, &n);
        if (st != FERRY_ERR_LIMIT) {
            check(st);
        }
        for (;;) {
            // Room to spare: the report's creation time and duration change from one call to the next.
            std::string s(static_cast<std::size_t>(n) + 256, '\0');
            uint64_t got = 0;
            st = ferry_monitor_report_json(h_, s.data(), s.size(), &got);
            if (st == FERRY_OK) {
                s.resize(static_cast<std::size_t>(got));
                return s;
            }
            if (st != FERRY_ERR_LIMIT) {
                check(st);
            }
            n = got;
        }
    }

    /** Writes the report to path: HTML with charts for .html or .htm, else JSON; created 0644. */
    void write_report(const std::string& path) const { check(ferry_monitor_write_report(h_, c_string(path, "path"))); }

    /** Streams every value logged from now on to path as JSON lines (ferry_monitor_stream_jsonl). */
    void stream_jsonl(const std::string& path) const { check(ferry_monitor_stream_jsonl(h_, c_string(path, "path"))); }

    /** Stops the JSON-lines stream, if any. */
    void stop_jsonl() const { check(ferry_monitor_stream_jsonl(h_, nullptr)); }

    /**
     * Serves Prometheus metrics at http://addr/metrics while the monitor lives and returns the bound
     * address. "" binds 127.0.0.1:9400, ":PORT" binds 127.0.0.1:PORT, port 0 a free port; give a host
     * (e.g. "0.0.0.0:9400") to listen beyond loopback. Throws FERRY_ERR_IO when the port is taken.
     */
    std::string serve_prometheus(const std::string& addr = "") {
        char bound[256];
        bound[0] = '\0';
        check(ferry_monitor_serve_prometheus(h_, c_string(addr, "address"), bound, sizeof(bound)));
        return std::string(bound);
    }

    /**
     * Reports it under pipeline/<name>/... (batches/s, samples/s, H2D bytes/s, queue depth, data stall %)
     * while the samplers run. The iterator must outlive the monitor, or be destroyed first (it is then
     * dropped).
     */
    void attach(const std::string& name, const iterator& it) {
        check(ferry_monitor_attach_iterator(h_, c_string(name, "pipeline name"), it.get()));
    }

    /** Returns the raw handle, still owned by this object; nullptr when empty. */
    ferry_monitor get() const noexcept { return h_; }

    /** True when this object holds a monitor. */
    explicit operator bool() const noexcept { return h_ != nullptr; }

    /** Destroys the monitor held now, if any, and leaves this object empty. Never throws. */
    void reset() noexcept {
        if (h_ != nullptr) {
            (void)ferry_monitor_destroy(std::exchange(h_, nullptr));
        }
    }

private:
    ferry_monitor h_ = nullptr;
};

} // namespace ferry

#endif // FERRY_HPP
