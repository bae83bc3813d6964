"""Parts, not frames: turn a camera's verdict stream into part events, one reject per bad part.

`free_run`: a free-running camera sees a part in several consecutive frames. Defective frames closer
than `gap_ms` (capture time) to the previous defective frame belong to the same part event; the event
closes `gap_ms` after its last defective frame (or at once when `gap_ms` is 0) and yields ONE reject
carrying its best (highest-scoring) frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edged.frames import Verdict


@dataclass
class PartEvent:
    camera: str
    first: Verdict
    best: Verdict
    last_defect_mono: float
    frames: int = 1
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def part_id(self) -> str:
        return f"{self.camera}-{self.first.frame.seq}"


class FreeRunGrouper:
    """Per-camera state machine; feed verdicts in capture order, call `tick` to close idle events."""

    def __init__(self, camera: str, gap_ms: float) -> None:
        self.camera = camera
        self.gap_s = gap_ms / 1000.0
        self.open: PartEvent | None = None

    def feed(self, verdict: Verdict) -> list[PartEvent]:
        closed: list[PartEvent] = []
        t = verdict.frame.captured_mono
        if self.open is not None and t - self.open.last_defect_mono > self.gap_s:
            closed.append(self.open)
            self.open = None
        if verdict.is_defective:
            if self.open is None:
                self.open = PartEvent(self.camera, verdict, verdict, t)
            else:
                self.open.frames += 1
                self.open.last_defect_mono = t
                if verdict.score > self.open.best.score:
                    self.open.best = verdict
            if self.gap_s <= 0:
                closed.append(self.open)
                self.open = None
        return closed

    def tick(self, now_mono: float) -> list[PartEvent]:
        if self.open is not None and now_mono - self.open.last_defect_mono > self.gap_s:
            event, self.open = self.open, None
            return [event]
        return []

    def flush(self) -> list[PartEvent]:
        event, self.open = self.open, None
        return [event] if event is not None else []
