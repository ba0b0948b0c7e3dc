package engine

import (
	"fmt"
	"math"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// nvmlError wraps an NVML failure (including NVML being absent) as ErrNVML.
func nvmlError(err error) error {
	return fmt.Errorf("%w: %v", ErrNVML, err)
}

// nvmlDevice is one device's NVML handle.
type nvmlDevice struct{ dev cuda.NVMLDevice }

// openNVMLDevice finds the NVML handle of the device with the given UUID ("GPU-…").
func openNVMLDevice(uuid string) (*nvmlDevice, error) {
	d, err := cuda.NVMLDeviceByUUID(uuid)
	if err != nil {
		return nil, nvmlError(err)
	}
	return &nvmlDevice{dev: d}, nil
}

// pcieLink reads the PCIe link's generation and width, current and max.
func (d *nvmlDevice) pcieLink() (PCIeLink, error) {
	var l PCIeLink
	var err error
	l.GenerationCurrent, l.GenerationMax, l.WidthCurrent, l.WidthMax, err = d.dev.PCIeLink()
	if err != nil {
		return l, nvmlError(err)
	}
	return l, nil
}

// processMemory returns the device memory NVML attributes to the process pid. ok is false when NVML
// lists no entry for pid (a container that does not share the host's PID namespace sees this) or reports
// the figure as unavailable.
func (d *nvmlDevice) processMemory(pid int) (bytes uint64, ok bool, err error) {
	procs, err := d.dev.ComputeProcesses()
	if err != nil {
		return 0, false, nvmlError(err)
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
