package data

import "math/bits"

// numpyRandomState reproduces the draws of numpy.random.RandomState(seed) that Megatron's index builders
// use: the MT19937 generator seeded by init_genrand (numpy's legacy seeding of an integer seed), and the
// legacy shuffle of a 1-D array, a Fisher-Yates walk from the end whose bounded draws are masked rejection
// samples (numpy's random_interval). Matching it bit for bit is what makes order="megatron" reproduce
// megatron-core's document and shuffle indices.
type numpyRandomState struct {
	mt  [624]uint32
	out [624]uint32 // the tempered outputs of the current state
	pos int
}

func newNumpyRandomState(seed uint32) *numpyRandomState {
	r := &numpyRandomState{pos: 624}
	r.mt[0] = seed
	for i := 1; i < 624; i++ {
		prev := r.mt[i-1]
		r.mt[i] = 1812433253*(prev^(prev>>30)) + uint32(i)
	}
	return r
}

// generate refills the 624 words of state (the reference implementation's genrand step).
func (r *numpyRandomState) generate() {
	const upper, lower, matrixA = 0x80000000, 0x7fffffff, 0x9908b0df
	mag := func(y uint32) uint32 { return (y & 1) * matrixA }
	k := 0
	for ; k < 624-397; k++ {
		y := (r.mt[k] & upper) | (r.mt[k+1] & lower)
		r.mt[k] = r.mt[k+397] ^ (y >> 1) ^ mag(y)
	}
	for ; k < 623; k++ {
		y := (r.mt[k] & upper) | (r.mt[k+1] & lower)
		r.mt[k] = r.mt[k+397-624] ^ (y >> 1) ^ mag(y)
	}
	y := (r.mt[623] & upper) | (r.mt[0] & lower)
	r.mt[623] = r.mt[396] ^ (y >> 1) ^ mag(y)
	for i, y := range &r.mt {
		y ^= y >> 11
		y ^= (y << 7) & 0x9d2c5680
		y ^= (y << 15) & 0xefc60000
		r.out[i] = y ^ (y >> 18)
	}
	r.pos = 0
}

func (r *numpyRandomState) uint32() uint32 {
	if r.pos == 624 {
		r.generate()
	}
	y := r.out[r.pos]
	r.pos++
	return y
}

// interval is numpy's random_interval(limit): a value in [0, limit], drawn by masking a 32-bit (or, above
// 2^32-1, a 64-bit: high word first) output to the smallest all-ones mask >= limit and rejecting values
// above limit.
func (r *numpyRandomState) interval(limit uint64) uint64 {
	if limit == 0 {
		return 0
	}
	mask := uint64(1)<<bits.Len64(limit) - 1
	if limit <= 0xffffffff {
		for {
			if v := uint64(r.uint32()) & mask; v <= limit {
				return v
			}
		}
	}
	for {
		hi := uint64(r.uint32())
		if v := (hi<<32 | uint64(r.uint32())) & mask; v <= limit {
			return v
		}
	}
}

// intervals fills d[k] with interval(hi-k), the draws of len(d) steps of a shuffle's walk down from hi, for
// hi < 2^32: the same draws as that many calls of interval, without a call per draw. Limits of one mask
// are drawn in one tight loop over the tempered outputs.
func (r *numpyRandomState) intervals(d []uint32, hi uint64) {
	if hi > 0xffffffff {
		for k := range d {
			d[k] = uint32(r.interval(hi - uint64(k)))
		}
		return
	}
	pos, k := r.pos, 0
	for k < len(d) {
		limit := uint32(hi - uint64(k))
		if limit == 0 {
			d[k] = 0
			k++
			continue
		}
		mask := uint32(1)<<bits.Len32(limit) - 1
		// Every limit from this one down to mask/2+1 shares the mask.
		stop := min(len(d), k+int(limit-(mask>>1)))
		for k < stop {
			if pos == len(r.out) {
				r.generate()
				pos = 0
			}
			// Branch-free: a rejection (about one draw in four) is not a mispredicted branch. d[k] is
			// written either way and overwritten by the next draw when rejected.
			v := r.out[pos] & mask
			pos++
			d[k] = v
			ok := int((uint64(limit)-uint64(v))>>63 ^ 1) // 1 when v <= limit
			k += ok
			limit -= uint32(ok)
		}
	}
	r.pos = pos
}

// npShuffle permutes s in place as RandomState.shuffle permutes a 1-D array: for i from len(s)-1 down to
// 1, swap s[i] and s[interval(i)].
func npShuffle[T any](r *numpyRandomState, s []T) {
	for i := len(s) - 1; i >= 1; i-- {
		j := r.interval(uint64(i))
		s[i], s[j] = s[j], s[i]
	}
}
