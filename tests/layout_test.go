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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tt.got)
		})
	}
}
