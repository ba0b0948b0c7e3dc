package engine

import (
	"fmt"
	"math"
	"sort"
	"sync"
)

// Advisor learns how peak memory grows with the batch size and recommends the largest batch that fits.
//
// The model is peak = fixed + per_sample × batch, fitted by least squares over the observations (the
// largest peak seen at each batch size). Recommendations use that line raised by its largest positive
// residual, so a noisy or convex curve errs on the safe side: with two observations the line passes
// through both; with more, every observation lies on or under the line that is used. The result is
// rounded down to a multiple, kept strictly below the smallest batch size reported out of memory (the
// largest multiple under it), then reduced across ranks (the minimum) when a reduce hook is
// set, so every rank trains with the same size. The current batch size is always an explicit argument.
//
// An Advisor is safe for concurrent use.
type Advisor struct {
	mu       sync.Mutex
	multiple int
	peaks    map[int]uint64 // batch size → the largest peak observed
	ceiling  int            // the smallest batch size reported out of memory; 0: none
	reduce   func(int64) (int64, error)
	closed   bool
}

// AdvisorFit is the fitted model and its confidence.
type AdvisorFit struct {
	Observations int     // distinct batch sizes observed
	Fixed        float64 // least-squares intercept, bytes
	PerSample    float64 // least-squares slope, bytes per sample
	RSquared     float64 // 1 with two observations
	MaxResidual  float64 // the largest observation above the line (the margin recommendations add)
	OOMCeiling   int     // the smallest batch size reported out of memory; 0 when none
}

// NewAdvisor returns an advisor that rounds recommendations down to a multiple of multiple (>= 1).
func NewAdvisor(multiple int) (*Advisor, error) {
	if multiple < 1 {
		return nil, fmt.Errorf("%w: multiple is %d; it must be at least 1", ErrInvalidArgument, multiple)
	}
	return &Advisor{multiple: multiple, peaks: map[int]uint64{}}, nil
}

func (a *Advisor) check() error {
	if a.closed {
		return fmt.Errorf("%w: advisor", ErrClosed)
	}
	return nil
}

// Observe records the peak memory of a step at batchSize.
func (a *Advisor) Observe(batchSize int, peakBytes uint64) error {
	if batchSize <= 0 {
		return fmt.Errorf("%w: batch size %d; it must be positive", ErrInvalidArgument, batchSize)
	}
	if peakBytes == 0 {
		return fmt.Errorf("%w: a peak of 0 bytes at batch size %d is not a measurement", ErrInvalidArgument, batchSize)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(); err != nil {
		return err
	}
	if peakBytes > a.peaks[batchSize] {
		a.peaks[batchSize] = peakBytes
	}
	return nil
}

// ReportOOM records that batchSize ran out of memory: recommendations stay below it from then on.
func (a *Advisor) ReportOOM(batchSize int) error {
	if batchSize <= 0 {
		return fmt.Errorf("%w: batch size %d; it must be positive", ErrInvalidArgument, batchSize)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(); err != nil {
		return err
	}
	if a.ceiling == 0 || batchSize < a.ceiling {
		a.ceiling = batchSize
	}
	return nil
}

// SetReduce sets the reduction across ranks (the minimum over every rank); nil clears it.
func (a *Advisor) SetReduce(fn func(int64) (int64, error)) {
	a.mu.Lock()
	a.reduce = fn
	a.mu.Unlock()
}

// Fit returns the model. It needs two distinct batch sizes.
func (a *Advisor) Fit() (AdvisorFit, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(); err != nil {
		return AdvisorFit{}, err
	}
	return a.fitLocked()
}

func (a *Advisor) fitLocked() (AdvisorFit, error) {
	f := AdvisorFit{Observations: len(a.peaks), OOMCeiling: a.ceiling}
	if len(a.peaks) < 2 {
		return f, fmt.Errorf("%w: the advisor has %d distinct batch size(s) observed; it needs two",
			ErrInvalidArgument, len(a.peaks))
	}
	sizes := make([]int, 0, len(a.peaks))
	for b := range a.peaks {
		sizes = append(sizes, b)
	}
	sort.Ints(sizes) // a fixed order: the same observations always give the same fit
	n := float64(len(sizes))
	var sx, sy float64
	for _, b := range sizes {
		sx += float64(b)
		sy += float64(a.peaks[b])
	}
	mx, my := sx/n, sy/n
	var sxx, sxy, syy float64
	for _, b := range sizes {
		dx, dy := float64(b)-mx, float64(a.peaks[b])-my
		sxx += dx * dx
		sxy += dx * dy
		syy += dy * dy
	}
	f.PerSample = sxy / sxx
	f.Fixed = my - f.PerSample*mx
	var ssres float64
	for _, b := range sizes {
		r := float64(a.peaks[b]) - (f.Fixed + f.PerSample*float64(b))
		ssres += r * r
		f.MaxResidual = math.Max(f.MaxResidual, r)
	}
	f.RSquared = 1
	if syy > 0 && len(sizes) > 2 {
		f.RSquared = 1 - ssres/syy
	}
	return f, nil
}

// Recommend returns the largest batch whose predicted peak fits budget × (1 − headroom); see Advisor.
func (a *Advisor) Recommend(budgetBytes uint64, headroom float64) (int, error) {
	if budgetBytes == 0 {
		return 0, fmt.Errorf("%w: a budget of 0 bytes", ErrInvalidArgument)
	}
	if !(headroom >= 0 && headroom < 1) {
		return 0, fmt.Errorf("%w: headroom %v; it must be in [0, 1)", ErrInvalidArgument, headroom)
	}
	a.mu.Lock()
	if err := a.check(); err != nil {
		a.mu.Unlock()
		return 0, err
	}
	f, err := a.fitLocked()
	reduce, multiple := a.reduce, a.multiple
	a.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if !(f.PerSample > 0) {
		return 0, fmt.Errorf("%w: peak memory does not grow with the batch size (%.0f bytes per sample); observe larger sizes",
			ErrInvalidArgument, f.PerSample)
	}
	usable := float64(budgetBytes) * (1 - headroom)
	fixed := f.Fixed + f.MaxResidual
	b := int(math.Floor((usable - fixed) / f.PerSample))
	if b < 1 {
		return 0, fmt.Errorf("%w: the usable budget of %.0f bytes is below the cost of one sample (%.0f fixed + %.0f per sample)",
			ErrInvalidArgument, usable, fixed, f.PerSample)
	}
	if f.OOMCeiling > 0 {
		b = min(b, f.OOMCeiling-1)
	}
	if b >= multiple {
		b = b / multiple * multiple
	}
	if b < 1 {
		return 0, fmt.Errorf("%w: batch size %d ran out of memory; nothing smaller fits the model", ErrInvalidArgument, f.OOMCeiling)
	}
	if reduce != nil {
		v, err := reduce(int64(b))
		if err != nil {
			return 0, fmt.Errorf("reducing the batch size across ranks: %w", err)
		}
		if v < 1 || v > int64(b) {
			return 0, fmt.Errorf("%w: the reduction across ranks returned %d for %d; it must return the minimum (1..%d)",
				ErrInvalidArgument, v, b, b)
		}
		b = int(v)
	}
	return b, nil
}

// Close makes every later call fail with ErrClosed; an engine with the advisor attached then recommends
// nothing.
func (a *Advisor) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("%w: advisor was already closed", ErrClosed)
	}
	a.closed = true
	return nil
}
