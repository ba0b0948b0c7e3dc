package report_test

import (
	"bytes"
	"context"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/report"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/monitor"

	"github.com/stretchr/testify/require"
)

// htmlTestHost is the report's host name in these tests: it carries markup that must come out escaped.
const htmlTestHost = `node-7 <script>alert("x")</script> & <b>co</b>`

// newHTMLTestReport builds a report from a real monitor with its samplers off. The training metrics
// and the samplers' metrics are replayed with LogAt over ten minutes, one value a second or two, as a
// run would have logged them; grad_norm goes through Log, stamped now: its values fall into one series
// point.
func newHTMLTestReport(t *testing.T) *report.Report {
	t.Helper()
	m, err := monitor.NewMonitor(monitor.MonitorOptions{GPUInterval: -1, SystemInterval: -1, Rank: 3, LocalRank: 1, Node: "node-7",
		SeriesPoints: 100}) // a few values a series point, so the charts have min-max bands
	require.NoError(t, err)
	defer func() { require.NoError(t, m.Close()) }()
	ids := map[string]monitor.MetricID{}
	at := func(name string, s, v float64) {
		id, ok := ids[name]
		if !ok {
			id, err = m.Metric(name)
			require.NoError(t, err)
			ids[name] = id
		}
		require.NoError(t, m.LogAt(id, m.Origin()+uint64(s*1e9), v))
	}
	const run = 600.0
	for i := 0; i < 300; i++ {
		s := float64(i) * 2
		at("loss", s, 0.4+2.6*math.Exp(-s/150)+0.08*math.Sin(float64(i)*1.7)+0.05*math.Cos(float64(i)*0.37))
		lr := 3e-4 * math.Min(1, s/60) * (0.5 + 0.5*math.Cos(math.Pi*s/run))
		at("lr", s, lr)
	}
	at("loss", 301, math.NaN())
	for s := 0.0; s <= run; s++ {
		wave := math.Sin(s / 23)
		at("gpu0/utilization_percent", s, math.Max(0, math.Min(100, 88+9*wave-30*float64(int(s)%97/90))))
		at("gpu0/power_watts", s, 410+120*wave)
		at("gpu1/utilization_percent", s, math.Max(0, 71+20*math.Cos(s/17)))
		at("gpu1/memory_used_bytes", s, (52+6*math.Sin(s/40))*(1<<30))
		at("gpu1/memory_total_bytes", s, 80*(1<<30))
		at("gpu1/temperature_celsius", s, 55+10*(1-math.Exp(-s/120)))
		at("system/cpu_percent", s, 35+15*math.Sin(s/31)+5*math.Cos(s/3))
		at("system/memory_percent", s, 41+4*s/run)
		at("disk/data/used_percent", s, 63.2)
		at("pipeline/train/samples_per_second", s, 9800+900*math.Sin(s/19))
		at("pipeline/train/h2d_bytes_per_second", s, (9800+900*math.Sin(s/19))*150528)
		at("pipeline/train/data_stall_percent", s, math.Max(0, 2+6*math.Sin(s/45)))
	}
	g, err := m.Metric("grad_norm")
	require.NoError(t, err)
	// 300 values within 300 ns of one another, so that they make one series point whatever the machine's
	// speed (logged with the wall clock they spread over two points on a loaded machine).
	at0 := m.Origin() + 20e6 // 20 ms into the run
	for i := 0; i < 300; i++ {
		require.NoError(t, m.LogAt(g, at0+uint64(i), 1+0.5*math.Sin(float64(i)/9)))
	}
	r := m.Report()
	r.Host = htmlTestHost
	r.DurationS = run // the values were replayed over ten minutes that did not pass
	return r
}

// The charts the test report must have, by metric name.
var htmlTestCharts = []string{
	"loss", "lr", "grad_norm",
	"pipeline/train/samples_per_second", "pipeline/train/h2d_bytes_per_second", "pipeline/train/data_stall_percent",
	"gpu0/utilization_percent", "gpu0/power_watts",
	"gpu1/utilization_percent", "gpu1/memory_used_bytes", "gpu1/temperature_celsius",
	"system/cpu_percent", "system/memory_percent",
}

var figureRE = regexp.MustCompile(`<figure class="chart" data-metric="([^"]*)">`)

// chartsOf maps each chart's metric to its figure's markup.
func chartsOf(t *testing.T, doc string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, loc := range figureRE.FindAllStringSubmatchIndex(doc, -1) {
		name := doc[loc[2]:loc[3]]
		end := strings.Index(doc[loc[1]:], "</figure>")
		require.GreaterOrEqual(t, end, 0, "figure %s is not closed", name)
		require.NotContains(t, out, name, "two charts for %s", name)
		out[name] = doc[loc[1] : loc[1]+end]
	}
	return out
}

func TestReportHTML(t *testing.T) {
	r := newHTMLTestReport(t)
	b, err := r.HTML()
	require.NoError(t, err)
	doc := string(b)
	report.RequireWellFormed(t, doc)
	require.True(t, strings.HasPrefix(doc, "<!DOCTYPE html>"))

	t.Run("header", func(t *testing.T) {
		for _, want := range []string{"PID</dt><dd>" + strconv.Itoa(r.PID) + "<", "Rank</dt><dd>3<", "Local rank</dt><dd>1<",
			"Node</dt><dd>node-7<", "Duration</dt><dd>10 min 00 s<", engine.Version, report.ReportSchema, " UTC<"} {
			require.Contains(t, doc, want)
		}
	})
	t.Run("escapes the host", func(t *testing.T) {
		require.NotContains(t, doc, "<script")
		require.NotContains(t, doc, "<b>co")
		require.Contains(t, doc, "node-7 &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;")
	})
	t.Run("self-contained", func(t *testing.T) {
		rest := strings.ReplaceAll(doc, `xmlns="http://www.w3.org/2000/svg"`, "")
		for _, bad := range []string{"http://", "https://", "<script", "<link", "<img", "@import", "url(", "src="} {
			require.NotContains(t, rest, bad)
		}
	})
	t.Run("one chart per metric", func(t *testing.T) {
		charts := chartsOf(t, doc)
		require.ElementsMatch(t, htmlTestCharts, keys(charts))
		for name, fig := range charts {
			require.Equal(t, 1, strings.Count(fig, "<svg"), name)
			require.Contains(t, fig, "</svg>", name)
			if name == "grad_norm" { // one series point: a dot on its min-max bar
				require.Equal(t, 1, strings.Count(fig, "<circle"), name)
				require.NotContains(t, fig, "<path", name)
				continue
			}
			require.Equal(t, 2, strings.Count(fig, `<path d="M`), "%s: a band and a line", name)
		}
		require.Equal(t, len(htmlTestCharts), strings.Count(doc, "<svg"))
		require.Contains(t, charts["gpu1/memory_used_bytes"], `<span class="unit">GiB</span>`)
		require.Contains(t, charts["gpu1/memory_used_bytes"], ">total 80 GiB</text>")
		require.Contains(t, charts["gpu0/utilization_percent"], ">100</text>")
		require.Contains(t, charts["gpu0/power_watts"], `<span class="unit">W</span>`)
		require.Contains(t, charts["pipeline/train/h2d_bytes_per_second"], `<span class="unit">GB/s</span>`)
		require.Contains(t, charts["pipeline/train/samples_per_second"], `<span class="unit">k/s</span>`)
		require.Contains(t, charts["lr"], `<span class="unit">×10⁻⁴</span>`)
		require.Contains(t, charts["loss"], " min</text>", "a ten-minute run's axis is in minutes")
		require.Contains(t, charts["grad_norm"], " ms</text>", "values logged within milliseconds")
	})
	t.Run("absent GPU fields", func(t *testing.T) {
		gpu0 := between(t, doc, "<h3>GPU 0</h3>", "<h3>GPU 1</h3>")
		note := between(t, gpu0, "Not reported by this device: ", ".</p>")
		for _, absent := range []string{"memory used", "temperature", "SM clock", "PCIe RX"} {
			require.Contains(t, note, absent)
		}
		absent := strings.Split(note, ", ")
		require.NotContains(t, absent, "power")
		require.NotContains(t, absent, "utilization")
		require.NotContains(t, doc, `data-metric="gpu0/memory_used_bytes"`)
		require.NotContains(t, gpu0, ">memory_used_bytes<", "an absent field gets no table row")
		require.Contains(t, gpu0, ">power_watts<")
		gpu1 := doc[strings.Index(doc, "<h3>GPU 1</h3>"):]
		require.NotContains(t, between(t, gpu1, "Not reported by this device: ", ".</p>"), "memory used")
	})
	t.Run("summary tables", func(t *testing.T) {
		row := between(t, doc, `<td class="name">loss</td>`, "</tr>")
		require.Contains(t, row, "<td>300 (&#43;1 non-finite)</td>")
		require.Equal(t, 11, strings.Count(row, "<td"), "unit, count and nine statistics")
		row = between(t, doc, `<td class="name">lr</td>`, "</tr>")
		require.Contains(t, row, `<td class="unit"></td>`, "a unitless metric's values are written out")
		require.Regexp(t, `^<td class="unit"></td><td>300</td><td>1\.\d+e-4</td>`, row)
		row = between(t, doc, `<td class="name">memory_total_bytes</td>`, "</tr>")
		require.Contains(t, row, `<td class="unit">GiB</td>`)
		require.Contains(t, row, "<td>80</td>")
		require.Contains(t, doc, `<td class="name">disk/data/used_percent</td>`)
		require.Contains(t, doc, `<td class="name">h2d_bytes_per_second</td>`)
	})
}

func TestReportHTMLEmpty(t *testing.T) {
	m, err := monitor.NewMonitor(monitor.MonitorOptions{GPUInterval: -1, SystemInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, m.Close()) }()
	b, err := m.Report().HTML()
	require.NoError(t, err)
	doc := string(b)
	report.RequireWellFormed(t, doc)
	require.NotContains(t, doc, "<svg")
	require.NotContains(t, doc, "<table")
	for _, want := range []string{"The program logged no metrics.", "No iterator was attached", "No GPU metrics",
		"No host metrics"} {
		require.Contains(t, doc, want)
	}
}

func TestReportHTMLErrors(t *testing.T) {
	_, err := (*report.Report)(nil).HTML()
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
	// A metric with only non-finite values gets a note, not a chart.
	r := &report.Report{TrainingMetrics: map[string]*report.MetricReport{"loss": {NonFinite: 4, Mean: report.Float(math.NaN()),
		Min: report.Float(math.NaN()), Max: report.Float(math.NaN()), Last: report.Float(math.NaN())}}}
	b, err := r.HTML()
	require.NoError(t, err)
	report.RequireWellFormed(t, string(b))
	require.Contains(t, string(b), "loss: only non-finite values (4 NaN or ±Inf).")
	require.NotContains(t, string(b), "<svg")
	require.Contains(t, string(b), "<td>0 (&#43;4 non-finite)</td><td>—</td>")
}

func TestReportWriteHTML(t *testing.T) {
	r := newHTMLTestReport(t)
	want, err := r.HTML()
	require.NoError(t, err)
	dir := t.TempDir()
	p := filepath.Join(dir, "report.html")
	require.NoError(t, r.WriteHTML(p))
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, want, got)
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	require.ErrorIs(t, r.WriteHTML(filepath.Join(dir, "missing", "report.html")), engine.ErrInvalidArgument)
	require.ErrorIs(t, r.WriteHTML(""), engine.ErrInvalidArgument)
}

// findBrowser returns a headless-capable Chromium on PATH, or "".
func findBrowser() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestReportHTMLScreenshot renders the page in a headless browser and checks that it draws something
// across the whole window. FERRY_REQUIRE_BROWSER=1 fails it where no browser is found;
// FERRY_SCREENSHOT_OUT=<path.png> keeps the screenshot for a person to look at.
func TestReportHTMLScreenshot(t *testing.T) {
	browser := findBrowser()
	if browser == "" {
		if os.Getenv("FERRY_REQUIRE_BROWSER") == "1" {
			t.Fatal("FERRY_REQUIRE_BROWSER=1 but none of chromium, chromium-browser, google-chrome is on PATH")
		}
		t.Skip("no headless browser on PATH (set FERRY_REQUIRE_BROWSER=1 to fail instead)")
	}
	dir := t.TempDir()
	page, shot := filepath.Join(dir, "report.html"), filepath.Join(dir, "report.png")
	require.NoError(t, newHTMLTestReport(t).WriteHTML(page))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, "--headless=new", "--no-sandbox", "--disable-gpu",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run", "--user-data-dir="+filepath.Join(dir, "profile"),
		"--screenshot="+shot, "--window-size=1400,2400", "file://"+page)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s failed:\n%s", browser, out)

	data, err := os.ReadFile(shot)
	require.NoError(t, err, "no screenshot:\n%s", out)
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	bnd := img.Bounds()
	require.Equal(t, 1400, bnd.Dx())
	require.Equal(t, 2400, bnd.Dy())
	// Not blank: ink (a pixel darker than the page's near-white background) in most of a 4×8 grid.
	const cols, rows = 4, 8
	var inked int
	for gy := 0; gy < rows; gy++ {
		for gx := 0; gx < cols; gx++ {
			var n, total int
			for y := bnd.Min.Y + gy*bnd.Dy()/rows; y < bnd.Min.Y+(gy+1)*bnd.Dy()/rows; y += 2 {
				for x := bnd.Min.X + gx*bnd.Dx()/cols; x < bnd.Min.X+(gx+1)*bnd.Dx()/cols; x += 2 {
					r, g, b, _ := img.At(x, y).RGBA()
					if r>>8 < 0xe8 || g>>8 < 0xe8 || b>>8 < 0xe8 {
						n++
					}
					total++
				}
			}
			if n*200 > total { // more than 0.5 % of the cell
				inked++
			}
		}
	}
	require.GreaterOrEqual(t, inked, cols*rows*3/4, "the screenshot is mostly blank")
	if p := os.Getenv("FERRY_SCREENSHOT_OUT"); p != "" {
		require.NoError(t, os.WriteFile(p, data, 0o644))
		t.Logf("screenshot saved to %s", p)
	}
}

func between(t *testing.T, s, from, to string) string {
	t.Helper()
	i := strings.Index(s, from)
	require.GreaterOrEqual(t, i, 0, "%q not found", from)
	s = s[i+len(from):]
	j := strings.Index(s, to)
	require.GreaterOrEqual(t, j, 0, "%q not found after %q", to, from)
	return s[:j]
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
