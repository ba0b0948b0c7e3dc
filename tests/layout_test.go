package tests

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// TestStructLayout checks the Go mirrors against the x86-64 layout of ferry.h, with the sizes and
// offsets worked out by hand from the header.
func TestStructLayout(t *testing.T) {
	var dp deviceProperties
	var sp systemProperties
	var eo engineOptions
	var ms memorySnapshot
	var fl field
	var to tokenOptions
	var ro raggedOptions
	var io iteratorOptions
	var tr transform
	var ip iteratorPosition
	var bp batchProperties
	var mt dlManagedTensor
	var dt dlTensor
	var po pressureOptions
	var or optimizeResult
	var af advisorFit
	var mo monitorOptions
	var su metricSummary

	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"sizeof(ferry_device_properties)", unsafe.Sizeof(dp), 416},
		{"sizeof(ferry_system_properties)", unsafe.Sizeof(sp), 688},
		{"sizeof(ferry_engine_options)", unsafe.Sizeof(eo), 16},
		{"sizeof(ferry_memory_snapshot)", unsafe.Sizeof(ms), 160},
		{"sizeof(ferry_engine)", unsafe.Sizeof(engineHandle(0)), unsafe.Sizeof(uintptr(0))},
		{"sizeof(ferry_source)", unsafe.Sizeof(sourceHandle(0)), unsafe.Sizeof(uintptr(0))},
		{"sizeof(ferry_iterator)", unsafe.Sizeof(iteratorHandle(0)), unsafe.Sizeof(uintptr(0))},
		{"sizeof(ferry_batch)", unsafe.Sizeof(batchHandle(0)), unsafe.Sizeof(uintptr(0))},
		{"sizeof(ferry_field)", unsafe.Sizeof(fl), 88},
		{"sizeof(ferry_token_options)", unsafe.Sizeof(to), 32},
		{"sizeof(ferry_ragged_options)", unsafe.Sizeof(ro), 24},
		{"sizeof(ferry_iterator_options)", unsafe.Sizeof(io), 80},
		{"ferry_iterator_options.on_error", unsafe.Offsetof(io.OnError), 72},
		{"sizeof(ferry_transform)", unsafe.Sizeof(tr), 216},
		{"ferry_transform.height", unsafe.Offsetof(tr.Height), 208},
		{"ferry_transform.width", unsafe.Offsetof(tr.Width), 212},
		{"ferry_transform.crop_size", unsafe.Offsetof(tr.CropSize), 160},
		{"ferry_transform.scale_min", unsafe.Offsetof(tr.ScaleMin), 168},
		{"ferry_transform.max_pixels", unsafe.Offsetof(tr.MaxPixels), 200},
		{"sizeof(ferry_image_source_options)", unsafe.Sizeof(imageSourceOptions{}), 40},
		{"ferry_image_source_options.cache_dir", unsafe.Offsetof(imageSourceOptions{}.CacheDir), 32},
		{"ferry_transform.input_layout", unsafe.Offsetof(tr.InputLayout), 120},
		{"ferry_transform.loss_mask_name", unsafe.Offsetof(tr.LossMaskName), 128},
		{"ferry_transform.position_ids_name", unsafe.Offsetof(tr.PositionIDsName), 136},
		{"ferry_transform.eod", unsafe.Offsetof(tr.EOD), 144},
		{"ferry_transform.shift_flags", unsafe.Offsetof(tr.ShiftFlags), 152},
		{"sizeof(ferry_megatron_options)", unsafe.Sizeof(megatronOptions{}), 24},
		{"ferry_megatron_options.field_name", unsafe.Offsetof(megatronOptions{}.FieldName), 16},
		{"sizeof(ferry_gpt_options)", unsafe.Sizeof(gptOptions{}), 64},
		{"ferry_gpt_options.seed", unsafe.Offsetof(gptOptions{}.Seed), 24},
		{"ferry_gpt_options.which", unsafe.Offsetof(gptOptions{}.Which), 40},
		{"ferry_gpt_options.num_samples", unsafe.Offsetof(gptOptions{}.NumSamples), 48},
		{"ferry_gpt_options.cache_dir", unsafe.Offsetof(gptOptions{}.CacheDir), 56},
		{"sizeof(ferry_gpt_index_info)", unsafe.Sizeof(gptIndexInfo{}), 2072},
		{"ferry_gpt_index_info.path", unsafe.Offsetof(gptIndexInfo{}.Path), 24},
		{"sizeof(ferry_blend_options)", unsafe.Sizeof(blendOptions{}), 24},
		{"ferry_blend_options.seed", unsafe.Offsetof(blendOptions{}.Seed), 16},
		{"ferry_iterator_options.transforms", unsafe.Offsetof(io.Transforms), 48},
		{"ferry_iterator_options.num_transforms", unsafe.Offsetof(io.NumTransforms), 56},
		{"ferry_iterator_options.staging", unsafe.Offsetof(io.Staging), 60},
		{"ferry_iterator_options.pinned_budget", unsafe.Offsetof(io.PinnedBudget), 64},
		{"ferry_transform.field", unsafe.Offsetof(tr.Field), 8},
		{"ferry_transform.channels", unsafe.Offsetof(tr.Channels), 16},
		{"ferry_transform.mean", unsafe.Offsetof(tr.Mean), 24},
		{"ferry_transform.std", unsafe.Offsetof(tr.Std), 40},
		{"ferry_transform.scale", unsafe.Offsetof(tr.Scale), 56},
		{"ferry_transform.dtype", unsafe.Offsetof(tr.DType), 60},
		{"ferry_transform.flip", unsafe.Offsetof(tr.Flip), 64},
		{"ferry_transform.x_name", unsafe.Offsetof(tr.XName), 72},
		{"ferry_transform.pad_value", unsafe.Offsetof(tr.PadValue), 88},
		{"ferry_transform.fixed_length", unsafe.Offsetof(tr.FixedLength), 96},
		{"ferry_transform.mask_name", unsafe.Offsetof(tr.MaskName), 104},
		{"ferry_transform.lengths_name", unsafe.Offsetof(tr.LengthsName), 112},
		{"sizeof(ferry_iterator_position) v1", unsafe.Sizeof(ip), 24},
		{"sizeof(ferry_iterator_position)", unsafe.Sizeof(iteratorPositionV2{}), 48},
		{"ferry_iterator_position.offset", unsafe.Offsetof(iteratorPositionV2{}.Offset), 24},
		{"ferry_iterator_position.consumed", unsafe.Offsetof(iteratorPositionV2{}.Consumed), 32},
		{"ferry_iterator_position.world_size", unsafe.Offsetof(iteratorPositionV2{}.WorldSize), 40},
		{"sizeof(ferry_batch_properties)", unsafe.Sizeof(bp), 32},
		{"sizeof(DLManagedTensorVersioned)", unsafe.Sizeof(mt), 80},
		{"sizeof(DLTensor)", unsafe.Sizeof(dt), 48},
		{"sizeof(DLDataType)", unsafe.Sizeof(dlDataType{}), 4},

		{"ferry_device_properties.name", unsafe.Offsetof(dp.Name), 8},
		{"ferry_device_properties.uuid", unsafe.Offsetof(dp.UUID), 264},
		{"ferry_device_properties.uuid_string", unsafe.Offsetof(dp.UUIDString), 280},
		{"ferry_device_properties.pci_bus_id", unsafe.Offsetof(dp.PCIBusID), 328},
		{"ferry_device_properties.compute_capability_major", unsafe.Offsetof(dp.ComputeCapabilityMajor), 360},
		{"ferry_device_properties.flags", unsafe.Offsetof(dp.Flags), 388},
		{"ferry_device_properties.total_memory_bytes", unsafe.Offsetof(dp.TotalMemoryBytes), 392},
		{"ferry_device_properties.reserved0", unsafe.Offsetof(dp.Reserved0), 412},

		{"ferry_system_properties.device_count", unsafe.Offsetof(sp.DeviceCount), 12},
		{"ferry_system_properties.driver_version", unsafe.Offsetof(sp.DriverVersion), 16},
		{"ferry_system_properties.nvml_version", unsafe.Offsetof(sp.NVMLVersion), 96},
		{"ferry_system_properties.cuda_status", unsafe.Offsetof(sp.CUDAStatus), 176},
		{"ferry_system_properties.nvml_status", unsafe.Offsetof(sp.NVMLStatus), 432},

		{"ferry_engine_options.device", unsafe.Offsetof(eo.Device), 4},
		{"ferry_engine_options.sample_interval_ms", unsafe.Offsetof(eo.SampleIntervalMS), 8},
		{"ferry_engine_options.flags", unsafe.Offsetof(eo.Flags), 12},

		{"ferry_memory_snapshot.device", unsafe.Offsetof(ms.Device), 8},
		{"ferry_memory_snapshot.sequence", unsafe.Offsetof(ms.Sequence), 16},
		{"ferry_memory_snapshot.timestamp_ns", unsafe.Offsetof(ms.TimestampNS), 24},
		{"ferry_memory_snapshot.sample_timestamp_ns", unsafe.Offsetof(ms.SampleTimestampNS), 40},
		{"ferry_memory_snapshot.device_total_bytes", unsafe.Offsetof(ms.DeviceTotalBytes), 48},
		{"ferry_memory_snapshot.process_device_bytes", unsafe.Offsetof(ms.ProcessDeviceBytes), 72},
		{"ferry_memory_snapshot.engine_allocated_bytes", unsafe.Offsetof(ms.EngineAllocatedBytes), 80},
		{"ferry_memory_snapshot.host_total_bytes", unsafe.Offsetof(ms.HostTotalBytes), 120},
		{"ferry_memory_snapshot.host_pinned_bytes", unsafe.Offsetof(ms.HostPinnedBytes), 136},
		{"ferry_memory_snapshot.critical_threshold_bytes", unsafe.Offsetof(ms.CriticalThresholdBytes), 152},

		{"ferry_field.dtype", unsafe.Offsetof(fl.DType), 8},
		{"ferry_field.ndim", unsafe.Offsetof(fl.NDim), 12},
		{"ferry_field.shape", unsafe.Offsetof(fl.Shape), 16},
		{"ferry_field.offset", unsafe.Offsetof(fl.Offset), 80},

		{"ferry_token_options.format", unsafe.Offsetof(to.Format), 4},
		{"ferry_token_options.seq_len", unsafe.Offsetof(to.SeqLen), 8},
		{"ferry_token_options.seed", unsafe.Offsetof(to.Seed), 16},
		{"ferry_token_options.flags", unsafe.Offsetof(to.Flags), 24},
		{"ferry_token_options.reserved", unsafe.Offsetof(to.Reserved), 28},

		{"ferry_ragged_options.format", unsafe.Offsetof(ro.Format), 4},
		{"ferry_ragged_options.max_len", unsafe.Offsetof(ro.MaxLen), 8},
		{"ferry_ragged_options.field_name", unsafe.Offsetof(ro.FieldName), 16},

		{"ferry_iterator_options.flags", unsafe.Offsetof(io.Flags), 4},
		{"ferry_iterator_options.batch_size", unsafe.Offsetof(io.BatchSize), 8},
		{"ferry_iterator_options.seed", unsafe.Offsetof(io.Seed), 16},
		{"ferry_iterator_options.workers", unsafe.Offsetof(io.Workers), 24},
		{"ferry_iterator_options.prefetch", unsafe.Offsetof(io.Prefetch), 28},
		{"ferry_iterator_options.rank", unsafe.Offsetof(io.Rank), 32},
		{"ferry_iterator_options.world_size", unsafe.Offsetof(io.WorldSize), 36},
		{"ferry_iterator_options.timeout_ms", unsafe.Offsetof(io.TimeoutMS), 40},
		{"ferry_iterator_options.reserved", unsafe.Offsetof(io.Reserved), 44},

		{"ferry_iterator_position.epoch", unsafe.Offsetof(ip.Epoch), 8},
		{"ferry_iterator_position.batch", unsafe.Offsetof(ip.Batch), 16},

		{"ferry_batch_properties.num_fields", unsafe.Offsetof(bp.NumFields), 4},
		{"ferry_batch_properties.epoch", unsafe.Offsetof(bp.Epoch), 8},
		{"ferry_batch_properties.index", unsafe.Offsetof(bp.Index), 16},
		{"ferry_batch_properties.num_samples", unsafe.Offsetof(bp.NumSamples), 24},

		{"DLManagedTensorVersioned.manager_ctx", unsafe.Offsetof(mt.ManagerCtx), 8},
		{"DLManagedTensorVersioned.deleter", unsafe.Offsetof(mt.Deleter), 16},
		{"DLManagedTensorVersioned.flags", unsafe.Offsetof(mt.Flags), 24},
		{"DLManagedTensorVersioned.dl_tensor", unsafe.Offsetof(mt.DLTensor), 32},
		{"DLTensor.device", unsafe.Offsetof(dt.DeviceType), 8},
		{"DLTensor.device.device_id", unsafe.Offsetof(dt.DeviceID), 12},
		{"DLTensor.ndim", unsafe.Offsetof(dt.NDim), 16},
		{"DLTensor.dtype", unsafe.Offsetof(dt.DType), 20},
		{"DLTensor.shape", unsafe.Offsetof(dt.Shape), 24},
		{"DLTensor.strides", unsafe.Offsetof(dt.Strides), 32},
		{"DLTensor.byte_offset", unsafe.Offsetof(dt.ByteOffset), 40},

		{"sizeof(ferry_pressure_options)", unsafe.Sizeof(po), 40},
		{"ferry_pressure_options.metric", unsafe.Offsetof(po.Metric), 4},
		{"ferry_pressure_options.warn_bytes", unsafe.Offsetof(po.WarnBytes), 8},
		{"ferry_pressure_options.critical_bytes", unsafe.Offsetof(po.CriticalBytes), 16},
		{"ferry_pressure_options.warn_fraction", unsafe.Offsetof(po.WarnFraction), 24},
		{"ferry_pressure_options.critical_fraction", unsafe.Offsetof(po.CriticalFraction), 32},

		{"sizeof(ferry_optimize_result)", unsafe.Sizeof(or), 40},
		{"ferry_optimize_result.level_before", unsafe.Offsetof(or.LevelBefore), 4},
		{"ferry_optimize_result.level_after", unsafe.Offsetof(or.LevelAfter), 8},
		{"ferry_optimize_result.callbacks_called", unsafe.Offsetof(or.CallbacksCalled), 12},
		{"ferry_optimize_result.callbacks_failed", unsafe.Offsetof(or.CallbacksFailed), 16},
		{"ferry_optimize_result.reserved", unsafe.Offsetof(or.Reserved), 20},
		{"ferry_optimize_result.trimmed_bytes", unsafe.Offsetof(or.TrimmedBytes), 24},
		{"ferry_optimize_result.recommended_batch_size", unsafe.Offsetof(or.RecommendedBatchSize), 32},

		{"sizeof(ferry_advisor_fit)", unsafe.Sizeof(af), 56},
		{"sizeof(ferry_advisor)", unsafe.Sizeof(advisorHandle(0)), unsafe.Sizeof(uintptr(0))},
		{"ferry_advisor_fit.observations", unsafe.Offsetof(af.Observations), 4},
		{"ferry_advisor_fit.fixed_bytes", unsafe.Offsetof(af.FixedBytes), 8},
		{"ferry_advisor_fit.per_sample_bytes", unsafe.Offsetof(af.PerSampleBytes), 16},
		{"ferry_advisor_fit.r_squared", unsafe.Offsetof(af.RSquared), 24},
		{"ferry_advisor_fit.max_residual_bytes", unsafe.Offsetof(af.MaxResidualBytes), 32},
		{"ferry_advisor_fit.oom_ceiling", unsafe.Offsetof(af.OOMCeiling), 40},
		{"ferry_advisor_fit.reserved", unsafe.Offsetof(af.Reserved), 48},

		{"sizeof(ferry_monitor_options)", unsafe.Sizeof(mo), 72},
		{"sizeof(ferry_monitor)", unsafe.Sizeof(monitorHandle(0)), unsafe.Sizeof(uintptr(0))},
		{"ferry_monitor_options.flags", unsafe.Offsetof(mo.Flags), 4},
		{"ferry_monitor_options.gpu_interval_us", unsafe.Offsetof(mo.GPUIntervalUS), 8},
		{"ferry_monitor_options.pcie_interval_us", unsafe.Offsetof(mo.PCIeIntervalUS), 16},
		{"ferry_monitor_options.system_interval_us", unsafe.Offsetof(mo.SystemIntervalUS), 24},
		{"ferry_monitor_options.sketch_accuracy", unsafe.Offsetof(mo.SketchAccuracy), 32},
		{"ferry_monitor_options.series_points", unsafe.Offsetof(mo.SeriesPoints), 40},
		{"ferry_monitor_options.rank", unsafe.Offsetof(mo.Rank), 44},
		{"ferry_monitor_options.local_rank", unsafe.Offsetof(mo.LocalRank), 48},
		{"ferry_monitor_options.num_disk_paths", unsafe.Offsetof(mo.NumDiskPaths), 52},
		{"ferry_monitor_options.node", unsafe.Offsetof(mo.Node), 56},
		{"ferry_monitor_options.disk_paths", unsafe.Offsetof(mo.DiskPaths), 64},

		{"sizeof(ferry_metric_summary)", unsafe.Sizeof(su), 112},
		{"ferry_metric_summary.reserved", unsafe.Offsetof(su.Reserved), 4},
		{"ferry_metric_summary.count", unsafe.Offsetof(su.Count), 8},
		{"ferry_metric_summary.nonfinite", unsafe.Offsetof(su.NonFinite), 16},
		{"ferry_metric_summary.mean", unsafe.Offsetof(su.Mean), 24},
		{"ferry_metric_summary.min", unsafe.Offsetof(su.Min), 32},
		{"ferry_metric_summary.max", unsafe.Offsetof(su.Max), 40},
		{"ferry_metric_summary.std", unsafe.Offsetof(su.Std), 48},
		{"ferry_metric_summary.last", unsafe.Offsetof(su.Last), 56},
		{"ferry_metric_summary.p50", unsafe.Offsetof(su.P50), 64},
		{"ferry_metric_summary.p90", unsafe.Offsetof(su.P90), 72},
		{"ferry_metric_summary.p99", unsafe.Offsetof(su.P99), 80},
		{"ferry_metric_summary.p999", unsafe.Offsetof(su.P999), 88},
		{"ferry_metric_summary.first_ns", unsafe.Offsetof(su.FirstNS), 96},
		{"ferry_metric_summary.last_ns", unsafe.Offsetof(su.LastNS), 104},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tt.got)
		})
	}
}
