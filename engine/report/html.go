package report

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"math"

	"github.com/ferry-ml/ferry/engine"
)

// The HTML renderer: one page template (templates/page.html.tmpl, with its stylesheet
// templates/style.css inlined) for both reports, and the model it renders. Each report builds an
// htmlPage (page_run.go, page_merged.go); strings that come from a report (host, node, metric and
// iterator names) stay plain strings, escaped by html/template; only the SVG, built from numbers
// alone, is template.HTML.

var (
	//go:embed templates/*.html.tmpl
	templateFS embed.FS
	//go:embed templates/style.css
	stylesheet string

	pageTemplate = template.Must(template.New("").Funcs(template.FuncMap{
		"stylesheet": func() template.CSS { return template.CSS(stylesheet) },
	}).ParseFS(templateFS, "templates/*.html.tmpl"))
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
	return renderPage(r.htmlPage(), "HTML report")
}

// WriteHTML writes the report as HTML to path (see HTML and writeFileSafely).
func (r *Report) WriteHTML(path string) error { return writeRendered(path, r.HTML) }

// HTML renders the merged report as one self-contained HTML page (nothing loaded from elsewhere): the
// straggler table per pipeline, the aggregate table, and each rank's summary tables. A GPU field a
// device did not report is named as such, never shown as zero.
func (m *MergedReport) HTML() ([]byte, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: merged report is nil", engine.ErrInvalidArgument)
	}
	return renderPage(m.htmlPage(), "merged HTML report")
}

// WriteHTML writes the merged report as HTML to path (see HTML and writeFileSafely).
func (m *MergedReport) WriteHTML(path string) error { return writeRendered(path, m.HTML) }

// renderPage renders p; what names the page in an error.
func renderPage(p htmlPage, what string) ([]byte, error) {
	var b bytes.Buffer
	if err := pageTemplate.ExecuteTemplate(&b, "page", p); err != nil {
		return nil, fmt.Errorf("%w: rendering the %s: %v", engine.ErrFormat, what, err)
	}
	return b.Bytes(), nil
}

// htmlPage is a whole page, already formatted: a header (the title, a heading with the host where the
// report is one host's, the meta block), an optional legend, the sections (which the navigation
// lists), and a footer note.
type htmlPage struct {
	Title, Heading, Host        string
	Meta                        []htmlMeta
	Legend                      string
	Sections                    []htmlSection
	Version, Schema, FooterNote string
}

type htmlMeta struct{ Label, Value string }

// htmlSection is a section of the page: notes, a line in place of its groups where it has none, and
// groups.
type htmlSection struct {
	ID, Title, Empty string
	Notes            []string
	Groups           []htmlGroup
}

// htmlGroup is a titled block (under an h3, or an h4 where Sub): a meta line, notes, a line where it has
// nothing else to show, charts, a summary table and groups of its own.
type htmlGroup struct {
	Title, Meta, Empty string
	Sub                bool
	Notes              []string
	Charts             []htmlChart
	Table              *htmlTable
	Groups             []htmlGroup
}

type htmlChart struct {
	Metric, Title, Unit, Stats string
	SVG                        template.HTML
}

// htmlTable is a summary table: its header and rows, each cell with an optional class.
type htmlTable struct {
	Head []htmlCell
	Rows []htmlRow
}

type htmlRow struct {
	Class string
	Cells []htmlCell
}

type htmlCell struct{ Class, Text string }

// cells makes a row of plain cells.
func cells(texts ...string) []htmlCell {
	out := make([]htmlCell, len(texts))
	for i, t := range texts {
		out[i].Text = t
	}
	return out
}

// metricHead is the header of a metric summary table (see metricRow).
var metricHead = cells("metric", "unit", "count", "mean", "std", "min", "p50", "p90", "p99", "p99.9", "max", "last")

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
	var rows []htmlRow
	for _, n := range order {
		if mr := ms[n]; mr != nil {
			rows = append(rows, metricRow(n, unitOf(n), mr))
		}
	}
	if len(rows) > 0 {
		g.Table = &htmlTable{Head: metricHead, Rows: rows}
	}
	return g
}

// gpuGroup is the group of one device's metrics: specs drawn, the table in gpuOrder's order, and a note
// naming the fields the device did not report.
func gpuGroup(title string, specs []chartSpec, ms map[string]*MetricReport) htmlGroup {
	order, absent := gpuOrder(ms)
	g := buildGroup(title, specs, ms, order)
	if absent != "" {
		g.Notes = append([]string{absent}, g.Notes...)
	}
	return g
}

// metricRow is a metric's row of a summary table: name, unit, count and nine statistics (mean, std,
// min, p50, p90, p99, p99.9, max, last), scaled to one unit for the row.
func metricRow(name string, u unitKind, mr *MetricReport) htmlRow {
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
	row := htmlRow{Cells: []htmlCell{{"name", name}, {"unit", sc.label}, {"", countText(mr.Count, mr.NonFinite)}}}
	for _, v := range vals {
		f := float64(v)
		switch {
		case !isFinite(f) || mr.Count == 0:
			row.Cells = append(row.Cells, htmlCell{Text: "—"})
		case u == unitNone:
			row.Cells = append(row.Cells, htmlCell{Text: formatValue(u, f)})
		default:
			row.Cells = append(row.Cells, htmlCell{Text: formatSig(f/sc.div, 4)})
		}
	}
	return row
}
