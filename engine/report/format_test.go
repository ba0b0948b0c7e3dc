package report

import (
	"math"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// requireWellFormed checks that every tag the page opens is closed in order, that tag names are plain,
// that attribute quotes pair up, and that no text holds a bare "<".
func requireWellFormed(t *testing.T, doc string) {
	t.Helper()
	void := map[string]bool{"meta": true, "br": true, "hr": true, "img": true, "input": true, "link": true,
		"col": true, "wbr": true, "source": true, "area": true, "base": true, "embed": true, "track": true}
	nameRE := regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9]*$`)
	var stack []string
	for i := 0; ; {
		j := strings.IndexByte(doc[i:], '<')
		if j < 0 {
			break
		}
		i += j
		if strings.HasPrefix(doc[i:], "<!--") {
			end := strings.Index(doc[i:], "-->")
			require.GreaterOrEqual(t, end, 0, "unclosed comment at %d", i)
			i += end + 3
			continue
		}
		end := strings.IndexByte(doc[i:], '>')
		require.GreaterOrEqual(t, end, 0, "unclosed tag at %d", i)
		tag := doc[i+1 : i+end]
		i += end + 1
		if strings.HasPrefix(tag, "!") {
			require.Equal(t, "!DOCTYPE html", tag)
			continue
		}
		require.Zero(t, strings.Count(tag, `"`)%2, "unpaired quote in <%s>", tag)
		if name, ok := strings.CutPrefix(tag, "/"); ok {
			require.NotEmpty(t, stack, "</%s> closes nothing", name)
			require.Equal(t, stack[len(stack)-1], name, "</%s> closes <%s>", name, stack[len(stack)-1])
			stack = stack[:len(stack)-1]
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(tag, "/"), " ")
		require.Regexp(t, nameRE, name, "bad tag <%s>", tag)
		if void[name] || strings.HasSuffix(tag, "/") {
			continue
		}
		stack = append(stack, name)
		if name == "style" { // raw text up to its end tag
			k := strings.Index(doc[i:], "</style>")
			require.GreaterOrEqual(t, k, 0)
			i += k
		}
	}
	require.Empty(t, stack, "unclosed tags")
}

func TestReportHTMLFormatting(t *testing.T) {
	for _, c := range []struct {
		u    unitKind
		v    float64
		want string
	}{
		{unitPercent, 45.2667, "45.3 %"},
		{unitPercent, 100, "100 %"},
		{unitBytes, 0, "0 B"},
		{unitBytes, 1536, "1.5 KiB"},
		{unitBytes, 52.5 * (1 << 30), "52.5 GiB"},
		{unitByteRate, 53.5e9, "53.5 GB/s"},
		{unitRate, 9800, "9.8 k/s"},
		{unitWatts, 412.34, "412 W"},
		{unitCelsius, 64, "64 °C"},
		{unitMHz, 1980, "1980 MHz"},
		{unitSeconds, 0.0123, "12.3 ms"},
		{unitNone, 2.34567, "2.346"},
		{unitNone, 0.0123, "0.0123"},
		{unitNone, 3e-4, "3e-4"},
		{unitNone, 1.3514e-4, "1.351e-4"},
		{unitNone, 3e-5, "3e-5"},
		{unitNone, 1.25e6, "1.25M"},
		{unitNone, -0.5, "-0.5"},
		{unitNone, math.NaN(), "—"},
		{unitNone, math.Inf(1), "—"},
	} {
		require.Equal(t, c.want, formatValue(c.u, c.v), "%v %g", c.u, c.v)
	}
	for _, c := range []struct {
		s    float64
		want string
	}{{0.0123, "12.3 ms"}, {4.25, "4.2 s"}, {605, "10 min 05 s"}, {3*3600 + 7*60 + 10, "3 h 07 min"}, {math.NaN(), "—"}} {
		require.Equal(t, c.want, formatDuration(c.s))
	}
	for _, c := range []struct {
		name string
		u    unitKind
	}{{"utilization_percent", unitPercent}, {"memory_used_bytes", unitBytes}, {"h2d_bytes_per_second", unitByteRate},
		{"samples_per_second", unitRate}, {"power_watts", unitWatts}, {"loss", unitNone}} {
		require.Equal(t, c.u, unitOf(c.name), c.name)
	}
	require.Equal(t, "1,234,567", groupDigits(1234567))
	require.Equal(t, "999", groupDigits(999))
	require.Equal(t, "2026-11-27 14:03:12 UTC", formatTimestamp("2026-11-27T14:03:12.5Z"))

	for _, c := range []struct {
		lo, hi     float64
		ticks      []float64
		decimals   int
		tlo, thi   float64
		n          int
		wantFormat string
	}{
		{0, 100, []float64{0, 20, 40, 60, 80, 100}, 0, 0, 100, 5, "20"},
		{0.41, 3.1, []float64{0, 1, 2, 3, 4}, 0, 0, 4, 5, "1"},
		{0, 3, []float64{0, 1, 2, 3}, 0, 0, 3, 5, "1"},
		{0.1, 2.4, []float64{0, 0.5, 1, 1.5, 2, 2.5}, 1, 0, 2.5, 5, "0.5"},
		{0, 12.3, []float64{0, 2.5, 5, 7.5, 10, 12.5}, 1, 0, 12.5, 5, "2.5"},
		{-1, 1, []float64{-1, -0.5, 0, 0.5, 1}, 1, -1, 1, 5, "-0.5"},
	} {
		ticks, tlo, thi, dec := niceTicks(c.lo, c.hi, c.n)
		require.InDeltaSlice(t, c.ticks, ticks, 1e-12, "%g..%g", c.lo, c.hi)
		require.Equal(t, c.decimals, dec)
		require.Equal(t, c.tlo, tlo)
		require.Equal(t, c.thi, thi)
		require.Equal(t, c.wantFormat, tickLabel(ticks[1], dec))
	}
}
