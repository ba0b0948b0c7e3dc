"""The performance monitor: metrics logged from the training loop, the GPU, host and pipeline samplers,
and the reports (``ferry_monitor_*``, ``ferry_metric_*``)."""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
import time
from array import array
from ctypes import POINTER, byref, c_char, c_double, c_uint32, c_uint64, c_void_p
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from . import _lib
from ._errors import ClosedError, Status, _as_int32, _c_string, _check, _closed, _error, _invalid
from ._handle import _Owner

__all__ = ["PerformanceMonitor"]

#: A metric's buffer is handed to the library when it holds this many values.
_FLUSH_AT = 8192
#: ... or when a value is logged this long (ns) after the metric's previous hand-over, so that the live
#: views (Prometheus, a report written by another thread) lag by about a second at most while logging goes on.
_FLUSH_EVERY_NS = 1_000_000_000

_monotonic_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux: the clock of ferry_metric_log_many_at

_SUMMARY_SIZE = ctypes.sizeof(_lib.MetricSummary)
_SUMMARY_KEYS = ("count", "nonfinite", "mean", "min", "max", "std", "last", "p50", "p90", "p99", "p999")
_DOUBLE_P = POINTER(c_double)
_UINT64_P = POINTER(c_uint64)

try:  # numpy is optional: log_metrics passes its float64 arrays without a copy
    import numpy as _np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    _np = None


def _interval_us(seconds: Optional[float], what: str) -> int:
    """A sampler interval in seconds as ferry_monitor_options has it: None → off (-1), 0 → the default."""
    if seconds is None:
        return -1
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(seconds).__name__}")
    if math.isnan(seconds):
        raise _invalid(f"{what} is NaN")
    if seconds < 0:
        return -1
    us = round(seconds * 1e6)
    if seconds > 0 and us == 0:
        raise _invalid(f"{what} {seconds} s is below the 10 ms minimum")
    if us >= 2**63:
        raise _invalid(f"{what} {seconds} s is too long")
    return us


class _Buffer:
    """One metric's values and their timestamps, waiting to be handed to the library together.

    The fast path appends to ``values`` and then to ``times`` without a lock; a hand-over takes the first
    ``min(len(values), len(times))`` pairs and deletes exactly those (each ``del`` is one atomic step under
    the GIL), so a value another thread is appending meanwhile is kept for the next hand-over.
    """

    __slots__ = ("values", "times", "id", "due")

    def __init__(self, metric_id: int) -> None:
        self.values = array("d")
        self.times = array("Q")
        self.id = metric_id
        self.due = 0  # CLOCK_MONOTONIC ns after which the next log hands the buffer over


class PerformanceMonitor(_Owner):
    """Metrics for a training program: ``mon.log_metric("loss", loss)`` at about half the cost of one
    ctypes call (the value is buffered in Python), exact summaries (count, mean, min, max, std) and streaming
    quantiles (p50, p90, p99, p999 within ``sketch_accuracy``), time series, GPU/host/pipeline samplers, and
    reports as JSON, HTML or Prometheus.

    Sampler intervals are in seconds; None turns that sampler off and 0 picks the library's default.
    ``gpu_interval`` is how often NVML samples every GPU (at least 0.01), ``pcie_interval`` the PCIe
    throughput (each reading blocks its sampler for ~20 ms), ``system_interval`` the host (CPU, memory, the
    disks of ``disk_paths``) and the attached iterators. Without a GPU or NVML the GPU metrics are simply
    absent. ``sketch_accuracy`` (None: 0.005) is the quantiles' relative accuracy, ``series_points`` (None:
    512) bounds each metric's time series. ``rank``, ``local_rank`` and ``node`` label the reports and
    Prometheus; with rank and local rank both None or 0 the library reads RANK and LOCAL_RANK. The samplers
    run after :meth:`start_monitoring`, or at once with ``start=True``; logging works from the start.

    :meth:`log_metric` buffers each value with its ``time.monotonic_ns()`` timestamp in Python and hands a
    metric's buffer to the library when it holds 8192 values, when a value comes a second or more after
    the previous hand-over, and before every summary, report and :meth:`close` (:meth:`flush` does it on
    demand). So summaries and reports always include every value logged before them on the calling thread.

    Ownership: the monitor owns its library handle; :meth:`close` (or leaving a ``with`` block) flushes the
    buffers and destroys it, stopping the samplers and the Prometheus endpoint; garbage collection destroys
    it as a backstop. Every method may be called from any thread; a call racing :meth:`close` raises
    :class:`~ferry.ClosedError`.
    """

    def __init__(self, gpu_interval: Optional[float] = 0.1, system_interval: Optional[float] = 1.0,
                 pcie_interval: Optional[float] = 1.0, disk_paths: Sequence[Union[str, "os.PathLike[str]"]] = (),
                 sketch_accuracy: Optional[float] = None, series_points: Optional[int] = None,
                 rank: Optional[int] = None, local_rank: Optional[int] = None, node: Optional[str] = None,
                 start: bool = False) -> None:
        self._handle: Optional[c_void_p] = None
        self._buffers: Dict[str, _Buffer] = {}
        self._flush_lock = threading.Lock()
        lib = _lib.lib()
        self._lib = lib
        opts = _lib.MonitorOptions()
        _check(lib.ferry_monitor_options_init(byref(opts)))
        opts.flags = _lib.FERRY_MONITOR_F_START if start else 0
        opts.gpu_interval_us = _interval_us(gpu_interval, "gpu_interval")
        opts.pcie_interval_us = _interval_us(pcie_interval, "pcie_interval")
        opts.system_interval_us = _interval_us(system_interval, "system_interval")
        if sketch_accuracy is not None:
            if isinstance(sketch_accuracy, bool) or not isinstance(sketch_accuracy, (int, float)):
                raise TypeError(f"sketch_accuracy must be a number, not {type(sketch_accuracy).__name__}")
            opts.sketch_accuracy = float(sketch_accuracy)
        opts.series_points = 0 if series_points is None else _as_int32(series_points, "series_points")
        opts.rank = 0 if rank is None else _as_int32(rank, "rank")
        opts.local_rank = 0 if local_rank is None else _as_int32(local_rank, "local_rank")
        if isinstance(disk_paths, (str, bytes)) or isinstance(disk_paths, os.PathLike):
            disk_paths = (disk_paths,)
        encoded = [_c_string(p, "disk path") for p in disk_paths]
        # The strings live in these locals until the call returns; the library copies them.
        paths = (ctypes.c_char_p * max(1, len(encoded)))(*encoded)
        opts.num_disk_paths = _as_int32(len(encoded), "len(disk_paths)")
        opts.disk_paths = ctypes.cast(paths, POINTER(ctypes.c_char_p)) if encoded else None
        node_raw = None if node is None else _c_string(node, "node")
        opts.node = node_raw
        handle = c_void_p()
        _check(lib.ferry_monitor_create(byref(opts), byref(handle)))
        del paths, encoded, node_raw
        self._own(handle, lib.ferry_monitor_destroy, handle)

    # --- lifetime -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Hands the buffered values over, then destroys the monitor: its samplers and Prometheus endpoint
        stop. Idempotent and thread-safe; the monitor cannot be used afterwards."""
        try:
            if self._handle is not None and not _lib.forked():
                self.flush()
        except ClosedError:
            pass  # another thread closed it meanwhile
        finally:
            self._buffers = {}
            super().close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<ferry.PerformanceMonitor closed>"
        return f"<ferry.PerformanceMonitor metrics={len(self._buffers)}>"

    def _fail(self, status: int) -> None:
        """Raises for a failed call; a handle another thread closed meanwhile reads as ClosedError."""
        err = _error(status)
        if status == Status.INVALID_HANDLE and self._handle is None:
            raise _closed("PerformanceMonitor") from err
        raise err

    def _call(self, fn: Any, *args: Any) -> None:
        status = fn(self._h(), *args)
        if status:
            self._fail(status)

    # --- samplers -------------------------------------------------------------------------------------------

    def start_monitoring(self) -> None:
        """Starts the background samplers (GPU, host, attached iterators); a running monitor is left alone."""
        self._call(self._lib.ferry_monitor_start)

    def stop_monitoring(self) -> None:
        """Stops the background samplers; the metrics stay, and logging goes on working."""
        self._call(self._lib.ferry_monitor_stop)

    def attach(self, name: str, loader_or_iterator: Any) -> None:
        """Reports an iterator (a :class:`~ferry.Loader`'s, or a :class:`~ferry.Iterator`) or a feed (a
        :class:`~ferry.PrefetchLoader` over an iterable's, or a :class:`~ferry.Feed`) under
        ``pipeline/<name>/...``: batches/s, samples/s, host-to-device bytes/s, queue depth and data stall %,
        sampled every ``system_interval`` while the samplers run. A closed iterator is dropped."""
        from ._dataloader import DatasetLoader, Loader
        from ._feed import Feed, FeedLoader
        from ._iterator import Iterator

        obj = loader_or_iterator
        if isinstance(obj, DatasetLoader):
            obj = obj.get_prefetch_loader()
        if isinstance(obj, FeedLoader):
            obj = obj.feed
        if isinstance(obj, Feed):
            self._call(self._lib.ferry_monitor_attach_feed, _c_string(name, "pipeline name"), obj._h())
            return
        it = obj.iterator if isinstance(obj, Loader) else obj
        if not isinstance(it, Iterator):
            raise TypeError("attach takes a ferry.Loader, Iterator or PrefetchLoader, not "
                            f"{type(loader_or_iterator).__name__}")
        self._call(self._lib.ferry_monitor_attach_iterator, _c_string(name, "pipeline name"), it._h())

    # --- logging --------------------------------------------------------------------------------------------

    def metric(self, name: str) -> int:
        """Returns the ID of metric ``name`` (1..256 characters: letters, digits and ``. _ - / :``), creating
        it; the same name always gives the same ID. Raises InvalidArgumentError for a bad name."""
        if not isinstance(name, str):
            raise TypeError(f"a metric name must be a str, not {type(name).__name__}")
        out = c_uint32()
        self._call(self._lib.ferry_metric_id, _c_string(name, "metric name"), byref(out))
        return out.value

    def _find(self, name: str) -> int:
        """The ID of an existing metric ``name`` (logged here, from C, or by a sampler), never creating one:
        InvalidArgumentError names a name that no metric has."""
        if not isinstance(name, str):
            raise TypeError(f"a metric name must be a str, not {type(name).__name__}")
        out = c_uint32()
        self._call(self._lib.ferry_metric_find, _c_string(name, "metric name"), byref(out))
        return out.value

    def _buffer(self, name: str) -> _Buffer:
        """The buffer of metric ``name``, made on its first log (validating the name)."""
        buf = self._buffers.get(name)
        if buf is None:
            # setdefault: two threads logging a new name at once share one buffer
            buf = self._buffers.setdefault(name, _Buffer(self.metric(name)))
        return buf

    def log_metric(self, name: str, value: float) -> None:
        """Logs ``value`` for metric ``name``, stamped now. It is buffered in Python (see the class comment);
        NaN and infinities are counted apart (``summary(name)["nonfinite"]``) and left out of the
        statistics. Raises TypeError for a value that is not a real number."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffer(name)
        values = buf.values
        values.append(value)
        now = _monotonic_ns()
        buf.times.append(now)
        if now >= buf.due or len(values) >= _FLUSH_AT:
            self._hand_over(buf, now)

    def _hand_over(self, buf: _Buffer, now: int = 0) -> None:
        """Passes buf's complete (value, time) pairs to the library and removes them from it."""
        with self._flush_lock:
            values, times = buf.values, buf.times
            n = min(len(values), len(times))
            buf.due = (now or _monotonic_ns()) + _FLUSH_EVERY_NS
            if n == 0:
                return
            # Copies: the library reads them with the GIL released, while other threads may append to (and
            # so move) the buffers.
            v, t = values[:n], times[:n]
            del values[:n]
            del times[:n]
            status = self._lib.ferry_metric_log_many_at(
                self._h(), buf.id, ctypes.cast(v.buffer_info()[0], _DOUBLE_P),
                ctypes.cast(t.buffer_info()[0], _UINT64_P), n)
        if status:
            self._fail(status)

    def _flush_metric(self, name: str) -> None:
        buf = self._buffers.get(name)
        if buf is not None and len(buf.values):
            self._hand_over(buf)

    def flush(self) -> None:
        """Hands every buffered value to the library now."""
        self._h()
        for buf in list(self._buffers.values()):
            if len(buf.values):
                self._hand_over(buf)

    def log_metrics(self, name: str, values: Union[Sequence[float], Iterable[float], Any]) -> None:
        """Logs every value of ``values`` for metric ``name`` with one timestamp (e.g. a batch's per-sample
        losses). A numpy float64 array in C order is passed without a copy; other sequences are converted
        once (with numpy when it is installed, else to ``array('d')``)."""
        buf = self._buffer(name)
        if len(buf.values):
            self._hand_over(buf)  # keep the order: the buffered values were logged first
        if hasattr(values, "__iter__") and not hasattr(values, "__len__") and not hasattr(values, "__array__"):
            values = list(values)  # an iterator or generator: numpy would make a 0-d object array of it
        if _np is not None:
            arr = _np.ascontiguousarray(values, dtype=_np.float64)
            if arr.ndim != 1:
                arr = arr.reshape(-1)
            n, addr = arr.shape[0], arr.ctypes.data
        else:
            arr = values if isinstance(values, array) and values.typecode == "d" else array("d", values)
            addr, n = arr.buffer_info()
        if n == 0:
            return
        self._call(self._lib.ferry_metric_log_many, buf.id, ctypes.cast(addr, _DOUBLE_P), n)
        del arr  # alive until the library has read it

    # --- summaries and reports ------------------------------------------------------------------------------

    def summary(self, name: str) -> Dict[str, float]:
        """Returns metric ``name``'s summary: ``count`` (finite values) and ``nonfinite`` (NaN and infinite
        values) as ints; ``mean``, ``min``, ``max``, ``std`` (population), ``last`` exact, and ``p50``,
        ``p90``, ``p99``, ``p999`` within ``sketch_accuracy``; the floats are NaN while count is 0; and
        ``first_ns``/``last_ns``, the ``time.monotonic_ns()`` of the first and last value. Its cost does not
        grow with the values logged. A name no metric has (never logged, e.g. a typo) raises
        InvalidArgumentError; :meth:`metric` registers one."""
        self._flush_metric(name)
        metric_id = self._buffers[name].id if name in self._buffers else self._find(name)
        s = _lib.MetricSummary()
        s.size = _SUMMARY_SIZE
        self._call(self._lib.ferry_metric_summary_get, metric_id, byref(s))
        out: Dict[str, Any] = {k: getattr(s, k) for k in _SUMMARY_KEYS}
        out["first_ns"], out["last_ns"] = s.first_ns, s.last_ns
        return out

    def report_json(self) -> str:
        """Returns the JSON report (schema ``"ferry.report/1"``): ``training_metrics`` (the metrics logged
        here), ``gpu_metrics`` by device, ``system_metrics`` and ``pipeline_metrics`` by iterator, each
        metric with its summary and time series (``[seconds since start, mean, min, max, count]`` per
        point). A value with no finite sample is null."""
        self.flush()
        lib, h = self._lib, self._h()
        need = c_uint64()
        status = lib.ferry_monitor_report_json(h, None, 0, byref(need))
        if status != Status.LIMIT:
            if status:
                self._fail(status)
        for _ in range(16):
            # Room to spare: the report's creation time and duration change between two calls.
            cap = need.value + 4096
            buf = (c_char * cap)()
            status = lib.ferry_monitor_report_json(h, buf, cap, byref(need))
            if status == 0:
                return ctypes.string_at(buf, need.value).decode("utf-8")
            if status != Status.LIMIT:
                self._fail(status)
        raise _error(Status.LIMIT, "the report kept outgrowing its buffer")

    def get_performance_report(self) -> Dict[str, Any]:
        """Returns the report (:meth:`report_json`) as a dict."""
        return json.loads(self.report_json())

    def write_report(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the report to ``path``: HTML with charts when it ends in ``.html`` or ``.htm``, else JSON.
        The file is created 0644 through a temporary file renamed over it; its directory must exist."""
        self.flush()
        self._call(self._lib.ferry_monitor_write_report, _c_string(path, "path"))

    def stream_jsonl(self, path: Optional[Union[str, "os.PathLike[str]"]]) -> None:
        """Streams every value logged from now on to ``path`` as JSON lines (``{"t": seconds since the
        monitor started, "metric": name, "value": v}``), flushed every 100 ms; ``None`` stops the stream.
        Values still buffered in Python are handed over first, so they are not in the stream."""
        self.flush()
        self._call(self._lib.ferry_monitor_stream_jsonl, None if path is None else _c_string(path, "path"))

    def report_html(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the HTML report, with charts, to ``path`` (which must end in ``.html`` or ``.htm``)."""
        if not os.fsdecode(path).lower().endswith((".html", ".htm")):
            raise _invalid(f"report_html({os.fsdecode(path)!r}): the path must end in .html or .htm "
                           "(write_report picks the format from the suffix)")
        self.write_report(path)

    def serve_prometheus(self, addr: Optional[str] = None) -> str:
        """Serves Prometheus metrics at ``http://<addr>/metrics`` while the monitor lives and returns the
        address bound, e.g. ``"127.0.0.1:9400"``. None or ``""`` binds 127.0.0.1:9400, ``":PORT"``
        127.0.0.1:PORT, port 0 a free port; give a host (``"0.0.0.0:9400"``) to listen beyond this machine.
        Each scrape sees the values handed over so far (see the class comment). A monitor serves one
        endpoint; a second call raises InvalidArgumentError, a port in use FerryIOError."""
        bound = (c_char * 256)()
        self._call(self._lib.ferry_monitor_serve_prometheus, None if addr is None else _c_string(addr, "address"),
                   bound, len(bound))
        return bound.value.decode("utf-8")

    def metric_names(self) -> List[str]:
        """The names logged through this object, sorted (the samplers' metrics are in the report)."""
        return sorted(self._buffers)
