package engine

import (
	"errors"
	"fmt"
	"math"
)

// PressureMetric is what the pressure thresholds compare against.
type PressureMetric int32

// Pressure metrics (FERRY_PRESSURE_* in ferry.h).
const (
	PressureDeviceUsed     PressureMetric = 1 // device used by every process (total − free)
	PressureProcessUsed    PressureMetric = 2 // this process's device memory (NVML; else device used)
	PressureEngineReserved PressureMetric = 3 // memory held by the engine's pools
)

// PressureThresholds sets the warn and critical levels. A threshold is in bytes, or a fraction of the
// device's total memory when its bytes are 0; a threshold that is 0 both ways is unset.
type PressureThresholds struct {
	Metric                         PressureMetric // 0 means PressureDeviceUsed
	WarnBytes, CriticalBytes       uint64
	WarnFraction, CriticalFraction float64
}

// thresholds are resolved to bytes.
type thresholds struct {
	metric         PressureMetric
	warn, critical uint64
}

// SetPressure sets the thresholds. Every snapshot published from now on carries the level and the
// thresholds in bytes; the current one is re-evaluated at once. Fractions need a GPU engine.
func (e *Engine) SetPressure(t PressureThresholds) error {
	if t.Metric == 0 {
		t.Metric = PressureDeviceUsed
	}
	if t.Metric < PressureDeviceUsed || t.Metric > PressureEngineReserved {
		return fmt.Errorf("%w: pressure metric %d (use device used 1, process used 2 or engine reserved 3)", ErrInvalidArgument, t.Metric)
	}
	resolve := func(name string, bytes uint64, fraction float64) (uint64, error) {
		if bytes > 0 || fraction == 0 {
			return bytes, nil
		}
		if !(fraction > 0 && fraction <= 1) {
			return 0, fmt.Errorf("%w: %s fraction %v must be in (0, 1]", ErrInvalidArgument, name, fraction)
		}
		if !e.gpu {
			return 0, fmt.Errorf("%w: a %s threshold as a fraction of device memory needs a GPU engine; give bytes", ErrInvalidArgument, name)
		}
		return uint64(math.Round(fraction * float64(e.snap.Load().DeviceTotal))), nil
	}
	warn, err := resolve("warn", t.WarnBytes, t.WarnFraction)
	if err != nil {
		return err
	}
	critical, err := resolve("critical", t.CriticalBytes, t.CriticalFraction)
	if err != nil {
		return err
	}
	if warn > 0 && critical > 0 && critical < warn {
		return fmt.Errorf("%w: the critical threshold (%d bytes) is below the warn threshold (%d bytes)", ErrInvalidArgument, critical, warn)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Load() {
		return fmt.Errorf("%w: engine on device %d", ErrClosed, e.device)
	}
	e.thresholds.Store(&thresholds{metric: t.Metric, warn: warn, critical: critical})
	e.publishLocked(*e.snap.Load())
	return nil
}

// apply sets the snapshot's level and thresholds from th; a nil th (none set) leaves level NONE.
func (th *thresholds) apply(s *MemorySnapshot) {
	if th == nil {
		s.Level, s.WarnThreshold, s.CriticalThreshold = PressureNone, 0, 0
		return
	}
	s.WarnThreshold, s.CriticalThreshold = th.warn, th.critical
	var v uint64
	switch th.metric {
	case PressureProcessUsed:
		v = s.DeviceUsed
		if s.ProcessValid {
			v = s.ProcessDevice
		}
	case PressureEngineReserved:
		v = s.EngineReserved
	default:
		v = s.DeviceUsed
	}
	switch {
	case th.critical > 0 && v >= th.critical:
		s.Level = PressureCritical
	case th.warn > 0 && v >= th.warn:
		s.Level = PressureWarn
	default:
		s.Level = PressureNone
	}
}

// PressureCallback is called by Optimize with the current level. An error (or a panic, which is
// recovered) counts as a failed callback; the others still run.
type PressureCallback func(level Pressure) error

type pressureCallback struct {
	id uint64
	fn PressureCallback
}

// OnPressure registers fn, to be called after the callbacks registered before it, and returns its ID.
func (e *Engine) OnPressure(fn PressureCallback) (uint64, error) {
	if fn == nil {
		return 0, fmt.Errorf("%w: pressure callback is nil", ErrInvalidArgument)
	}
	e.cbMu.Lock()
	defer e.cbMu.Unlock()
	e.nextCallback++
	e.callbacks = append(e.callbacks, pressureCallback{id: e.nextCallback, fn: fn})
	return e.nextCallback, nil
}

// RemoveCallback removes a callback registered with OnPressure.
func (e *Engine) RemoveCallback(id uint64) error {
	e.cbMu.Lock()
	defer e.cbMu.Unlock()
	for i, c := range e.callbacks {
		if c.id == id {
			e.callbacks = append(e.callbacks[:i:i], e.callbacks[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("%w: no pressure callback has ID %d", ErrInvalidArgument, id)
}

// SetAdvisor attaches a (nil: no) advisor, whose recommendation Optimize returns.
func (e *Engine) SetAdvisor(a *Advisor) {
	e.cbMu.Lock()
	e.advisor = a
	e.cbMu.Unlock()
}

// OptimizeResult says what Optimize did.
type OptimizeResult struct {
	LevelBefore, LevelAfter          Pressure
	CallbacksCalled, CallbacksFailed int
	Trimmed                          uint64 // bytes the pools gave back
	Recommended                      int    // the advisor's batch size; 0 when none
}

// Optimize is the engine's empty-cache: it trims the pools, calls every pressure callback in order with
// the level, re-reads memory, and asks the attached advisor for a batch size that fits below the critical
// threshold (the whole device without one), never above currentBatch (when > 0) under pressure.
// Callbacks run on the calling goroutine.
func (e *Engine) Optimize(currentBatch int) (OptimizeResult, error) {
	var r OptimizeResult
	if currentBatch < 0 {
		return r, fmt.Errorf("%w: current batch size %d is negative (0: unknown)", ErrInvalidArgument, currentBatch)
	}
	before, err := e.MemoryCheckLive()
	if err != nil {
		return r, err
	}
	r.LevelBefore = before.Level
	if r.Trimmed, err = e.Trim(); err != nil {
		return r, err
	}
	e.cbMu.Lock()
	callbacks := append([]pressureCallback(nil), e.callbacks...)
	advisor := e.advisor
	e.cbMu.Unlock()
	for _, c := range callbacks {
		r.CallbacksCalled++
		if err := runCallback(c.fn, r.LevelBefore); err != nil {
			r.CallbacksFailed++
			e.log.Warn().Err(err).Uint64("callback", c.id).Msg("pressure callback failed")
		}
	}
	if err := e.SampleNow(); err != nil {
		return r, err
	}
	after := e.MemoryCheck()
	r.LevelAfter = after.Level
	if advisor != nil {
		budget := after.CriticalThreshold
		if budget == 0 {
			budget = after.DeviceTotal
		}
		if budget > 0 {
			if b, err := advisor.Recommend(budget, 0); err == nil {
				if currentBatch > 0 && r.LevelAfter >= PressureWarn {
					b = min(b, currentBatch)
				}
				r.Recommended = b
			} else {
				e.log.Info().Err(err).Msg("no batch-size recommendation")
			}
		}
	}
	return r, nil
}

func runCallback(fn PressureCallback, level Pressure) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = errors.New(fmt.Sprint("panic: ", p))
		}
	}()
	return fn(level)
}
