package report

import (
	"fmt"
	"html/template"
	"math"
	"sort"
	"strconv"
	"strings"
)

// The charts: inline SVG line charts drawn from numbers alone.

// chartSpec is one chart to draw: a metric, how to title it and an optional reference level (the GPU's
// memory total under its memory used).
type chartSpec struct {
	metric, title string
	mr, ref       *MetricReport
	refLabel      string
	color         string
}

const (
	colorTraining = "#2563eb"
	colorPipeline = "#0d9488"
	colorGPU      = "#16a34a"
	colorSystem   = "#ea580c"
)

const (
	svgW, svgH                         = 480, 200
	padL, padR, padT, padB             = 46, 14, 10, 24
	plotW, plotH                       = svgW - padL - padR, svgH - padT - padB
	maxChartPoints                     = plotW // one point a pixel column is all a chart can show
	gridColor, axisColor, labelColor   = "#e5e7eb", "#9ca3af", "#4b5563"
	chartFont                          = "12"
	chartFontFamily                    = "system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"
	bandOpacity, refColor, pointRadius = "0.18", "#6b7280", "2.2"
)

// chartPoint is one series point: time in seconds since start, mean, min and max, count.
type chartPoint struct{ t, mean, lo, hi, n float64 }

// svgChart draws sp's series: the mean as a line, the min..max band under it, a horizontal reference
// where sp has one. It returns the SVG, the unit label of the y axis, and false when no point is finite.
// Every string in the SVG comes from numbers and fixed labels, never from the report's names.
func svgChart(sp chartSpec) (template.HTML, string, bool) {
	var pts []chartPoint
	for _, p := range sp.mr.Series {
		c := chartPoint{float64(p[0]), float64(p[1]), float64(p[2]), float64(p[3]), float64(p[4])}
		if !isFinite(c.t) || !isFinite(c.mean) || c.n <= 0 {
			continue
		}
		if !isFinite(c.lo) || !isFinite(c.hi) {
			c.lo, c.hi = c.mean, c.mean
		}
		pts = append(pts, c)
	}
	if len(pts) == 0 {
		return "", "", false
	}
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].t < pts[j].t })

	x0, x1 := math.Min(0, pts[0].t), pts[len(pts)-1].t
	if x1 <= x0 {
		x1 = x0 + 1
	}
	pts = downsample(pts, x0, x1, maxChartPoints)

	u := unitOf(sp.metric)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range pts {
		lo, hi = math.Min(lo, p.lo), math.Max(hi, p.hi)
	}
	ref := math.NaN()
	if sp.ref != nil && isFinite(float64(sp.ref.Max)) {
		ref = float64(sp.ref.Max)
		lo, hi = math.Min(lo, ref), math.Max(hi, ref)
	}
	switch u {
	case unitPercent:
		lo, hi = math.Min(lo, 0), math.Max(hi, 100)
	case unitBytes, unitByteRate, unitRate, unitWatts:
		lo, hi = math.Min(lo, 0), math.Max(hi, 0)
	default:
		if lo > 0 && lo <= hi/2 {
			lo = 0
		} else if hi < 0 && hi >= lo/2 {
			hi = 0
		}
	}
	if hi == lo {
		d := math.Abs(hi) / 10
		if d == 0 {
			d = 1
		}
		lo, hi = lo-d, hi+d
		if u != unitNone && lo < 0 && hi-d >= 0 { // a constant non-negative value: start at zero
			lo = 0
		}
	}
	sc := pickScale(u, math.Max(math.Abs(lo), math.Abs(hi)))
	yTicks, yLo, yHi, yDec := niceTicks(lo/sc.div, hi/sc.div, 5)
	xScale, xUnit := timeScale(x1 - x0)
	xTicks, _, _, xDec := niceTicks(x0/xScale, x1/xScale, 6)
	// The time axis keeps the data's own extent, so the line spans the width, unless the next nice tick
	// is near enough to end the axis with a label.
	xLo, xHi := x0/xScale, x1/xScale
	if end := xTicks[len(xTicks)-1]; end >= xHi && end <= xHi+0.06*(xHi-xLo) {
		xHi = end
	}
	if xLo >= xTicks[0]-1e-9 && xTicks[0] >= xLo-0.06*(xHi-xLo) {
		xLo = xTicks[0]
	}

	px := func(t float64) float64 { return padL + (t/xScale-xLo)/(xHi-xLo)*plotW }
	py := func(v float64) float64 { return padT + (1-(v/sc.div-yLo)/(yHi-yLo))*plotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="plot" viewBox="0 0 %d %d" role="img" font-family="%s" font-size="%s">`,
		svgW, svgH, chartFontFamily, chartFont)
	// Grid and y labels.
	for _, v := range yTicks {
		y := padT + (1-(v-yLo)/(yHi-yLo))*plotH
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-width="1"/>`, padL, y, svgW-padR, y, gridColor)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle" fill="%s">%s</text>`,
			padL-6, y, labelColor, tickLabel(v, yDec))
	}
	// x ticks and labels.
	for _, v := range xTicks {
		if v < xLo-1e-9 || v > xHi+1e-9 {
			continue
		}
		x := padL + (v-xLo)/(xHi-xLo)*plotW
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="1"/>`, x, padT+plotH, x, padT+plotH+4, axisColor)
		anchor := "middle"
		if x > svgW-padR-20 {
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="%s" fill="%s">%s</text>`,
			x, svgH-7, anchor, labelColor, tickLabel(v, xDec)+" "+xUnit)
	}
	// Axes.
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="1"/>`, padL, padT+plotH, svgW-padR, padT+plotH, axisColor)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="1"/>`, padL, padT, padL, padT+plotH, axisColor)
	// Reference level.
	if isFinite(ref) {
		y := py(ref)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-width="1" stroke-dasharray="5 4"/>`,
			padL, y, svgW-padR, y, refColor)
		ly := y - 4 // the label sits above the line, or under it where the line is at the top
		if ly < padT+10 {
			ly = y + 13
		}
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="%s">%s %s</text>`,
			svgW-padR-4, ly, refColor, sp.refLabel, formatSig(ref/sc.div, 3)+" "+sc.label)
	}
	// Band and mean line, per run of consecutive points.
	for _, seg := range segments(pts) {
		if len(seg) == 1 {
			p := seg[0]
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-opacity="%s" stroke-width="3"/>`,
				px(p.t), py(p.hi), px(p.t), py(p.lo), sp.color, bandOpacity)
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="%s" fill="%s"/>`, px(p.t), py(p.mean), pointRadius, sp.color)
			continue
		}
		b.WriteString(`<path d="`)
		for i, p := range seg {
			fmt.Fprintf(&b, "%s%.1f,%.1f", pathCmd(i), px(p.t), py(p.hi))
		}
		for i := len(seg) - 1; i >= 0; i-- {
			fmt.Fprintf(&b, "L%.1f,%.1f", px(seg[i].t), py(seg[i].lo))
		}
		fmt.Fprintf(&b, `Z" fill="%s" fill-opacity="%s" stroke="none"/>`, sp.color, bandOpacity)
		b.WriteString(`<path d="`)
		for i, p := range seg {
			fmt.Fprintf(&b, "%s%.1f,%.1f", pathCmd(i), px(p.t), py(p.mean))
		}
		fmt.Fprintf(&b, `" fill="none" stroke="%s" stroke-width="1.6" stroke-linejoin="round" stroke-linecap="round"/>`, sp.color)
	}
	if segs := segments(pts); len(segs[len(segs)-1]) > 1 { // mark the last value (a lone point has its dot)
		last := pts[len(pts)-1]
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="%s" fill="%s"/>`, px(last.t), py(last.mean), pointRadius, sp.color)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()), sc.label, true
}

func pathCmd(i int) string {
	if i == 0 {
		return "M"
	}
	return "L"
}

// segments splits pts where the gap between two points is much wider than the series' usual step, so
// a pause in logging shows as a gap rather than a straight line across it.
func segments(pts []chartPoint) [][]chartPoint {
	if len(pts) < 3 {
		return [][]chartPoint{pts}
	}
	gaps := make([]float64, 0, len(pts)-1)
	for i := 1; i < len(pts); i++ {
		gaps = append(gaps, pts[i].t-pts[i-1].t)
	}
	sorted := append([]float64(nil), gaps...)
	sort.Float64s(sorted)
	limit := 8 * sorted[len(sorted)/2]
	var out [][]chartPoint
	start := 0
	for i, g := range gaps {
		if limit > 0 && g > limit {
			out = append(out, pts[start:i+1])
			start = i + 1
		}
	}
	return append(out, pts[start:])
}

// downsample merges points that fall into the same of n columns of [x0, x1]: the mean weighted by
// count, the min of the mins and the max of the maxes.
func downsample(pts []chartPoint, x0, x1 float64, n int) []chartPoint {
	if len(pts) <= n {
		return pts
	}
	out := make([]chartPoint, 0, n)
	col := -1
	for _, p := range pts {
		c := int((p.t - x0) / (x1 - x0) * float64(n))
		if c == col && len(out) > 0 {
			q := &out[len(out)-1]
			tot := q.n + p.n
			q.mean += (p.mean - q.mean) * p.n / tot
			q.lo, q.hi, q.n = math.Min(q.lo, p.lo), math.Max(q.hi, p.hi), tot
			continue
		}
		col = c
		out = append(out, p)
	}
	return out
}

// timeScale picks the time axis's unit for a span of seconds.
func timeScale(span float64) (float64, string) {
	switch {
	case span < 2:
		return 1e-3, "ms"
	case span < 180:
		return 1, "s"
	case span < 3*3600:
		return 60, "min"
	}
	return 3600, "h"
}

// niceTicks covers [lo, hi] with about n steps of 1, 2, 2.5 or 5 times a power of ten; it returns the
// ticks, the covered range and the decimals a tick label needs.
func niceTicks(lo, hi float64, n int) (ticks []float64, tlo, thi float64, decimals int) {
	span := hi - lo
	if !(span > 0) {
		span = math.Max(math.Abs(hi), 1)
	}
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag * 10
	for _, f := range []float64{1, 2, 2.5, 5, 10} {
		if f*mag >= raw*(1-1e-9) {
			step = f * mag
			break
		}
	}
	tlo = math.Floor(lo/step+1e-9) * step
	thi = math.Ceil(hi/step-1e-9) * step
	if thi <= tlo {
		thi = tlo + step
	}
	for k := 0; ; k++ {
		v := tlo + float64(k)*step
		if v > thi+step*1e-6 {
			break
		}
		if math.Abs(v) < step*1e-9 {
			v = 0
		}
		ticks = append(ticks, v)
	}
	for decimals = 0; decimals < 12; decimals++ {
		p := step * math.Pow(10, float64(decimals))
		if math.Abs(p-math.Round(p)) < 1e-6*p {
			break
		}
	}
	return ticks, tlo, thi, decimals
}

func tickLabel(v float64, decimals int) string {
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	if s == "-0" || strings.Trim(s, "-0.") == "" {
		return "0"
	}
	return s
}
