"""What the pipeline hands the web view: the latest verdict and the latest reject per camera, by reference.

The recorder calls `LiveView.seen` for every verdict (it is the service's `on_verdict` hook): a few dict
stores and one bisect for the latency histogram, no copy of the frame, no encoding, no lock the web threads
could hold. The web threads only read: a reference store is atomic in CPython, and a Verdict is immutable
(its frame's pixels are never written after capture), so a reader sees one whole verdict or the previous one.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from edged.frames import Verdict

# capture-to-verdict latency buckets (ms, upper bounds) of the /metrics histogram; +Inf is implied
LATENCY_BUCKETS_MS: tuple[float, ...] = (2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0, 1000.0)


@dataclass
class LatencyHistogram:
    """Cumulative since start, one writer (the recorder): counts per bucket (not cumulative), sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    total_ms: float = 0.0
    count: int = 0

    def add(self, ms: float) -> None:
        """One latency (the recorder thread only)."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        self.total_ms += ms
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets in seconds (its base unit): (upper bound as text, count of values <= it), to +Inf."""
        counts = list(self.counts)  # a snapshot: the recorder may add meanwhile
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*(f"{b / 1000.0:g}" for b in LATENCY_BUCKETS_MS), "+Inf"), counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class LiveView:
    """The latest verdict and reject per camera, and per-camera verdict counts, for the web view."""

    def __init__(self, cameras: list[str]) -> None:
        self.latest: dict[str, Verdict] = {}
        self.latest_reject: dict[str, Verdict] = {}
        self.defective: dict[str, int] = dict.fromkeys(cameras, 0)
        self.latency: dict[str, LatencyHistogram] = {c: LatencyHistogram() for c in cameras}

    def seen(self, verdict: Verdict) -> None:
        """A verdict was recorded (the recorder thread): keep references, count; never copies or blocks."""
        camera = verdict.frame.camera
        self.latest[camera] = verdict
        if verdict.is_defective:
            self.latest_reject[camera] = verdict
            self.defective[camera] = self.defective.get(camera, 0) + 1
        hist = self.latency.get(camera)
        if hist is not None:
            hist.add(verdict.latency_ms)
