package report

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The helpers both pages (and the merged report's text) share: the GPU fields and their order, the
// order of devices and of keys, and units and the formatting of values.

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

// gpuOrder lists a device's metrics for its table: the known GPU fields in gpuFields' order, then any
// other metric by name. absentNote names the known fields the device did not report ("" when none).
func gpuOrder(ms map[string]*MetricReport) (order []string, absentNote string) {
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
	if len(absent) > 0 {
		absentNote = "Not reported by this device: " + strings.Join(absent, ", ") + "."
	}
	return order, absentNote
}

// sortedDevices lists the device ordinals of a GPU group: numerically where both are numbers, by name
// otherwise.
func sortedDevices(gpus map[string]map[string]*MetricReport) []string {
	devs := sortedKeys(gpus)
	sort.SliceStable(devs, func(i, j int) bool {
		a, ea := strconv.Atoi(devs[i])
		b, eb := strconv.Atoi(devs[j])
		if ea == nil && eb == nil {
			return a < b
		}
		return devs[i] < devs[j]
	})
	return devs
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

// present reports whether mr holds at least one finite value.
func present(mr *MetricReport) bool { return mr != nil && mr.Count > 0 }

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

// unitSuffixes map a name's suffix to its unit; the first that matches wins.
var unitSuffixes = []struct {
	suffix string
	unit   unitKind
}{
	{"_percent", unitPercent}, {"_bytes_per_second", unitByteRate}, {"_bytes", unitBytes},
	{"_per_second", unitRate}, {"_watts", unitWatts}, {"_celsius", unitCelsius}, {"_mhz", unitMHz},
	{"_seconds", unitSeconds},
}

func unitOf(name string) unitKind {
	for _, s := range unitSuffixes {
		if strings.HasSuffix(name, s.suffix) {
			return s.unit
		}
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
	// fixedLabels are the units shown without a prefix.
	fixedLabels = map[unitKind]string{unitPercent: "%", unitWatts: "W", unitCelsius: "°C", unitMHz: "MHz"}
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
	if l, ok := fixedLabels[u]; ok {
		return scale{1, l}
	}
	switch u {
	case unitBytes:
		return prefixed(1024, iecPrefixes, "")
	case unitByteRate:
		return prefixed(1000, []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}, "/s")
	case unitRate:
		return prefixed(1000, siPrefixes, "/s")
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

// mergedValue formats one value with its unit for the merged page, to four significant digits (a
// job's throughput is read to more than three): "45.3 %", "3.702 k/s", "53.51 GB/s".
func mergedValue(u unitKind, v float64) string {
	switch {
	case !isFinite(v):
		return "—"
	case u == unitNone:
		return formatValue(u, v)
	case u == unitPercent:
		return formatSig(v, 3) + " %"
	}
	sc := pickScale(u, math.Abs(v))
	if strings.HasPrefix(sc.label, "/") {
		return formatSig(v/sc.div, 4) + sc.label
	}
	return formatSig(v/sc.div, 4) + " " + sc.label
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

// Logged is how many values the metric received: the finite ones its statistics cover and the
// non-finite ones counted apart (a step that logged a NaN loss was still a step).
func (mr *MetricReport) Logged() uint64 { return mr.Count + mr.NonFinite }

// countText writes a count of finite values and, when there are any, the non-finite ones beside it:
// "50 (+50 non-finite)". Every table of the reports shows counts this way.
func countText(finite, nonfinite uint64) string {
	s := groupDigits(finite)
	if nonfinite > 0 {
		s += " (+" + groupDigits(nonfinite) + " non-finite)"
	}
	return s
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
