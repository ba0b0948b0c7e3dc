package data

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"sync/atomic"

	"github.com/ferry-ml/ferry/engine"
)

// This file reproduces the sample order of megatron-core's GPTDataset and BlendedDataset
// (megatron/core/datasets: gpt_dataset.py, blended_dataset.py, blended_megatron_dataset_builder.py,
// blended_megatron_dataset_config.py and helpers.cpp), from the same inputs: the sequence lengths of the
// index, the split string, the split, the seed, the sequence length and the number of samples. The three
// arrays it builds are those Megatron builds and caches:
//
//   - the document index: the split's sequences ("documents" to GPTDataset), repeated once per epoch
//     needed and shuffled by numpy.random.RandomState(seed) (the last epoch shuffled on its own when it
//     is used for less than 80 %);
//   - the sample index: for each window of SeqLen+1 tokens laid over the documents in that order, the
//     position in the document index and the token offset where it starts (consecutive windows share a
//     token: the last target of one is the first input of the next);
//   - the shuffle index: a permutation of the windows by the same random state (the windows of a separate
//     last epoch permuted among themselves).

// MegatronSplit selects one of the three splits of Megatron's split string.
type MegatronSplit int

// Megatron's splits, in the order of its split string.
const (
	SplitTrain MegatronSplit = iota
	SplitValid
	SplitTest
)

func (s MegatronSplit) String() string {
	switch s {
	case SplitTrain:
		return "train"
	case SplitValid:
		return "valid"
	case SplitTest:
		return "test"
	}
	return fmt.Sprintf("MegatronSplit(%d)", int(s))
}

// megatronGPTParams are the inputs of GPTDataset's index build.
type megatronGPTParams struct {
	seqLen     int
	seed       uint32
	split      string
	which      MegatronSplit
	numSamples int // 0: one epoch (Megatron's num_samples=None)
}

// megatronGPTIndex is GPTDataset's document, sample and shuffle index.
type megatronGPTIndex struct {
	docs    []int32 // document index: sequence ids
	samples []int64 // sample index: (document-index position, token offset) per window boundary, flattened
	shuffle []int64 // shuffle index: window ids
	epochs  int
	// separate is true when the last epoch was shuffled on its own (it is used for less than 80 %).
	separate bool
}

// Len is the number of windows (GPTDataset's __len__).
func (x *megatronGPTIndex) Len() int { return len(x.shuffle) }

var megatronSplitNumber = regexp.MustCompile(`[.0-9]+`)

// megatronSplitRange is the range of sequences [beg, end) that split `which` of a corpus of n sequences
// holds under the split string (e.g. "969,30,1"), computed as Megatron computes it (the weights
// normalized, book-ends accumulated in float64, each end rounded half to even). ok is false when the split
// is empty (its weight is 0).
func megatronSplitRange(split string, which MegatronSplit, n int) (beg, end int, ok bool, err error) {
	if which < SplitTrain || which > SplitTest {
		return 0, 0, false, fmt.Errorf("%w: Megatron split %d is not train (0), valid (1) or test (2)", engine.ErrInvalidArgument, int(which))
	}
	parts := megatronSplitNumber.FindAllString(split, -1)
	if len(parts) == 0 || len(parts) > 3 {
		return 0, 0, false, fmt.Errorf("%w: Megatron split %q needs 1 to 3 weights, like \"969,30,1\"", engine.ErrInvalidArgument, split)
	}
	w := make([]float64, 3)
	for i, p := range parts {
		v, perr := strconv.ParseFloat(p, 64)
		if perr != nil || v < 0 || math.IsInf(v, 0) {
			return 0, 0, false, fmt.Errorf("%w: Megatron split %q: %q is not a non-negative weight", engine.ErrInvalidArgument, split, p)
		}
		w[i] = v
	}
	w, err = megatronNormalize(w)
	if err != nil {
		return 0, 0, false, fmt.Errorf("megatron split %q: %w", split, err)
	}
	lo := 0.0
	for i := range w[:which] {
		lo += w[i]
	}
	hi := lo + w[which]
	if hi <= lo {
		return 0, 0, false, nil
	}
	beg = int(math.RoundToEven(lo * float64(n)))
	end = int(math.RoundToEven(hi * float64(n)))
	return beg, end, true, nil
}

// megatronNormalize divides weights by their numpy sum, as Megatron's normalize does.
func megatronNormalize(w []float64) ([]float64, error) {
	sum := numpySum(w)
	if !(sum > 0) || math.IsInf(sum, 0) {
		return nil, fmt.Errorf("%w: weights %v do not have a positive, finite sum", engine.ErrInvalidArgument, w)
	}
	out := make([]float64, len(w))
	for i, v := range w {
		out[i] = v / sum
	}
	return out, nil
}

// numpySum is numpy's pairwise summation of float64 (numpy.sum), whose rounding the normalized weights
// inherit.
func numpySum(a []float64) float64 {
	const block = 128
	n := len(a)
	switch {
	case n < 8:
		res := 0.0
		for _, v := range a {
			res += v
		}
		return res
	case n <= block:
		var r [8]float64
		copy(r[:], a[:8])
		i := 8
		for ; i < n-n%8; i += 8 {
			for j := range r {
				r[j] += a[i+j]
			}
		}
		res := ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
		for ; i < n; i++ {
			res += a[i]
		}
		return res
	}
	n2 := n / 2
	n2 -= n2 % 8
	return numpySum(a[:n2]) + numpySum(a[n2:])
}

// buildMegatronGPTIndex builds GPTDataset's indices over sequences [beg, end) of a corpus whose sequence
// lengths are given, as megatron-core builds them for a training split (add_extra_token_to_sequence and
// drop_last_partial_sequence both true, their defaults).
func buildMegatronGPTIndex(lengths func(i int) int32, beg, end int, p megatronGPTParams) (*megatronGPTIndex, error) {
	if p.seqLen < 2 {
		return nil, fmt.Errorf("%w: a Megatron-order window needs a sequence length of at least 2, not %d", engine.ErrInvalidArgument, p.seqLen)
	}
	if p.numSamples < 0 {
		return nil, fmt.Errorf("%w: number of samples %d is negative", engine.ErrInvalidArgument, p.numSamples)
	}
	ndocs := end - beg
	var tokens atomic.Int64
	parallelFor(end-beg, 1<<16, func(lo, hi int) {
		var n int64
		for i := beg + lo; i < beg+hi; i++ {
			n += int64(lengths(i))
		}
		tokens.Add(n)
	})
	tokensPerEpoch := tokens.Load()
	if ndocs <= 0 || tokensPerEpoch <= 1 {
		return nil, fmt.Errorf("%w: the %s split holds %d sequences and %d tokens, too few for a window", engine.ErrInvalidArgument, p.which, ndocs, tokensPerEpoch)
	}
	seq := int64(p.seqLen)
	epochs := int64(1)
	if p.numSamples > 0 {
		requested := int64(p.numSamples)*seq + 1
		epochs = (requested + tokensPerEpoch - 1) / tokensPerEpoch
	}
	separate := false
	var sansFinal int64
	if epochs > 1 {
		sansFinal = ((epochs-1)*tokensPerEpoch - 1) / seq
		fromFinal := int64(p.numSamples) - sansFinal
		perEpoch := (tokensPerEpoch - 1) / seq
		separate = fromFinal < int64(0.80*float64(perEpoch))
	}
	if int64(ndocs)*epochs > math.MaxInt32 {
		return nil, fmt.Errorf("%w: %d documents over %d epochs exceed Megatron's int32 document index", engine.ErrLimit, ndocs, epochs)
	}

	total := (epochs*tokensPerEpoch - 1) / seq
	if total > math.MaxUint32 {
		return nil, fmt.Errorf("%w: %d windows exceed the 2^32 a Megatron shuffle index is built for here", engine.ErrLimit, total)
	}
	// Each document travels with its length through the shuffle, so that the sample index reads the lengths
	// in document-index order instead of gathering them at random.
	pairs, free := scratchSlice[docLen](int(int64(ndocs) * epochs))
	defer free()
	parallelFor(len(pairs), 1<<16, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			d := beg + k%ndocs
			pairs[k] = docLen{int32(d), lengths(d)}
		}
	})
	shuffle := make([]int64, total)
	parallelFor(len(shuffle), 1<<16, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			shuffle[k] = int64(k)
		}
	})
	// The random state shuffles, in this order: the document index (its first epochs, then a separate
	// last epoch), then the shuffle index (its windows before the separate last epoch, then the rest).
	var jobs []*shuffleJob
	if separate {
		first := int64(ndocs) * (epochs - 1)
		jobs = append(jobs, newShuffleJob(pairs[:first]), newShuffleJob(pairs[first:]),
			newShuffleJob(shuffle[:sansFinal]), newShuffleJob(shuffle[sansFinal:]))
	} else {
		jobs = append(jobs, newShuffleJob(pairs), newShuffleJob(shuffle))
	}
	parallelShuffles(newNumpyRandomState(p.seed), jobs...)
	docs := make([]int32, len(pairs))
	parallelFor(len(pairs), 1<<16, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			docs[k] = pairs[k].doc
		}
	})
	samples := megatronSampleIndexParallel(pairs, seq, epochs*tokensPerEpoch)
	return &megatronGPTIndex{docs: docs, samples: samples, shuffle: shuffle, epochs: int(epochs), separate: separate}, nil
}

// megatronBlendSizes is the number of samples Megatron's builder asks of each dataset of a blend with
// these weights for a split of `size` samples: the target, ceil(size * w), and the number built,
// ceil(target * 1.005) (its default mid_level_dataset_surplus). The blend's own size is the sum of the
// targets.
func megatronBlendSizes(weights []float64, size int) (target, build []int, err error) {
	w, err := megatronNormalize(weights)
	if err != nil {
		return nil, nil, err
	}
	for _, v := range w {
		t := math.Ceil(float64(size) * v)
		target = append(target, int(t))
		build = append(build, int(math.Ceil(t*(1+0.005))))
	}
	return target, build, nil
}

// megatronBlendIndex is helpers.cpp's build_blending_indices: position p takes the dataset whose share is
// furthest behind its weight (the first on ties), and that dataset's next sample.
func megatronBlendIndex(weights []float64, size int) (dataset []int16, sample []int64) {
	dataset = make([]int16, size)
	sample = make([]int64, size)
	current := make([]int64, len(weights))
	for p := range size {
		x := max(float64(p), 1.0)
		best, bestErr := 0, weights[0]*x-float64(current[0])
		for d := 1; d < len(weights); d++ {
			if e := weights[d]*x - float64(current[d]); e > bestErr {
				best, bestErr = d, e
			}
		}
		dataset[p] = int16(best)
		sample[p] = current[best]
		current[best]++
	}
	return dataset, sample
}
