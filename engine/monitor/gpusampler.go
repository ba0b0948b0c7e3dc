package monitor

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync"

	"github.com/ferry-ml/ferry/engine"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// GPUField names one field of a GPUSample; Has reports whether the device gave it.
type GPUField uint32

// GPU sample fields.
const (
	GPUUtilization GPUField = 1 << iota
	GPUMemoryUtilization
	GPUMemory // MemoryUsed, MemoryTotal, MemoryReserved (NVML's _v2 query)
	GPUTemperature
	GPUPower
	GPUSMClock
	GPUMemoryClock
	GPUThrottleReasons
	GPUECCCorrected
	GPUECCUncorrected
	GPUProcesses
	GPUPCIe // PCIeRxBytesPerSec and PCIeTxBytesPerSec, from SamplePCIe
)

// GPUProcess is one compute process on the device.
type GPUProcess struct {
	PID        int
	MemoryUsed uint64 // bytes
	MemoryOK   bool   // false when NVML cannot attribute memory to the process
}

// GPUSample is one reading of a device by NVML. A field the device (or the loaded NVML) does not support
// is absent: Has reports false and the field holds zero, which must not be read as a measurement.
type GPUSample struct {
	Device int
	Time   uint64 // CLOCK_MONOTONIC ns
	has    GPUField

	UtilizationPercent       uint32
	MemoryUtilizationPercent uint32
	MemoryUsed               uint64
	MemoryTotal              uint64
	MemoryReserved           uint64
	TemperatureC             uint32
	PowerWatts               float64
	SMClockMHz               uint32
	MemoryClockMHz           uint32
	ThrottleReasons          uint64 // NVML's clocks-event reason bits
	ECCCorrected             uint64 // volatile counts
	ECCUncorrected           uint64
	Processes                []GPUProcess
	PCIeRxBytesPerSec        float64
	PCIeTxBytesPerSec        float64
}

// Has reports whether every field in f was given by the device.
func (s *GPUSample) Has(f GPUField) bool { return s.has&f == f }

// Fields lists the fields present.
func (s *GPUSample) Fields() GPUField { return s.has }

// NumFields is the number of fields present.
func (s *GPUSample) NumFields() int { return bits.OnesCount32(uint32(s.has)) }

// GPUSampler reads one device through NVML. Sample is cheap (tens of microseconds, mostly the
// per-process query); SamplePCIe blocks for NVML's 20 ms measuring window, so the monitor calls it on a
// cadence of its own. Both are safe for concurrent use.
type GPUSampler struct {
	device int
	dev    cuda.NVMLDevice

	mu   sync.Mutex // guards the last PCIe reading
	pcie *[2]float64
}

// NewGPUSampler opens the device with the given CUDA ordinal in NVML (matched by UUID, so
// CUDA_VISIBLE_DEVICES is honoured). It fails with ErrNVML when NVML is missing.
func NewGPUSampler(device int) (*GPUSampler, error) {
	nd, err := engine.NVMLDevice(device)
	if err != nil {
		return nil, err
	}
	return &GPUSampler{device: device, dev: nd}, nil
}

// Device is the sampler's CUDA ordinal.
func (g *GPUSampler) Device() int { return g.device }

// GPUFastFields are the fields that change by the millisecond and cost about a microsecond each to read;
// GPUSlowFields (throttle reasons, ECC counts, the process list) change slowly and cost more (the process
// query tens of microseconds). The monitor reads the slow ones about once a second.
const (
	GPUFastFields = GPUUtilization | GPUMemoryUtilization | GPUMemory | GPUTemperature | GPUPower | GPUSMClock | GPUMemoryClock
	GPUSlowFields = GPUThrottleReasons | GPUECCCorrected | GPUECCUncorrected | GPUProcesses
)

// Sample reads every field but the PCIe throughput, which it copies from the latest SamplePCIe.
func (g *GPUSampler) Sample() (GPUSample, error) {
	return g.SampleFields(GPUFastFields | GPUSlowFields)
}

// SampleFields reads the fields in want (the PCIe throughput is always the latest SamplePCIe's); the
// others are absent from the sample.
func (g *GPUSampler) SampleFields(want GPUField) (GPUSample, error) {
	s := GPUSample{Device: g.device, Time: engine.MonotonicNow()}
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if want&(GPUUtilization|GPUMemoryUtilization) != 0 {
		u, mu, err := g.dev.Utilization()
		keep(err)
		if u.OK {
			s.has |= GPUUtilization
			s.UtilizationPercent = u.Value
		}
		if mu.OK {
			s.has |= GPUMemoryUtilization
			s.MemoryUtilizationPercent = mu.Value
		}
	}
	if want&GPUMemory != 0 {
		if m, err := g.dev.MemoryInfo(); err == nil {
			s.has |= GPUMemory
			s.MemoryUsed, s.MemoryTotal, s.MemoryReserved = m.Used, m.Total, m.Reserved
		} else if !notSupported(err) {
			errs = append(errs, err)
		}
	}
	if want&GPUTemperature != 0 {
		t, err := g.dev.Temperature()
		keep(err)
		if t.OK {
			s.has |= GPUTemperature
			s.TemperatureC = t.Value
		}
	}
	if want&GPUPower != 0 {
		p, err := g.dev.Power()
		keep(err)
		if p.OK {
			s.has |= GPUPower
			s.PowerWatts = float64(p.Value) / 1000
		}
	}
	for _, c := range []struct {
		sm    bool
		field GPUField
		dst   *uint32
	}{{true, GPUSMClock, &s.SMClockMHz}, {false, GPUMemoryClock, &s.MemoryClockMHz}} {
		if want&c.field == 0 {
			continue
		}
		v, err := g.dev.Clock(c.sm)
		keep(err)
		if v.OK {
			s.has |= c.field
			*c.dst = v.Value
		}
	}
	if want&GPUThrottleReasons != 0 {
		tr, err := g.dev.ThrottleReasons()
		keep(err)
		if tr.OK {
			s.has |= GPUThrottleReasons
			s.ThrottleReasons = tr.Value
		}
	}
	for _, e := range []struct {
		uncorrected bool
		field       GPUField
		dst         *uint64
	}{{false, GPUECCCorrected, &s.ECCCorrected}, {true, GPUECCUncorrected, &s.ECCUncorrected}} {
		if want&e.field == 0 {
			continue
		}
		v, err := g.dev.ECCErrors(e.uncorrected)
		keep(err)
		if v.OK {
			s.has |= e.field
			*e.dst = v.Value
		}
	}
	if want&GPUProcesses != 0 {
		procs, err := g.dev.ComputeProcesses()
		switch {
		case err == nil:
			s.has |= GPUProcesses
			for _, pr := range procs {
				ok := pr.UsedGPUMemory != ^uint64(0) // NVML_VALUE_NOT_AVAILABLE
				gp := GPUProcess{PID: pr.PID, MemoryOK: ok}
				if ok {
					gp.MemoryUsed = pr.UsedGPUMemory
				}
				s.Processes = append(s.Processes, gp)
			}
		case !notSupported(err):
			errs = append(errs, err)
		}
	}
	g.mu.Lock()
	if g.pcie != nil {
		s.has |= GPUPCIe
		s.PCIeRxBytesPerSec, s.PCIeTxBytesPerSec = g.pcie[0], g.pcie[1]
	}
	g.mu.Unlock()
	if len(errs) > 0 {
		return s, engine.NVMLError(errors.Join(errs...))
	}
	return s, nil
}

// SamplePCIe measures the PCIe receive and transmit rates (bytes/s), blocking about 20 ms, and keeps them
// for the following Samples. ok is false when the device does not report PCIe throughput.
func (g *GPUSampler) SamplePCIe() (rx, tx float64, ok bool, err error) {
	r, t, err := g.dev.PCIeThroughput()
	if err != nil {
		return 0, 0, false, engine.NVMLError(err)
	}
	if !r.OK || !t.OK {
		return 0, 0, false, nil
	}
	g.mu.Lock()
	g.pcie = &[2]float64{r.Value, t.Value}
	g.mu.Unlock()
	return r.Value, t.Value, true, nil
}

// ProcessOf returns this process's entry in s, if NVML lists it.
func (s *GPUSample) ProcessOf(pid int) (GPUProcess, bool) {
	for _, p := range s.Processes {
		if p.PID == pid {
			return p, true
		}
	}
	return GPUProcess{}, false
}

// Self returns this process's entry in s, if NVML lists it.
func (s *GPUSample) Self() (GPUProcess, bool) { return s.ProcessOf(os.Getpid()) }

func notSupported(err error) bool {
	var ne *cuda.NVMLError
	return errors.As(err, &ne) && ne.NotSupported()
}

// String summarizes the sample for logs.
func (s *GPUSample) String() string {
	return fmt.Sprintf("gpu %d: %d%% util, %d MiB used, %d C, %.0f W (%d fields)", s.Device, s.UtilizationPercent,
		s.MemoryUsed>>20, s.TemperatureC, s.PowerWatts, s.NumFields())
}
