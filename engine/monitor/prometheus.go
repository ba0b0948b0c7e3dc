package monitor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/report"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultPrometheusAddr is where ServePrometheus listens when it is given no address: loopback only.
const DefaultPrometheusAddr = "127.0.0.1:9400"

// PrometheusPath is the path of the exposition endpoint.
const PrometheusPath = "/metrics"

const (
	promShutdownTimeout = 5 * time.Second
	promScrapeTimeout   = 10 * time.Second
	promMaxInFlight     = 4
)

// ServePrometheus serves the monitor's metrics in the Prometheus text exposition format at
// http://<addr>/metrics until the returned shutdown function is called. It is opt-in: nothing listens
// until it is called.
//
// addr "" listens on 127.0.0.1:9400 and ":<port>" on 127.0.0.1:<port>: the endpoint is reachable from
// this machine only unless a host is given explicitly ("0.0.0.0:9400", "[::]:9400"). Port 0 picks a free
// port; the returned address is the one bound. A port in use gives an error wrapping ErrIO that names
// the address.
//
// An address ":+PORT" (or "HOST:+PORT") is a base port: the endpoint binds PORT plus the monitor's local
// rank, one endpoint per rank of a node.
//
// Each scrape folds pending values and emits, for every metric that has at least one finite value, a
// gauge ferry_<name> with the last value and a summary ferry_<name>_summary with the count, the sum
// (mean × count) and the 0.5, 0.9, 0.99 and 0.999 quantiles. Names are lowercased, and characters outside
// [a-z0-9_:] become "_". GPU metrics (gpu<N>/<field>) become ferry_gpu_<field> with the label
// device="<N>", pipeline metrics (pipeline/<name>/<field>) ferry_pipeline_<field> with pipeline="<name>",
// system and disk metrics ferry_system_<field>, and training metrics ferry_<name>. Every series carries
// rank, local_rank and node from MonitorOptions. A field a device does not support is absent, never zero.
// When two metrics map to the same Prometheus name, the first in sorted order is served and the other is
// left out (and logged once).
//
// The shutdown function stops the server, waiting at most 5 s for scrapes in flight; it may be called
// more than once and returns the first call's error. Shut the server down before the program exits; it
// keeps serving the monitor's last figures after the monitor is closed. ServePrometheus is safe from any
// goroutine, and a monitor may have several endpoints.
func (m *Monitor) ServePrometheus(addr string) (net.Addr, func() error, error) {
	bind, err := prometheusBindAddr(addr, m.opts.LocalRank)
	if err != nil {
		return nil, nil, err
	}
	reg, err := m.prometheusRegistry()
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: prometheus endpoint: cannot listen on %s: %v", engine.ErrIO, bind, err)
	}
	mux := http.NewServeMux()
	mux.Handle(PrometheusPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            promErrorLog{m},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: promMaxInFlight,
		Timeout:             promScrapeTimeout,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "ferry %s: metrics at %s\n", engine.Version, PrometheusPath)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: promScrapeTimeout,
		IdleTimeout:       time.Minute,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Warn().Err(err).Str("addr", ln.Addr().String()).Msg("prometheus endpoint stopped")
		}
	}()
	m.log.Info().Str("addr", ln.Addr().String()).Msg("prometheus endpoint serving " + PrometheusPath)

	var once sync.Once
	var shutErr error
	shutdown := func() error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), promShutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				_ = srv.Close() // scrapes still running after the grace period are cut
				shutErr = fmt.Errorf("%w: prometheus endpoint %s: shutdown: %v", engine.ErrTimeout, ln.Addr(), err)
			}
			<-served
		})
		return shutErr
	}
	return ln.Addr(), shutdown, nil
}

// prometheusBindAddr resolves ServePrometheus's address: "" is DefaultPrometheusAddr and a missing host
// is loopback. A port written "+PORT" is a base port: each rank on a node serves PORT + its local rank,
// so the ranks of a torchrun job get one endpoint each (":+9400" on ranks 0 and 1: 9400 and 9401).
func prometheusBindAddr(addr string, localRank int) (string, error) {
	if addr == "" {
		return DefaultPrometheusAddr, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: prometheus address %q: want host:port, :port or :+base_port (%v)", engine.ErrInvalidArgument, addr, err)
	}
	base := strings.HasPrefix(port, "+")
	p, err := strconv.Atoi(strings.TrimPrefix(port, "+"))
	if err != nil || p < 0 || p > 65535 {
		return "", fmt.Errorf("%w: prometheus address %q: port %q must be a number 0..65535", engine.ErrInvalidArgument, addr, port)
	}
	if base {
		if p == 0 || p+localRank > 65535 {
			return "", fmt.Errorf("%w: prometheus address %q: base port %d plus local rank %d is not a port", engine.ErrInvalidArgument, addr, p, localRank)
		}
		p += localRank
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// prometheusRegistry is a private registry holding the monitor's collector (and nothing of the process's
// global registry).
func (m *Monitor) prometheusRegistry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(&promCollector{m: m, warned: map[string]bool{}}); err != nil {
		return nil, fmt.Errorf("%w: prometheus registry: %v", engine.ErrInvalidArgument, err)
	}
	return reg, nil
}

// promErrorLog sends promhttp's errors to the monitor's logger.
type promErrorLog struct{ m *Monitor }

func (l promErrorLog) Println(v ...any) {
	l.m.log.Warn().Msg("prometheus: " + strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// summaries folds pending values and returns the summary of every metric that has a finite value.
func (m *Monitor) summaries() []Summary {
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	m.drainLocked()
	states := *m.states.Load()
	out := make([]Summary, 0, len(states))
	for _, st := range states {
		if st.mom.N > 0 {
			out = append(out, st.summary())
		}
	}
	return out
}

// promCollector turns the monitor's summaries into constant metrics on each scrape. It describes no
// metrics up front (an unchecked collector): the set of metrics grows while the program runs.
type promCollector struct {
	m      *Monitor
	mu     sync.Mutex
	warned map[string]bool // metric names already logged as left out
}

// promSeries is one metric as Prometheus sees it.
type promSeries struct {
	group  int    // promGroup*: the order families are claimed in
	family string // the gauge's name; the summary's is family + "_summary"
	field  string // the name the help text quotes
	label  string // "device" or "pipeline", or "" for none
	value  string // that label's value
	s      Summary
}

// Groups, in the order they claim Prometheus names: the samplers' fixed names first.
const (
	promGroupGPU = iota
	promGroupPipeline
	promGroupSystem
	promGroupTraining
)

var promGroupHelp = [...]string{"GPU", "pipeline", "system", "training"}

// Describe sends nothing: the collector is unchecked, since metrics appear while the program runs.
func (c *promCollector) Describe(chan<- *prometheus.Desc) {}

// Collect sends a gauge and a summary for every metric with a value, leaving out those whose names clash.
func (c *promCollector) Collect(ch chan<- prometheus.Metric) {
	opts := c.m.opts
	common := []string{strconv.Itoa(opts.Rank), strconv.Itoa(opts.LocalRank), opts.Node}
	series := promSeriesOf(c.m.summaries())

	type family struct {
		group        int
		gauge, summ  *prometheus.Desc
		labelsBySelf map[string]bool // the label values already emitted
	}
	families := map[string]*family{} // by gauge name
	claimed := map[string]string{}   // every exposed name -> the gauge name of its family
	for _, p := range series {
		f := families[p.family]
		if f != nil && (f.group != p.group || f.labelsBySelf[p.value]) {
			c.leftOut(p, "another metric has the same Prometheus name")
			continue
		}
		if f == nil {
			names := []string{p.family, p.family + "_summary", p.family + "_summary_sum", p.family + "_summary_count"}
			clash := false
			for _, n := range names {
				if _, ok := claimed[n]; ok {
					clash = true
				}
			}
			if clash {
				c.leftOut(p, "its Prometheus name clashes with another metric's")
				continue
			}
			for _, n := range names {
				claimed[n] = p.family
			}
			labels := []string{"rank", "local_rank", "node"}
			if p.label != "" {
				labels = append([]string{p.label}, labels...)
			}
			what := fmt.Sprintf("ferry %s metric %s", promGroupHelp[p.group], p.field)
			f = &family{
				group:        p.group,
				gauge:        prometheus.NewDesc(p.family, "Last value of the "+what+".", labels, nil),
				summ:         prometheus.NewDesc(p.family+"_summary", "Count, sum and quantiles of every value of the "+what+".", labels, nil),
				labelsBySelf: map[string]bool{},
			}
			families[p.family] = f
		}
		f.labelsBySelf[p.value] = true
		lv := common
		if p.label != "" {
			lv = append([]string{p.value}, common...)
		}
		s := p.s
		g, err := prometheus.NewConstMetric(f.gauge, prometheus.GaugeValue, s.Last, lv...)
		if err != nil {
			g = prometheus.NewInvalidMetric(f.gauge, err)
		}
		ch <- g
		q := map[float64]float64{0.5: s.P50, 0.9: s.P90, 0.99: s.P99, 0.999: s.P999}
		sm, err := prometheus.NewConstSummary(f.summ, s.Count, s.Mean*float64(s.Count), q, lv...)
		if err != nil {
			sm = prometheus.NewInvalidMetric(f.summ, err)
		}
		ch <- sm
	}
}

// leftOut logs, once per metric, that it is not exposed.
func (c *promCollector) leftOut(p promSeries, why string) {
	c.mu.Lock()
	first := !c.warned[p.s.Name]
	c.warned[p.s.Name] = true
	c.mu.Unlock()
	if first {
		c.m.log.Warn().Str("metric", p.s.Name).Str("prometheus", p.family).Msg("prometheus: metric left out: " + why)
	}
}

// promSeriesOf maps summaries to Prometheus names and labels, sorted by group, name and label value, so
// that which of two clashing metrics is served does not change between scrapes.
func promSeriesOf(sums []Summary) []promSeries {
	out := make([]promSeries, 0, len(sums))
	for _, s := range sums {
		group, key, rest := report.ClassifyMetric(s.Name)
		p := promSeries{s: s, field: rest}
		switch group {
		case "gpu":
			p.group, p.family, p.label, p.value = promGroupGPU, "ferry_gpu_"+promSanitize(rest), "device", key
		case "pipeline":
			p.group, p.family, p.label, p.value = promGroupPipeline, "ferry_pipeline_"+promSanitize(rest), "pipeline", key
		case "system":
			p.group, p.family = promGroupSystem, "ferry_system_"+promSanitize(rest)
		default:
			p.group, p.family = promGroupTraining, "ferry_"+promSanitize(s.Name)
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.group != b.group {
			return a.group < b.group
		}
		if a.family != b.family {
			return a.family < b.family
		}
		if a.value != b.value {
			return a.value < b.value
		}
		return a.s.Name < b.s.Name
	})
	return out
}

// promSanitize lowercases name and replaces every character outside [a-z0-9_:] with "_".
func promSanitize(name string) string {
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == ':'; !ok {
			b[i] = '_'
		}
	}
	return string(b)
}
