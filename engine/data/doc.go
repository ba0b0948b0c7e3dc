// Package data moves samples from where users keep them to the device: sources (caller memory, .npy
// files, fixed-size records, token files, variable-length token files, callbacks; one source_<format>.go
// each), the sampler that fixes the order as a pure function of (seed, epoch, position) with
// DistributedSampler-exact sharding and elastic resume, the prefetch iterator (iterator.go: the
// iterator, its options and its ring; batch.go: Next and the batches it hands out; pipeline.go: the
// producer, the gather workers and the copier; plan.go: the per-field plan and the batch metadata;
// copy.go: the device work of a batch; restore.go: positions and elastic state), staging (staging.go:
// how samples cross and the choice; register.go: host memory registered with the driver), and the device
// transforms (transform.go: the sealed Transform interface; transform_<name>.go, one each, with its
// kernels' names and parameter block; kernel.go: the module, the launches and the list of every kernel).
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
