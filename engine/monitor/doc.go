// Package monitor records performance metrics: named metrics logged with timestamps at nanosecond cost
// into per-P rings (and, from C, per-thread rings that the C library drains), folded into streaming
// summaries with quantile sketches and bounded time series; background sampling of the GPUs (NVML), the
// host (gopsutil) and attached input pipelines (through the small Pipeline interface); Prometheus
// exposition; and a JSONL stream. Report builds the report model of package report.
//
// # Concurrency
//
// Every method of a *Monitor is safe for concurrent use. Log, LogMany and LogAt never block on the fold.
// Close may be called once; calls after it return ErrClosed.
package monitor
