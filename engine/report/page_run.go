package report

import "strconv"

// chartDef is a chart of a known metric: the metric's name in its group, and the chart's title.
type chartDef struct{ name, title string }

// gpuCharts are the GPU fields that get a chart, with the chart's title.
var gpuCharts = []chartDef{
	{"utilization_percent", "GPU utilization"},
	{"memory_used_bytes", "GPU memory used"},
	{"power_watts", "Power"},
	{"temperature_celsius", "Temperature"},
	{"sm_clock_mhz", "SM clock"},
	{"pcie_rx_bytes_per_second", "PCIe RX (to the GPU)"},
	{"pcie_tx_bytes_per_second", "PCIe TX (from the GPU)"},
}

// pipelineCharts and systemCharts are the pipeline and host metrics that get a chart.
var pipelineCharts = []chartDef{
	{"samples_per_second", "Samples per second"},
	{"batches_per_second", "Batches per second"},
	{"h2d_bytes_per_second", "Host-to-device copy"},
	{"data_stall_percent", "Data stall"},
	{"queue_depth", "Queue depth (batches ready)"},
}

var systemCharts = []chartDef{
	{"cpu_percent", "Host CPU"},
	{"memory_percent", "Host memory"},
	{"process_cpu_percent", "Process CPU"},
	{"process_rss_bytes", "Process resident memory"},
}

func (r *Report) htmlPage() htmlPage {
	node := r.Node
	if node == "" {
		node = "—"
	}
	return htmlPage{
		Title: "ferry report · " + r.Host + " · rank " + strconv.Itoa(r.Rank), Heading: "ferry report", Host: r.Host,
		Meta: []htmlMeta{{"Host", r.Host}, {"PID", strconv.Itoa(r.PID)}, {"Rank", strconv.Itoa(r.Rank)},
			{"Local rank", strconv.Itoa(r.LocalRank)}, {"Node", node}, {"Started", formatTimestamp(r.Started)},
			{"Duration", formatDuration(r.DurationS)}, {"Report created", formatTimestamp(r.Created)}, {"Clock", r.Clock},
			{"ferry", r.Ferry}, {"Schema", r.Schema}},
		Legend: "Each chart shows a metric over the time since the monitor started: the line is the mean of the " +
			"values in each interval, the band their minimum to maximum.",
		Sections:   r.htmlSections(),
		Version:    r.Ferry,
		Schema:     r.Schema,
		FooterNote: "percentiles from a quantile sketch, within its relative accuracy",
	}
}

// section is a section of the page; empty is its line where it has no groups.
func section(id, title, empty string, groups []htmlGroup) htmlSection {
	s := htmlSection{ID: id, Title: title, Groups: groups}
	if len(groups) == 0 {
		s.Empty = empty
	}
	return s
}

// chartSpecs are the specs of the charts in defs of the metrics ms, named prefix + the metric's name.
func chartSpecs(prefix string, defs []chartDef, ms map[string]*MetricReport, color string) []chartSpec {
	specs := make([]chartSpec, 0, len(defs))
	for _, c := range defs {
		specs = append(specs, chartSpec{metric: prefix + c.name, title: c.title, mr: ms[c.name], color: color})
	}
	return specs
}

// htmlSections are the page's sections: training metrics, the input pipelines, the GPUs and the host.
func (r *Report) htmlSections() []htmlSection {
	var training, pipelines, gpus, host []htmlGroup
	if names := r.MetricNames(); len(names) > 0 {
		defs := make([]chartDef, len(names))
		for i, n := range names {
			defs[i] = chartDef{n, n}
		}
		training = []htmlGroup{buildGroup("", chartSpecs("", defs, r.TrainingMetrics, colorTraining), r.TrainingMetrics, names)}
	}
	for _, it := range sortedKeys(r.PipelineMetrics) {
		ms := r.PipelineMetrics[it]
		var specs []chartSpec
		for i, sp := range chartSpecs("pipeline/"+it+"/", pipelineCharts, ms, colorPipeline) {
			// Samples per second is the throughput; batches per second stands in where it is missing.
			if pipelineCharts[i].name != "batches_per_second" || !present(ms["samples_per_second"]) {
				specs = append(specs, sp)
			}
		}
		pipelines = append(pipelines, buildGroup("Iterator "+strconv.Quote(it), specs, ms, sortedKeys(ms)))
	}
	for _, d := range sortedDevices(r.GPUMetrics) {
		ms := r.GPUMetrics[d]
		specs := chartSpecs("gpu"+d+"/", gpuCharts, ms, colorGPU)
		for i := range specs {
			if gpuCharts[i].name == "memory_used_bytes" && present(ms["memory_total_bytes"]) {
				specs[i].ref, specs[i].refLabel = ms["memory_total_bytes"], "total"
			}
		}
		gpus = append(gpus, gpuGroup("GPU "+d, specs, ms))
	}
	if len(r.SystemMetrics) > 0 {
		host = []htmlGroup{buildGroup("", chartSpecs("system/", systemCharts, r.SystemMetrics, colorSystem),
			r.SystemMetrics, sortedKeys(r.SystemMetrics))}
	}
	return []htmlSection{
		section("training", "Training metrics", "The program logged no metrics.", training),
		section("pipeline", "Input pipeline", "No iterator was attached to the monitor.", pipelines),
		section("gpu", "GPUs", "No GPU metrics: the GPU sampler did not run (no NVIDIA driver, no device, or sampling off).", gpus),
		section("system", "Host", "No host metrics: the system sampler did not run.", host),
	}
}
