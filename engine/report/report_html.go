package report

import (
	"bytes"
	"fmt"
	"html/template"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// HTML renders the report as one self-contained HTML page: a header naming the process, line charts
// over time (inline SVG: the mean per series point, with a band from its min to its max) for the
// training, pipeline, GPU and system metrics, and a summary table per group. The page loads nothing
// from anywhere: no scripts, style sheets, fonts or images outside the file. A metric the report lacks
// gets no chart; a GPU field the device did not report is named as such, never drawn as zero.
func (r *Report) HTML() ([]byte, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: report is nil", engine.ErrInvalidArgument)
	}
	var b bytes.Buffer
	if err := reportHTMLTemplate.Execute(&b, r.htmlPage()); err != nil {
		return nil, fmt.Errorf("%w: rendering the HTML report: %v", engine.ErrFormat, err)
	}
	return b.Bytes(), nil
}

// WriteHTML writes the report as HTML to path (see HTML and writeFileSafely).
func (r *Report) WriteHTML(path string) error {
	b, err := r.HTML()
	if err != nil {
		return err
	}
	return writeFileSafely(path, b)
}

// The page's model: everything the template shows, already formatted. Strings that come from the
// report (host, node, metric and iterator names) stay plain strings, escaped by html/template; only
// the SVG, built here from numbers alone, is template.HTML.
type htmlPage struct {
	Host, Node, Started, Created, Duration, Clock, Version, Schema string
	PID, Rank, LocalRank                                           int
	Sections                                                       []htmlSection
}

type htmlSection struct {
	ID, Title, Empty string
	Groups           []htmlGroup
}

type htmlGroup struct {
	Title  string
	Notes  []string
	Charts []htmlChart
	Rows   []htmlRow
}

type htmlChart struct {
	Metric, Title, Unit, Stats string
	SVG                        template.HTML
}

type htmlRow struct {
	Name, Unit, Count string
	Cells             []string // mean, std, min, p50, p90, p99, p999, max, last
}

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

// gpuFields are the GPU sampler's metrics, in the order the tables list them, with a reader's name.
var gpuFields = []struct{ name, title string }{
	{"utilization_percent", "utilization"},
	{"memory_utilization_percent", "memory bandwidth utilization"},
	{"memory_used_bytes", "memory used"},
	{"memory_total_bytes", "memory total"},
	{"temperature_celsius", "temperature"},
	{"power_watts", "power"},
	{"sm_clock_mhz", "SM clock"},
	{"memory_clock_mhz", "memory clock"},
	{"throttle_reasons", "throttle reasons"},
	{"ecc_corrected_errors", "ECC corrected errors"},
	{"ecc_uncorrected_errors", "ECC uncorrected errors"},
	{"process_memory_bytes", "this process's memory"},
	{"processes", "processes"},
	{"pcie_rx_bytes_per_second", "PCIe RX"},
	{"pcie_tx_bytes_per_second", "PCIe TX"},
}

// gpuCharts are the GPU fields that get a chart, with the chart's title.
var gpuCharts = []struct{ name, title string }{
	{"utilization_percent", "GPU utilization"},
	{"memory_used_bytes", "GPU memory used"},
	{"power_watts", "Power"},
	{"temperature_celsius", "Temperature"},
	{"sm_clock_mhz", "SM clock"},
	{"pcie_rx_bytes_per_second", "PCIe RX (to the GPU)"},
	{"pcie_tx_bytes_per_second", "PCIe TX (from the GPU)"},
}

var pipelineCharts = []struct{ name, title string }{
	{"samples_per_second", "Samples per second"},
	{"batches_per_second", "Batches per second"},
	{"h2d_bytes_per_second", "Host-to-device copy"},
	{"data_stall_percent", "Data stall"},
	{"queue_depth", "Queue depth (batches ready)"},
}

var systemCharts = []struct{ name, title string }{
	{"cpu_percent", "Host CPU"},
	{"memory_percent", "Host memory"},
	{"process_cpu_percent", "Process CPU"},
	{"process_rss_bytes", "Process resident memory"},
}

// present reports whether mr holds at least one finite value.
func present(mr *MetricReport) bool { return mr != nil && mr.Count > 0 }

func (r *Report) htmlPage() htmlPage {
	p := htmlPage{
		Host: r.Host, Node: r.Node, Started: formatTimestamp(r.Started), Created: formatTimestamp(r.Created),
		Duration: formatDuration(r.DurationS), Clock: r.Clock, Version: r.Ferry, Schema: r.Schema,
		PID: r.PID, Rank: r.Rank, LocalRank: r.LocalRank,
	}
	if p.Node == "" {
		p.Node = "—"
	}
	p.Sections = []htmlSection{r.trainingSection(), r.pipelineSection(), r.gpuSection(), r.systemSection()}
	return p
}

func (r *Report) trainingSection() htmlSection {
	s := htmlSection{ID: "training", Title: "Training metrics"}
	names := r.MetricNames()
	if len(names) == 0 {
		s.Empty = "The program logged no metrics."
		return s
	}
	var specs []chartSpec
	for _, n := range names {
		specs = append(specs, chartSpec{metric: n, title: n, mr: r.TrainingMetrics[n], color: colorTraining})
	}
	s.Groups = []htmlGroup{buildGroup("", specs, r.TrainingMetrics, names)}
	return s
}

func (r *Report) pipelineSection() htmlSection {
	s := htmlSection{ID: "pipeline", Title: "Input pipeline"}
	its := sortedKeys(r.PipelineMetrics)
	if len(its) == 0 {
		s.Empty = "No iterator was attached to the monitor."
		return s
	}
	for _, it := range its {
		ms := r.PipelineMetrics[it]
		var specs []chartSpec
		for _, c := range pipelineCharts {
			// Samples per second is the throughput; batches per second stands in where it is missing.
			if c.name == "batches_per_second" && present(ms["samples_per_second"]) {
				continue
			}
			specs = append(specs, chartSpec{metric: "pipeline/" + it + "/" + c.name, title: c.title, mr: ms[c.name], color: colorPipeline})
		}
		s.Groups = append(s.Groups, buildGroup("Iterator "+strconv.Quote(it), specs, ms, sortedKeys(ms)))
	}
	return s
}

func (r *Report) gpuSection() htmlSection {
	s := htmlSection{ID: "gpu", Title: "GPUs"}
	devs := sortedKeys(r.GPUMetrics)
	sort.SliceStable(devs, func(i, j int) bool {
		a, ea := strconv.Atoi(devs[i])
		b, eb := strconv.Atoi(devs[j])
		if ea == nil && eb == nil {
			return a < b
		}
		return devs[i] < devs[j]
	})
	if len(devs) == 0 {
		s.Empty = "No GPU metrics: the GPU sampler did not run (no NVIDIA driver, no device, or sampling off)."
		return s
	}
	for _, d := range devs {
		ms := r.GPUMetrics[d]
		prefix := "gpu" + d + "/"
		var specs []chartSpec
		for _, c := range gpuCharts {
			sp := chartSpec{metric: prefix + c.name, title: c.title, mr: ms[c.name], color: colorGPU}
			if c.name == "memory_used_bytes" && present(ms["memory_total_bytes"]) {
				sp.ref, sp.refLabel = ms["memory_total_bytes"], "total"
			}
			specs = append(specs, sp)
		}
		var order []string
		var absent []string
		known := map[string]bool{}
		for _, f := range gpuFields {
			known[f.name] = true
			if ms[f.name] != nil {
				order = append(order, f.name)
			} else {
				absent = append(absent, f.title)
			}
		}
		for _, n := range sortedKeys(ms) {
			if !known[n] {
				order = append(order, n)
			}
		}
		g := buildGroup("GPU "+d, specs, ms, order)
		if len(absent) > 0 {
			g.Notes = append([]string{"Not reported by this device: " + strings.Join(absent, ", ") + "."}, g.Notes...)
		}
		s.Groups = append(s.Groups, g)
	}
	return s
}

func (r *Report) systemSection() htmlSection {
	s := htmlSection{ID: "system", Title: "Host"}
	if len(r.SystemMetrics) == 0 {
		s.Empty = "No host metrics: the system sampler did not run."
		return s
	}
	var specs []chartSpec
	for _, c := range systemCharts {
		specs = append(specs, chartSpec{metric: "system/" + c.name, title: c.title, mr: r.SystemMetrics[c.name], color: colorSystem})
	}
	s.Groups = []htmlGroup{buildGroup("", specs, r.SystemMetrics, sortedKeys(r.SystemMetrics))}
	return s
}

// buildGroup draws the specs that have data and tabulates ms in the given order. A spec without data
// gets no chart; one with only non-finite values gets a note.
func buildGroup(title string, specs []chartSpec, ms map[string]*MetricReport, order []string) htmlGroup {
	g := htmlGroup{Title: title}
	for _, sp := range specs {
		if sp.mr == nil {
			continue
		}
		if !present(sp.mr) {
			if sp.mr.NonFinite > 0 {
				g.Notes = append(g.Notes, fmt.Sprintf("%s: only non-finite values (%d NaN or ±Inf).", sp.title, sp.mr.NonFinite))
			}
			continue
		}
		svg, unit, ok := svgChart(sp)
		if !ok {
			continue
		}
		u := unitOf(sp.metric)
		g.Charts = append(g.Charts, htmlChart{Metric: sp.metric, Title: sp.title, Unit: unit, SVG: svg,
			Stats: "last " + formatValue(u, float64(sp.mr.Last)) + " · mean " + formatValue(u, float64(sp.mr.Mean))})
	}
	for _, n := range order {
		mr := ms[n]
		if mr == nil {
			continue
		}
		g.Rows = append(g.Rows, tableRow(n, unitOf(n), mr))
	}
	return g
}

func tableRow(name string, u unitKind, mr *MetricReport) htmlRow {
	vals := []Float{mr.Mean, mr.Std, mr.Min, mr.P50, mr.P90, mr.P99, mr.P999, mr.Max, mr.Last}
	maxAbs := 0.0
	for _, v := range []Float{mr.Min, mr.Max} {
		if f := float64(v); isFinite(f) {
			maxAbs = math.Max(maxAbs, math.Abs(f))
		}
	}
	sc := pickScale(u, maxAbs)
	if u == unitNone { // a unitless metric: each value written out in full ("1.351e-4", "12.3k")
		sc = scale{1, ""}
	}
	row := htmlRow{Name: name, Unit: sc.label, Count: groupDigits(mr.Count)}
	if mr.NonFinite > 0 {
		row.Count += " (+" + groupDigits(mr.NonFinite) + " non-finite)"
	}
	for _, v := range vals {
		f := float64(v)
		if !isFinite(f) || mr.Count == 0 {
			row.Cells = append(row.Cells, "—")
			continue
		}
		if u == unitNone {
			row.Cells = append(row.Cells, formatValue(u, f))
		} else {
			row.Cells = append(row.Cells, formatSig(f/sc.div, 4))
		}
	}
	return row
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func isFinite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// Units, inferred from a metric's name.

type unitKind int

const (
	unitNone     unitKind = iota
	unitPercent           // *_percent
	unitBytes             // *_bytes: binary prefixes (GiB)
	unitByteRate          // *_bytes_per_second: decimal prefixes (GB/s)
	unitRate              // *_per_second
	unitWatts             // *_watts
	unitCelsius           // *_celsius
	unitMHz               // *_mhz
	unitSeconds           // *_seconds
)

func unitOf(name string) unitKind {
	switch {
	case strings.HasSuffix(name, "_percent"):
		return unitPercent
	case strings.HasSuffix(name, "_bytes_per_second"):
		return unitByteRate
	case strings.HasSuffix(name, "_bytes"):
		return unitBytes
	case strings.HasSuffix(name, "_per_second"):
		return unitRate
	case strings.HasSuffix(name, "_watts"):
		return unitWatts
	case strings.HasSuffix(name, "_celsius"):
		return unitCelsius
	case strings.HasSuffix(name, "_mhz"):
		return unitMHz
	case strings.HasSuffix(name, "_seconds"):
		return unitSeconds
	}
	return unitNone
}

// scale is how values of one chart or table row are shown: divided by div, labelled label.
type scale struct {
	div   float64
	label string
}

var (
	iecPrefixes = []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	siPrefixes  = []string{"", "k", "M", "G", "T", "P", "E"}
	superDigits = strings.NewReplacer("-", "⁻", "0", "⁰", "1", "¹", "2", "²", "3", "³", "4", "⁴", "5", "⁵",
		"6", "⁶", "7", "⁷", "8", "⁸", "9", "⁹")
)

// pickScale chooses the prefix under which maxAbs, the largest magnitude shown, reads best.
func pickScale(u unitKind, maxAbs float64) scale {
	prefixed := func(base float64, names []string, suffix string) scale {
		s := scale{1, names[0] + suffix}
		for k, d := 1, base; k < len(names) && maxAbs >= d; k, d = k+1, d*base {
			s = scale{d, names[k] + suffix}
		}
		return s
	}
	switch u {
	case unitPercent:
		return scale{1, "%"}
	case unitBytes:
		return prefixed(1024, iecPrefixes, "")
	case unitByteRate:
		return prefixed(1000, []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}, "/s")
	case unitRate:
		return prefixed(1000, siPrefixes, "/s")
	case unitWatts:
		return scale{1, "W"}
	case unitCelsius:
		return scale{1, "°C"}
	case unitMHz:
		return scale{1, "MHz"}
	case unitSeconds:
		switch {
		case maxAbs == 0 || maxAbs >= 1:
			return scale{1, "s"}
		case maxAbs >= 1e-3:
			return scale{1e-3, "ms"}
		default:
			return scale{1e-6, "µs"}
		}
	}
	switch {
	case maxAbs >= 1e4:
		return prefixed(1000, siPrefixes, "")
	case maxAbs > 0 && maxAbs < 1e-2:
		e := math.Floor(math.Log10(maxAbs))
		return scale{math.Pow(10, e), "×10" + superDigits.Replace(strconv.Itoa(int(e)))}
	}
	return scale{1, ""}
}

// formatValue formats one value with its unit: "45.3 %", "1.23 GiB", "53.5 GB/s", "0.0003".
func formatValue(u unitKind, v float64) string {
	if !isFinite(v) {
		return "—"
	}
	if u == unitNone {
		switch a := math.Abs(v); {
		case a >= 1e4:
			sc := pickScale(u, a)
			return formatSig(v/sc.div, 4) + sc.label
		case a > 0 && a < 1e-3:
			return formatExp(v, 4)
		}
		return formatSig(v, 4)
	}
	sc := pickScale(u, math.Abs(v))
	if sc.label == "%" {
		return formatSig(v, 3) + " %"
	}
	return formatSig(v/sc.div, 3) + " " + sc.label
}

// formatSig formats v with sig significant digits, without trailing zeros; exponent notation only for
// magnitudes below 1e-4 or from 1e9 on.
func formatSig(v float64, sig int) string {
	if v == 0 {
		return "0"
	}
	a := math.Abs(v)
	if a < 1e-4 || a >= 1e9 {
		return formatExp(v, sig)
	}
	d := sig - 1 - int(math.Floor(math.Log10(a)))
	if d < 0 {
		d = 0
	}
	s := strconv.FormatFloat(v, 'f', d, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}

// formatExp formats v in exponent notation with sig significant digits: "3e-5", "1.351e-4".
func formatExp(v float64, sig int) string {
	m, e, _ := strings.Cut(strconv.FormatFloat(v, 'e', sig-1, 64), "e")
	if strings.Contains(m, ".") {
		m = strings.TrimRight(strings.TrimRight(m, "0"), ".")
	}
	exp, _ := strconv.Atoi(e)
	return m + "e" + strconv.Itoa(exp)
}

// groupDigits writes n with thousands separators: 1234567 -> "1,234,567".
func groupDigits(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// formatDuration formats seconds for a reader: "850 ms", "4.2 s", "12 min 05 s", "3 h 07 min".
func formatDuration(s float64) string {
	switch {
	case !isFinite(s) || s < 0:
		return "—"
	case s < 1:
		return formatSig(s*1e3, 3) + " ms"
	case s < 60:
		return strconv.FormatFloat(s, 'f', 1, 64) + " s"
	case s < 3600:
		t := int(math.Round(s))
		return fmt.Sprintf("%d min %02d s", t/60, t%60)
	}
	t := int(math.Round(s / 60))
	return fmt.Sprintf("%d h %02d min", t/60, t%60)
}

// formatTimestamp turns the report's RFC 3339 time into "2006-01-02 15:04:05 UTC"; anything else is
// shown as given.
func formatTimestamp(s string) string {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.UTC().Format("2006-01-02 15:04:05 MST")
}

// The charts.

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

var reportHTMLTemplate = template.Must(template.New("report").Parse(reportHTMLSource))

const reportHTMLSource = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ferry {{.Version}}">
<title>ferry report · {{.Host}} · rank {{.Rank}}</title>
<style>
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #111827;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #111827; color: #f9fafb; padding: 20px 32px 14px; }
header h1 { margin: 0 0 12px; font-size: 20px; font-weight: 600; letter-spacing: .01em; }
header h1 .host { color: #93c5fd; font-weight: 500; margin-left: 6px; }
dl.meta { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0; }
dl.meta div { min-width: 70px; }
dl.meta dt { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: #9ca3af; }
dl.meta dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
nav { margin-top: 14px; display: flex; gap: 18px; font-size: 13px; }
nav a { color: #d1d5db; text-decoration: none; border-bottom: 1px dotted #6b7280; }
main { padding: 8px 32px 32px; max-width: 1480px; }
section { margin-top: 22px; }
h2 { font-size: 17px; font-weight: 600; margin: 0 0 10px; padding-bottom: 6px; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 15px; font-weight: 600; margin: 16px 0 8px; }
p.empty, p.note, p.legend { color: #6b7280; margin: 6px 0; }
p.note { font-size: 13px; }
p.legend { font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(430px, 1fr)); gap: 14px; }
figure.chart { margin: 0; background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 12px 4px; }
figcaption { display: flex; flex-wrap: wrap; align-items: baseline; column-gap: 8px; margin-bottom: 2px; }
figcaption .title { font-weight: 600; overflow-wrap: anywhere; }
figcaption .unit { color: #6b7280; font-size: 12px; }
figcaption .stats { margin-left: auto; color: #4b5563; font-size: 12px; white-space: nowrap; font-variant-numeric: tabular-nums; }
svg.plot { display: block; width: 100%; height: auto; }
table.summary { border-collapse: collapse; margin-top: 12px; background: #fff; border: 1px solid #e5e7eb;
  font-size: 12.5px; font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #f0f1f3; white-space: nowrap; }
table.summary th { background: #f3f4f6; font-weight: 600; color: #374151; }
table.summary th:first-child, table.summary td.name { text-align: left; }
table.summary td.name { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
table.summary td.unit { text-align: left; color: #6b7280; }
table.summary tr:last-child td { border-bottom: none; }
.scroll { overflow-x: auto; }
footer { color: #9ca3af; font-size: 12px; padding: 0 32px 24px; }
</style>
</head>
<body>
<header>
<h1>ferry report <span class="host">{{.Host}}</span></h1>
<dl class="meta">
<div><dt>Host</dt><dd>{{.Host}}</dd></div>
<div><dt>PID</dt><dd>{{.PID}}</dd></div>
<div><dt>Rank</dt><dd>{{.Rank}}</dd></div>
<div><dt>Local rank</dt><dd>{{.LocalRank}}</dd></div>
<div><dt>Node</dt><dd>{{.Node}}</dd></div>
<div><dt>Started</dt><dd>{{.Started}}</dd></div>
<div><dt>Duration</dt><dd>{{.Duration}}</dd></div>
<div><dt>Report created</dt><dd>{{.Created}}</dd></div>
<div><dt>Clock</dt><dd>{{.Clock}}</dd></div>
<div><dt>ferry</dt><dd>{{.Version}}</dd></div>
<div><dt>Schema</dt><dd>{{.Schema}}</dd></div>
</dl>
<nav>{{range .Sections}}<a href="#{{.ID}}">{{.Title}}</a>{{end}}</nav>
</header>
<main>
<p class="legend">Each chart shows a metric over the time since the monitor started: the line is the mean of the values in each interval, the band their minimum to maximum.</p>
{{range .Sections}}<section id="{{.ID}}">
<h2>{{.Title}}</h2>
{{if .Empty}}<p class="empty">{{.Empty}}</p>
{{end}}{{range .Groups}}<div class="group">
{{if .Title}}<h3>{{.Title}}</h3>
{{end}}{{range .Notes}}<p class="note">{{.}}</p>
{{end}}{{if .Charts}}<div class="charts">
{{range .Charts}}<figure class="chart" data-metric="{{.Metric}}">
<figcaption><span class="title">{{.Title}}</span>{{if .Unit}}<span class="unit">{{.Unit}}</span>{{end}}<span class="stats">{{.Stats}}</span></figcaption>
{{.SVG}}
</figure>
{{end}}</div>
{{end}}{{if .Rows}}<div class="scroll"><table class="summary">
<thead><tr><th>metric</th><th>unit</th><th>count</th><th>mean</th><th>std</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>last</th></tr></thead>
<tbody>
{{range .Rows}}<tr><td class="name">{{.Name}}</td><td class="unit">{{.Unit}}</td><td>{{.Count}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</tbody>
</table></div>
{{end}}</div>
{{end}}</section>
{{end}}</main>
<footer>ferry {{.Version}} · {{.Schema}} · percentiles from a quantile sketch, within its relative accuracy</footer>
</body>
</html>
`
