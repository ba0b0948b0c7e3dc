package main

/*
#include "exports.h"

// Calls a ferry_reduce_fn; the function and user pointer travel through Go as integers.
static inline int32_t ferry_capi_call_reduce(uintptr_t fn, uintptr_t user, int64_t* value) {
	return ((ferry_reduce_fn)fn)((void*)user, value);
}
*/
import "C"

import (
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

const kindAdvisor = uint64(C.FERRY_CAPI_KIND_ADVISOR)

// maxAdvisors bounds the live advisors of a process.
const maxAdvisors = 4096

var advisors = newRegistry[*engine.Advisor](kindAdvisor, "ferry_advisor", maxAdvisors)

//export ferry_advisor_create
func ferry_advisor_create(multiple C.int64_t, out *C.uintptr_t) C.ferry_status {
	return call("ferry_advisor_create", func() error {
		if out == nil {
			return errNull("advisor")
		}
		*out = 0
		if multiple < 1 || multiple > 1<<20 {
			return fmt.Errorf("%w: multiple is %d; it must be 1..%d", engine.ErrInvalidArgument, int64(multiple), 1<<20)
		}
		a, err := engine.NewAdvisor(int(multiple))
		if err != nil {
			return err
		}
		h, _, err := advisors.add(a)
		if err != nil {
			return err
		}
		*out = C.uintptr_t(h)
		return nil
	})
}

//export ferry_advisor_observe
func ferry_advisor_observe(h C.uintptr_t, batch C.int64_t, peak C.uint64_t) C.ferry_status {
	return call("ferry_advisor_observe", func() error {
		a, err := advisors.get(uint64(h))
		if err != nil {
			return err
		}
		if batch <= 0 || batch > 1<<40 {
			return fmt.Errorf("%w: batch size %d; it must be positive", engine.ErrInvalidArgument, int64(batch))
		}
		return a.Observe(int(batch), uint64(peak))
	})
}

//export ferry_advisor_report_oom
func ferry_advisor_report_oom(h C.uintptr_t, batch C.int64_t) C.ferry_status {
	return call("ferry_advisor_report_oom", func() error {
		a, err := advisors.get(uint64(h))
		if err != nil {
			return err
		}
		if batch <= 0 || batch > 1<<40 {
			return fmt.Errorf("%w: batch size %d; it must be positive", engine.ErrInvalidArgument, int64(batch))
		}
		return a.ReportOOM(int(batch))
	})
}

//export ferry_advisor_model
func ferry_advisor_model(h C.uintptr_t, out *C.ferry_advisor_fit) C.ferry_status {
	return call("ferry_advisor_model", func() error {
		a, err := advisors.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("model")
		}
		if err := checkSize("ferry_advisor_fit", out.size, C.FERRY_CAPI_V1_ADVISOR_FIT); err != nil {
			return err
		}
		f, err := a.Fit()
		if err != nil {
			return err
		}
		*out = C.ferry_advisor_fit{
			size: out.size, observations: C.int32_t(f.Observations), fixed_bytes: C.double(f.Fixed),
			per_sample_bytes: C.double(f.PerSample), r_squared: C.double(f.RSquared),
			max_residual_bytes: C.double(f.MaxResidual), oom_ceiling: C.int64_t(f.OOMCeiling),
		}
		return nil
	})
}

//export ferry_advisor_recommend
func ferry_advisor_recommend(h C.uintptr_t, budget C.uint64_t, headroom C.double, out *C.int64_t) C.ferry_status {
	return call("ferry_advisor_recommend", func() error {
		a, err := advisors.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("batch_size")
		}
		b, err := a.Recommend(uint64(budget), float64(headroom))
		if err != nil {
			return err
		}
		*out = C.int64_t(b)
		return nil
	})
}

//export ferry_advisor_set_reduce
func ferry_advisor_set_reduce(h C.uintptr_t, fn C.uintptr_t, user C.uintptr_t) C.ferry_status {
	return call("ferry_advisor_set_reduce", func() error {
		a, err := advisors.get(uint64(h))
		if err != nil {
			return err
		}
		if fn == 0 {
			a.SetReduce(nil)
			return nil
		}
		a.SetReduce(func(v int64) (int64, error) {
			cv := C.int64_t(v)
			if r := C.ferry_capi_call_reduce(fn, user, &cv); r != 0 {
				return 0, fmt.Errorf("%w: the reduce callback returned %d", engine.ErrIO, int32(r))
			}
			return int64(cv), nil
		})
		return nil
	})
}

//export ferry_advisor_destroy
func ferry_advisor_destroy(h C.uintptr_t) C.ferry_status {
	return call("ferry_advisor_destroy", func() error {
		if h == 0 {
			return nil
		}
		a, idx, err := advisors.take(uint64(h))
		if err != nil {
			return err
		}
		err = a.Close()
		advisors.release(idx)
		return err
	})
}
