"""Liveness and counters that the service loop reads for the watchdog, STATUS=, health file and stats.

Each counter has exactly one writer thread (the capture thread of its camera, the recorder, ...);
readers only take snapshots. Heartbeats are per thread: a thread stuck in a call stops beating, which
stops the systemd watchdog pings, and systemd restarts the process. A thread that dies of an exception
says so (`died`): it is then reported dead, with the reason, until the process ends; it must never just
vanish from the heartbeats, which would make a daemon with a dead thread look healthy.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edged.frames import Frame


OS_NAME_BYTES = 15  # Linux keeps a thread's name in 16 bytes, the NUL included
_PR_SET_NAME = 15


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the kernel too (Linux), truncated to 15 bytes.

    Python before 3.14 names threads only inside the interpreter, so `top -H`, `ps -L`, `pidstat -t` and
    /proc/<pid>/task/*/comm showed every edged thread as "edged" or "python3": nobody could see whether the
    capture, an inference worker or the image writer was using the CPU. Best effort: a name is cosmetic, so
    any failure (another OS, a libc without prctl) is ignored."""
    if not sys.platform.startswith("linux"):
        return
    raw = name.encode("utf-8", "replace")[:OS_NAME_BYTES]
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process's threads, by kernel name (`name_os_thread`; threads
    of one name summed; a thread that has ended no longer counts). Linux's /proc; {} elsewhere. For /metrics and
    the benchmark: which thread the CPU goes to, without a profiler on the station."""
    out: dict[str, float] = {}
    try:
        tick = float(os.sysconf("SC_CLK_TCK"))
        tasks = list(Path("/proc/self/task").iterdir())
    except (OSError, ValueError, AttributeError):
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text(encoding="utf-8", errors="replace").strip()
            fields = (task / "stat").read_text(encoding="utf-8", errors="replace").rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime: fields 14 and 15 of stat(5)
        except (OSError, IndexError, ValueError):  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + seconds
    return out


class Heartbeats:
    """Each thread's last sign of life and why threads died; thread-safe. The supervisor stops the watchdog pings when
    one is silent or dead."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._dead: dict[str, str] = {}  # thread name -> why it died
        self._lock = threading.Lock()

    def beat(self, name: str) -> None:
        """A watched thread is alive; cheap enough to call for every frame (one dict store)."""
        self._last[name] = time.monotonic()  # a single dict store: atomic in CPython

    def forget(self, name: str) -> None:
        """A thread that ends as it should (end of file, shutdown) stops being watched."""
        with self._lock:
            self._last.pop(name, None)

    def died(self, name: str, why: BaseException | str) -> None:
        """A thread that must live ended by an exception: reported dead (and why) from now on."""
        text = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
        with self._lock:
            self._last.pop(name, None)
            self._dead.setdefault(name, " ".join(text.split())[:300])

    def dead(self) -> dict[str, str]:
        """Threads that died: name -> why (a copy)."""
        with self._lock:
            return dict(self._dead)

    def ages(self, now: float | None = None) -> dict[str, float]:
        """Seconds since each watched thread's last beat (monotonic clock)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return {name: max(0.0, now - t) for name, t in list(self._last.items())}

    def stale(self, timeout_s: float) -> list[str]:
        """Threads silent for longer than `timeout_s`: hung."""
        return [name for name, age in self.ages().items() if age > timeout_s]


class SupervisedThread(threading.Thread):
    """A thread the daemon cannot do without (capture, inference, recorder, MQTT link, image writer).

    `work()` is its body. Whatever escapes it is logged with its traceback and reported to `heartbeats` as this
    thread's death (the supervisor stops the watchdog and edged exits for systemd to restart it); it never
    reaches Python's thread machinery, which would only print it. `on_death()` says what else a death means
    for this thread, `finish()` always runs last. One place, so that a new thread is supervised by subclassing
    this, not by copying a try/except.
    """

    what = "thread"  # how the log names it: "<what> failed"

    def __init__(self, name: str, heartbeats: Heartbeats | None) -> None:
        super().__init__(name=name, daemon=True)
        self.heartbeats = heartbeats
        self._exited = threading.Event()  # set as `run` returns, however it ended

    def has_ended(self) -> bool:
        """True once `run` has returned (work done, or its death reported); False before the thread starts and
        while it is starting. The supervisor asks this, not `ident` and `is_alive()`: a thread started from
        another thread (the image writer, by the recorder) has an ident a moment before `is_alive()` turns True,
        and a supervisor that looked then called a healthy daemon's writer dead ("ended unexpectedly")."""
        return self._exited.is_set()

    def work(self) -> None:
        """The thread's body; returning ends the thread as it should (end of input, shutdown)."""
        raise NotImplementedError

    def on_death(self) -> None:
        """After an unexpected exception was reported: what else it means (default: nothing)."""

    def finish(self) -> None:
        """Always, after `work` however it ended: release what the thread holds (default: nothing)."""

    def run(self) -> None:
        """`work` under supervision (see the class); not to be overridden."""
        name_os_thread(self.name)
        try:
            self.work()
        except Exception as exc:
            logging.getLogger(type(self).__module__).exception("%s failed", self.what)  # the subclass's logger
            if self.heartbeats is not None:
                self.heartbeats.died(self.name, exc)
            self.on_death()
        finally:
            try:
                if self.heartbeats is not None:
                    self.heartbeats.forget(self.name)
                self.finish()
            finally:
                self._exited.set()



@dataclass
class CameraStats:
    """Written by the camera's capture thread only."""

    name: str
    source: str
    state: str = "starting"  # starting | streaming | reconnecting | failed | finished
    frames: int = 0
    bad_frames: int = 0
    reconnects: int = 0
    missed: int = 0  # frames the camera sent that never arrived whole (GenICam: incomplete buffers, id jumps)
    last_frame_at: float | None = None
    latest: Frame | None = field(default=None, repr=False)  # the newest frame, by reference (the web view's live one)
    _times: deque[float] = field(default_factory=lambda: deque(maxlen=64))

    def frame_captured(self, mono: float, wall: float) -> None:
        """Count one frame (the capture thread only): `mono` for the frame rate, `wall` for the last-frame time."""
        self.frames += 1
        self.last_frame_at = wall
        self._times.append(mono)

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the recent frames; 0 when none came in the last 5 s."""
        times = list(self._times)
        now = time.monotonic() if now is None else now
        if len(times) < 2 or now - times[-1] > 5.0:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile, None for no values: always a value that occurred, which is what a
    technician expects of "p99 12 ms" (an interpolated figure may be a latency no frame ever had).
    The one definition for STATUS=, the health file, /stats and `edged status`."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class LatencyWindow:
    """Recent capture-to-verdict latencies for p50/p99 (bounded memory)."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        """One verdict's capture-to-verdict latency in ms; only the most recent `size` are kept."""
        self._values.append(ms)

    def percentiles(self) -> dict[str, float | None]:
        """p50 and p99 in ms (nearest rank), None while the window is empty."""
        values = list(self._values)
        out: dict[str, float | None] = {}
        for name, q in (("p50", 50.0), ("p99", 99.0)):
            value = percentile(values, q)
            out[name] = None if value is None else round(float(value), 3)
        return out


@dataclass
class Counters:
    """Pipeline-wide counts; each field has one writer (noted)."""

    inspected: int = 0  # recorder
    rejects: int = 0  # recorder
    rejects_by_reason: dict[str, int] = field(default_factory=dict)  # recorder
    rejects_by_camera: dict[tuple[str, str], int] = field(default_factory=dict)  # recorder: (camera, reason) -> count
    triggers: int = 0  # recorder: trigger messages accepted (one per camera they name)
    not_inspected: int = 0  # recorder: triggered parts without a verdict in time
    late_verdicts: int = 0  # recorder: verdicts that came after their part's deadline
    parts: int = 0  # recorder
    last_reject_at: float | None = None  # recorder
    dropped_at_shutdown: int = 0  # service
    bad_frames_inference: int = 0  # workers (one per worker key would be stricter; tolerated: += is rare)
    invalid_outputs: int = 0  # recorder: frames whose model output was NaN/inf (not inspected, never good)
