package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferry-ml/ferry/engine"
)

// infoReport is what `ferry info --json` prints.
type infoReport struct {
	Version string            `json:"version"`
	System  systemJSON        `json:"system"`
	Devices []deviceJSON      `json:"devices"`
	Memory  []memorySnapshotJ `json:"memory"`
}

type systemJSON struct {
	CUDAAvailable     bool   `json:"cuda_available"`
	CUDADriverVersion int    `json:"cuda_driver_version"`
	CUDAError         string `json:"cuda_error,omitempty"`
	NVMLAvailable     bool   `json:"nvml_available"`
	DriverVersion     string `json:"driver_version,omitempty"`
	NVMLVersion       string `json:"nvml_version,omitempty"`
	NVMLError         string `json:"nvml_error,omitempty"`
	DeviceCount       int    `json:"device_count"`
}

type pcieJSON struct {
	GenerationCurrent int `json:"generation_current"`
	GenerationMax     int `json:"generation_max"`
	WidthCurrent      int `json:"width_current"`
	WidthMax          int `json:"width_max"`
}

type deviceJSON struct {
	Index             int       `json:"index"`
	Name              string    `json:"name"`
	UUID              string    `json:"uuid"`
	PCIBusID          string    `json:"pci_bus_id"`
	ComputeCapability string    `json:"compute_capability"`
	Multiprocessors   int       `json:"multiprocessors"`
	TotalMemoryBytes  uint64    `json:"total_memory_bytes"`
	L2CacheBytes      int       `json:"l2_cache_bytes"`
	MemoryBusWidth    int       `json:"memory_bus_width_bits"`
	AsyncEngines      int       `json:"async_engines"`
	PCIe              *pcieJSON `json:"pcie,omitempty"`
}

type memorySnapshotJ struct {
	Device              int     `json:"device"`
	Sequence            uint64  `json:"sequence"`
	TimestampNs         uint64  `json:"timestamp_ns"`
	AgeNs               int64   `json:"age_ns"`
	Live                bool    `json:"live"`
	DeviceTotalBytes    *uint64 `json:"device_total_bytes,omitempty"`
	DeviceFreeBytes     *uint64 `json:"device_free_bytes,omitempty"`
	DeviceUsedBytes     *uint64 `json:"device_used_bytes,omitempty"`
	ProcessDeviceBytes  *uint64 `json:"process_device_bytes,omitempty"`
	EngineAllocated     uint64  `json:"engine_allocated_bytes"`
	EngineReserved      uint64  `json:"engine_reserved_bytes"`
	EnginePeak          uint64  `json:"engine_peak_bytes"`
	HostTotalBytes      *uint64 `json:"host_total_bytes,omitempty"`
	HostAvailableBytes  *uint64 `json:"host_available_bytes,omitempty"`
	HostPinnedBytes     uint64  `json:"host_pinned_bytes"`
	PressureLevel       int     `json:"pressure_level"`
	EngineAllocFailures uint64  `json:"engine_alloc_failures"`
}

func ptr(v uint64, ok bool) *uint64 {
	if !ok {
		return nil
	}
	return &v
}

func snapshotJSON(s engine.MemorySnapshot) memorySnapshotJ {
	return memorySnapshotJ{
		Device: s.Device, Sequence: s.Sequence, TimestampNs: s.Timestamp, AgeNs: int64(s.Age), Live: s.Live,
		DeviceTotalBytes:    ptr(s.DeviceTotal, s.DeviceValid),
		DeviceFreeBytes:     ptr(s.DeviceFree, s.DeviceValid),
		DeviceUsedBytes:     ptr(s.DeviceUsed, s.DeviceValid),
		ProcessDeviceBytes:  ptr(s.ProcessDevice, s.ProcessValid),
		EngineAllocated:     s.EngineAllocated,
		EngineReserved:      s.EngineReserved,
		EnginePeak:          s.EnginePeak,
		EngineAllocFailures: s.EngineAllocFailures,
		HostTotalBytes:      ptr(s.HostTotal, s.HostValid),
		HostAvailableBytes:  ptr(s.HostAvailable, s.HostValid),
		HostPinnedBytes:     s.HostPinned,
		PressureLevel:       int(s.Level),
	}
}

// gatherInfo reads the system, every device, and a live memory check of each device (or of the host when
// there is no device).
func gatherInfo() (infoReport, error) {
	r := infoReport{Version: version, Devices: []deviceJSON{}, Memory: []memorySnapshotJ{}}
	sys, err := engine.System()
	if err != nil {
		return r, err
	}
	r.System = systemJSON{
		CUDAAvailable: sys.CUDAAvailable(), CUDADriverVersion: sys.CUDADriverVersion, CUDAError: sys.CUDAError,
		NVMLAvailable: sys.NVMLAvailable(), DriverVersion: sys.DriverVersion, NVMLVersion: sys.NVMLVersion,
		NVMLError: sys.NVMLError, DeviceCount: sys.DeviceCount,
	}
	devs, err := engine.Devices()
	if err != nil {
		return r, err
	}
	targets := []int{engine.CPU}
	if len(devs) > 0 {
		targets = targets[:0]
	}
	for _, d := range devs {
		j := deviceJSON{
			Index: d.Index, Name: d.Name, UUID: d.UUIDString, PCIBusID: d.PCIBusID,
			ComputeCapability: fmt.Sprintf("%d.%d", d.ComputeCapability[0], d.ComputeCapability[1]),
			Multiprocessors:   d.Multiprocessors, TotalMemoryBytes: d.TotalMemory, L2CacheBytes: d.L2CacheBytes,
			MemoryBusWidth: d.MemoryBusWidth, AsyncEngines: d.AsyncEngines,
		}
		if d.PCIe != nil {
			j.PCIe = &pcieJSON{d.PCIe.GenerationCurrent, d.PCIe.GenerationMax, d.PCIe.WidthCurrent, d.PCIe.WidthMax}
		}
		r.Devices = append(r.Devices, j)
		targets = append(targets, d.Index)
	}
	for _, dev := range targets {
		s, err := liveCheck(dev)
		if err != nil {
			return r, err
		}
		r.Memory = append(r.Memory, snapshotJSON(s))
	}
	return r, nil
}

// liveCheck opens an engine without a background sampler and queries memory now.
func liveCheck(device int) (engine.MemorySnapshot, error) {
	e, err := engine.Open(device, engine.WithSampleInterval(0))
	if err != nil {
		return engine.MemorySnapshot{}, err
	}
	defer func() { _ = e.Close() }()
	return e.MemoryCheckLive()
}

func gib(b uint64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

func optGiB(b *uint64) string {
	if b == nil {
		return "n/a"
	}
	return gib(*b)
}

func writeInfoTable(w io.Writer, r infoReport) error {
	fmt.Fprintf(w, "ferry %s\n", r.Version)
	if r.System.CUDAAvailable {
		fmt.Fprintf(w, "CUDA driver  %d.%d\n", r.System.CUDADriverVersion/1000, r.System.CUDADriverVersion%1000/10)
	} else {
		fmt.Fprintf(w, "CUDA driver  unavailable: %s\n", r.System.CUDAError)
	}
	if r.System.NVMLAvailable {
		fmt.Fprintf(w, "NVML         %s (kernel driver %s)\n", r.System.NVMLVersion, r.System.DriverVersion)
	} else {
		fmt.Fprintf(w, "NVML         unavailable: %s\n", r.System.NVMLError)
	}
	fmt.Fprintf(w, "devices      %d\n\n", len(r.Devices))
	if len(r.Devices) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "IDX\tNAME\tCC\tSMS\tMEMORY\tPCIE (NOW/MAX)\tBUS ID\tUUID")
		for _, d := range r.Devices {
			pcie := "n/a"
			if d.PCIe != nil {
				pcie = fmt.Sprintf("gen%d x%d / gen%d x%d", d.PCIe.GenerationCurrent, d.PCIe.WidthCurrent,
					d.PCIe.GenerationMax, d.PCIe.WidthMax)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", d.Index, d.Name, d.ComputeCapability,
				d.Multiprocessors, gib(d.TotalMemoryBytes), pcie, d.PCIBusID, d.UUID)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMORY\tDEVICE TOTAL\tDEVICE FREE\tDEVICE USED\tTHIS PROCESS\tHOST TOTAL\tHOST AVAILABLE")
	for _, m := range r.Memory {
		name := fmt.Sprintf("device %d", m.Device)
		if m.Device == engine.CPU {
			name = "host"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, optGiB(m.DeviceTotalBytes), optGiB(m.DeviceFreeBytes),
			optGiB(m.DeviceUsedBytes), optGiB(m.ProcessDeviceBytes), optGiB(m.HostTotalBytes), optGiB(m.HostAvailableBytes))
	}
	return tw.Flush()
}

func newInfoCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info",
		Short: "Show the driver, NVML, the devices and a memory check",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := gatherInfo()
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return writeInfoTable(cmd.OutOrStdout(), r)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}
