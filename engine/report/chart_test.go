package report

import (
	"math"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReportHTMLChartShapes(t *testing.T) {
	series := func(n int, at func(i int) float64) *MetricReport {
		mr := &MetricReport{Count: uint64(n), Mean: 1, Min: 0, Max: 2, Last: 1}
		for i := 0; i < n; i++ {
			v := math.Sin(float64(i) / 50)
			mr.Series = append(mr.Series, [5]Float{Float(at(i)), Float(v), Float(v - 0.1), Float(v + 0.1), 3})
		}
		return mr
	}
	for _, c := range []struct {
		name   string
		mr     *MetricReport
		paths  int // a band and a line per run of points
		maxPts int // at most this many points on a line
	}{
		{"dense series are thinned to a point a pixel", series(20000, func(i int) float64 { return float64(i) / 100 }), 2, plotW + 1},
		{"a pause in logging leaves a gap", series(200, func(i int) float64 {
			if i < 100 {
				return float64(i)
			}
			return float64(i) + 1000
		}), 4, 200},
		{"negative and non-finite values", &MetricReport{Count: 3, Series: [][5]Float{{0, -5, -6, -4, 1},
			{1, Float(math.NaN()), 0, 0, 1}, {2, -1, -2, 0, 1}, {3, 4, 3, 5, 1}}}, 2, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			svg, _, ok := svgChart(chartSpec{metric: "x", title: "x", mr: c.mr, color: colorTraining})
			require.True(t, ok)
			s := string(svg)
			requireWellFormed(t, s)
			require.Equal(t, c.paths, strings.Count(s, `<path d="M`))
			for _, d := range regexp.MustCompile(`<path d="([^"]*)" fill="none"`).FindAllStringSubmatch(s, -1) {
				require.LessOrEqual(t, strings.Count(d[1], ","), c.maxPts)
			}
			require.NotContains(t, s, "NaN")
			require.NotContains(t, s, "Inf")
		})
	}
	_, _, ok := svgChart(chartSpec{metric: "x", mr: &MetricReport{Count: 1, Series: [][5]Float{{0, Float(math.NaN()), 0, 0, 1}}}})
	require.False(t, ok, "no finite point, no chart")
}
