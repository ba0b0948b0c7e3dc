"""summary() of a name no metric has raises instead of creating an empty metric; log_metrics takes any
iterable, a generator included, as its type says."""

import numpy as np
import pytest

import ferry


def quiet() -> ferry.PerformanceMonitor:
    return ferry.PerformanceMonitor(gpu_interval=None, system_interval=None, pcie_interval=None)


def test_summary_of_an_unknown_name_raises_and_creates_nothing():
    with quiet() as mon:
        mon.log_metric("loss", 1.0)
        with pytest.raises(ferry.InvalidArgumentError, match='no metric is named "lsos"'):
            mon.summary("lsos")
        assert mon.metric_names() == ["loss"]
        names = [m for m in mon.get_performance_report()["training_metrics"]]
        assert names == ["loss"], "the typo did not become a metric"
        assert mon.summary("loss")["count"] == 1
        # A registered metric, and one logged only through the C API, are found without a Python buffer.
        mon.metric("registered")
        assert mon.summary("registered")["count"] == 0
        mid = mon.metric("from_c")
        assert mon._lib.ferry_metric_log(mon._h(), mid, 2.5) == 0
        assert mon.summary("from_c")["count"] == 1
        with pytest.raises(TypeError):
            mon.summary(3)


@pytest.mark.parametrize("make", [
    lambda: (float(x) for x in range(5)),
    lambda: iter([0.0, 1.0, 2.0, 3.0, 4.0]),
    lambda: map(float, range(5)),
])
def test_log_metrics_takes_any_iterable(make):
    with quiet() as mon:
        mon.log_metrics("x", make())
        s = mon.summary("x")
        assert s["count"] == 5 and s["mean"] == 2.0 and s["max"] == 4.0


def test_log_metrics_still_takes_a_scalar_and_arrays():
    with quiet() as mon:
        mon.log_metrics("x", 3.0)
        mon.log_metrics("x", np.array([1.0, 2.0]))
        mon.log_metrics("x", [4.0])
        assert mon.summary("x")["count"] == 4
