package main

/*
#include "exports.h"

// Calls a ferry_pressure_fn; the function and user pointer travel through Go as integers.
static inline int32_t ferry_capi_call_pressure(uintptr_t fn, uintptr_t user, int32_t level) {
	return ((ferry_pressure_fn)fn)((void*)user, level);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
)

func defaultPressureOptions() C.ferry_pressure_options {
	return C.ferry_pressure_options{
		size:   C.uint32_t(unsafe.Sizeof(C.ferry_pressure_options{})),
		metric: C.FERRY_PRESSURE_DEVICE_USED,
	}
}

//export ferry_pressure_options_init
func ferry_pressure_options_init(opts *C.ferry_pressure_options) C.ferry_status {
	return call("ferry_pressure_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = defaultPressureOptions()
		return nil
	})
}

//export ferry_engine_set_pressure
func ferry_engine_set_pressure(h C.uintptr_t, opts *C.ferry_pressure_options) C.ferry_status {
	return call("ferry_engine_set_pressure", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		if opts == nil {
			return errNull("opts")
		}
		if err := checkSize("ferry_pressure_options", opts.size, C.FERRY_CAPI_V1_PRESSURE_OPTIONS); err != nil {
			return err
		}
		if opts.metric < C.FERRY_PRESSURE_DEVICE_USED || opts.metric > C.FERRY_PRESSURE_ENGINE_RESERVED {
			return fmt.Errorf("%w: ferry_pressure_options.metric is %d; use a ferry_pressure_metric (1..3)",
				engine.ErrInvalidArgument, int32(opts.metric))
		}
		return eng.SetPressure(engine.PressureThresholds{
			Metric:    engine.PressureMetric(opts.metric),
			WarnBytes: uint64(opts.warn_bytes), CriticalBytes: uint64(opts.critical_bytes),
			WarnFraction: float64(opts.warn_fraction), CriticalFraction: float64(opts.critical_fraction),
		})
	})
}

//export ferry_memory_on_pressure
func ferry_memory_on_pressure(h C.uintptr_t, fn C.uintptr_t, user C.uintptr_t, id *C.uint64_t) C.ferry_status {
	return call("ferry_memory_on_pressure", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		if fn == 0 {
			return errNull("fn")
		}
		if id == nil {
			return errNull("id")
		}
		n, err := eng.OnPressure(func(level engine.Pressure) error {
			if r := C.ferry_capi_call_pressure(fn, user, C.int32_t(level)); r != 0 {
				return fmt.Errorf("the pressure callback returned %d", int32(r))
			}
			return nil
		})
		if err != nil {
			return err
		}
		*id = C.uint64_t(n)
		return nil
	})
}

//export ferry_memory_remove_callback
func ferry_memory_remove_callback(h C.uintptr_t, id C.uint64_t) C.ferry_status {
	return call("ferry_memory_remove_callback", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		return eng.RemoveCallback(uint64(id))
	})
}

//export ferry_memory_optimize
func ferry_memory_optimize(h C.uintptr_t, current C.int64_t, out *C.ferry_optimize_result) C.ferry_status {
	return call("ferry_memory_optimize", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("result")
		}
		if err := checkSize("ferry_optimize_result", out.size, C.FERRY_CAPI_V1_OPTIMIZE_RESULT); err != nil {
			return err
		}
		if current < 0 || current > 1<<40 {
			return fmt.Errorf("%w: current_batch_size is %d (0: unknown)", engine.ErrInvalidArgument, int64(current))
		}
		r, err := eng.Optimize(int(current))
		if err != nil {
			return err
		}
		*out = C.ferry_optimize_result{
			size: out.size, level_before: C.int32_t(r.LevelBefore), level_after: C.int32_t(r.LevelAfter),
			callbacks_called: C.int32_t(r.CallbacksCalled), callbacks_failed: C.int32_t(r.CallbacksFailed),
			trimmed_bytes: C.uint64_t(r.Trimmed), recommended_batch_size: C.int64_t(r.Recommended),
		}
		return nil
	})
}

//export ferry_engine_set_advisor
func ferry_engine_set_advisor(h C.uintptr_t, ah C.uintptr_t) C.ferry_status {
	return call("ferry_engine_set_advisor", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		if ah == 0 {
			eng.SetAdvisor(nil)
			return nil
		}
		a, err := advisors.get(uint64(ah))
		if err != nil {
			return err
		}
		eng.SetAdvisor(a)
		return nil
	})
}
