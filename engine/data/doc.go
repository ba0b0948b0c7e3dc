// Package data moves samples from where users keep them to the device: sources (caller memory, .npy
// files, fixed-size records, token files, variable-length token files, callbacks; one source_<format>.go
// each), the sampler that fixes the order as a pure function of (seed, epoch, position) with
// DistributedSampler-exact sharding and elastic resume, the prefetch iterator (iterator.go: the iterator
// and its options; batch.go: batches; pipeline.go: the workers and the copier; restore.go: positions and
// elastic state), staging (staging.go: how samples cross; register.go: host memory registered with the
// driver), and the device transforms (transform.go: the sealed Transform interface; transform_<name>.go
// one each; kernels.go: every kernel's name).
//
// # Concurrency
//
// Sources are safe for concurrent ReadSample calls. An *Iterator's Next, Release, State, Restore and
// Close may be called from any goroutine; Next is meant for one consumer at a time. A Batch is owned by
// the caller until Release. The Iterator implements monitor.Pipeline, so a monitor can report on it
// without reaching into it.
//
// # Memory
//
// Pinned staging is allocated once per iterator from the engine's pools and reused across epochs. A
// source that reads mapped memory reads it under a fault guard, so a truncated file is an error, never a
// crash.
package data
