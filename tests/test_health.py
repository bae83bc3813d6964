"""edged/health.py: one nearest-rank percentile for every latency figure a technician sees, and the one
supervision of the threads that must live."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from edged.health import Heartbeats, LatencyWindow, SupervisedThread, percentile, thread_cpu_seconds


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


class _Probe(SupervisedThread):
    what = "probe"

    def __init__(self, heartbeats: Heartbeats, fail: bool) -> None:
        super().__init__("probe", heartbeats)
        self.fail = fail
        self.calls: list[str] = []

    def work(self) -> None:
        assert self.heartbeats is not None
        self.heartbeats.beat(self.name)
        if self.fail:
            raise RuntimeError("boom\nsecond line")

    def on_death(self) -> None:
        self.calls.append("on_death")

    def finish(self) -> None:
        self.calls.append("finish")


def test_a_supervised_thread_that_raises_is_reported_dead_and_still_finishes(
        caplog: pytest.LogCaptureFixture) -> None:
    beats = Heartbeats()
    probe = _Probe(beats, fail=True)
    probe.start()
    probe.join(5)
    assert beats.dead() == {"probe": "RuntimeError: boom second line"}
    assert probe.calls == ["on_death", "finish"] and "probe" not in beats.ages()
    assert "probe failed" in caplog.text and "Traceback" in caplog.text  # logged with its traceback


def test_a_supervised_thread_that_returns_is_forgotten_not_dead() -> None:
    beats = Heartbeats()
    probe = _Probe(beats, fail=False)
    probe.start()
    probe.join(5)
    assert beats.dead() == {} and "probe" not in beats.ages() and probe.calls == ["finish"]


class _Named(SupervisedThread):
    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.kernel_name = ""

    def work(self) -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", encoding="utf-8") as fh:
            self.kernel_name = fh.read().rstrip("\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel thread names are Linux's")
def test_a_supervised_thread_carries_its_name_into_the_kernel_truncated_to_15_bytes() -> None:
    """What `top -H` and `ps -L` show: without it every thread is the interpreter's name."""
    for name, shown in (("capture:cam1", "capture:cam1"), ("capture:line-3-left-camera", "capture:line-3-")):
        t = _Named(name)
        t.start()
        t.join(5)
        assert t.kernel_name == shown


class _Busy(SupervisedThread):
    def __init__(self) -> None:
        super().__init__("busy-probe", None)
        self.seen: dict[str, float] = {}

    def work(self) -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.2:  # 0.2 s of this thread's own CPU, however busy the machine
            pass
        self.seen = thread_cpu_seconds()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU is read from Linux's /proc")
def test_thread_cpu_seconds_counts_each_thread_under_its_name() -> None:
    """What /metrics and the benchmark report: the CPU a named thread used, not the process's total."""
    t = _Busy()
    t.start()
    t.join(30)
    assert 0.15 <= t.seen.get("busy-probe", 0.0) <= 5.0, t.seen
    deadline = time.monotonic() + 10  # join() returns before the kernel has reaped the thread
    while "busy-probe" in thread_cpu_seconds() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "busy-probe" not in thread_cpu_seconds()  # an ended thread no longer counts


class _HeldAtStart(SupervisedThread):
    """A thread that stops inside Thread's start-up, after its ident is set and before is_alive() is True: the
    moment a supervisor looking from a third thread used to take for a death."""

    def __init__(self) -> None:
        super().__init__("held", None)
        self.release = threading.Event()

    def _set_native_id(self) -> None:  # called by threading between _set_ident and _started.set (3.8+)
        self.release.wait(10)
        super()._set_native_id()  # type: ignore[misc]  # private, not in typeshed

    def work(self) -> None:
        pass


def release_and_join(t: _HeldAtStart) -> None:
    """Let it go on starting, and wait for it to end (join() before its start has finished would raise)."""
    t.release.set()
    deadline = time.monotonic() + 10
    while not (t.is_alive() or t.has_ended()) and time.monotonic() < deadline:
        time.sleep(0.001)
    t.join(10)


def start_held_from_another_thread() -> _HeldAtStart:
    """As the recorder starts the image writer: `start()` blocks its caller, not the supervisor."""
    t = _HeldAtStart()
    threading.Thread(target=t.start, daemon=True).start()
    deadline = time.monotonic() + 10
    while t.ident is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return t


@pytest.mark.skipif(not hasattr(threading.Thread, "_set_native_id"), reason="needs Thread._set_native_id")
def test_a_thread_still_starting_has_not_ended() -> None:
    t = _HeldAtStart()
    assert not t.has_ended()  # not started
    t = start_held_from_another_thread()
    assert t.ident is not None and not t.is_alive()  # the window: what the supervisor used to read as "ended"
    assert not t.has_ended()
    release_and_join(t)
    assert t.has_ended()
