"""The CPU accounting of ``benchmarks/studies/cpu_accounting.py``: /proc readings and the tables' arithmetic."""

import sys
import time

import pytest

from benchmarks.studies.cpu_accounting import TICK, _ticks, snapshot, summarize

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_busy_main_thread_shows_up_as_its_cpu_time() -> None:
    _, t0 = _ticks("/proc/self/stat")
    a = snapshot()
    _burn(0.5)
    b = snapshot()
    assert _ticks("/proc/self/stat")[1] - t0 >= 0.4 * TICK  # clock ticks of the process: 0.5 s burnt, 10 ms ticks
    main = "trainer thread: Python MainThread"
    assert 0.4 <= b[main] - a[main] <= 1.0, (a[main], b[main])  # the busy thread, not another one
    assert b["machine busy"] - a["machine busy"] >= 0.4
    assert 0.4 <= b["wall"] - a["wall"] < 5


def test_summary_splits_engine_cpu_and_corrects_for_host_speed() -> None:
    mem = {"steps per second": 20.0, "trainer thread: tf_XLAEigen": 0.07, "machine busy": 0.08}
    slow_mem = {"steps per second": 14.0, "trainer thread: tf_XLAEigen": 0.1, "machine busy": 0.11}  # host slower
    online = {"steps per second": 18.0, "trainer thread: tf_XLAEigen": 0.07, "machine busy": 0.09,
              "Ray actors (solver workers)": 0.006, "raylet": 0.002, "trainer thread: Python receiver": 0.001,
              "rest of the machine": 0.004}  # not the engine's
    out = summarize({"memory": [mem, slow_mem], "online": [online]})
    assert out["xla_cores_memory"] == pytest.approx(1.4)  # 20 x 0.07 and 14 x 0.1: the same cores
    assert out["xla_cores_ratio_online"] == pytest.approx(18 * 0.07 / 1.4)
    assert out["engine_share_online"] == pytest.approx(0.009 / 0.09)
    assert out["engine_share_memory"] == 0
    assert out["mean"]["memory"]["steps per second"] == pytest.approx(17.0)
