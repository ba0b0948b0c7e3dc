package engine

import (
	"fmt"
	"math"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// NVMLError wraps an NVML failure (including NVML being absent) as ErrNVML.
func NVMLError(err error) error {
	return fmt.Errorf("%w: %v", ErrNVML, err)
}

// nvmlDevice is one device's NVML handle.
type nvmlDevice struct{ dev cuda.NVMLDevice }

// openNVMLDevice finds the NVML handle of the device with the given UUID ("GPU-…").
func openNVMLDevice(uuid string) (*nvmlDevice, error) {
	d, err := cuda.NVMLDeviceByUUID(uuid)
	if err != nil {
		return nil, NVMLError(err)
	}
	return &nvmlDevice{dev: d}, nil
}

// NVMLDevice opens the NVML handle of the CUDA device with the given ordinal, matched by UUID, so
// CUDA_VISIBLE_DEVICES is honoured. Errors wrap ErrNoDevice or ErrNVML.
func NVMLDevice(index int) (cuda.NVMLDevice, error) {
	d, err := CUDADevice(index)
	if err != nil {
		return cuda.NVMLDevice{}, err
	}
	uuid, err := d.UUID()
	if err != nil {
		return cuda.NVMLDevice{}, err
	}
	nd, err := openNVMLDevice(formatUUID(uuid))
	if err != nil {
		return cuda.NVMLDevice{}, err
	}
	return nd.dev, nil
}

// pcieLink reads the PCIe link's generation and width, current and max.
func (d *nvmlDevice) pcieLink() (PCIeLink, error) {
	var l PCIeLink
	var err error
	l.GenerationCurrent, l.GenerationMax, l.WidthCurrent, l.WidthMax, err = d.dev.PCIeLink()
	if err != nil {
		return l, NVMLError(err)
	}
	return l, nil
}

// processMemory returns the device memory NVML attributes to the process pid. ok is false when NVML
// lists no entry for pid (a container that does not share the host's PID namespace sees this) or reports
// the figure as unavailable.
func (d *nvmlDevice) processMemory(pid int) (bytes uint64, ok bool, err error) {
	procs, err := d.dev.ComputeProcesses()
	if err != nil {
		return 0, false, NVMLError(err)
	}
	for _, p := range procs {
		if p.PID == pid {
			if p.UsedGPUMemory == math.MaxUint64 { // NVML_VALUE_NOT_AVAILABLE
				return 0, false, nil
			}
			bytes += p.UsedGPUMemory
			ok = true
		}
	}
	return bytes, ok, nil
}
