package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/monitor"
	"github.com/ferry-ml/ferry/engine/report"
)

// monitorConfig is what `ferry monitor` was asked to do.
type monitorConfig struct {
	interval   time.Duration
	duration   time.Duration // 0: until SIGINT or SIGTERM
	prometheus bool
	promAddr   string
	report     string // .html or .json; "" for none
	json       bool
}

// clearScreen moves the cursor home and clears the screen.
const clearScreen = "\x1b[H\x1b[2J"

func newMonitorCommand() *cobra.Command {
	var cfg monitorConfig
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Watch the GPUs and the host live; optionally serve Prometheus metrics and write a report",
		Long: `monitor redraws a table of every GPU (utilization, memory, power, temperature, SM clock) and of
the host (CPU, memory, load, this process's RSS) every --interval, until --duration has passed or it
is interrupted (Ctrl-C or SIGTERM). A figure a device does not report is shown as "-".

--prometheus serves /metrics while it runs (":9400" and "" bind loopback; give a host, such as
0.0.0.0:9400, to serve other machines). --report writes the run's report at the end: HTML or JSON,
chosen by the extension. --json prints the report as JSON on standard output; the live table then goes
to standard error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.prometheus = cmd.Flags().Changed("prometheus")
			if err := cfg.check(); err != nil {
				return err
			}
			return runMonitor(cmd, cfg)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&cfg.interval, "interval", time.Second, "how often the table is redrawn")
	f.DurationVar(&cfg.duration, "duration", 0, "how long to run (0: until Ctrl-C or SIGTERM)")
	f.StringVar(&cfg.promAddr, "prometheus", "", "serve Prometheus /metrics at `ADDR` while running (\":9400\": loopback port 9400)")
	f.StringVar(&cfg.report, "report", "", "write the report to `PATH` at the end: PATH.html or PATH.json")
	f.BoolVar(&cfg.json, "json", false, "print the final report as JSON on standard output")
	return cmd
}

// check validates the flags before anything starts, so that a typo does not cost a run.
func (c *monitorConfig) check() error {
	if c.interval < monitor.MinSampleInterval || c.interval > engine.MaxSampleInterval {
		return fmt.Errorf("--interval %v must be %v..%v", c.interval, monitor.MinSampleInterval, engine.MaxSampleInterval)
	}
	if c.duration < 0 {
		return fmt.Errorf("--duration %v must not be negative (0 runs until interrupted)", c.duration)
	}
	if c.report != "" {
		switch strings.ToLower(filepath.Ext(c.report)) {
		case ".html", ".htm", ".json":
		default:
			return fmt.Errorf("--report %s: the extension must be .html or .json", c.report)
		}
		dir := filepath.Dir(c.report)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return fmt.Errorf("--report %s: the directory %s does not exist", c.report, dir)
		}
	}
	return nil
}

// sampleInterval is the samplers' cadence: twice per redraw, so that each frame shows a fresh reading.
func (c *monitorConfig) sampleInterval() time.Duration {
	return min(max(c.interval/2, monitor.MinSampleInterval), engine.MaxSampleInterval)
}

// gpuName is a device's index and name, as the table shows it.
type gpuName struct {
	index int
	name  string
}

// monitorDevices lists the GPUs to show, or says why there is none.
func monitorDevices() ([]gpuName, string) {
	devs, err := engine.Devices()
	if err != nil {
		return nil, "no GPU: " + err.Error()
	}
	if len(devs) == 0 {
		why := "no GPU"
		if s, err := engine.System(); err == nil && s.CUDAError != "" {
			why += " (" + s.CUDAError + ")"
		}
		return nil, why
	}
	out := make([]gpuName, len(devs))
	for i, d := range devs {
		out[i] = gpuName{d.Index, d.Name}
	}
	return out, ""
}

func runMonitor(cmd *cobra.Command, cfg monitorConfig) error {
	stdout := cmd.OutOrStdout()
	view := stdout
	if cfg.json {
		view = cmd.ErrOrStderr() // standard output carries only the JSON
	}
	tty := false
	if f, ok := view.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}

	gpus, noGPU := monitorDevices()
	every := cfg.sampleInterval()
	m, err := monitor.NewMonitor(monitor.MonitorOptions{GPUInterval: every, SystemInterval: every})
	if err != nil {
		return err
	}
	defer func() { _ = m.Close() }()
	if err := m.Start(); err != nil {
		return err
	}
	var header []string
	if cfg.prometheus {
		addr, shutdown, err := m.ServePrometheus(cfg.promAddr)
		if err != nil {
			return err
		}
		defer func() { _ = shutdown() }()
		header = append(header, fmt.Sprintf("prometheus: serving http://%s%s", addr, monitor.PrometheusPath))
	}
	for _, h := range header {
		fmt.Fprintln(view, h)
	}

	ctx, stopSignals := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	tick := time.NewTicker(cfg.interval)
	defer tick.Stop()
	frames := 0
	draw := func(r *report.Report, final bool) error {
		var b strings.Builder
		if tty {
			b.WriteString(clearScreen)
			for _, h := range header {
				b.WriteString(h + "\n")
			}
		} else if frames > 0 {
			b.WriteString("\n")
		}
		if err := writeMonitorFrame(&b, r, gpus, noGPU, cfg, final); err != nil {
			return err
		}
		frames++
		_, err := io.WriteString(view, b.String())
		return err
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			if err := draw(m.Report(), false); err != nil {
				return err
			}
		}
	}
	stopSignals() // a second Ctrl-C while the report is written ends the program at once
	interrupted := !errors.Is(ctx.Err(), context.DeadlineExceeded)

	if err := m.Stop(); err != nil {
		return err
	}
	r := m.Report()
	if err := draw(r, true); err != nil {
		return err
	}
	if interrupted {
		fmt.Fprintln(view, "interrupted: stopping")
	}
	if cfg.report != "" {
		if err := writeMonitorReport(r, cfg.report); err != nil {
			return err
		}
		fmt.Fprintf(view, "report written to %s\n", cfg.report)
	}
	if cfg.json {
		b, err := r.JSON()
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(stdout, "%s\n", b); err != nil {
			return err
		}
	}
	return nil
}

// writeMonitorReport writes r as HTML or JSON, chosen by the path's extension.
func writeMonitorReport(r *report.Report, path string) error {
	if strings.EqualFold(filepath.Ext(path), ".json") {
		return r.WriteJSON(path)
	}
	return r.WriteHTML(path)
}

// last is a metric's last value; ok is false when the metric is absent or has no value.
func last(ms map[string]*report.MetricReport, name string) (float64, bool) {
	mr := ms[name]
	if mr == nil || mr.Count == 0 || math.IsNaN(float64(mr.Last)) {
		return 0, false
	}
	return float64(mr.Last), true
}

// figure formats a metric's last value, or "-" when it is absent: never a zero that was not read.
func figure(ms map[string]*report.MetricReport, name string, format func(float64) string) string {
	v, ok := last(ms, name)
	if !ok {
		return "-"
	}
	return format(v)
}

func unit(format string) func(float64) string {
	return func(v float64) string { return fmt.Sprintf(format, v) }
}

func bytesHuman(v float64) string {
	switch {
	case v >= 1<<30:
		return fmt.Sprintf("%.2f GiB", v/(1<<30))
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	default:
		return fmt.Sprintf("%.0f KiB", v/(1<<10))
	}
}

// writeMonitorFrame writes one frame of the live view: a GPU table (or why there is none) and the host.
func writeMonitorFrame(w io.Writer, r *report.Report, gpus []gpuName, noGPU string, cfg monitorConfig, final bool) error {
	title := fmt.Sprintf("ferry monitor  %s  %s  %.1fs", r.Host, time.Now().Format("15:04:05"), r.DurationS)
	if final {
		title += "  (final)"
	} else if cfg.duration == 0 {
		title += "  (Ctrl-C to stop)"
	}
	fmt.Fprintln(w, title)

	// The devices the sampler reported, with the names CUDA gave; a device with no NVML figures still
	// gets a row of "-".
	rows := map[int]string{}
	for _, g := range gpus {
		rows[g.index] = g.name
	}
	for k := range r.GPUMetrics {
		if i, err := strconv.Atoi(k); err == nil {
			if _, ok := rows[i]; !ok {
				rows[i] = "-"
			}
		}
	}
	if len(rows) == 0 {
		fmt.Fprintln(w, noGPU)
	} else {
		idx := make([]int, 0, len(rows))
		for i := range rows {
			idx = append(idx, i)
		}
		sort.Ints(idx)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "GPU\tNAME\tUTIL\tMEMORY USED / TOTAL\tPOWER\tTEMP\tSM CLOCK")
		for _, i := range idx {
			g := r.GPUMetrics[strconv.Itoa(i)]
			mem := "-"
			used, uok := last(g, "memory_used_bytes")
			total, tok := last(g, "memory_total_bytes")
			if uok && tok {
				mem = fmt.Sprintf("%.1f / %.1f GiB", used/(1<<30), total/(1<<30))
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", i, rows[i],
				figure(g, "utilization_percent", unit("%.0f %%")), mem,
				figure(g, "power_watts", unit("%.0f W")),
				figure(g, "temperature_celsius", unit("%.0f C")),
				figure(g, "sm_clock_mhz", unit("%.0f MHz")))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	s := r.SystemMetrics
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tCPU\tMEMORY\tLOAD1\tPROCESS RSS")
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", "host",
		figure(s, "cpu_percent", unit("%.1f %%")),
		figure(s, "memory_percent", unit("%.1f %%")),
		figure(s, "load1", unit("%.2f")),
		figure(s, "process_rss_bytes", bytesHuman))
	return tw.Flush()
}
