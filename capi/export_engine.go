package main

// #include "exports.h"
import "C"

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
)

// engines maps engine handles to engines. A handle's registry index is also the index of the engine's
// snapshot slot in snapshot.c.
var engines = newRegistry[*engine.Engine](kindEngine, "ferry_engine", C.FERRY_MAX_ENGINES)

func defaultEngineOptions() C.ferry_engine_options {
	return C.ferry_engine_options{
		size:               C.uint32_t(unsafe.Sizeof(C.ferry_engine_options{})),
		device:             C.int32_t(engine.DefaultDevice()),
		sample_interval_ms: C.uint32_t(engine.DefaultSampleInterval / time.Millisecond),
	}
}

//export ferry_engine_options_init
func ferry_engine_options_init(opts *C.ferry_engine_options) C.ferry_status {
	return call("ferry_engine_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = defaultEngineOptions()
		return nil
	})
}

//export ferry_engine_create
func ferry_engine_create(opts *C.ferry_engine_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_engine_create", func() error {
		if out == nil {
			return errNull("engine")
		}
		*out = 0
		o := defaultEngineOptions()
		if opts != nil {
			if err := checkSize("ferry_engine_options", opts.size, C.FERRY_CAPI_V1_ENGINE_OPTIONS); err != nil {
				return err
			}
			o = *opts
			if o.flags != 0 {
				return fmt.Errorf("%w: ferry_engine_options.flags is %#x; no flags are defined, it must be 0",
					engine.ErrInvalidArgument, uint32(o.flags))
			}
		}
		interval := time.Duration(o.sample_interval_ms) * time.Millisecond
		eng, err := engine.Open(int(o.device), engine.WithSampleInterval(interval))
		if err != nil {
			return err
		}
		h, slot, err := engines.add(eng)
		if err != nil {
			_ = eng.Close()
			return err
		}
		eng.OnSnapshot(func(s *engine.MemorySnapshot) {
			cs := snapshotToC(s, C.uint32_t(unsafe.Sizeof(C.ferry_memory_snapshot{})))
			C.ferry_capi_slot_publish(C.uint32_t(slot), &cs)
		})
		C.ferry_capi_slot_open(C.uint32_t(slot), C.uint64_t(h))
		*out = C.uintptr_t(h)
		return nil
	})
}

//export ferry_engine_destroy
func ferry_engine_destroy(h C.uintptr_t) C.ferry_status {
	return call("ferry_engine_destroy", func() error {
		if h == 0 {
			return nil
		}
		eng, slot, err := engines.take(uint64(h))
		if err != nil {
			return err
		}
		C.ferry_capi_slot_close(C.uint32_t(slot))
		// From inside a sample callback, closing the engine would close its iterators, joining the worker
		// that runs the caller: it is deferred instead.
		return closeOrDefer(func() error {
			err := eng.Close()
			engines.release(slot)
			return err
		})
	})
}

//export ferry_engine_device
func ferry_engine_device(h C.uintptr_t, device *C.int32_t) C.ferry_status {
	return call("ferry_engine_device", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		if device == nil {
			return errNull("device")
		}
		*device = C.int32_t(eng.Device())
		return nil
	})
}

//export ferry_engine_sample_now
func ferry_engine_sample_now(h C.uintptr_t) C.ferry_status {
	return call("ferry_engine_sample_now", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		return eng.SampleNow()
	})
}

//export ferry_memory_check_live
func ferry_memory_check_live(h C.uintptr_t, out *C.ferry_memory_snapshot) C.ferry_status {
	return call("ferry_memory_check_live", func() error {
		eng, err := engines.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("out")
		}
		if err := checkSize("ferry_memory_snapshot", out.size, C.FERRY_CAPI_V1_MEMORY_SNAPSHOT); err != nil {
			return err
		}
		s, err := eng.MemoryCheckLive()
		if err != nil {
			return err
		}
		*out = snapshotToC(&s, out.size)
		return nil
	})
}

// snapshotToC converts a snapshot to the C struct, with the caller's size.
func snapshotToC(s *engine.MemorySnapshot, size C.uint32_t) C.ferry_memory_snapshot {
	var flags C.uint32_t
	for _, f := range []struct {
		on  bool
		bit C.uint32_t
	}{
		{s.DeviceValid, C.FERRY_MEMORY_F_DEVICE},
		{s.ProcessValid, C.FERRY_MEMORY_F_PROCESS},
		{s.HostValid, C.FERRY_MEMORY_F_HOST},
		{s.Live, C.FERRY_MEMORY_F_LIVE},
	} {
		if f.on {
			flags |= f.bit
		}
	}
	return C.ferry_memory_snapshot{
		size:                     size,
		flags:                    flags,
		device:                   C.int32_t(s.Device),
		level:                    C.int32_t(s.Level),
		sequence:                 C.uint64_t(s.Sequence),
		timestamp_ns:             C.uint64_t(s.Timestamp),
		age_ns:                   C.uint64_t(s.Age),
		sample_timestamp_ns:      C.uint64_t(s.SampleTimestamp),
		device_total_bytes:       C.uint64_t(s.DeviceTotal),
		device_free_bytes:        C.uint64_t(s.DeviceFree),
		device_used_bytes:        C.uint64_t(s.DeviceUsed),
		process_device_bytes:     C.uint64_t(s.ProcessDevice),
		engine_allocated_bytes:   C.uint64_t(s.EngineAllocated),
		engine_reserved_bytes:    C.uint64_t(s.EngineReserved),
		engine_peak_bytes:        C.uint64_t(s.EnginePeak),
		engine_alloc_count:       C.uint64_t(s.EngineAllocCount),
		engine_alloc_failures:    C.uint64_t(s.EngineAllocFailures),
		host_total_bytes:         C.uint64_t(s.HostTotal),
		host_available_bytes:     C.uint64_t(s.HostAvailable),
		host_pinned_bytes:        C.uint64_t(s.HostPinned),
		warn_threshold_bytes:     C.uint64_t(s.WarnThreshold),
		critical_threshold_bytes: C.uint64_t(s.CriticalThreshold),
	}
}
