// Package engine is ferry's Go API: devices, the memory check, and (in later files) pools, the prefetch
// iterator and the monitor. The C library in capi/ is a thin layer over this package, so Go programs
// import it directly and get the same behaviour.
//
// # Concurrency
//
// The package-level functions (DeviceCount, Device, Devices, System) are safe for concurrent use. An
// *Engine is safe for concurrent use by many goroutines: MemoryCheck is a lock-free read of the latest
// published snapshot; MemoryCheckLive, SampleNow and the Accounting methods may be called from any
// goroutine. Close may be called once; calls that race with Close either complete or return ErrClosed.
//
// # GPU access
//
// Nothing here touches the CUDA driver or NVML until the first call that needs them. Without a driver,
// DeviceCount returns 0 and Open on a GPU device returns an error wrapping ErrNoDevice that names the
// library that was missing. The CPU engine (device CPU) works everywhere.
//
// # Logging
//
// The engine logs through zerolog to standard error at the level named by FERRY_LOG (trace, debug, info,
// warn, error; default warn). WithLogger replaces the logger of one engine.
package engine
