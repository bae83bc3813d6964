"""Percentiles (edged/health.py): one nearest-rank definition for every latency figure a technician sees."""

from __future__ import annotations

from edged.health import LatencyWindow, percentile


def test_nearest_rank_is_a_value_that_occurred() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # not 2.5: no frame took 2.5 ms
    assert percentile([7.0], 99) == 7.0 and percentile([7.0], 0) == 7.0
    assert percentile([1.0, 100.0], 99) == 100.0


def test_latency_window_uses_it_and_rounds_to_microseconds() -> None:
    window = LatencyWindow(size=4)
    assert window.percentiles() == {"p50": None, "p99": None}
    for ms in (9.0, 1.0, 2.0001234, 3.0, 4.0):  # the window keeps the last 4
        window.add(ms)
    assert window.percentiles() == {"p50": 2.0, "p99": 4.0}
