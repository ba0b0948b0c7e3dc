// Package engine is the core of ferry's Go API: devices, the engine (one device's primary context, or
// the CPU), its host and device memory pools and their accounting, the memory snapshot a background
// refresh keeps fresh, memory pressure and its callbacks, and the batch-size advisor. The packages built
// on it are data (sources, the sampler's order, the prefetch iterator, staging, transforms), monitor
// (metrics, GPU and host sampling, Prometheus, JSONL) and report (the report model, its HTML pages and
// the merge of per-rank reports). The C library in capi/ is a thin layer over these packages, so Go
// programs import them directly and get the same behaviour.
//
// # Concurrency
//
// The package-level functions (DeviceCount, Device, Devices, System) are safe for concurrent use. An
// *Engine is safe for concurrent use by many goroutines: MemoryCheck is a lock-free read of the latest
// published snapshot; MemoryCheckLive, SampleNow, Attach, Adopt and the Accounting methods may be called
// from any goroutine. Close may be called once; calls that race with Close either complete or return
// ErrClosed.
//
// # GPU access
//
// Nothing here touches the CUDA driver or NVML until the first call that needs them. Without a driver,
// DeviceCount returns 0 and Open on a GPU device returns an error wrapping ErrNoDevice that names the
// library that was missing. The CPU engine (device CPU) works everywhere.
//
// # Logging
//
// The engine logs through zerolog to standard error at the level named by FERRY_LOG_LEVEL (trace, debug,
// info, warn, error; default warn). WithLogger replaces the logger of one engine.
package engine
