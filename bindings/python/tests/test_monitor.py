"""The performance monitor: summaries against numpy, the Python-side buffer, reports, Prometheus,
lifetime and bad input. The background samplers are off unless a test starts them."""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from array import array

import pytest

import ferry
from ferry import _lib, _monitor

from conftest import find_header

np = pytest.importorskip("numpy")

ACCURACY = 0.005  # the default sketch accuracy


def quiet(**kw) -> ferry.PerformanceMonitor:
    """A monitor with every sampler off."""
    kw.setdefault("gpu_interval", None)
    kw.setdefault("system_interval", None)
    kw.setdefault("pcie_interval", None)
    return ferry.PerformanceMonitor(**kw)


def random_values(rng, n: int):
    """n values spread over three decades, 1..1000."""
    return np.exp(rng.random(n) * math.log(1000.0))


def assert_quantile(values, q: float, got: float) -> None:
    """got is within the sketch's accuracy of numpy's inverted-CDF quantile, or of a neighbouring rank
    (the sketch rounds the rank its own way)."""
    s = np.sort(values)
    exact = float(np.quantile(values, q, method="inverted_cdf"))
    k = int(np.searchsorted(s, exact))
    for j in (k, k - 1, k + 1):
        if 0 <= j < len(s) and abs(got - s[j]) <= ACCURACY * abs(s[j]) * (1 + 1e-9):
            return
    pytest.fail(f"p{q * 100:g} = {got}, numpy's inverted_cdf quantile {exact} "
                f"(relative error {abs(got - exact) / abs(exact):.4%}, allowed {ACCURACY:.1%})")


def assert_summary(values, s) -> None:
    values = np.asarray(values, dtype=np.float64)
    assert s["count"] == len(values)
    assert s["nonfinite"] == 0
    assert s["min"] == values.min()
    assert s["max"] == values.max()
    assert s["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(values.std(), rel=1e-9)  # population, like numpy's default
    for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")):
        assert_quantile(values, q, s[key])


# --- the ctypes mirror ------------------------------------------------------------------------------------


@pytest.mark.parametrize("struct, cname, size", [
    (_lib.MonitorOptions, "ferry_monitor_options", 72),
    (_lib.MetricSummary, "ferry_metric_summary", 112),
])
def test_structs_match_header(struct, cname, size):
    assert ctypes.sizeof(struct) == size
    path = find_header()
    if path is None:
        pytest.skip("ferry.h is not reachable from the package directory")
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (cname, cname), path.read_text(), flags=re.S)
    assert body, cname
    code = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    names = []
    for decl in filter(None, (d.strip() for d in code.split(";"))):
        first, *rest = decl.split(",")  # "double mean, min, max" declares three
        names += [re.findall(r"\w+", first)[-1]] + [r.strip() for r in rest]
    assert [n for n, _ in struct._fields_] == names


def test_start_flag_matches_header(header):
    assert _lib.FERRY_MONITOR_F_START == header["FERRY_MONITOR_F_START"]


# --- summaries ----------------------------------------------------------------------------------------------


def test_summaries_match_numpy():
    rng = np.random.default_rng()
    one, batch = random_values(rng, 30000), random_values(rng, 5000)
    with quiet() as mon:
        for v in one.tolist():  # more than one buffer of 8192
            mon.log_metric("loss", v)
        mon.log_metrics("loss", batch)
        s = mon.summary("loss")
        assert_summary(np.concatenate([one, batch]), s)
        assert s["last"] == batch[-1]


def test_buffered_values_appear_in_summaries_and_reports():
    with quiet() as mon:
        before = time.monotonic_ns()
        for i in range(100):  # well below a buffer: nothing was handed over yet
            mon.log_metric("acc", i / 100)
        after = time.monotonic_ns()
        s = mon.summary("acc")
        assert s["count"] == 100 and s["last"] == 0.99
        assert before <= s["first_ns"] <= s["last_ns"] <= after
        mon.log_metric("acc", 2.0)
        report = mon.get_performance_report()
        m = report["training_metrics"]["acc"]
        assert m["count"] == 101 and m["max"] == 2.0
        assert m["first_s"] <= m["last_s"]
        assert sum(p[4] for p in m["series"]) == 101
        assert all(len(p) == 5 for p in m["series"])
        assert [p[0] for p in m["series"]] == sorted(p[0] for p in m["series"])
        mon.log_metric("acc", 3.0)
        assert json.loads(mon.report_json())["training_metrics"]["acc"]["count"] == 102


def test_values_reach_the_library_within_the_flush_interval(monkeypatch):
    monkeypatch.setattr(_monitor, "_FLUSH_EVERY_NS", 0)
    with quiet() as mon:
        mon.log_metric("loss", 1.5)
        mon.log_metric("loss", 2.5)
        # Read the library directly, without the flush that summary() does first.
        s = _lib.MetricSummary()
        s.size = ctypes.sizeof(s)
        assert mon._lib.ferry_metric_summary_get(mon._h(), mon.metric("loss"), ctypes.byref(s)) == 0
        assert s.count == 2 and s.last == 2.5


def test_timestamps_are_monotonic_ns():
    with quiet() as mon:
        t0 = time.monotonic_ns()
        mon.log_metric("x", 1.0)
        time.sleep(0.05)
        mon.log_metric("x", 2.0)
        t1 = time.monotonic_ns()
        s = mon.summary("x")
        assert t0 <= s["first_ns"] < s["last_ns"] <= t1
        assert s["last_ns"] - s["first_ns"] >= 40_000_000
        m = mon.get_performance_report()["training_metrics"]["x"]
        assert m["last_s"] - m["first_s"] == pytest.approx((s["last_ns"] - s["first_ns"]) / 1e9, abs=1e-6)


def test_nonfinite_values_are_counted_apart():
    with quiet() as mon:
        for v in (1.0, float("nan"), 3.0, float("inf"), -float("inf")):
            mon.log_metric("loss", v)
        mon.log_metrics("loss", [float("nan"), 5.0])
        s = mon.summary("loss")
        assert s["count"] == 3 and s["nonfinite"] == 4
        assert s["mean"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0
        mon.log_metric("only_nan", float("nan"))
        s = mon.summary("only_nan")
        assert s["count"] == 0 and s["nonfinite"] == 1 and math.isnan(s["mean"]) and math.isnan(s["p50"])
        m = mon.get_performance_report()["training_metrics"]["only_nan"]
        assert m["mean"] is None and m["nonfinite"] == 1


def test_log_metrics_inputs(monkeypatch):
    rng = np.random.default_rng()
    a = random_values(rng, 1000)
    with quiet() as mon:
        mon.log_metrics("contiguous", a)
        mon.log_metrics("strided", a[::2])
        mon.log_metrics("float32", a.astype(np.float32))
        mon.log_metrics("list", a.tolist())
        mon.log_metrics("2d", a.reshape(10, 100))
        mon.log_metrics("empty", np.empty(0))
        assert_summary(a, mon.summary("contiguous"))
        assert_summary(a[::2], mon.summary("strided"))
        assert_summary(a.astype(np.float32).astype(np.float64), mon.summary("float32"))
        assert_summary(a, mon.summary("list"))
        assert_summary(a, mon.summary("2d"))
        assert mon.summary("empty")["count"] == 0
        # Without numpy: array('d') as is, other sequences converted once.
        monkeypatch.setattr(_monitor, "_np", None)
        mon.log_metrics("no_numpy", array("d", a.tolist()))
        mon.log_metrics("no_numpy", (x for x in a.tolist()))
        assert_summary(np.concatenate([a, a]), mon.summary("no_numpy"))
        # The buffered values of a metric come first.
        mon.log_metric("order", 1.0)
        mon.log_metrics("order", [2.0, 3.0])
        assert mon.summary("order")["last"] == 3.0


def test_log_metric_from_threads():
    rng = np.random.default_rng()
    per = [random_values(rng, 20000).tolist() for _ in range(4)]
    with quiet() as mon:
        start = threading.Barrier(len(per))

        def work(vs):
            start.wait()
            for v in vs:
                mon.log_metric("loss", v)

        threads = [threading.Thread(target=work, args=(vs,)) for vs in per]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert_summary(np.concatenate(per), mon.summary("loss"))


def test_metric_ids():
    with quiet() as mon:
        a = mon.metric("loss")
        assert mon.metric("loss") == a
        assert mon.metric("train/acc:top-1.v2") != a
        mon.log_metric("loss", 1.0)
        assert mon.metric_names() == ["loss"]


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "émoji", "x" * 257, "nul\0byte"])
def test_bad_names_raise(name):
    with quiet() as mon:
        with pytest.raises(ferry.InvalidArgumentError):
            mon.log_metric(name, 1.0)
        with pytest.raises(ferry.InvalidArgumentError):
            mon.summary(name)
        with pytest.raises(ferry.InvalidArgumentError):
            mon.log_metrics(name, [1.0])
        mon.log_metric("fine", 1.0)  # still usable
        assert mon.summary("fine")["count"] == 1


def test_bad_values_raise_at_once():
    with quiet() as mon:
        with pytest.raises(TypeError):
            mon.log_metric("loss", "1.0")
        with pytest.raises(TypeError):
            mon.metric(b"loss")
        mon.log_metric("loss", np.float32(2.0))
        mon.log_metric("loss", 3)
        assert mon.summary("loss")["count"] == 2


# --- options ------------------------------------------------------------------------------------------------


def test_labels_and_disk_paths(tmp_path):
    with quiet(rank=3, local_rank=1, node="node-7", disk_paths=[tmp_path], sketch_accuracy=0.01,
               series_points=64) as mon:
        r = mon.get_performance_report()
        assert r["schema"] == "ferry.report/1"
        assert (r["rank"], r["local_rank"], r["node"]) == (3, 1, "node-7")


@pytest.mark.parametrize("kw", [
    dict(gpu_interval=0.005),
    dict(system_interval=0.001),
    dict(pcie_interval=0.009),
    dict(gpu_interval=1e-9),
    dict(sketch_accuracy=0.5),
    dict(sketch_accuracy=-0.1),
    dict(series_points=8),
    dict(rank=2**40),
    dict(node="a\0b"),
    dict(gpu_interval=float("nan")),
])
def test_bad_options_raise(kw):
    with pytest.raises(ferry.InvalidArgumentError):
        quiet(**kw)


def test_bad_option_types_raise():
    with pytest.raises(TypeError):
        quiet(gpu_interval="fast")
    with pytest.raises(TypeError):
        quiet(sketch_accuracy="0.01")


def test_samplers_start_and_stop():
    with ferry.PerformanceMonitor(gpu_interval=None, pcie_interval=None, system_interval=0.02, start=True) as mon:
        deadline = time.monotonic() + 10
        while not mon.get_performance_report()["system_metrics"] and time.monotonic() < deadline:
            time.sleep(0.02)
        report = mon.get_performance_report()
        assert report["system_metrics"], "no system metrics after starting the samplers"
        assert report["training_metrics"] == {}
        mon.stop_monitoring()
        mon.stop_monitoring()
        mon.start_monitoring()
        mon.start_monitoring()
        mon.stop_monitoring()


@pytest.mark.parametrize("how", ["loader", "iterator"])
def test_attach(how):
    data = {"x": np.arange(64 * 4, dtype=np.float32).reshape(64, 4)}
    with ferry.Loader(data, 8, device="cpu", output="dlpack") as loader, \
            ferry.PerformanceMonitor(gpu_interval=None, pcie_interval=None, system_interval=0.02) as mon:
        mon.attach("train", loader if how == "loader" else loader.iterator)
        with pytest.raises(ferry.InvalidArgumentError):
            mon.attach("train", loader)
        with pytest.raises(TypeError):
            mon.attach("other", object())
        mon.start_monitoring()
        for _ in loader:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pipes = mon.get_performance_report()["pipeline_metrics"]
            if "batches_per_second" in pipes.get("train", {}):
                break
            time.sleep(0.02)
        assert {"batches_per_second", "samples_per_second", "h2d_bytes_per_second", "data_stall_percent",
                "queue_depth"} <= set(pipes["train"])
        mon.stop_monitoring()


# --- reports and Prometheus ---------------------------------------------------------------------------------


def test_report_files(tmp_path):
    with quiet() as mon:
        for i in range(300):
            mon.log_metric("loss", 1 / (i + 1))
        html = tmp_path / "report.html"
        mon.report_html(html)
        text = html.read_text()
        assert "<svg" in text and "loss" in text
        assert (html.stat().st_mode & 0o777) == 0o644
        js = tmp_path / "report.json"
        mon.write_report(str(js))
        assert json.loads(js.read_text())["training_metrics"]["loss"]["count"] == 300
        assert (js.stat().st_mode & 0o777) == 0o644
        with pytest.raises(ferry.InvalidArgumentError):
            mon.report_html(tmp_path / "report.json")
        with pytest.raises(ferry.InvalidArgumentError):
            mon.write_report(tmp_path / "missing" / "report.json")
        assert sorted(os.listdir(tmp_path)) == ["report.html", "report.json"]


def test_serve_prometheus():
    with quiet() as mon:
        mon.log_metric("loss", 0.25)
        bound = mon.serve_prometheus("127.0.0.1:0")
        host, port = bound.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with urllib.request.urlopen(f"http://{bound}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert resp.status == 200
        assert "ferry_loss" in body
        with pytest.raises(ferry.InvalidArgumentError):
            mon.serve_prometheus("127.0.0.1:0")
        with quiet() as other:
            with pytest.raises(ferry.FerryIOError):
                other.serve_prometheus(bound)
    with pytest.raises(urllib.error.URLError):  # the endpoint went with the monitor
        urllib.request.urlopen(f"http://{bound}/metrics", timeout=5)


# --- lifetime -----------------------------------------------------------------------------------------------


def test_close_is_idempotent_and_use_after_close_is_clear():
    mon = quiet()
    mon.log_metric("loss", 1.0)
    mon.close()
    mon.close()
    assert mon.closed
    assert "closed" in repr(mon)
    for call in (lambda: mon.log_metric("loss", 2.0), lambda: mon.log_metric("new", 2.0),
                 lambda: mon.summary("loss"), lambda: mon.get_performance_report(), lambda: mon.flush(),
                 lambda: mon.log_metrics("loss", [1.0]), lambda: mon.start_monitoring(),
                 lambda: mon.serve_prometheus(), lambda: mon.metric("loss")):
        with pytest.raises(ferry.ClosedError, match="PerformanceMonitor is closed"):
            call()


def test_finalizer_backstop():
    import gc
    import weakref

    mon = quiet()
    mon.log_metric("loss", 1.0)
    ref = weakref.ref(mon)
    finalizer = mon._finalizer
    del mon
    gc.collect()
    assert ref() is None and not finalizer.alive


def test_seed_names_are_kept():
    with quiet() as mon:
        mon.start_monitoring()
        mon.log_metric("loss", 0.5)
        report = mon.get_performance_report()
        assert report["training_metrics"]["loss"]["count"] == 1
        mon.stop_monitoring()


def test_stream_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with ferry.PerformanceMonitor(gpu_interval=None, system_interval=None) as mon:
        mon.log_metric("before", 1.0)
        mon.stream_jsonl(path)
        for i in range(20):
            mon.log_metric("loss", float(i))
        mon.flush()
        mon.stream_jsonl(None)
        mon.log_metric("loss", 99.0)
        mon.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["value"] for x in lines] == [float(i) for i in range(20)]
    assert all(x["metric"] == "loss" for x in lines)
    assert all(x["t"] >= 0 for x in lines)
