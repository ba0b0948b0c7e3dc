package engine

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/shirou/gopsutil/v4/mem"
)

// Pressure is a memory pressure level. Thresholds come with the memory manager; until they are set, the
// level is PressureNone.
type Pressure int32

// Pressure levels.
const (
	PressureNone     Pressure = 0
	PressureWarn     Pressure = 1
	PressureCritical Pressure = 2
)

// MemorySnapshot is one reading of device, process, engine and host memory. Timestamps are
// CLOCK_MONOTONIC nanoseconds (see MonotonicNow).
type MemorySnapshot struct {
	Device   int    // CUDA ordinal, or CPU
	Sequence uint64 // number of the sample this came from; grows by one per sample
	Level    Pressure

	Timestamp       uint64        // when the device and engine figures were taken
	SampleTimestamp uint64        // when the process and host figures were taken
	Age             time.Duration // how old Timestamp was when the snapshot was read

	DeviceValid  bool // the Device* fields are set (a GPU engine)
	ProcessValid bool // ProcessDevice is set: NVML attributes memory to this process
	HostValid    bool // the Host* fields are set
	Live         bool // the device and engine figures were queried by the call that returned this

	DeviceTotal   uint64 // bytes, from the driver
	DeviceFree    uint64
	DeviceUsed    uint64 // total - free: every process on the device
	ProcessDevice uint64 // this process's device memory, from NVML

	EngineAllocated     uint64
	EngineReserved      uint64
	EnginePeak          uint64
	EngineAllocCount    uint64
	EngineAllocFailures uint64

	HostTotal     uint64 // physical RAM
	HostAvailable uint64 // RAM available without swapping (MemAvailable)
	HostPinned    uint64 // page-locked host memory held by this engine

	WarnThreshold     uint64 // reserved for the pressure policy; 0 = unset
	CriticalThreshold uint64 // reserved for the pressure policy; 0 = unset
}

// setEngine copies the accounting figures into s.
func (s *MemorySnapshot) setEngine(f AccountingFigures) {
	s.EngineAllocated = f.Allocated
	s.EngineReserved = f.Reserved
	s.EnginePeak = f.Peak
	s.EngineAllocCount = f.AllocCount
	s.EngineAllocFailures = f.Failures
	s.HostPinned = f.Pinned
}

// HostMemory returns the host's physical RAM and the RAM available without swapping (MemAvailable), in
// bytes: for a caller that sizes something from a user's count and must refuse what cannot fit.
func HostMemory() (total, available uint64, err error) { return queryHost() }

// queryHost reads physical and available RAM.
func queryHost() (total, available uint64, err error) {
	vm, err := mem.VirtualMemory()
	if err != nil {
		return 0, 0, fmt.Errorf("%w: reading host memory: %v", ErrIO, err)
	}
	return vm.Total, vm.Available, nil
}

// queryDevice fills the device figures from the driver, now.
func (e *Engine) queryDevice(s *MemorySnapshot) error {
	free, total, err := e.ctx.MemGetInfo()
	if err != nil {
		return err
	}
	s.DeviceValid = true
	s.DeviceTotal, s.DeviceFree = total, free
	s.DeviceUsed = 0
	if total > free {
		s.DeviceUsed = total - free
	}
	return nil
}

// sample takes a full reading: device (driver), this process (NVML), engine and host.
func (e *Engine) sample() (MemorySnapshot, error) {
	s := MemorySnapshot{Device: e.device}
	if e.gpu {
		if err := e.queryDevice(&s); err != nil {
			return s, err
		}
		if e.nv != nil {
			b, ok, err := e.nv.processMemory(os.Getpid())
			if err != nil {
				e.log.Debug().Err(err).Msg("per-process device memory unavailable")
			}
			s.ProcessDevice, s.ProcessValid = b, ok
		}
	}
	total, avail, err := queryHost()
	if err != nil {
		e.log.Debug().Err(err).Msg("host memory unavailable")
	} else {
		s.HostValid, s.HostTotal, s.HostAvailable = true, total, avail
	}
	s.setEngine(e.acct.Figures())
	s.Timestamp = MonotonicNow()
	s.SampleTimestamp = s.Timestamp
	return s, nil
}

// MemoryCheck returns the latest published snapshot, with Age set. It makes no driver call.
func (e *Engine) MemoryCheck() MemorySnapshot {
	s := *e.snap.Load()
	if now := MonotonicNow(); now > s.Timestamp {
		s.Age = time.Duration(now - s.Timestamp)
	}
	return s
}

// MemoryCheckLive queries the device now and returns a snapshot with Live set. The engine figures are
// exact; the process and host figures come from the latest sample (see SampleTimestamp), except on the
// CPU engine, where the host is queried now.
func (e *Engine) MemoryCheckLive() (MemorySnapshot, error) {
	if e.closed.Load() {
		return MemorySnapshot{}, fmt.Errorf("%w: engine on device %d", ErrClosed, e.device)
	}
	s := *e.snap.Load()
	s.Live = true
	if e.gpu {
		if err := e.queryDevice(&s); err != nil {
			return MemorySnapshot{}, err
		}
	} else {
		total, avail, err := queryHost()
		if err != nil {
			return MemorySnapshot{}, err
		}
		s.HostValid, s.HostTotal, s.HostAvailable = true, total, avail
	}
	s.setEngine(e.acct.Figures())
	s.Timestamp = MonotonicNow()
	if !e.gpu {
		s.SampleTimestamp = s.Timestamp
	}
	e.thresholds.Load().apply(&s)
	return s, nil
}

// SampleNow takes a full sample and publishes it, as the background sampler does.
func (e *Engine) SampleNow() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Load() {
		return fmt.Errorf("%w: engine on device %d", ErrClosed, e.device)
	}
	s, err := e.sample()
	if err != nil {
		return err
	}
	e.publishLocked(s)
	return nil
}

// publishLocked numbers s, makes it the current snapshot and tells the listener. e.mu must be held.
func (e *Engine) publishLocked(s MemorySnapshot) {
	e.thresholds.Load().apply(&s)
	e.seq++
	s.Sequence = e.seq
	e.snap.Store(&s)
	if e.listener != nil {
		e.listener(&s)
	}
}

// republish copies the current accounting figures into the latest snapshot and publishes it. The pools
// call it (through Accounting) on every change, so the snapshot's engine figures are exact.
func (e *Engine) republish() {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur := e.snap.Load()
	if e.closed.Load() || cur == nil {
		return
	}
	s := *cur
	s.setEngine(e.acct.Figures())
	e.publishLocked(s)
}

// samplerLoop refreshes the snapshot every interval until stop is closed.
func (e *Engine) samplerLoop(interval time.Duration) {
	defer close(e.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			if err := e.SampleNow(); errors.Is(err, ErrClosed) {
				return
			} else if err != nil {
				e.log.Warn().Err(err).Msg("memory sample failed")
			}
		}
	}
}
