package engine

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// CPU is the device value that selects the host: an engine with no GPU.
const CPU = -1

// PCIeLink is a device's PCIe link. An idle link may run below its maximum generation.
type PCIeLink struct {
	GenerationCurrent int
	GenerationMax     int
	WidthCurrent      int // lanes
	WidthMax          int // lanes
}

// DeviceInfo describes one CUDA device.
type DeviceInfo struct {
	Index             int      // CUDA ordinal (CUDA_VISIBLE_DEVICES applies)
	Name              string   // e.g. "NVIDIA H100 80GB HBM3"
	UUID              [16]byte // raw bytes
	UUIDString        string   // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi prints it
	PCIBusID          string   // "0000:1b:00.0", lower case
	ComputeCapability [2]int   // major, minor
	Multiprocessors   int
	TotalMemory       uint64 // bytes, from the driver
	L2CacheBytes      int
	MemoryBusWidth    int // bits
	AsyncEngines      int // copy engines that overlap copies with kernels
	// PCIe is the link as NVML reports it; nil when NVML is unavailable.
	PCIe *PCIeLink
}

// SystemInfo describes the driver stack as ferry sees it.
type SystemInfo struct {
	CUDADriverVersion int    // e.g. 13000 for CUDA 13.0; 0 when the driver is absent
	DeviceCount       int    // as DeviceCount
	DriverVersion     string // the kernel driver's version from NVML, e.g. "580.159.04"
	NVMLVersion       string // NVML's own version
	CUDAError         string // "" when CUDA is usable, else why not
	NVMLError         string // "" when NVML is usable, else why not
}

// CUDAAvailable reports whether the CUDA driver loaded.
func (s SystemInfo) CUDAAvailable() bool { return s.CUDAError == "" }

// NVMLAvailable reports whether NVML loaded.
func (s SystemInfo) NVMLAvailable() bool { return s.NVMLError == "" }

// noDevice wraps a driver load error as ErrNoDevice, keeping the loader's message (which names the
// library that was missing).
func noDevice(err error) error {
	return fmt.Errorf("%w: %v", ErrNoDevice, err)
}

// DeviceCount returns the number of visible CUDA devices. It returns 0 and no error when the driver is
// absent or sees no GPU; System says why.
func DeviceCount() (int, error) {
	n, err := cuda.DeviceCount()
	if errors.Is(err, cuda.ErrNotLoaded) {
		return 0, nil
	}
	return n, err
}

// CUDADevice checks the index and returns the driver's device handle. Errors wrap ErrNoDevice.
func CUDADevice(index int) (cuda.Device, error) {
	if err := cuda.Load(); err != nil {
		return cuda.Device{}, noDevice(err)
	}
	n, err := DeviceCount()
	if err != nil {
		return cuda.Device{}, err
	}
	if index < 0 || index >= n {
		return cuda.Device{}, fmt.Errorf("%w: device %d does not exist (%d visible)", ErrNoDevice, index, n)
	}
	return cuda.GetDevice(index)
}

// Device returns facts about the device with the given CUDA ordinal.
func Device(index int) (DeviceInfo, error) {
	d, err := CUDADevice(index)
	if err != nil {
		return DeviceInfo{}, err
	}
	info := DeviceInfo{Index: index}
	if info.Name, err = d.Name(); err != nil {
		return info, err
	}
	if info.UUID, err = d.UUID(); err != nil {
		return info, err
	}
	info.UUIDString = formatUUID(info.UUID)
	bus, err := d.PCIBusID()
	if err != nil {
		return info, err
	}
	info.PCIBusID = strings.ToLower(bus)
	if info.TotalMemory, err = d.TotalMem(); err != nil {
		return info, err
	}
	for _, a := range []struct {
		attr cuda.Attribute
		dst  *int
	}{
		{cuda.AttrComputeCapabilityMajor, &info.ComputeCapability[0]},
		{cuda.AttrComputeCapabilityMinor, &info.ComputeCapability[1]},
		{cuda.AttrMultiprocessorCount, &info.Multiprocessors},
		{cuda.AttrL2CacheSize, &info.L2CacheBytes},
		{cuda.AttrGlobalMemoryBusWidth, &info.MemoryBusWidth},
		{cuda.AttrAsyncEngineCount, &info.AsyncEngines},
	} {
		if *a.dst, err = d.Attribute(a.attr); err != nil {
			return info, err
		}
	}
	if nd, err := openNVMLDevice(info.UUIDString); err == nil {
		if link, err := nd.pcieLink(); err == nil {
			info.PCIe = &link
		}
	}
	return info, nil
}

// Devices returns every visible device; an empty list when there is none.
func Devices() ([]DeviceInfo, error) {
	n, err := DeviceCount()
	if err != nil {
		return nil, err
	}
	out := make([]DeviceInfo, 0, n)
	for i := 0; i < n; i++ {
		d, err := Device(i)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// System loads the driver and NVML if needed and reports what it found. It fails only when a loaded
// library misbehaves; missing libraries are reported in CUDAError and NVMLError.
func System() (SystemInfo, error) {
	var s SystemInfo
	if err := cuda.Load(); err != nil {
		s.CUDAError = err.Error()
	} else {
		v, err := cuda.DriverVersion()
		if err != nil {
			return s, err
		}
		s.CUDADriverVersion = v
	}
	n, err := DeviceCount()
	if err != nil {
		return s, err
	}
	s.DeviceCount = n
	if err := cuda.LoadNVML(); err != nil {
		s.NVMLError = err.Error()
		return s, nil
	}
	var err2 error
	if s.DriverVersion, err2 = cuda.NVMLDriverVersion(); err2 != nil {
		return s, NVMLError(err2)
	}
	if s.NVMLVersion, err2 = cuda.NVMLVersion(); err2 != nil {
		return s, NVMLError(err2)
	}
	return s, nil
}

// formatUUID formats raw UUID bytes the way nvidia-smi prints them.
func formatUUID(u [16]byte) string {
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
