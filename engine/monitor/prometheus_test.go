package monitor

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// promSample is one line of the text exposition: a metric name, its labels and its value.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

// key is name{a="x",b="y"} with the labels sorted: the same whatever order the server wrote them in.
func (s promSample) key() string { return promKey(s.name, s.labels) }

func promKey(name string, labels map[string]string) string {
	ks := make([]string, 0, len(labels))
	for k := range labels {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = fmt.Sprintf("%s=%q", k, labels[k])
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// parseExposition parses the Prometheus text format (version 0.0.4): samples by key, and the TYPE of
// each family.
func parseExposition(t *testing.T, text string) (map[string]promSample, map[string]string) {
	t.Helper()
	samples, types := map[string]promSample{}, map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" {
			continue
		}
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, ok := strings.Cut(f, " ")
			require.True(t, ok, line)
			types[name] = typ
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		s := promSample{labels: map[string]string{}}
		var rest string
		if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
			s.name = line[:i]
			rest = line[i+1:]
			for !strings.HasPrefix(rest, "}") {
				name, after, ok := strings.Cut(rest, "=\"")
				require.True(t, ok, "label in %q", line)
				var v strings.Builder
				j := 0
				for ; j < len(after) && after[j] != '"'; j++ {
					if after[j] == '\\' && j+1 < len(after) {
						j++
						if after[j] == 'n' {
							v.WriteByte('\n')
							continue
						}
					}
					v.WriteByte(after[j])
				}
				require.Less(t, j, len(after), "unterminated label value in %q", line)
				s.labels[name] = v.String()
				rest = strings.TrimPrefix(after[j+1:], ",")
			}
			rest = strings.TrimPrefix(rest, "}")
		} else {
			s.name, rest, _ = strings.Cut(line, " ")
		}
		fields := strings.Fields(rest)
		require.NotEmpty(t, fields, "no value in %q", line)
		v, err := strconv.ParseFloat(fields[0], 64)
		require.NoError(t, err, line)
		s.value = v
		_, dup := samples[s.key()]
		require.False(t, dup, "duplicate series %s", s.key())
		samples[s.key()] = s
	}
	return samples, types
}

// scrape fetches url without keeping a connection open (goleak checks that none is left). It may run on
// any goroutine.
func scrape(url string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return "", fmt.Errorf("GET %s: content type %q", url, ct)
	}
	return string(b), nil
}

// servePrometheus starts an endpoint on a free loopback port and shuts it down when the test ends.
func servePrometheus(t *testing.T, m *Monitor) string {
	t.Helper()
	addr, shutdown, err := m.ServePrometheus("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, shutdown()) })
	return "http://" + addr.String() + PrometheusPath
}

func logValues(t *testing.T, m *Monitor, name string, vs ...float64) {
	t.Helper()
	id, err := m.Metric(name)
	require.NoError(t, err)
	for _, v := range vs {
		require.NoError(t, m.Log(id, v))
	}
}

func TestPrometheusBindAddr(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "127.0.0.1:9400"},
		{":9400", "127.0.0.1:9400"},
		{":0", "127.0.0.1:0"},
		{"0.0.0.0:9400", "0.0.0.0:9400"},
		{"[::]:9100", "[::]:9100"},
		{"[::1]:9100", "[::1]:9100"},
		{"localhost:8080", "localhost:8080"},
	} {
		got, err := prometheusBindAddr(c.in, 3)
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, got, c.in)
	}
	// A base port: each local rank serves its own port.
	for rank, want := range []string{"127.0.0.1:9400", "127.0.0.1:9401", "127.0.0.1:9402"} {
		got, err := prometheusBindAddr(":+9400", rank)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	got, err := prometheusBindAddr("0.0.0.0:+9100", 1)
	require.NoError(t, err)
	require.Equal(t, "0.0.0.0:9101", got)
	for _, bad := range []string{"9400", ":", ":http", ":-1", ":65536", "a:b:c", "host", ":+0", ":+65535x", ":+65535"} {
		_, err := prometheusBindAddr(bad, 3)
		require.ErrorIs(t, err, engine.ErrInvalidArgument, bad)
		require.Contains(t, err.Error(), bad)
	}
}

func TestPrometheusSanitize(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"loss", "loss"},
		{"train/loss", "train_loss"},
		{"Val.Acc-top1", "val_acc_top1"},
		{"lr:group0", "lr:group0"},
		{"disk/data_imagenet/used_percent", "disk_data_imagenet_used_percent"},
	} {
		require.Equal(t, c.want, promSanitize(c.in), c.in)
	}
}

func TestPrometheusScrape(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{Rank: 3, LocalRank: 1, Node: "node-a"})
	const n = 1000
	loss := make([]float64, n)
	for i := range loss {
		loss[i] = float64(i + 1)
	}
	logValues(t, m, "loss", loss...)
	logValues(t, m, "train/Acc.top-1", 0.25, 0.75)
	// What the samplers log, by hand: two GPUs, one of which lacks a field.
	logValues(t, m, "gpu0/utilization_percent", 10, 30)
	logValues(t, m, "gpu1/utilization_percent", 90)
	logValues(t, m, "gpu0/power_watts", 250.5)
	logValues(t, m, "pipeline/imagenet/batches_per_second", 12, 14)
	logValues(t, m, "system/cpu_percent", 42)
	logValues(t, m, "disk/data/used_percent", 61)
	_, err := m.Metric("interned_only") // never logged: absent
	require.NoError(t, err)
	logValues(t, m, "only_nan", math.NaN()) // no finite value: absent

	url := servePrometheus(t, m)
	text, err := scrape(url)
	require.NoError(t, err)
	samples, types := parseExposition(t, text)

	common := map[string]string{"rank": "3", "local_rank": "1", "node": "node-a"}
	with := func(kv ...string) map[string]string {
		l := map[string]string{}
		for k, v := range common {
			l[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			l[kv[i]] = kv[i+1]
		}
		return l
	}
	get := func(name string, labels map[string]string) float64 {
		t.Helper()
		s, ok := samples[promKey(name, labels)]
		require.True(t, ok, "%s missing from:\n%s", promKey(name, labels), text)
		return s.value
	}

	require.Equal(t, "gauge", types["ferry_loss"])
	require.Equal(t, "summary", types["ferry_loss_summary"])
	require.Equal(t, float64(n), get("ferry_loss", with()))
	require.Equal(t, float64(n), get("ferry_loss_summary_count", with()))
	require.InDelta(t, n*(n+1)/2.0, get("ferry_loss_summary_sum", with()), 1e-6)
	for _, q := range []struct {
		q    string
		want float64
	}{{"0.5", 500}, {"0.9", 900}, {"0.99", 990}, {"0.999", 999}} {
		got := get("ferry_loss_summary", with("quantile", q.q))
		require.InEpsilon(t, q.want, got, 0.011, "quantile %s", q.q)
	}

	require.Equal(t, 0.75, get("ferry_train_acc_top_1", with()))
	require.Equal(t, 2.0, get("ferry_train_acc_top_1_summary_count", with()))
	require.Equal(t, 30.0, get("ferry_gpu_utilization_percent", with("device", "0")))
	require.Equal(t, 90.0, get("ferry_gpu_utilization_percent", with("device", "1")))
	require.InDelta(t, 40.0, get("ferry_gpu_utilization_percent_summary_sum", with("device", "0")), 1e-9)
	require.Equal(t, 250.5, get("ferry_gpu_power_watts", with("device", "0")))
	_, ok := samples[promKey("ferry_gpu_power_watts", with("device", "1"))]
	require.False(t, ok, "a field the device lacks is absent, not zero")
	require.Equal(t, 14.0, get("ferry_pipeline_batches_per_second", with("pipeline", "imagenet")))
	require.Equal(t, 42.0, get("ferry_system_cpu_percent", with()))
	require.Equal(t, 61.0, get("ferry_system_disk_data_used_percent", with()))
	require.NotContains(t, text, "interned_only")
	require.NotContains(t, text, "only_nan")
	require.Equal(t, "gauge", types["ferry_gpu_utilization_percent"])
	require.Equal(t, "summary", types["ferry_pipeline_batches_per_second_summary"])
	for k, s := range samples {
		require.True(t, strings.HasPrefix(s.name, "ferry_"), k)
		for name, v := range common {
			require.Equal(t, v, s.labels[name], k)
		}
	}

	// Each scrape sees what was logged since the last one.
	logValues(t, m, "loss", 7)
	text, err = scrape(url)
	require.NoError(t, err)
	samples, _ = parseExposition(t, text)
	require.Equal(t, 7.0, get("ferry_loss", with()))
	require.Equal(t, float64(n+1), get("ferry_loss_summary_count", with()))

	// The index page points to /metrics; other paths are not found.
	base := strings.TrimSuffix(url, PrometheusPath)
	page, err := scrape(base + "/")
	require.NoError(t, err)
	require.Contains(t, page, PrometheusPath)
	_, err = scrape(base + "/nothing")
	require.ErrorContains(t, err, "404")
}

func TestPrometheusNameClashes(t *testing.T) {
	nop := zerolog.Nop()
	m := quietMonitor(t, MonitorOptions{Logger: &nop}) // the left-out metrics are logged as warnings
	logValues(t, m, "gpu0/utilization_percent", 50)
	logValues(t, m, "gpu_utilization_percent", 1) // a training metric on the GPU family's name
	logValues(t, m, "a.b", 2)
	logValues(t, m, "a_b", 3) // the same name once sanitized
	logValues(t, m, "Step", 4)
	logValues(t, m, "step", 5) // the same name once lowercased
	logValues(t, m, "x", 6)
	logValues(t, m, "x_summary", 7) // the gauge would sit on x's summary family
	logValues(t, m, "y_summary_count", 8)
	logValues(t, m, "y", 9) // y's summary count would sit on another metric's gauge
	logValues(t, m, "system/load1", 0.5)
	logValues(t, m, "system_load1", 10)

	reg, err := m.prometheusRegistry()
	require.NoError(t, err)
	for i := 0; i < 2; i++ { // the same choice on every scrape
		mfs, err := reg.Gather()
		require.NoError(t, err, "the registry accepts every family: clashes are left out, not sent")
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, mt := range mf.GetMetric() {
				if mt.GetGauge() != nil {
					labels := map[string]string{}
					for _, l := range mt.GetLabel() {
						labels[l.GetName()] = l.GetValue()
					}
					got[promKey(mf.GetName(), labels)] = mt.GetGauge().GetValue()
				}
			}
		}
		common := `local_rank="0",node="",rank="0"`
		require.Equal(t, map[string]float64{
			`ferry_gpu_utilization_percent{device="0",` + common + `}`: 50,
			`ferry_system_load1{` + common + `}`:                       0.5,
			`ferry_a_b{` + common + `}`:                                2, // "a.b" sorts before "a_b"
			`ferry_step{` + common + `}`:                               4, // "Step" sorts before "step"
			`ferry_x{` + common + `}`:                                  6, // "x" sorts before "x_summary"
			`ferry_y{` + common + `}`:                                  9, // and "y" before "y_summary_count"
		}, got)
	}
}

func TestPrometheusPortInUse(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	logValues(t, m, "loss", 1.5)
	addr, shutdown, err := m.ServePrometheus("127.0.0.1:0")
	require.NoError(t, err)
	url := "http://" + addr.String() + PrometheusPath

	_, _, err = m.ServePrometheus(addr.String())
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), addr.String(), "the error names the address")
	require.Contains(t, err.Error(), "prometheus")

	text, err := scrape(url)
	require.NoError(t, err, "the first endpoint still serves")
	require.Contains(t, text, `ferry_loss{local_rank="0",node="",rank="0"} 1.5`)

	require.NoError(t, shutdown())
	require.NoError(t, shutdown(), "shutdown may be called again")
	_, err = scrape(url)
	require.Error(t, err, "nothing listens after shutdown")
}

func TestPrometheusLoopbackByDefault(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	addr, shutdown, err := m.ServePrometheus(":0")
	require.NoError(t, err)
	require.True(t, addr.(*net.TCPAddr).IP.IsLoopback(), "%v", addr)
	require.NotZero(t, addr.(*net.TCPAddr).Port)
	require.NoError(t, shutdown())

	addr, shutdown, err = m.ServePrometheus("")
	if err != nil { // something else holds the default port here
		require.ErrorIs(t, err, engine.ErrIO)
		require.Contains(t, err.Error(), DefaultPrometheusAddr)
		return
	}
	require.Equal(t, DefaultPrometheusAddr, addr.String())
	require.NoError(t, shutdown())
}

func TestPrometheusAfterMonitorClose(t *testing.T) {
	m, err := NewMonitor(MonitorOptions{GPUInterval: -1, SystemInterval: -1})
	require.NoError(t, err)
	logValues(t, m, "loss", 3)
	url := servePrometheus(t, m)
	require.NoError(t, m.Close())
	text, err := scrape(url)
	require.NoError(t, err, "the last figures are still served")
	require.Contains(t, text, "ferry_loss{")
}

func TestPrometheusConcurrentScrapes(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	for i := 0; i < 200; i++ {
		logValues(t, m, fmt.Sprintf("m%03d", i), float64(i))
	}
	addr, shutdown, err := m.ServePrometheus("127.0.0.1:0")
	require.NoError(t, err)
	url := "http://" + addr.String() + PrometheusPath
	done := make(chan error, 4)
	for i := 0; i < cap(done); i++ {
		go func() {
			text, err := scrape(url)
			if err == nil && !strings.Contains(text, "ferry_m199{") {
				err = errors.New("incomplete scrape")
			}
			done <- err
		}()
	}
	for i := 0; i < cap(done); i++ {
		require.NoError(t, <-done)
	}
	require.NoError(t, shutdown())
}

// TestPrometheusFakeNVML serves what the GPU sampler reads from the stand-in NVML: the fields it has,
// labelled by device, and none of those it lacks.
func TestPrometheusFakeNVML(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestPrometheusFakeNVMLChild", true)
	require.Contains(t, out, "prometheus GPU checks passed")
}

func TestPrometheusFakeNVMLChild(t *testing.T) {
	testutil.IsolatedChild(t)
	m, err := NewMonitor(MonitorOptions{GPUInterval: 10 * time.Millisecond, PCIeInterval: -1,
		SystemInterval: -1, Devices: []int{0}, Node: "n0"})
	require.NoError(t, err)
	defer m.Close()
	require.NoError(t, m.Start())
	require.Eventually(t, func() bool {
		r := m.Report()
		return r.GPUMetrics["0"] != nil && r.GPUMetrics["0"]["utilization_percent"] != nil
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, m.Stop())

	url := servePrometheus(t, m)
	text, err := scrape(url)
	require.NoError(t, err)
	samples, _ := parseExposition(t, text)
	labels := map[string]string{"device": "0", "rank": "0", "local_rank": "0", "node": "n0"}
	for name, want := range map[string]float64{
		"ferry_gpu_utilization_percent":        37,
		"ferry_gpu_memory_utilization_percent": 12,
		"ferry_gpu_temperature_celsius":        55,
		"ferry_gpu_power_watts":                123.456,
		"ferry_gpu_sm_clock_mhz":               1980,
		"ferry_gpu_memory_clock_mhz":           2619,
		"ferry_gpu_memory_total_bytes":         80 << 30,
		"ferry_gpu_process_memory_bytes":       1 << 30,
	} {
		s, ok := samples[promKey(name, labels)]
		require.True(t, ok, "%s missing from:\n%s", name, text)
		require.InDelta(t, want, s.value, 1e-9, name)
	}
	for _, absent := range []string{"ecc_corrected_errors", "ecc_uncorrected_errors", "throttle_reasons", "pcie_rx"} {
		require.NotContains(t, text, "ferry_gpu_"+absent, "a field the device lacks is absent, not zero")
	}
	t.Log("prometheus GPU checks passed")
}
